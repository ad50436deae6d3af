"""The processing runtime on a real broker, with a toy processor: outputs, state and offsets commit together;
a refused record and a failing one are dead-lettered; a transient failure commits nothing until it passes."""

import asyncio
import json
import uuid

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from schemas.errors import ErrorCode, ReferralError
from services.infra import topics
from services.infra.kafka import Outbound, outbound
from services.infra.processing import Poison, Processor, Runtime
from services.infra.provisioning import TopicSpec, provision_topics
from tests.conftest import TestKafka
from tests.kafka_client import produce, read_topic

pytestmark = pytest.mark.e2e


class Counter(Processor):
    """Counts records per key: each input gives one output with the key's running count, and the count as state."""

    service = "runtime-test"
    state_topic = ""

    def __init__(self, run: str, transient_failures: int = 0) -> None:
        self.run, self.transient_failures = run, transient_failures
        self.counts: dict[int, dict[str, int]] = {}
        self.loads = 0

    async def load(self, partition: int, state: list[ConsumerRecord]) -> None:
        self.loads += 1
        self.counts[partition] = {r.key.decode(): int(r.value) for r in state}

    def unload(self, partition: int) -> None:
        self.counts.pop(partition, None)

    async def handle(self, record: ConsumerRecord) -> list[Outbound]:
        text = record.value.decode()
        if text == "refused":
            raise Poison([ReferralError(code=ErrorCode.SCHEMA_INVALID, location="", message="refused")])
        if text == "bug":
            raise ZeroDivisionError
        if text == "flaky" and self.transient_failures:
            self.transient_failures -= 1
            raise KafkaConnectionError("the broker is away (simulated)")
        key = record.key.decode()
        count = self.counts[record.partition].get(key, 0) + 1
        out = [outbound(f"{self.run}.out", json.dumps({"key": key, "count": count, "value": text}).encode(), key,
                        schema="test/1"),
               outbound(self.state_topic, str(count).encode(), key, schema="test/1", partition=record.partition)]
        self.counts[record.partition][key] = count
        return out


def runtime(kafka: TestKafka, processor: Counter) -> Runtime:
    processor.inputs = rf"{processor.run}\.in"
    processor.state_topic = f"{processor.run}.state"
    return Runtime(processor, kafka.settings(notifier_tick_seconds=0.2), kafka=kafka.admin)


def topics_for(kafka: TestKafka, run: str) -> None:
    provision_topics(kafka.admin, [TopicSpec(f"{run}.in", 3, 1, {}), TopicSpec(f"{run}.out", 3, 1, {}),
                                   TopicSpec(f"{run}.state", 3, 1, {"cleanup.policy": "compact"})])


async def committed(kafka: TestKafka, group: str, run: str) -> dict[TopicPartition, int]:
    """The group's committed offsets on the run's input topic (the group is the same in every test)."""
    admin = AIOKafkaAdminClient(**kafka.admin.client_options())
    await admin.start()
    try:
        return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
                if tp.topic == f"{run}.in"}
    finally:
        await admin.close()


async def test_outputs_state_and_offsets_commit_together_and_refused_or_failing_records_are_dead_lettered(
        kafka: TestKafka) -> None:
    run = f"runtime-{uuid.uuid4().hex[:8]}"
    topics_for(kafka, run)
    for value in ["a1", "refused", "a2", "bug", "a3"]:
        await produce(kafka.admin, f"{run}.in", value.encode(), key=b"youth-a")
    first = runtime(kafka, Counter(run))
    await first.start()
    try:
        outputs = await read_topic(kafka.admin, f"{run}.out", lambda r: True, 3, timeout_s=60)
    finally:
        await first.stop()
    assert [json.loads(r.value)["count"] for r in outputs] == [1, 2, 3]
    letters = await read_topic(kafka.admin, topics.DEAD_LETTERS,
                               lambda r: dict(r.headers).get("origin-topic") == f"{run}.in".encode(), 2, timeout_s=30)
    assert sorted(r.value for r in letters) == [b"bug", b"refused"]
    codes = {r.value: json.loads(dict(r.headers)["errors"])[0]["code"] for r in letters}
    assert codes == {b"refused": "SCHEMA_INVALID", b"bug": "UNPARSEABLE"}

    # Restarted: the state is loaded from the compacted topic, nothing already committed is processed again.
    await produce(kafka.admin, f"{run}.in", b"a4", key=b"youth-a")
    second = runtime(kafka, Counter(run))
    await second.start()
    try:
        outputs = await read_topic(kafka.admin, f"{run}.out", lambda r: True, 4, timeout_s=60, settle_s=2)
    finally:
        await second.stop()
    assert [json.loads(r.value)["count"] for r in outputs] == [1, 2, 3, 4]


async def test_a_transient_failure_commits_nothing_and_the_record_is_processed_once_it_passes(
        kafka: TestKafka) -> None:
    run = f"runtime-{uuid.uuid4().hex[:8]}"
    topics_for(kafka, run)
    await produce(kafka.admin, f"{run}.in", b"before", key=b"youth-b")
    await produce(kafka.admin, f"{run}.in", b"flaky", key=b"youth-b")
    processor = Counter(run, transient_failures=3)
    running = runtime(kafka, processor)
    await running.start()
    try:
        outputs = await read_topic(kafka.admin, f"{run}.out", lambda r: True, 2, timeout_s=60, settle_s=2)
        offsets = await committed(kafka, running.group, run)
    finally:
        await running.stop()
    assert [(json.loads(r.value)["value"], json.loads(r.value)["count"]) for r in outputs] == [("before", 1),
                                                                                            ("flaky", 2)]
    assert processor.transient_failures == 0 and processor.loads >= 3 + 1  # reloaded after each aborted try
    assert sum(offset for offset in offsets.values() if offset > 0) == 2


async def test_not_ready_while_a_transient_failure_lasts(kafka: TestKafka) -> None:
    run = f"runtime-{uuid.uuid4().hex[:8]}"
    topics_for(kafka, run)
    processor = Counter(run, transient_failures=10**6)  # never passes while the test looks
    running = runtime(kafka, processor)
    await running.start()
    try:
        await produce(kafka.admin, f"{run}.in", b"flaky", key=b"youth-c")
        for _ in range(200):
            if not running.healthy():
                break
            await asyncio.sleep(0.1)
        assert not running.healthy()
        assert all(offset <= 0 for offset in (await committed(kafka, running.group, run)).values())
        processor.transient_failures = 0  # the cause is gone
        outputs = await read_topic(kafka.admin, f"{run}.out", lambda r: True, 1, timeout_s=60)
        for _ in range(200):
            if running.healthy():
                break
            await asyncio.sleep(0.1)
        assert running.healthy() and len(outputs) == 1
    finally:
        await running.stop()
