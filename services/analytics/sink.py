"""The analytics sink (`verwijshub run analytics`, and part of `up`): decisions, statuses, feedback and alerts into
the DuckDB store as pseudonymised facts.

It connects as its own principal (`verwijshub-analytics`), which may read exactly those topics and only describe
the dead-letter topic: dead letters hold raw referrals, so they are counted from offsets, never read. It reads
`read_committed`, in batches; a batch's facts and offsets are written in one transaction before its Kafka
offsets are committed, so a crash between the two only writes the same rows again.
"""

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord

from schemas.registry import Registry
from services.analytics import store
from services.analytics.facts import INPUT_PATTERN, Fact, facts_of, utc
from services.infra import principals, topics
from services.infra.clock import Clock
from services.infra.kafka import group_id, make_broker
from services.infra.logging import get_logger
from services.infra.settings import Settings

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
        await super().start()
        self.observer = asyncio.create_task(observe_dead_letters(self.settings, self.clock))

    async def stop(self, *exc_info) -> None:
        if self.observer:
            self.observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.observer
        await super().stop(*exc_info)


async def dead_letter_offsets(settings: Settings) -> dict[int, tuple[int, int]]:
    """(log start, log end) of each partition of the dead-letter topic: ListOffsets, which needs only Describe."""
    consumer = AIOKafkaConsumer(**settings.connection(PRINCIPAL).client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.DEAD_LETTERS, p)
                      for p in sorted(await consumer.partitions_for_topic(topics.DEAD_LETTERS) or ())]
        begins = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: (begins[tp], ends[tp]) for tp in partitions}
    finally:
        await consumer.stop()


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


def create_analytics(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE, AnalyticsBroker)
    broker.settings, broker.clock = settings, clock
    teams, path = team_map(registry), store_path(settings)

    @broker.subscriber(pattern=INPUT_PATTERN, group_id=group_id(SERVICE), auto_offset_reset="earliest",
                       isolation_level="read_committed", ack_policy=AckPolicy.ACK, batch=True,
                       max_records=BATCH_MAX, title="analytics:facts",
                       description="Decisions, statuses, feedback and alerts, kept as pseudonymised facts in the "
                                   "analytics store (DuckDB) for the monthly report.")
    async def on_records(message: ConsumedRecord) -> None:
        """A batch: its facts and offsets in one transaction; the Kafka offsets are committed after it."""
        facts: list[Fact] = []
        offsets: dict[tuple[str, int], int] = {}
        for record in message.raw_message:
            facts += facts_of(record.topic, record.partition, record.offset, record.key, record.value, teams)
            offsets[(record.topic, record.partition)] = max(offsets.get((record.topic, record.partition), 0),
                                                            record.offset + 1)
        await asyncio.to_thread(_write, path, facts, offsets)
        get_logger().info("facts stored", service=SERVICE, records=len(message.raw_message), facts=len(facts))

    return broker
