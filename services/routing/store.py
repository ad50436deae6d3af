"""The youths' full routing states on `routing.state.v1`, as routing reads them back one at a time.

Memory holds no referral beyond the records in hand: the index (index.py) keeps the offset of each youth's latest
record, and a decline, a new referral of a known youth, or a provider stop reads that one record back (assign, seek,
getone, `read_committed`; compaction never moves a record it keeps, and it keeps the latest per key).

A state just written has no known offset until its transaction commits and the record is read back: it stays in
memory from `write` until `follow` sees it on the topic (normally milliseconds after the commit), then only its
offset is kept. Byte equality tells the record written from an older one of the same youth. If the runtime told
the offsets of what it produced, `follow` would not be needed.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.routing import YouthRouting
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import Outbound, outbound
from services.infra.logging import get_logger

READ_TIMEOUT_S = 30.0


class StateMismatch(RuntimeError):
    """The record at a youth's remembered offset is not the youth's: a bug, never a passing failure."""


@dataclass(frozen=True)
class Written:
    value: bytes | None
    state: YouthRouting | None


class StateStore:
    def __init__(self, kafka: KafkaConnection, located: Callable[[int, str, int], None]) -> None:
        self.kafka = kafka
        self.located = located
        """Called with (partition, pseudonym, offset) once a written state is read back."""
        self.pending: dict[int, dict[str, Written]] = {}
        """Per partition: the states written in its open transaction."""
        self.unread: dict[int, dict[str, Written]] = {}
        """Per partition: committed states whose offset `follow` has not seen yet."""
        self.position: dict[int, int] = {}
        """Per owned partition: where `follow` goes on reading."""
        self._reader: AIOKafkaConsumer | None = None
        self._reading = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.log = get_logger(service="routing")

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self.follow(), name="routing-state-follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await _close(self._reader)

    def loaded(self, partition: int, next_offset: int) -> None:
        self.pending.pop(partition, None)
        self.unread.pop(partition, None)
        self.position[partition] = next_offset

    def unloaded(self, partition: int) -> None:
        for held in (self.pending, self.unread, self.position):
            held.pop(partition, None)

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, partition: int, pseudonym: str, state: YouthRouting | None) -> Outbound:
        """The youth's state record (None: a tombstone) for the partition's open transaction."""
        record = outbound(topics.ROUTING_STATE, state if state is not None else b"", pseudonym,
                          schema=YouthRouting.SCHEMA, partition=partition)
        value = record.value if state is not None else None
        self.pending.setdefault(partition, {})[pseudonym] = Written(value, state)
        return record if state is not None else Outbound(record.topic, record.key, None, record.headers, partition)

    def committed(self, partition: int) -> None:
        if written := self.pending.pop(partition, None):
            self.unread.setdefault(partition, {}).update(written)
            self._wake.set()

    def aborted(self, partition: int) -> None:
        self.pending.pop(partition, None)

    # -- reading ---------------------------------------------------------------------------------------
    def held(self, partition: int, pseudonym: str) -> Written | None:
        """The youth's state written but not read back yet, if any (the open transaction's first)."""
        return self.pending.get(partition, {}).get(pseudonym) or self.unread.get(partition, {}).get(pseudonym)

    async def read(self, partition: int, pseudonym: str, offset: int) -> YouthRouting:
        """The youth's record at `offset`; a broker away raises a transient error (the runtime retries)."""
        async with self._reading:
            if self._reader is None:
                self._reader = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                                isolation_level="read_committed", client_id="verwijshub-routing-state")
                await self._reader.start()
            tp = TopicPartition(topics.ROUTING_STATE, partition)
            self._reader.assign([tp])
            self._reader.seek(tp, offset)
            record = await asyncio.wait_for(self._reader.getone(tp), READ_TIMEOUT_S)
            while record.offset < offset:  # fetched before the seek
                record = await asyncio.wait_for(self._reader.getone(tp), READ_TIMEOUT_S)
        if record.offset != offset or record.key != pseudonym.encode() or not record.value:
            raise StateMismatch(f"no state of the youth at {topics.ROUTING_STATE}/{partition}/{offset}")
        return YouthRouting.model_validate_json(record.value)

    async def follow(self) -> None:
        """Read back what was committed, to learn each written state's offset and forget the state itself."""
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    if consumer is None:
                        consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                                    isolation_level="read_committed",
                                                    client_id="verwijshub-routing-state-follow")
                        await consumer.start()
                    while wanted := {n for n, written in self.unread.items() if written and n in self.position}:
                        tps = {TopicPartition(topics.ROUTING_STATE, n) for n in wanted}
                        if consumer.assignment() != tps:
                            consumer.assign(list(tps))
                        for tp in tps:
                            consumer.seek(tp, self.position[tp.partition])
                        batches = await consumer.getmany(*tps, timeout_ms=200)
                        for tp, records in batches.items():
                            self._read_back(tp.partition, records)
                except Exception as exc:  # keep following: until then the states stay in memory
                    self.log.error("routing state read-back failed, retrying", error_type=type(exc).__name__)
                    await _close(consumer)
                    consumer = None
                    await asyncio.sleep(1.0)
                    self._wake.set()
        finally:
            await _close(consumer)

    def _read_back(self, partition: int, records: list) -> None:
        unread, start = self.unread.get(partition), self.position.get(partition)
        if unread is None or start is None:
            return  # no longer owned
        for record in records:
            if record.offset < start or record.key is None:
                continue
            pseudonym = record.key.decode()
            self.position[partition] = record.offset + 1
            if pseudonym in self.pending.get(partition, {}):
                continue  # a newer state is on its way
            written = unread.get(pseudonym)
            if written is None or written.value == (record.value or None):
                unread.pop(pseudonym, None)
                if record.value:
                    self.located(partition, pseudonym, record.offset)


async def _close(consumer: AIOKafkaConsumer | None) -> None:
    if consumer is not None:
        with contextlib.suppress(Exception):
            await consumer.stop()
