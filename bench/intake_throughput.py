"""Intake throughput per channel, messages/s, from a pre-filled topic, against a raw aiokafka baseline.

    .venv/bin/python -m bench.intake_throughput --count 2000

Uses VERWIJSHUB_KAFKA_BOOTSTRAP if set, else starts the local Apache Kafka on free ports in a temporary
directory. For each channel it fills `referrals.<channel>.v1` with `count` distinct valid referrals, then:
- baseline: a plain aiokafka consumer that, per record, produces two records (as intake does: status and
  referral) with acks=all and commits the offset, without parsing;
- intake: the real intake service in this process (the transactional runtime, the adapter, the ledger), done when the
  consumer group's committed offsets (polled) cover the topic.
Both are timed from their start call, so the consumer-group join is included: a conservative number.
Logs at WARNING, so the numbers measure the work, not the log file.
"""

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.referral import Channel
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.kafka import group_id
from services.infra.logging import configure_logging
from services.infra.provisioning import TopicSpec, provision_hub_topics, provision_topics
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.intake.app import create_intake
from tests.conftest import TestKafka

EXAMPLES = REPO_ROOT / "schemas" / "examples"


def referral(channel: Channel, referral_id: str) -> bytes:
    if channel is Channel.SPECIALIST:
        raw = (EXAMPLES / "specialist" / "valid-product.hl7").read_bytes()
        return raw.replace(b"UMCG-REF-2026-0042", referral_id.encode())
    if channel is Channel.GP:
        bundle = json.loads((EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_text())
        bundle["entry"][1]["resource"]["identifier"][0]["value"] = referral_id
        return json.dumps(bundle).encode()
    document = json.loads(next((EXAMPLES / channel.value).glob("valid-*.json")).read_text())
    document["referral_id"] = referral_id
    return json.dumps(document).encode()
SINK = "bench.sink.v1"
"""Where the raw baseline writes what it consumed."""


async def fill(kafka: KafkaConnection, channel: Channel, count: int) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        run = uuid.uuid4().hex[:8]
        futures = [await producer.send(topics.referrals(channel), referral(channel, f"B-{run}-{i}"),
                                       key=f"B-{run}-{i}".encode()) for i in range(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def baseline(kafka: KafkaConnection, channel: Channel, count: int) -> float:
    consumer = AIOKafkaConsumer(topics.referrals(channel), **kafka.client_options(), enable_auto_commit=False,
                                group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    started = time.monotonic()
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=1)
            for records in batches.values():
                for record in records:
                    await producer.send_and_wait(SINK, record.value, key=record.key)
                    await producer.send_and_wait(SINK, record.value, key=record.key)
                    await consumer.commit()
                    done += 1
        return done / (time.monotonic() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def committed(admin: AIOKafkaAdminClient, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group_id("intake"))
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def intake(settings: Settings, channel: Channel, count: int) -> float:
    admin = AIOKafkaAdminClient(**settings.connection(principals.ADMIN).client_options())
    await admin.start()
    topic = topics.referrals(channel)
    before = await committed(admin, topic)
    broker = create_intake(settings, load_registry(settings.registry_dir), SystemClock())
    started = time.monotonic()
    await broker.start()
    try:
        while (done := await committed(admin, topic) - before) < count:
            await asyncio.sleep(0.1)
        return done / (time.monotonic() - started)
    finally:
        await broker.stop()
        await admin.close()


async def run(broker: TestKafka, count: int, channels: list[Channel]) -> dict[str, dict[str, float]]:
    kafka, settings = broker.admin, broker.settings()
    provision_hub_topics(settings, load_registry(settings.registry_dir))
    provision_topics(kafka, [TopicSpec(SINK, 6, 1, {})])  # the secured broker creates no topic by itself
    results = {}
    for channel in channels:
        await fill(kafka, channel, count)
        raw = await baseline(kafka, channel, count)
        hub = await intake(settings, channel, count)
        results[channel.value] = {"baseline_msgs_per_s": round(raw, 1), "intake_msgs_per_s": round(hub, 1)}
        print(json.dumps({"channel": channel.value, "count": count, **results[channel.value]}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--channels", default=",".join(c.value for c in Channel))
    args = parser.parse_args()
    channels = [Channel(c) for c in args.channels.split(",")]
    configure_logging("bench", "WARNING")
    settings = Settings()
    if settings.kafka_bootstrap:
        asyncio.run(run(TestKafka(settings.kafka_bootstrap, settings.secrets), args.count, channels))
        return
    from tests.conftest import new_broker

    with tempfile.TemporaryDirectory() as directory, new_broker(Path(directory)) as broker:
        asyncio.run(run(broker, args.count, channels))


if __name__ == "__main__":
    main()
