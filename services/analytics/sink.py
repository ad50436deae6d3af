"""The analytics sink (`verwijshub run analytics`, and part of `up`): decisions, statuses, feedback and alerts into
the DuckDB store as pseudonymised facts.

It connects as its own principal (`verwijshub-analytics`), which may read exactly those topics and only describe
the dead-letter topic: dead letters hold raw referrals, so they are counted from offsets, never read. It reads
`read_committed`, in batches; a batch's facts and the offsets it read up to are written in one transaction, and
each assigned partition resumes where the store says (`ResumeFromStore`), so the store is never ahead of or
behind its own record of what it read. The group's committed offsets follow, for `verwijshub lag`.
"""

import asyncio
import contextlib
import logging
import re
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord

from schemas.registry import Registry
from services.analytics import store
from services.analytics.facts import INPUT_PATTERN, Fact, facts_of, utc
from services.infra import principals, topics
from services.infra.clock import Clock
from services.infra.kafka import group_id, log_offsets, partition_spans
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.starting import waiting_for

SERVICE = "analytics"
PRINCIPAL = principals.ANALYTICS
BATCH_MAX = 500
DEAD_LETTERS_EVERY_S = 10.0


def store_path(settings: Settings) -> Path:
    return settings.analytics_db or settings.data_dir / "analytics.duckdb"


def team_map(registry: Registry) -> dict[str, str]:
    return {pc4: team for pc4, team in registry.postcodes.items() if team}


class AnalyticsBroker(KafkaBroker):
    """The sink's FastStream broker, which also counts the dead letters from offsets now and then."""

    settings: Settings
    clock: Clock
    observer: asyncio.Task | None = None

    async def start(self) -> None:
        # aiokafka's consumer, subscribed before it starts, returns from start once the group gave it partitions
        await waiting_for(f"{group_id(SERVICE)}: the group joined and partitions assigned", super().start())
        self.observer = asyncio.create_task(observe_dead_letters(self.settings, self.clock))

    async def stop(self, *exc_info) -> None:
        if self.observer:
            self.observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.observer
        await super().stop(*exc_info)


async def dead_letter_offsets(settings: Settings) -> dict[int, tuple[int, int]]:
    """(log start, log end) of each partition of the dead-letter topic: ListOffsets, which needs only Describe."""
    spans = await partition_spans(settings.connection(PRINCIPAL), [topics.DEAD_LETTERS])
    return {tp.partition: (span.begin, span.end) for tp, span in spans.items()}


async def observe_dead_letters(settings: Settings, clock: Clock) -> None:
    path = store_path(settings)
    while True:
        try:
            ends = await dead_letter_offsets(settings)
            await asyncio.to_thread(_observe, path, ends, utc(clock.now()))
        except Exception as exc:  # the broker may be away a while: looked at again later
            get_logger().warning("dead letters not counted", error_type=type(exc).__name__)
        await asyncio.sleep(DEAD_LETTERS_EVERY_S)


def _observe(path: Path, ends: dict[int, tuple[int, int]], at: datetime | None) -> None:
    with store.opened(path) as db:
        store.observe_dead_letters(db, ends, at)


def _write(path: Path, facts: list[Fact], offsets: dict[tuple[str, int], int]) -> None:
    with store.opened(path) as db:
        store.write(db, facts, offsets)


async def store_batch(path: Path, facts: list[Fact], offsets: dict[tuple[str, int], int]) -> None:
    """Write until it is written: a batch is never skipped (its offsets would be committed after the handler);
    a store that stays unwritable holds the sink, which its consumer lag shows. Only the error's type is logged:
    a database message may quote a value."""
    pause = 0.5
    while True:
        try:
            await asyncio.to_thread(_write, path, facts, offsets)
            return
        except Exception as exc:
            get_logger().error("facts not stored yet: retrying", service=SERVICE, error_type=type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


class ResumeFromStore(ConsumerRebalanceListener):
    """The store, not the group's committed offset, says where to go on: each assigned partition resumes at the
    offset the store recorded with its facts, or at its beginning when the store has none (a new or deleted
    store is rebuilt from what the topics still hold)."""

    def __init__(self, path: Path) -> None:
        self.path, self.subscriber = path, None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is None or not assigned:
            return
        read = await asyncio.to_thread(_offsets, self.path) if self.path.exists() else {}
        fresh = [tp for tp in assigned if (tp.topic, tp.partition) not in read]
        for tp in assigned:
            if (tp.topic, tp.partition) in read:
                consumer.seek(tp, read[(tp.topic, tp.partition)])
        if fresh:
            await consumer.seek_to_beginning(*fresh)


def create_analytics(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    connection = settings.connection(PRINCIPAL)
    broker = AnalyticsBroker(  # publishes nothing: a producer without idempotence, which would need a Write right
        connection.servers, security=connection.faststream_security(), allow_auto_create_topics=False,
        client_id=PRINCIPAL, enable_idempotence=False, logger=logging.getLogger(f"verwijshub.{SERVICE}"))
    broker.settings, broker.clock = settings, clock
    teams, path = team_map(registry), store_path(settings)
    resume = ResumeFromStore(path)
    subscriber = broker.subscriber(
        pattern=INPUT_PATTERN, group_id=group_id(SERVICE), auto_offset_reset="earliest",
        isolation_level="read_committed", ack_policy=AckPolicy.ACK, batch=True, max_records=BATCH_MAX,
        listener=resume, title="analytics:facts",
        description="Decisions, statuses, feedback and alerts, kept as pseudonymised facts in the analytics store "
                    "(DuckDB) for the monthly report.")
    resume.subscriber = subscriber

    @subscriber
    async def on_records(message: ConsumedRecord) -> None:
        """A batch: its facts and offsets in one transaction; the Kafka offsets are committed after it."""
        facts: list[Fact] = []
        offsets: dict[tuple[str, int], int] = {}
        for record in message.raw_message:
            facts += facts_of(record.topic, record.partition, record.offset, record.key, record.value, teams)
            offsets[(record.topic, record.partition)] = max(offsets.get((record.topic, record.partition), 0),
                                                            record.offset + 1)
        await store_batch(path, facts, offsets)
        get_logger().info("facts stored", service=SERVICE, records=len(message.raw_message), facts=len(facts))

    return broker


async def behind(settings: Settings) -> int:
    """How many records of the sink's topics the store has not taken in yet (end offsets, as the sink)."""
    consumer = AIOKafkaConsumer(**settings.connection(PRINCIPAL).consumer_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        names = [t for t in await consumer.topics() if re.match(INPUT_PATTERN, t)]
        partitions = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await log_offsets(consumer, partitions)
    finally:
        await consumer.stop()
    path = store_path(settings)
    read = await asyncio.to_thread(_offsets, path) if path.exists() else {}
    return sum(max(end - read.get((tp.topic, tp.partition), 0), 0) for tp, end in ends.items())


def _offsets(path: Path) -> dict[tuple[str, int], int]:
    with store.opened(path, read_only=True) as db:
        return store.offsets_read(db)


async def wait_until_stored(settings: Settings, timeout_s: float = 60.0) -> int:
    """Wait until the store has every record of the sink's topics (or the time is up); returns how many not."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        missing = await behind(settings)
        if not missing or asyncio.get_running_loop().time() > deadline:
            return missing
        await asyncio.sleep(1.0)
