"""The one processing runtime of intake, routing and notifier: consume, call the core, publish, commit: at once.

A service plugs in a `Processor` (its pure core behind `handle` and `tick`). The runtime reads its input topics
in one consumer group and, for each batch of a partition, publishes the records the core returns and commits the
input offsets in ONE Kafka transaction, so a record's effects and its consumption happen together or not at all
(pyeventsourcing's process applications record outputs and position atomically in the same way).

Fencing: aiokafka 0.14 sends TxnOffsetCommit v0, which carries no group generation (KIP-447), so the broker
cannot tell a zombie that lost its partitions from their owner by the offset commit. Instead each partition
number has its own transactional id (`verwijshub-<service>-<N>`, the pre-KIP-447 pattern of Kafka Streams):
the instance that is assigned N starts that producer, whose InitProducerId bumps the epoch, aborts the zombie's
open transaction and fences its later ones, and only then reads the partition's state. Every input topic of a
service has the same number of partitions and the same key, and the range assignor gives one instance partition
N of every input, so one id covers all of N.

Pipelining: one loop fetches; each owned partition number has a worker that turns what was fetched for it into
one transaction at a time (everything that queued up meanwhile, up to `batch_max` records), so a partition's
transaction never waits for another's and a busy partition batches more. A partition's inputs pause while its
queue is long. A batch fetched before its inputs were last sought (a recovery, a repositioning) is stale and
dropped; one dropped for any other reason sends its inputs back to the committed offsets, so no record is
committed after one that was skipped.

Failures: a transient one (broker away, timeout) aborts the transaction; the partition's state is reloaded, the
consumer goes back to the committed offsets, and the batch is retried with backoff while `/readyz` says not
ready. Nothing is committed that was not processed. Any other exception from the core is a poison record: the
batch is aborted and retried at once with that record dead-lettered instead (its raw bytes, why, and whence). So is
a record whose output is larger than its topic takes (`OUTPUT_TOO_LARGE`): found before it is sent, or named by the
broker's refusal; a refusal is a property of the record, not a passing failure, and retried it would stop its
partition for ever.
"""

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.producer import sender as aiokafka_sender
from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode, ReferralError
from services.infra import principals
from services.infra.connection import KafkaConnection
from services.infra.consuming import DEAD_LETTER, dead_letter_record, handling
from services.infra.contract import Output, declare
from services.infra.kafka import (
    OUTBOUND_RECORD_BYTES,
    Outbound,
    group_id,
    make_broker,
    max_message_bytes,
    read_records,
    record_bytes,
    request_bytes,
)
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.starting import waiting_for

TRANSIENT = (KafkaError, OSError, asyncio.TimeoutError, ConnectionError)
"""Failures that pass: the broker away, a leader moving, a timeout. Retried, never committed."""
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
"""A broker's (or aiokafka's own) refusal of a record or batch larger than the topic or request takes: KafkaErrors,
but they never pass (error codes 10 MESSAGE_TOO_LARGE and 18 RECORD_LIST_TOO_LARGE)."""
OUTPUT_TOO_LARGE = [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message=(
    "What the hub would write for this record is larger than its topic takes."))]
HUB_FAILED = [ReferralError(code=ErrorCode.UNPARSEABLE, location="", message="The hub could not process this record.")]
QUEUE_MAX_FACTOR = 4
"""A partition's inputs pause once this many batches' worth of records wait for its worker."""
BACKOFF_S = (0.2, 10.0)
"""The first and the longest wait before a failed batch is tried again (doubling, with jitter)."""
RETRY_BACKOFF_MS = 5
"""A transactional producer's wait before it retries a request (aiokafka's default 100 ms). The common retry is a
transaction's first AddPartitionsToTxn answered CONCURRENT_TRANSACTIONS while the broker still writes the
previous transaction's markers (KAFKA-5477), which takes a few milliseconds here; aiokafka waits a fixed 20 ms
for it (`BACKOFF_OVERRIDE`, set to this too below). Measured on this machine, back-to-back transactions of one
record: 29 ms each at the defaults, 11 ms at 5 ms (brokers with KIP-890, and clients speaking it, avoid the
retry altogether; aiokafka 0.14 does not)."""
TRANSACTION_TIMEOUT_S = 60.0
"""How long one batch's transaction may take before it is given up as transient."""

aiokafka_sender.BACKOFF_OVERRIDE = RETRY_BACKOFF_MS / 1000  # a module constant: no setting for it


Delivery = tuple[Outbound, asyncio.Future]
"""A record sent in a transaction and its delivery (RecordMetadata, with the offset, once it is written)."""


class Poison(Exception):
    """A record that can never be processed; the runtime dead-letters it with `errors` and goes on."""

    def __init__(self, errors: list[ReferralError], channel: str = "", also: list[Outbound] | None = None) -> None:
        super().__init__(errors[0].message if errors else "poison")
        self.errors, self.channel = errors, channel
        self.also = also or []
        """Records written with the dead letter, in its transaction (an alert about the refusal)."""


class Refused(Exception):
    """The batch is to be retried at once without a record the runtime marked (`Owned.poison`): not transient."""


class Processor:
    """A service's core as the runtime drives it. Rules for `handle`: change memory only once nothing can fail any
    more (compute with pure functions, then assign), and hold nothing that `load` does not rebuild."""

    service: ClassVar[str]
    inputs: ClassVar[str]
    """A regex of the input topics: same partition count, same key."""
    state_topic: ClassVar[str | None] = None
    """Compacted and co-partitioned with the inputs: state records go to the partition of their input."""
    writes: ClassVar[tuple[Output, ...]] = ()
    """Every kind of record the service writes (each built by its `Output.record`), besides the runtime's dead
    letters: the AsyncAPI document is generated from these."""

    async def start(self, kafka: KafkaConnection) -> None:
        """Follow side inputs (the registry); before the first partition is assigned."""

    async def stop(self) -> None:
        pass

    async def load(self, partition: int, state: list[ConsumerRecord]) -> None:
        """Partition N is owned now: the records of partition N of `state_topic`, in order."""

    def unload(self, partition: int) -> None:
        """Partition N is no longer owned, or is about to be loaded again after an aborted transaction."""

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        """The transaction of partition N committed: what `handle` kept pending is now true; `produced` are the
        records it published, each with its offset (a state record can be read back by it)."""

    async def handle(self, record: ConsumerRecord) -> list[Outbound]:
        """One input record: the records to publish, in order."""
        raise NotImplementedError

    async def tick(self, partition: int) -> list[Outbound]:
        """What the passing of time makes due in partition N (timers, sweeps)."""
        return []

    def refused(self, record: ConsumerRecord, errors: list[ReferralError]) -> list[Outbound]:
        """The records that tell a record's sender it is refused (its `rejected` status), beside the dead letter the
        runtime writes for a record that failed the hub or gave output too large for its topic. Pure: decode and
        answer, change nothing."""
        return []

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """Declare what the service reads (`document_input`), for AsyncAPI; what it writes is `writes`."""


@dataclass
class Fetched:
    """Records of one partition number as one `getmany` returned them, waiting for its worker."""

    records: list[ConsumerRecord]
    after: dict[TopicPartition, int]
    """Each input's position after these records: past the transaction markers that follow them, when read."""
    generation: int
    seeks: dict[TopicPartition, int]
    """How often each input had been sought when fetched: sought since, the records are stale (the consumer went
    back and fetches them again)."""


@dataclass
class Owned:
    """A partition number this instance owns: its producer, its queue of fetched records and the worker that turns
    them into transactions, and a lock that serialises its batches and ticks."""

    producer: AIOKafkaProducer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: list[Fetched] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None
    failures: int = 0
    input_failed: bool = False
    """A failed transaction carried input: only a committed batch ends the retrying then (a tick committing says
    the broker is back, not that the input goes through)."""
    poison: dict[tuple[str, int], list[ReferralError]] = field(default_factory=dict)
    """(topic, offset) of records whose handling raised a bug or whose output was too large: dead-lettered on every
    retry, with why, until their batch commits."""

    @property
    def queued(self) -> int:
        return sum(len(fetched.records) for fetched in self.queue)


class Runtime:
    """Runs one `Processor`: `start`, then `stop`; `healthy()` for `/readyz`."""

    def __init__(self, processor: Processor, settings: Settings, batch_max: int = 500,
                 kafka: KafkaConnection | None = None) -> None:
        self.processor, self.settings, self.batch_max = processor, settings, batch_max
        self.kafka = kafka or settings.connection(principals.service(processor.service))
        """The service's own principal (another only in the runtime's own tests)."""
        self.group = group_id(processor.service)
        self.owned: dict[int, Owned] = {}
        self.retrying: set[int] = set()
        self.generation = 0
        """Counts rebalances: a batch fetched before one is dropped (the inputs are sought to what is committed)."""
        self.seeks: collections.Counter[TopicPartition] = collections.Counter()
        """How often the runtime sought each input (`Fetched.seeks`)."""
        self.unpositioned: set[TopicPartition] = set()
        """Inputs whose position is not known to be the first record not committed: sought there before any batch of
        them is handled (after an assignment, and after a batch of them was dropped)."""
        self.acquiring = False
        """Partitions are being taken: their inputs are positioned once all of them are."""
        self.positions: dict[TopicPartition, int] = {}
        """The offsets this instance committed for the partitions it still owns: the group's answer may lag
        them for a moment (a committed transaction's offsets become visible with its markers)."""
        self.consumer: AIOKafkaConsumer | None = None
        self.tasks: list[asyncio.Task] = []
        self.log = get_logger(service=processor.service)
        self.joined = asyncio.Event()
        """Set once the group gave this instance its first partitions (none, too, when others own them all)."""

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.processor.start(self.kafka)
        self.consumer = AIOKafkaConsumer(
            **self.kafka.consumer_options(), group_id=self.group, client_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=request_bytes(self.settings),
            fetch_max_wait_ms=self.settings.fetch_wait_ms,
            metadata_max_age_ms=30_000)  # a recipient's new feedback topic is followed within half a minute
        await waiting_for(f"{self.group}: the broker to answer", self.consumer.start())
        self.consumer.subscribe(pattern=f"^(?:{self.processor.inputs})$", listener=_Listener(self))
        self.tasks = [asyncio.create_task(self.consume(), name=f"{self.group}-consume"),
                      asyncio.create_task(self.tick_periodically(), name=f"{self.group}-tick")]
        # started means working: the group joined and the partitions taken (producers fenced, state read)
        await waiting_for(f"{self.group}: the group joined and its partitions taken", self.joined.wait())

    async def stop(self) -> None:
        """Stop fetching and working at once: a transaction in hand is aborted (its records are processed again
        by the partition's next owner)."""
        workers = [owned.worker for owned in self.owned.values() if owned.worker is not None]
        for task in [*self.tasks, *workers]:
            task.cancel()
        for task in [*self.tasks, *workers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.consumer.stop(), 10)
        for number in list(self.owned):
            await self.release(number)
        await self.processor.stop()

    def specification(self) -> KafkaBroker:
        """A FastStream broker that only declares what the processor reads and writes: FastStream generates the
        AsyncAPI document from it (schemas/generate.py); it never connects."""
        broker = make_broker(self.settings, self.processor.service)
        self.processor.document(broker)
        declare(broker, self.processor.service, (*self.processor.writes, DEAD_LETTER))
        return broker

    def healthy(self) -> bool:
        """Ready unless a partition waits to retry after a transient failure."""
        return self.consumer is not None and not self.retrying

    # -- ownership -----------------------------------------------------------------------------------------
    async def acquire(self, number: int) -> None:
        """Own partition number N: its producer first (fencing a zombie owner), then its state."""
        producer = await self.fresh_producer(number)
        try:
            await self.load(number)
        except BaseException:
            await _close(producer)
            raise
        owned = self.owned[number] = Owned(producer)
        owned.worker = asyncio.create_task(self.work(number, owned), name=f"{self.group}-{number}")

    async def fresh_producer(self, number: int) -> AIOKafkaProducer:
        """Partition N's transactional producer, started: its InitProducerId fences every earlier producer of N and
        aborts what that one left open (the empty transaction waits for it)."""
        producer = AIOKafkaProducer(
            **self.kafka.client_options(), client_id=f"{self.group}-{number}", acks="all", enable_idempotence=True,
            transactional_id=f"{self.group}-{number}", transaction_timeout_ms=int(TRANSACTION_TIMEOUT_S * 1000),
            max_request_size=request_bytes(self.settings), max_batch_size=OUTBOUND_RECORD_BYTES, linger_ms=2,
            retry_backoff_ms=RETRY_BACKOFF_MS)
        await producer.start()
        try:
            await asyncio.wait_for(producer.begin_transaction(), TRANSACTION_TIMEOUT_S)
            await producer.abort_transaction()
        except BaseException:
            await _close(producer)
            raise
        return producer

    async def load(self, number: int) -> None:
        topic = self.processor.state_topic
        state = await read_partition(self.kafka, topic, number) if topic else []
        await self.processor.load(number, state)

    async def release(self, number: int) -> None:
        owned = self.owned.pop(number, None)
        if owned is None:
            return
        async with owned.lock:  # after the batch in hand
            if owned.worker is not None:
                owned.worker.cancel()
            self.forget_positions(number)
            self.processor.unload(number)
            self.retrying.discard(number)
            await _close(owned.producer)

    async def revoked(self) -> None:
        """A rebalance begins: no new batch starts, and the one in hand is committed (or aborted) before this
        instance rejoins, so the partitions' next owners read every offset it committed."""
        self.generation += 1
        for owned in list(self.owned.values()):
            async with owned.lock:
                pass

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Own the assigned partition numbers (releasing the others); the consume loop then starts every input
        from its committed offset, read only now that the fencing is done, whatever aiokafka kept from before."""
        numbers = {tp.partition for tp in partitions}
        self.unpositioned, self.acquiring = set(partitions), True  # no batch of them before they are positioned
        try:
            for number in set(self.owned) - numbers:
                await self.release(number)
            await asyncio.gather(*(self.acquire_until_done(number) for number in numbers - set(self.owned)))
        finally:
            self.acquiring = False
        self.log.info("partitions owned", partitions=sorted(self.owned))
        self.joined.set()

    async def acquire_until_done(self, number: int) -> None:
        while True:
            try:
                return await self.acquire(number)
            except TRANSIENT as exc:
                self.log.warning("partition not taken yet: retrying", partition=number, error_type=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def position(self) -> None:
        """Seek the inputs not positioned (newly assigned, or a batch of them dropped) to their committed offsets
        (outside the rebalance callback, where aiokafka cannot fetch them). They count as unpositioned until the
        seek is done, so no batch of them is handled meanwhile; what was fetched of them before is stale after."""
        assert self.consumer is not None
        sought = set(self.unpositioned)
        beginnings = await self.seek_committed(sought & self.consumer.assignment())
        self.unpositioned -= sought
        await self.commit_beginnings(beginnings)

    async def seek_committed(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Go back to the first record not committed: what the group says, or what this instance committed itself
        when that is further (a partition it kept), or the beginning when nothing was ever committed (returned)."""
        assert self.consumer is not None
        committed = await self.committed_offsets()
        for tp, offset in self.positions.items():
            committed[tp] = max(committed.get(tp, 0), offset)
        fresh = [tp for tp in partitions if tp not in committed]
        beginnings = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in partitions:
            self.consumer.seek(tp, committed[tp] if tp in committed else beginnings[tp])
            self.seeks[tp] += 1
        return beginnings

    async def commit_beginnings(self, beginnings: dict[TopicPartition, int]) -> None:
        """Commit where inputs never committed begin, so that their lag shows from the start (a group's lag is
        counted over its committed offsets: a service stopped before its first record there would show none)."""
        for number in {tp.partition for tp in beginnings}:
            owned = self.owned.get(number)
            if owned is None:
                continue
            offsets = {tp: offset for tp, offset in beginnings.items() if tp.partition == number}

            async def body(producer: AIOKafkaProducer, offsets=offsets) -> list[Delivery]:
                await producer.send_offsets_to_transaction(offsets, self.group)
                return []

            async with owned.lock:
                if self.owned.get(number) is owned and await self.transaction(number, owned, body):
                    self.positions.update(offsets)

    async def committed_offsets(self) -> dict[TopicPartition, int]:
        """The group's committed offsets, in one request (the consumer's `committed` asks one partition at a time)."""
        admin = AIOKafkaAdminClient(**self.kafka.client_options(), client_id=self.group)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    # -- the loop --------------------------------------------------------------------------------------------
    async def consume(self) -> None:
        while True:
            try:
                await self.consume_batches()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. a fetch failing while the broker is away: the positions stand
                self.log.error("consuming failed: resumed", error_type=type(exc).__name__, error=str(exc)[:200])
                await asyncio.sleep(1.0)

    async def consume_batches(self) -> None:
        """Fetch, and queue what came for each partition number to its worker: a partition's transaction does not
        wait for another's, and the next fetch does not wait for either."""
        assert self.consumer is not None
        while True:
            if self.unpositioned and not self.acquiring:
                await self.position()
            generation = self.generation
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.batch_max)
            for tp, records in batches.items():
                # known after getmany, so this await does not suspend: no seek comes between
                fetched = Fetched(records, {tp: await self.consumer.position(tp)}, generation, {tp: self.seeks[tp]})
                owned = self.owned.get(tp.partition)
                if self.dropped(fetched, owned=owned is not None):
                    continue
                assert owned is not None
                owned.queue.append(fetched)
                owned.arrived.set()
                if owned.queued >= QUEUE_MAX_FACTOR * self.batch_max:
                    self.consumer.pause(tp)  # resumed by the worker once its queue is taken

    async def work(self, number: int, owned: Owned) -> None:
        """Partition N's worker: one transaction at a time, of everything queued meanwhile (up to `batch_max`)."""
        while True:
            await owned.arrived.wait()
            owned.arrived.clear()
            while owned.queue:
                try:
                    batch = self.take(number, owned)
                    if batch is not None:
                        await self.process(number, owned, batch)
                except Exception as exc:  # a bug of the runtime: the partition must not stop, nor skip records
                    self.log.error("partition worker failed: resumed from the committed offsets", partition=number,
                                   error_type=type(exc).__name__, error=str(exc)[:200])
                    assert self.consumer is not None
                    self.unpositioned |= {tp for tp in self.consumer.assignment() if tp.partition == number}
                    await asyncio.sleep(1.0)

    def take(self, number: int, owned: Owned) -> Fetched | None:
        """The records next in line, of one generation, up to `batch_max` as one batch (stale ones left out); None
        when all were stale."""
        batch: Fetched | None = None
        while owned.queue and (batch is None or (
                len(batch.records) < self.batch_max and owned.queue[0].generation == batch.generation)):
            fetched = owned.queue.pop(0)
            if self.stale(fetched):
                continue
            if batch is None:
                batch = fetched
            else:
                batch.records.extend(fetched.records)
                batch.after.update(fetched.after)
                batch.seeks.update(fetched.seeks)
        self.resume(number, owned)
        return batch

    def stale(self, fetched: Fetched) -> bool:
        return any(self.seeks[tp] != seeks for tp, seeks in fetched.seeks.items())

    def resume(self, number: int, owned: Owned) -> None:
        """Fetch partition N's inputs again once its queue is short."""
        assert self.consumer is not None
        if owned.queued < QUEUE_MAX_FACTOR * self.batch_max:
            paused = self.consumer.paused() & self.consumer.assignment()
            self.consumer.resume(*(tp for tp in paused if tp.partition == number))

    async def process(self, number: int, owned: Owned, batch: Fetched) -> None:
        """One partition's batch in one transaction; on failure back to the committed offsets, retried later."""
        async with owned.lock:
            if self.dropped(batch, owned=self.owned.get(number) is owned):
                return
            offsets: dict[TopicPartition, int] = {}
            for record in batch.records:
                offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            for tp, after in batch.after.items():
                offsets[tp] = max(offsets.get(tp, 0), after)

            given: list[tuple[ConsumerRecord, Outbound]] = []  # each output with its input, in the order sent
            sent: list[Delivery] = []

            async def body(producer: AIOKafkaProducer) -> list[Delivery]:
                for record in batch.records:
                    outputs = await self.handle(owned, record)
                    given.extend((record, output) for output in outputs)
                    sent.extend(await send(producer, outputs))
                await producer.send_offsets_to_transaction(offsets, self.group)
                return sent

            def refused(exc: Exception) -> bool:
                return isinstance(exc, TOO_LARGE) and self.too_large(owned, given, sent)

            if await self.transaction(number, owned, body, refused, batch=True):
                self.positions.update(offsets)
                for record in batch.records:  # kept through aborts: each retry leaves all of them out
                    owned.poison.pop((record.topic, record.offset), None)

    def dropped(self, batch: Fetched, owned: bool) -> bool:
        """Whether a batch is to be dropped: of a partition not owned, fetched before a rebalance or before one of
        its inputs was sought, or of inputs not positioned yet. The consumer moved past it all the same, so its
        inputs not sought since (those still assigned) are sought back to what is committed before their next
        batch is handled: no record after a dropped one is committed before it."""
        assert self.consumer is not None
        unsought = {tp for tp, seeks in batch.seeks.items() if self.seeks[tp] == seeks}
        if owned and batch.generation == self.generation and unsought == batch.seeks.keys() \
                and not unsought & self.unpositioned:
            return False
        self.unpositioned |= unsought & self.consumer.assignment()
        return True

    async def handle(self, owned: Owned, record: ConsumerRecord) -> list[Outbound]:
        with handling(self.processor.service, record) as log:
            if (errors := owned.poison.get((record.topic, record.offset))) is not None:
                log.error("record put aside: dead-lettered", codes=[e.code.value for e in errors])
                return [self.fitting(dead_letter_record(record, errors)), *self.tell_refused(record, errors)]
            try:
                outputs = await self.processor.handle(record)
            except Poison as poison:
                log.warning("record refused: dead-lettered", codes=[e.code.value for e in poison.errors])
                return [dead_letter_record(record, poison.errors, poison.channel), *poison.also]
            except TRANSIENT:
                raise
            except Exception as exc:
                log.error("record failed the hub: retried without it", error_type=type(exc).__name__)
                owned.poison[(record.topic, record.offset)] = HUB_FAILED
                raise Refused from exc
            for output in outputs:
                size, limit = record_bytes(output.key, output.value, output.headers), \
                    max_message_bytes(output.topic, self.settings)
                if size > limit:  # the broker would refuse it: the record is poison, and its state may be half kept
                    log.error("record's output too large for its topic: retried without it", output_topic=output.topic,
                              size=size, limit=limit)
                    owned.poison[(record.topic, record.offset)] = OUTPUT_TOO_LARGE
                    raise Refused
            return outputs

    def too_large(self, owned: Owned, given: list[tuple[ConsumerRecord, Outbound]], sent: list[Delivery]) -> bool:
        """The broker (or aiokafka) refused a record or batch as too large (a topic set lower than the hub thinks,
        by hand): the input whose output it was (of those refused, the largest; of all, when none says) is
        dead-lettered on the retry; True when one is. `sent` are the deliveries of `given`, in order, maybe fewer."""
        refused = [pair for pair, (_, delivery) in zip(given, sent, strict=False)
                   if delivery.done() and not delivery.cancelled() and isinstance(delivery.exception(), TOO_LARGE)]
        if not (refused := refused or given):
            return False
        record, output = max(refused, key=lambda pair: record_bytes(pair[1].key, pair[1].value, pair[1].headers))
        if (record.topic, record.offset) in owned.poison:
            return False  # even its dead letter was refused: retried with backoff, not in a loop without one
        self.log.error("record's output refused as too large: retried without it", topic=record.topic,
                       partition=record.partition, offset=record.offset, output_topic=output.topic)
        owned.poison[(record.topic, record.offset)] = OUTPUT_TOO_LARGE
        return True

    def fitting(self, letter: Outbound) -> Outbound:
        """A dead letter as it fits its topic: without the raw value when even that is too large (an input topic
        set larger by hand than the dead letters take), so that the partition still moves on."""
        if record_bytes(letter.key, letter.value, letter.headers) <= max_message_bytes(letter.topic, self.settings):
            return letter
        self.log.error("dead letter too large: written without its value", size=len(letter.value))
        return dataclasses.replace(letter, value=b"", headers={**letter.headers, "value-dropped": "too large"})

    def tell_refused(self, record: ConsumerRecord, errors: list[ReferralError]) -> list[Outbound]:
        """The processor's answer to the sender of a record the runtime refused; none if even that fails."""
        try:
            return self.processor.refused(record, errors)
        except Exception as exc:
            self.log.warning("refusal not told", topic=record.topic, offset=record.offset,
                             error_type=type(exc).__name__)
            return []

    async def tick_periodically(self) -> None:
        """Tick every owned partition, also for a processor that has no timers: a tick is how a partition that
        failed a transaction and has no input coming is tried again (after the failure's backoff)."""
        while True:
            await asyncio.sleep(self.settings.notifier_tick_seconds)
            await asyncio.gather(*(self.tick(number, owned) for number, owned in list(self.owned.items())))

    async def tick_now(self, number: int) -> None:
        """Partition N's tick at once, if this instance owns N: for work that waits on it (the recipient API's Task
        updates, decided in their partition's tick so that they commit with their state)."""
        owned = self.owned.get(number)
        if owned is not None:
            await self.tick(number, owned)

    async def tick(self, number: int, owned: Owned) -> None:
        """What came due in partition N, in a transaction of its own when there is anything (most ticks have
        nothing: no transaction then), or when the partition is retrying after a failed tick: a committed tick ends
        that retrying, so a quiet partition recovers (and `/readyz` with it) without new input. After a failed
        batch only a committed batch does: its input, sought again, is what has to go through."""
        async with owned.lock:
            if self.owned.get(number) is not owned:
                return
            try:
                records = await self.processor.tick(number)
            except Exception as exc:  # memory may be half changed: recovered as after a failed transaction
                self.log.warning("tick failed", partition=number, error_type=type(exc).__name__)
                records = None
            if records == [] and (number not in self.retrying or owned.input_failed):
                return  # nothing due; a failed batch is retried by its input, fetched again

            async def body(producer: AIOKafkaProducer) -> list[Delivery]:
                if records is None:
                    raise KafkaError("the tick failed")  # to recover as any failed transaction does
                return await send(producer, records)

            await self.transaction(number, owned, body)

    async def transaction(self, number: int, owned: Owned, body, refused=None, batch: bool = False) -> bool:
        """Run `body(producer)` in one transaction of partition N (its lock held); True when it committed. Failed:
        the state reloaded, the inputs back at the committed offsets, a retry after backoff (nothing of it is
        visible to read_committed); at once when a record is to be left out (`Refused`, or `refused(exc)` says
        it marked one). `batch`: it carries input, which only a committed batch then shows to go through; any
        other (a tick, the first commit of where inputs begin) ends a retrying no batch caused."""
        producer = owned.producer
        try:
            deliveries = await asyncio.wait_for(self._commit(producer, body), TRANSACTION_TIMEOUT_S)
        except Exception as exc:
            if isinstance(exc, Refused) or (refused is not None and refused(exc)):
                self.log.warning("transaction aborted: retried without a record", partition=number,
                                 error_type=type(exc.__cause__ or exc).__name__)
                await self.recover(number, owned)
                return False
            owned.failures += 1
            owned.input_failed = owned.input_failed or batch
            self.retrying.add(number)
            wait = min(BACKOFF_S[0] * 2 ** (owned.failures - 1), BACKOFF_S[1]) * random.uniform(0.8, 1.2)
            # ProducerFenced too: another instance took the partition's id (one that lost the partition in a
            # rebalance it has not noticed, or its new owner); taking it back is safe, as every taking waits for
            # the other's transaction, reloads the state and resumes at the committed offsets.
            self.log.warning("transaction aborted: retried", partition=number, error_type=type(exc).__name__,
                             attempt=owned.failures, retry_in_s=round(wait, 2))
            await self.recover(number, owned)
            await asyncio.sleep(wait)
            return False
        if batch or not owned.input_failed:
            owned.failures, owned.input_failed = 0, False
            self.retrying.discard(number)
        self.processor.committed(number, [(record, delivery.result().offset) for record, delivery in deliveries])
        return True

    async def _commit(self, producer: AIOKafkaProducer, body) -> list[Delivery]:
        await producer.begin_transaction()
        try:
            deliveries = await body(producer)
            await producer.flush()  # aiokafka commits a transaction whose record the broker refused: not this one
            if failed := next((d.exception() for _, d in deliveries if d.done() and not d.cancelled()
                               and d.exception()), None):
                raise failed
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.abort_transaction(), 10)
            raise
        await producer.commit_transaction()  # every delivery is done once it returns
        return deliveries

    async def recover(self, number: int, owned: Owned) -> None:
        """After a failed transaction: a fresh producer (its InitProducerId completes or aborts whatever the old
        one left, so the group's offsets are settled), the state as committed, and the inputs from the first
        record not committed (a commit whose answer was lost counts as committed)."""
        self.processor.unload(number)
        self.forget_positions(number)
        await _close(owned.producer)
        started = time.monotonic()
        while self.owned.get(number) is owned:
            try:
                producer = await self.fresh_producer(number)
                try:
                    await self.load(number)
                    assert self.consumer is not None
                    await self.seek_committed({tp for tp in self.consumer.assignment() if tp.partition == number})
                except BaseException:
                    await _close(producer)
                    raise
                if self.owned.get(number) is not owned:  # released meanwhile
                    await _close(producer)
                    return
                owned.producer = producer
                return
            except TRANSIENT as exc:
                self.log.warning("partition not recovered yet", partition=number, error_type=type(exc).__name__,
                                 waited_s=round(time.monotonic() - started))
                await asyncio.sleep(min(BACKOFF_S[1], 1.0 + time.monotonic() - started))

    def forget_positions(self, number: int) -> None:
        for tp in [tp for tp in self.positions if tp.partition == number]:
            del self.positions[tp]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.runtime.revoked()  # which numbers stay is known on assignment; the others are released there

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.runtime.assigned(assigned)


async def send(producer: AIOKafkaProducer, records: Iterable[Outbound]) -> list[Delivery]:
    """Send records in order inside the open transaction; `commit_transaction` waits for their delivery."""
    return [(record, await producer.send(record.topic, record.value, key=record.key, partition=record.partition,
                                         headers=[(name, value.encode()) for name, value in record.headers.items()]))
            for record in records]


async def read_partition(kafka: KafkaConnection, topic: str, number: int) -> list[ConsumerRecord]:
    """Every committed record of one partition, from its beginning to its last stable offset."""
    return await read_records(kafka, [topic], only={number})


async def _close(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 10)


def document_input(broker: KafkaBroker, title: str, description: str, *, topic: str | None = None,
                   pattern: str | None = None, schema: type = bytes) -> None:
    """Declare an input on a documentation-only broker (`Runtime.specification`)."""
    async def handler(body) -> None:  # never called: the runtime consumes
        pass

    handler.__annotations__["body"] = schema
    broker.subscriber(*([topic] if topic else []), pattern=pattern, title=title, description=description)(handler)
