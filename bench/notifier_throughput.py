"""Handovers per second of the notifier service on a real local Kafka, against raw aiokafka baselines.

    PYTHONPATH=. .venv/bin/python bench/notifier_throughput.py [N]      (N decisions, default 2000)

Starts its own broker (as the tests do), loads N routing decisions (to WIJ teams and providers), then
measures, each on its own copy of the input:
- `notifier service`: the notifier on the transactional runtime (statuses `routed` and `handed-over`, the FHIR
  handover as plain JSON, the youth's follow-up on `notifier.state.v1` and the input offsets in one transaction
  per partition's batch);
- `raw aiokafka, same work`: consume -> the same core and FHIR Bundle -> the same four records sent and
  awaited -> commit per record (what the runtime and the service's adapter add on top);
- `raw aiokafka, no work`: consume -> four copies of the input sent and awaited -> commit per record
  (the broker's round trips alone).
"""

import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.routing_throughput import REGISTRY, count_until, referrals
from schemas.notices import YouthFollowUp
from schemas.routing import RoutingDecision
from services.infra import topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.provisioning import TopicSpec, provision_hub_topics, provision_topics
from services.notifier.app import create_notifier
from services.notifier.calendar import WorkingCalendar
from services.notifier.followup import apply_decision
from services.notifier.handover import handover_message
from services.routing.policy import decide
from tests.conftest import TestKafka, new_broker


async def load(kafka: KafkaConnection, topic: str, items: list[RoutingDecision]) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    for d in items:
        await producer.send(topic, d.model_dump_json().encode(), key=d.referral.youth.pseudonym.encode())
    await producer.flush()
    await producer.stop()


async def raw(kafka: KafkaConnection, source: str, target: str, n: int, same_work: bool) -> float:
    consumer = AIOKafkaConsumer(source, **kafka.client_options(), group_id=f"raw-{uuid.uuid4()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    calendar, done, started = WorkingCalendar(), 0, None
    while done < n:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                started = started or time.perf_counter()
                values = [record.value] * 4
                if same_work:
                    decision = RoutingDecision.model_validate_json(record.value)
                    now = datetime.now(UTC)
                    state, effects = apply_decision(YouthFollowUp(pseudonym=record.key.decode()), decision, now,
                                                    calendar, None)
                    values = [effects[0].model_dump_json().encode(),
                              json.dumps(handover_message(decision, now), separators=(",", ":")).encode(),
                              effects[2].model_dump_json().encode(), state.model_dump_json().encode()]
                for value in values:
                    await producer.send_and_wait(target, value, key=record.key)
                await consumer.commit()
                done += 1
    elapsed = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()
    return elapsed


async def main(n: int, broker: TestKafka) -> None:
    kafka = broker.admin
    settings = broker.settings()
    provision_hub_topics(settings, REGISTRY)
    provision_topics(kafka, [TopicSpec(f"bench.{d}.{i}", 6, 1, {}) for d in ("in", "out") for i in (1, 2)])
    now = datetime.now(UTC)
    decisions = [d for d in (decide(r, REGISTRY, now) for r in referrals(n)) if d.recipient is not None]
    n = len(decisions)
    for topic in (topics.DECISIONS, "bench.in.1", "bench.in.2"):
        await load(kafka, topic, decisions)
    broker = create_notifier(settings, REGISTRY, SystemClock())
    await broker.start()
    service_s = await count_until(kafka, topics.status(decisions[0].referral.channel), 2 * n)
    await broker.stop()
    same_s = await raw(kafka, "bench.in.1", "bench.out.1", n, same_work=True)
    bare_s = await raw(kafka, "bench.in.2", "bench.out.2", n, same_work=False)
    teams = sum(d.recipient.kind.value == "wij-team" for d in decisions)
    print(f"{n} decisions ({teams} to WIJ teams), one local Kafka 4.1.1 broker, 6 partitions, acks=all")
    for name, seconds in (("notifier service (runtime)", service_s), ("raw aiokafka, same work", same_s),
                          ("raw aiokafka, no work", bare_s)):
        print(f"  {name:30s} {n / seconds:8.0f} handovers/s  ({seconds:.2f} s, "
              f"{same_s / seconds:.2f}x the same-work baseline)")


if __name__ == "__main__":
    with new_broker(Path(tempfile.mkdtemp())) as broker:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, broker))
