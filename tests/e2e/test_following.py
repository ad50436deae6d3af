"""Following a topic (services/infra/following.py) on a real broker: ready once what was there has been read, also
when a partition holds nothing but an aborted transaction (a service stopped inside its first one), whose records
a read_committed consumer never gets."""

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from services.infra.following import follow
from services.infra.provisioning import TopicSpec, provision_topics
from tests.conftest import TestKafka

pytestmark = pytest.mark.e2e


async def write_in_transactions(kafka: TestKafka, topic: str, values: list[bytes]) -> None:
    """One committed transaction per record, each to its own partition, then an aborted one on every partition and
    the next: that one holds aborted records only."""
    producer = AIOKafkaProducer(**kafka.admin.client_options(), transactional_id=f"{topic}-writer")
    await producer.start()
    try:
        for partition, value in enumerate(values):
            async with producer.transaction():
                await producer.send(topic, value, key=b"k", partition=partition)
        await producer.begin_transaction()
        for partition in range(len(values) + 1):
            await producer.send(topic, b"aborted", key=b"k", partition=partition)
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_following_is_ready_when_a_partition_holds_only_an_aborted_transaction(kafka: TestKafka) -> None:
    topic = f"following-{uuid.uuid4().hex[:8]}"
    provision_topics(kafka.admin, [TopicSpec(topic, 3, 1, {})])
    await write_in_transactions(kafka, topic, [b"a", b"b"])
    seen: list[bytes] = []
    ready = asyncio.Event()
    task = asyncio.create_task(follow(kafka.admin, [topic], lambda record: seen.append(record.value), ready,
                                      client_id="following-test"))
    try:
        await asyncio.wait_for(ready.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sorted(seen) == [b"a", b"b"]
