"""Decisions per second of the routing service on a real local Kafka, against raw aiokafka baselines.

    PYTHONPATH=. .venv/bin/python bench/routing_throughput.py [N]      (N referrals, default 3000)

Starts its own broker (as the tests do), loads N normalised referrals, then measures, each on its own
copy of the input topic:
- `routing service`: the FastStream routing service (state follower, policy; a batch of referrals
  published in order, confirmed together, one offset commit per batch);
- `raw aiokafka, awaited`: consume -> decide -> send_and_wait per record, commit per fetched batch;
- `raw aiokafka, awaited+commit`: as awaited, and commit after each record (what per-message ack costs);
- `raw aiokafka, batched`: consume -> decide -> send without waiting, flush per batch (the ceiling);
- `policy alone`: `decide` in a loop, no Kafka.
"""

import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from services.infra import topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of
from services.infra.provisioning import TopicSpec, provision_topics
from services.infra.pseudonym import youth_pseudonym
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.routing.app import create_routing
from services.routing.commands import publish_registry
from services.routing.policy import decide
from tests.conftest import TestKafka, new_broker
from tests.referrals import random_bsn

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
PC4S = sorted(REGISTRY.postcodes)
PRODUCTS = [None, None, "45A51", "54B01", "45A56", "50G41"]


def referrals(n: int) -> list[Referral]:
    out = []
    for i in range(n):
        bsn = random_bsn()
        out.append(Referral(
            referral_id=str(uuid.uuid4()), channel=Channel.GP,
            referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
            referrer_referral_id=f"B-{i}", referral_date=date(2026, 3, 12) - timedelta(days=i % 900),
            youth=Youth(bsn=bsn, pseudonym=youth_pseudonym(bsn, "bench"), birth_date=date(2014, 1, 1),
                        postcode=f"{PC4S[i % len(PC4S)]} AB"),
            product=PRODUCTS[i % len(PRODUCTS)], specialist_asked=i % 3 == 0, received_at=datetime.now(UTC)))
    return out


async def load(kafka: KafkaConnection, topic: str, items: list[Referral]) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    for r in items:
        await producer.send(topic, r.model_dump_json().encode(), key=r.youth.pseudonym.encode())
    await producer.flush()
    await producer.stop()


async def count_until(kafka: KafkaConnection, topic: str, n: int) -> float:
    """Seconds from the first to the n-th record on `topic` (broker timestamps, over all partitions)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    parts = await partitions_of(kafka, [topic])
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    stamps: list[int] = []
    while len(stamps) < n:
        batches = await consumer.getmany(timeout_ms=200)
        stamps += [record.timestamp for records in batches.values() for record in records]
    await consumer.stop()
    return (max(stamps) - min(stamps)) / 1000


async def raw(kafka: KafkaConnection, source: str, target: str, n: int, awaited: bool, commit_each: bool = False) -> float:
    consumer = AIOKafkaConsumer(source, **kafka.client_options(), group_id=f"raw-{uuid.uuid4()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    done, started = 0, None
    while done < n:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                started = started or time.perf_counter()
                referral = Referral.model_validate_json(record.value)
                decision = decide(referral, REGISTRY, datetime.now(UTC))
                send = producer.send_and_wait if awaited else producer.send
                await send(target, decision.model_dump_json().encode(), key=record.key)
                if commit_each:
                    await consumer.commit()
                done += 1
        if not awaited:
            await producer.flush()
        if batches:
            await consumer.commit()
    elapsed = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()
    return elapsed


async def main(n: int, broker: TestKafka) -> None:
    kafka = broker.admin
    if True:
        settings = broker.settings()
        await publish_registry(settings, REPO_ROOT / "deploy" / "registry")
        provision_topics(kafka, [TopicSpec(f"bench.{d}.{i}", 6, 1, {}) for d in ("in", "out") for i in (1, 2, 3)])
        items = referrals(n)
        for topic in (topics.NORMALISED, "bench.in.1", "bench.in.2", "bench.in.3"):
            await load(kafka, topic, items)
        broker = create_routing(settings, REGISTRY, SystemClock())
        await broker.start()
        service_s = await count_until(kafka, topics.DECISIONS, n)
        await broker.stop()
        awaited_s = await raw(kafka, "bench.in.1", "bench.out.1", n, awaited=True)
        batched_s = await raw(kafka, "bench.in.2", "bench.out.2", n, awaited=False)
        each_s = await raw(kafka, "bench.in.3", "bench.out.3", n, awaited=True, commit_each=True)
        decide_start = time.perf_counter()
        for r in items:
            decide(r, REGISTRY, datetime.now(UTC))
        pure_s = time.perf_counter() - decide_start
    print(f"{n} referrals, one local Kafka 4.1.1 broker, 6 partitions, acks=all")
    for name, seconds in (("routing service (runtime)", service_s), ("raw aiokafka, awaited", awaited_s),
                          ("raw aiokafka, awaited+commit", each_s),
                          ("raw aiokafka, batched", batched_s), ("policy alone (decide)", pure_s)):
        print(f"  {name:30s} {n / seconds:8.0f} decisions/s  ({seconds:.2f} s)")


if __name__ == "__main__":
    with new_broker(Path(tempfile.mkdtemp())) as broker:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000, broker))
