"""A plain aiokafka client for the end-to-end tests: they talk to the hub as its users' systems would."""

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of as existing_partitions
from services.infra.kafka import read_records


async def produce(kafka: KafkaConnection, topic: str, value: bytes, key: bytes | None = None,
                  headers: list[tuple[str, bytes]] | None = None) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_topic(kafka: KafkaConnection, topic: str, wanted: Callable[[ConsumerRecord], bool],
                     count: int, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[ConsumerRecord]:
    """Records of `topic` (all partitions, from the start) that `wanted` accepts, in offset order per
    partition. Returns once `count` are found and `settle_s` more passed (to catch extras), or at timeout."""
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        partitions = await partitions_of(kafka, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            batches = await consumer.getmany(timeout_ms=200)
            found += [record for records in batches.values() for record in records if wanted(record)]
            if len(found) >= count and settle_until is None:
                settle_until = time.monotonic() + settle_s
        return found
    finally:
        await consumer.stop()


async def partitions_of(kafka: KafkaConnection, *names: str) -> list[TopicPartition]:
    """The partitions of the topics, once all of them exist (waited for: a topic just created may not be known
    to every broker yet); all topics in one request, as a SASL_SSL handshake per topic adds up."""
    for _ in range(50):
        found = await existing_partitions(kafka, list(names))
        if {tp.topic for tp in found} == set(names):
            return found
        await asyncio.sleep(0.1)
    raise LookupError(f"not all of the topics {', '.join(names)} exist")


def header(record: ConsumerRecord, name: str) -> str | None:
    return next((v.decode() for k, v in record.headers if k == name), None)


async def records_on_topics(kafka: KafkaConnection, prefix: str) -> list[ConsumerRecord]:
    """Every record now on every topic whose name starts with `prefix`."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        names = sorted(name for name in await admin.list_topics() if name.startswith(prefix))
    finally:
        await admin.close()
    return await read_records(kafka, names)


async def read_committed(kafka: KafkaConnection, names: list[str], timeout_s: float = 120.0) -> list[ConsumerRecord]:
    """Every record of the topics up to their end, as a read_committed consumer sees them (no aborted record)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = await partitions_of(kafka, *names)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)  # read_committed: the last stable offsets
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{names} not read to their end in {timeout_s:.0f}s")
            records += [r for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch]
        return records
    finally:
        await consumer.stop()


async def committed_offsets(kafka: KafkaConnection, group: str) -> dict[TopicPartition, int]:
    """The offsets consumer group `group` has committed, per partition (as the admin reads them)."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()
