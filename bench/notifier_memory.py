"""Memory of a notifier that owns N open contact clocks, on a real local Kafka.

    PYTHONPATH=. .venv/bin/python bench/notifier_memory.py [N]      (N youths with an open clock, default 100000)

Writes N follow-ups (one open handover to a WIJ team, its clock running) to `notifier.state.v1`, as a
notifier would have, then starts `verwijshub run notifier` as its own process, waits until it has loaded
them all, and reads its resident memory from /proc; the same for a notifier with no follow-ups (the
baseline), so the difference is what the clocks cost.
"""

import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench.routing_throughput import REGISTRY, referrals
from schemas.notices import YouthFollowUp
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


def follow_ups(n: int) -> list[YouthFollowUp]:
    """N youths, each with one open handover to a WIJ team and its clock running (one template, new ids)."""
    now = datetime.now(UTC)
    template = next(d for d in (decide(r, REGISTRY, now) for r in referrals(50))
                    if d.recipient is not None and d.recipient.kind.value == "wij-team")
    state, _ = apply_decision(YouthFollowUp(pseudonym="-"), template, now, WorkingCalendar(), None)
    (handover,) = state.handovers.values()
    out = []
    for i in range(n):
        rid = f"{i:08d}-0000-4000-8000-000000000000"
        out.append(state.model_copy(update={
            "pseudonym": youth_pseudonym(f"{i:09d}", "bench"),
            "handovers": {rid: handover.model_copy(update={"referral_id": rid, "referrer_referral_id": f"M-{i}"})}}))
    return out


async def load(kafka: KafkaConnection, items: list[YouthFollowUp]) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, linger_ms=20)
    await producer.start()
    for state in items:
        await producer.send(topics.NOTIFIER_STATE, state.model_dump_json().encode(), key=state.pseudonym.encode())
    await producer.flush()
    await producer.stop()


def rss_when_loaded(kafka: KafkaConnection, directory: Path, youths: int) -> int:
    """Resident memory (bytes) of a notifier process once it owns `youths` follow-ups."""
    log = directory / f"notifier-{youths}.log"
    process = start_hub(broker, log, "notifier")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            loaded = {line["partition"]: line["youths"] for line in map(json.loads, log.read_text().splitlines())
                      if line.get("event") == "follow-up partition owned"}
            if len(loaded) == PARTITIONS and sum(loaded.values()) >= youths:
                break
            time.sleep(0.5)
        time.sleep(2)
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024
    finally:
        stop_hub(process)


def main(n: int, broker: TestKafka) -> None:
    kafka = broker.admin
    settings = broker.settings()
    provision_hub_topics(settings, REGISTRY)
    directory = Path(tempfile.mkdtemp())
    empty = rss_when_loaded(broker, directory, 0)
    items = follow_ups(n)
    record_bytes = sum(len(s.model_dump_json()) for s in items[:100]) / 100
    asyncio.run(load(kafka, items))
    del items
    loaded = rss_when_loaded(broker, directory, n)
    print("notifier resident memory, one local Kafka 4.1.1 broker, 6 partitions")
    print(f"  no follow-ups              {empty / 2**20:8.1f} MiB")
    print(f"  {n:>7} open clocks        {loaded / 2**20:8.1f} MiB  "
          f"(+{(loaded - empty) / n:.0f} bytes per clock; {record_bytes:.0f} bytes per record on notifier.state.v1)")


if __name__ == "__main__":
    with new_broker(Path(tempfile.mkdtemp())) as broker:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, broker)
