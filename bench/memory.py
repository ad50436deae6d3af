"""Resident memory of routing and of the notifier with N open referrals, on a real local Kafka.

    PYTHONPATH=. .venv/bin/python -m bench.memory [N]      (N youths with an open referral, default 100000)

Writes N youths' state to each service's compacted state topic, as the service would have (routing: the open
referral to a provider on `routing.state.v1`; notifier: the open handover with its contact clock on
`notifier.state.v1`), then starts `verwijshub run <service>` as its own process, waits until it has loaded
every partition, and reads its resident memory from /proc; the same with no state (the baseline), so the
difference is what the open work costs.
"""

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from bench.routing_throughput import REGISTRY, referrals
from schemas.notices import YouthFollowUp
from schemas.routing import OpenReferral, RoutingDecision, YouthRouting
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.provisioning import provision_hub_topics
from services.infra.pseudonym import youth_pseudonym
from services.notifier.calendar import WorkingCalendar
from services.notifier.followup import apply_decision
from services.routing.policy import decide
from tests.conftest import TestKafka, new_broker, start_hub, stop_hub

PARTITIONS = 6
"""The hub's partitions per topic (VERWIJSHUB_PARTITIONS' default): one instance owns them all."""


def template(kind: str) -> RoutingDecision:
    now = datetime.now(UTC)
    return next(d for d in (decide(r, REGISTRY, now) for r in referrals(50))
                if d.recipient is not None and d.recipient.kind.value == kind)


def renamed(decision: RoutingDecision, i: int) -> tuple[str, str, RoutingDecision]:
    """The template decision for youth i: its own pseudonym and referral id (one template, new ids)."""
    pseudonym, rid = youth_pseudonym(f"{i:09d}", "bench"), f"{i:08d}-0000-4000-8000-000000000000"
    youth = decision.referral.youth.model_copy(update={"pseudonym": pseudonym})
    referral = decision.referral.model_copy(update={"referral_id": rid, "referrer_referral_id": f"M-{i}",
                                                    "youth": youth})
    return pseudonym, rid, decision.model_copy(update={"referral_id": rid, "referral": referral})


def routing_states(n: int) -> list[YouthRouting]:
    """N youths, each with one referral open with a provider."""
    decision = template("provider")
    return [YouthRouting(pseudonym=p, referrals={rid: OpenReferral(decision=d)})
            for p, rid, d in (renamed(decision, i) for i in range(n))]


def notifier_states(n: int) -> list[YouthFollowUp]:
    """N youths, each with one open handover to a WIJ team and its clock running."""
    state, _ = apply_decision(YouthFollowUp(pseudonym="-"), template("wij-team"), datetime.now(UTC),
                              WorkingCalendar(), None)
    (handover,) = state.handovers.values()
    out = []
    for i in range(n):
        pseudonym, rid = youth_pseudonym(f"{i:09d}", "bench"), f"{i:08d}-0000-4000-8000-000000000000"
        out.append(state.model_copy(update={
            "pseudonym": pseudonym,
            "handovers": {rid: handover.model_copy(update={"referral_id": rid, "referrer_referral_id": f"M-{i}"})}}))
    return out


SERVICES: dict[str, tuple[str, Callable[[int], list], str]] = {
    "routing": (topics.ROUTING_STATE, routing_states, "routing state loaded"),
    "notifier": (topics.NOTIFIER_STATE, notifier_states, "follow-up partition owned"),
}
"""Per service: its state topic, N youths' states, and the log line that says a partition is loaded (with `youths`)."""


async def load(kafka: KafkaConnection, topic: str, items: list[BaseModel]) -> None:
    """The states keyed by pseudonym, so each lands in its youth's partition (the default partitioner)."""
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, linger_ms=20,
                                max_batch_size=1024 * 1024)
    await producer.start()
    for state in items:
        await producer.send(topic, state.model_dump_json().encode(), key=state.pseudonym.encode())
    await producer.flush()
    await producer.stop()


def rss_when_loaded(broker: TestKafka, directory: Path, service: str, youths: int) -> int:
    """Resident memory (bytes) of the service's process once it has loaded every partition, `youths` in all."""
    log, loaded_line = directory / f"{service}-{youths}.log", SERVICES[service][2]
    process = start_hub(broker, log, service)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            loaded = {line["partition"]: line["youths"] for line in map(json.loads, log.read_text().splitlines())
                      if line.get("event") == loaded_line}
            if len(loaded) == PARTITIONS and sum(loaded.values()) >= youths:
                break
            time.sleep(0.5)
        time.sleep(2)
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024
    finally:
        stop_hub(process)


def main(n: int, broker: TestKafka) -> None:
    provision_hub_topics(broker.settings(), REGISTRY)
    directory = Path(tempfile.mkdtemp())
    print(f"resident memory with {n} open referrals, one local Kafka 4.1.1 broker, {PARTITIONS} partitions")
    for service, (topic, states, _) in SERVICES.items():
        empty = rss_when_loaded(broker, directory, service, 0)
        items = states(n)
        record_bytes = sum(len(s.model_dump_json()) for s in items[:100]) / 100
        asyncio.run(load(broker.admin, topic, items))
        del items
        loaded = rss_when_loaded(broker, directory, service, n)
        print(f"  {service:<9} none {empty / 2**20:7.1f} MiB, {n} open {loaded / 2**20:7.1f} MiB "
              f"(+{(loaded - empty) / n:.0f} bytes each; {record_bytes:.0f} bytes per record on {topic})")


if __name__ == "__main__":
    with new_broker(Path(tempfile.mkdtemp())) as broker:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, broker)
