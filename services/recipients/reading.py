"""Records read back by where they lie (topic, partition, offset): a handover and its notices, when a recipient asks.

Memory holds only where each Task's records are (schemas/recipients.py, `RecordRef`), never a handover: one is read
when its recipient asks for it (assign, seek, fetch, `read_committed`), as routing reads a youth's state back
(services/routing/store.py). A record that retention removed is reported as gone (None), never as another.
"""

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.recipients import RecordRef
from services.infra.connection import KafkaConnection

READ_TIMEOUT_S = 10.0
FETCH_WAIT_MS = 20
"""How long the broker may hold a fetch with nothing to return. The consumer fetches ahead of the record it
returned; at the log's end the broker holds that fetch, and the next read (of another partition, from the same
broker) waited for it: with the default 500 ms, every handover page took 0.5 s (bench/recipients.py). Paused after
each read, the reader sends no such fetch while idle; this bounds the one that may be in flight."""


class RecordReader:
    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def read(self, refs: list[RecordRef]) -> list[ConsumerRecord | None]:
        """Each record, in order; None where it is no longer on its topic. A broker away raises (KafkaError,
        TimeoutError): the caller answers 503."""
        async with self._lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False,
                                            auto_offset_reset="earliest", client_id="verwijshub-recipients-reader",
                                            fetch_max_wait_ms=FETCH_WAIT_MS)
                await consumer.start()
                self._consumer = consumer
            try:
                return [await self._one(self._consumer, ref) for ref in refs]
            except BaseException:
                await self.stop()  # started afresh next time, in a known state
                raise

    @staticmethod
    async def _one(consumer: AIOKafkaConsumer, ref: RecordRef) -> ConsumerRecord | None:
        tp = TopicPartition(ref.topic, ref.partition)
        consumer.assign([tp])
        consumer.seek(tp, ref.offset)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                        return record if record.offset == ref.offset else None  # retention took it: a later one
        finally:
            consumer.pause(tp)  # no prefetch behind the record: it would wait at the log's end (FETCH_WAIT_MS)
