"""The youths' full routing states on `routing.state.v1`, as routing reads them back one at a time.

Memory holds no referral beyond the records in hand: the index (index.py) keeps the offset of each youth's latest
record, and a decline, a new referral of a known youth, or a provider stop reads that one record back (assign, seek,
getone, `read_committed`; compaction never moves a record it keeps, and it keeps the latest per key).

A state just written has no known offset until its transaction commits: it stays in memory from `write` until the
runtime reports the commit with the offsets of what it produced (`committed`); then only its offset is kept.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.routing import YouthRouting
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.contract import Output
from services.infra.kafka import Outbound

READ_TIMEOUT_S = 30.0
STATE = Output("state", topics.ROUTING_STATE, YouthRouting,
               "Internal, compacted: one youth's open work, in its referrals' partition; a tombstone once empty.")


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
        """Called with (partition, pseudonym, offset) once a written state is committed."""
        self.pending: dict[int, dict[str, Written]] = {}
        """Per partition: the states written in its open transaction."""
        self._reader: AIOKafkaConsumer | None = None
        self._reading = asyncio.Lock()

    async def stop(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.stop()

    def unloaded(self, partition: int) -> None:
        self.pending.pop(partition, None)

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, partition: int, pseudonym: str, state: YouthRouting | None) -> Outbound:
        """The youth's state record (None: a tombstone) for the partition's open transaction."""
        record = STATE.record(state if state is not None else b"", pseudonym, partition=partition)
        value = record.value if state is not None else None
        self.pending.setdefault(partition, {})[pseudonym] = Written(value, state)
        return record if state is not None else Outbound(record.topic, record.key, None, record.headers, partition)

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        """The partition's transaction committed: each state written is now known by its offset alone."""
        written = self.pending.pop(partition, {})
        for record, offset in produced:
            if record.topic == topics.ROUTING_STATE and record.key is not None and record.value:
                pseudonym = record.key.decode()
                if written.get(pseudonym) is not None and written[pseudonym].value == record.value:
                    self.located(partition, pseudonym, offset)

    # -- reading ---------------------------------------------------------------------------------------
    def held(self, partition: int, pseudonym: str) -> Written | None:
        """The youth's state written in the partition's open transaction, if any."""
        return self.pending.get(partition, {}).get(pseudonym)

    async def read(self, partition: int, pseudonym: str, offset: int) -> YouthRouting:
        """The youth's record at `offset`; a broker away raises a transient error (the runtime retries)."""
        async with self._reading:
            if self._reader is None:
                self._reader = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False,
                                                client_id="verwijshub-routing-state")
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
