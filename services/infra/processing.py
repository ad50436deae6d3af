"""The one processing runtime of intake, routing, notifier and the recipient API: consume, call the core, publish,
commit: at once.

A service plugs in a `Processor` (its pure core behind `handle` and `tick`). The runtime reads its input topics in
one consumer group and turns what it fetched, of every partition it owns, into ONE Kafka transaction at a time: the
records the core returns, and the input offsets, commit together or not at all (pyeventsourcing's process
applications record outputs and position atomically in the same way).

Clients: librdkafka (services/infra/librdkafka.py), one consumer and one transactional producer per instance. Its
transactional id is the instance's own and stable across restarts (`claim_instance`), so a restart aborts at once
what its predecessor left open; a zombie (an instance frozen while its partitions moved) is fenced by KIP-447: the
offsets of its transaction carry the group's generation, which the broker refuses once the group moved on. A new
owner reads a partition's committed offset stably (it waits for any transaction holding offsets of it to end) and
only then its state.

Batching: a transaction carries what arrives within `commit_interval_ms` of its first record (Kafka Streams'
`commit.interval.ms`), up to `batch_max` records, and the ticks that came due: at a steady rate one transaction
carries many referrals, and its commit markers are shared. Consuming happens only between transactions, so a
rebalance never meets one open (a revocation drops what was fetched and not yet processed; its next owner reads it).

Failures: a transient one (broker away, timeout) aborts the transaction; the state of the partitions it touched is
reloaded, the inputs go back to the committed offsets, and the records are retried with backoff while `/readyz` says
not ready. Nothing is committed that was not processed. Any other exception from the core is a poison record: the
transaction is aborted and retried at once with that record dead-lettered instead (its raw bytes, why, and whence).
So is a record whose output is larger than its topic takes (`OUTPUT_TOO_LARGE`): found before it is sent, or named
by the broker's refusal; a refusal is a property of the record, not a passing failure, and retried it would stop its
partitions for ever. A tick that raises is retried on the next tick, its partition's state reloaded; the other
partitions go on.
"""

import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import os
import random
import socket
import time
from pathlib import Path
from typing import ClassVar

from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode, ReferralError
from services.infra import principals
from services.infra.connection import KafkaConnection
from services.infra.consuming import DEAD_LETTER, dead_letter_record, handling
from services.infra.contract import Output, declare
from services.infra.kafka import Outbound, Record, group_id, make_broker, max_message_bytes, read_records, \
    record_bytes, request_bytes
from services.infra.librdkafka import LIBRDKAFKA_LOG, ConsumerThread, Delivery, Transactions, consumer_config, \
    is_too_large, kafka_error, producer_config, transaction_open
from services.infra.logging import get_logger
from services.infra.offsets import Input, Offsets, Window
from services.infra.settings import Settings
from services.infra.starting import waiting_for

TRANSIENT = (KafkaException, AIOKafkaError, OSError, asyncio.TimeoutError, ConnectionError)
"""Failures that pass: the broker away, a leader moving, a timeout (the processors' own reads are aiokafka's)."""
OUTPUT_TOO_LARGE = [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message=(
    "What the hub would write for this record is larger than its topic takes."))]
HUB_FAILED = [ReferralError(code=ErrorCode.UNPARSEABLE, location="", message="The hub could not process this record.")]
BACKOFF_S = (0.2, 10.0)
"""The first and the longest wait before a failed transaction is tried again (doubling, with jitter)."""
TRANSACTION_TIMEOUT_S = 15.0
"""How long one transaction may take before it is given up as transient; also the broker's `transaction.timeout.ms`,
after which it aborts a transaction its producer left open (a frozen zombie's: its partitions' readers wait that
long at most). Kafka Streams uses 10 s under exactly-once."""
IDLE_WAIT_S = 0.1
"""How long a fetch waits for a first record: how soon a tick asked for (`tick_now`) runs when nothing arrives."""
STABLE_WAIT_S = 5.0
"""One wait for a partition's committed offset to be stable (librdkafka asks again until no transaction holds one)."""


class Poison(Exception):
    """A record that can never be processed; the runtime dead-letters it with `errors` and goes on."""

    def __init__(self, errors: list[ReferralError], channel: str = "", also: list[Outbound] | None = None) -> None:
        super().__init__(errors[0].message if errors else "poison")
        self.errors, self.channel = errors, channel
        self.also = also or []
        """Records written with the dead letter, in its transaction (an alert about the refusal)."""


class Refused(Exception):
    """The transaction is to be retried at once without a record the runtime marked (`Runtime.poison`): not
    transient."""


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

    async def load(self, partition: int, state: list[Record]) -> None:
        """Partition N is owned now: the records of partition N of `state_topic`, in order."""

    def unload(self, partition: int) -> None:
        """Partition N is no longer owned, or is about to be loaded again after an aborted transaction."""

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        """The transaction of partition N committed: what `handle` kept pending is now true; `produced` are the
        records it published, each with its offset (a state record can be read back by it)."""

    async def handle(self, record: Record) -> list[Outbound]:
        """One input record: the records to publish, in order."""
        raise NotImplementedError

    async def tick(self, partition: int) -> list[Outbound]:
        """What the passing of time makes due in partition N (timers, sweeps)."""
        return []

    def refused(self, record: Record, errors: list[ReferralError]) -> list[Outbound]:
        """The records that tell a record's sender it is refused (its `rejected` status), beside the dead letter the
        runtime writes for a record that failed the hub or gave output too large for its topic. Pure: decode and
        answer, change nothing."""
        return []

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """Declare what the service reads (`document_input`), for AsyncAPI; what it writes is `writes`."""



def claim_instance(directory: Path, group: str) -> tuple[str, int]:
    """This instance's transactional id and the lock that holds it: the group's lowest free slot on this host. The
    lock file is held while the instance runs and freed by the OS when its process ends (kill -9 too), so a restart
    takes its predecessor's id, whose InitProducerId aborts what that one left open (an id new at every start would
    leave it to block the partitions' readers until its timeout), and two running instances never share one."""
    directory.mkdir(parents=True, exist_ok=True)
    for slot in itertools.count():
        fd = os.open(directory / f"{group}-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return f"{group}-{socket.gethostname()}-{slot}", fd
    raise AssertionError("unreachable")


@dataclasses.dataclass
class Given:
    """An output of one transaction, with the partition number it belongs to and the input it answers (none for a
    tick's)."""

    number: int
    record: Record | None
    output: Outbound


class Runtime:
    """Runs one `Processor`: `start`, then `stop`; `healthy()` for `/readyz`."""

    def __init__(self, processor: Processor, settings: Settings, batch_max: int = 500,
                 kafka: KafkaConnection | None = None) -> None:
        self.processor, self.settings, self.batch_max = processor, settings, batch_max
        self.kafka = kafka or settings.connection(principals.service(processor.service))
        """The service's own principal (another only in the runtime's own tests)."""
        self.group = group_id(processor.service)
        self.owned: set[int] = set()
        self.offsets = Offsets()
        self.generation = 0
        """Counts assignments: what was fetched before one is dropped (the inputs start again where committed)."""
        self.poison: dict[tuple[str, int, int], list[ReferralError]] = {}
        """(topic, partition, offset) of records whose handling raised a bug or whose output was too large:
        dead-lettered on every retry, with why, until their transaction commits."""
        self.failures = 0
        self.retrying = False
        self.input_failed = False
        """The failed transaction carried input: only a committed one with input ends the retrying then."""
        self.ticks_failing: set[int] = set()
        self.next_tick = 0.0
        self.tick_requests: dict[int, list[asyncio.Future[None]]] = {}
        self.consumer: ConsumerThread | None = None
        self.producer: Transactions | None = None
        self.transactional_id = ""
        self.instance_lock: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.admin: AdminClient | None = None
        self.task: asyncio.Task | None = None
        self.log = get_logger(service=processor.service)
        self.joined = asyncio.Event()
        """Set once the group gave this instance its first partitions (none, too, when others own them all)."""

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.processor.start(self.kafka)
        self.loop = asyncio.get_running_loop()
        self.transactional_id, self.instance_lock = claim_instance(self.settings.data_dir / "instances", self.group)
        self.producer = await waiting_for(f"{self.group}: the broker to answer", self.fresh_producer())
        self.consumer = ConsumerThread(consumer_config(
            self.kafka, self.group, self.settings.fetch_wait_ms, request_bytes(self.settings)))
        await self.consumer.call(self.consumer.consumer.subscribe, [f"^({self.processor.inputs})$"],
                                 on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.task = asyncio.create_task(self.run(), name=f"{self.group}-run")
        # started means working: the group joined and the partitions taken (offsets stable, state read)
        await waiting_for(f"{self.group}: the group joined and its partitions taken", self.joined.wait())

    async def stop(self) -> None:
        """Stop at once: a transaction in hand is aborted (its records are processed again by the partitions' next
        owner), the group left."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.consumer.close(), 10)
        await self.revoked()
        if self.producer is not None:
            self.producer.close()
        if self.instance_lock is not None:
            os.close(self.instance_lock)
            self.instance_lock = None
        await self.processor.stop()

    def specification(self) -> KafkaBroker:
        """A FastStream broker that only declares what the processor reads and writes: FastStream generates the
        AsyncAPI document from it (schemas/generate.py); it never connects."""
        broker = make_broker(self.settings, self.processor.service)
        self.processor.document(broker)
        declare(broker, self.processor.service, (*self.processor.writes, DEAD_LETTER))
        return broker

    def healthy(self) -> bool:
        """Ready unless a transaction waits to be retried after a transient failure, or a partition's tick failed."""
        return self.consumer is not None and not self.retrying and not self.ticks_failing

    async def fresh_producer(self) -> Transactions:
        """The instance's transactional producer, ready: its InitProducerId fences the id's earlier producer and
        aborts what that one left open."""
        producer = Transactions(producer_config(self.kafka, self.transactional_id, TRANSACTION_TIMEOUT_S,
                                                request_bytes(self.settings)), TRANSACTION_TIMEOUT_S)
        await producer.open()
        return producer

    # -- ownership (the rebalance callbacks run on the consumer's thread, inside `consume`) --------------------
    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        """Partitions given: their committed offsets once stable (KIP-447: a transaction of their previous owner
        that holds offsets of them is committed or aborted first), then their state, then fetching from there."""
        found = self._stable_offsets(consumer, partitions)
        beginnings = {(tp.topic, tp.partition): self._beginning(consumer, tp) for tp in found if tp.offset < 0}
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.assigned(
            {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}, beginnings),
            self.loop).result()
        consumer.assign([TopicPartition(topic, number, offset) for (topic, number), offset
                         in self.offsets.committed.items()])

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.revoked(), self.loop).result()

    def _stable_offsets(self, consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return self._until_answered("committed offsets not stable yet",
                                    lambda: consumer.committed(partitions, timeout=STABLE_WAIT_S))

    def _beginning(self, consumer, tp: TopicPartition) -> int:
        return self._until_answered("input's beginning not known yet",
                                    lambda: consumer.get_watermark_offsets(tp, timeout=STABLE_WAIT_S)[0])

    def _until_answered(self, waiting: str, ask):
        """`ask()` on the consumer's thread, asked again until the broker answers (each asking waits up to
        STABLE_WAIT_S)."""
        started = time.monotonic()
        while True:
            try:
                return ask()
            except KafkaException as exc:
                self.log.warning(f"{waiting}: asked again", error=kafka_error(exc).name(),
                                 waited_s=round(time.monotonic() - started))

    async def assigned(self, found: dict[Input, int | None], beginnings: dict[Input, int]) -> None:
        """Own the assigned partition numbers: what they committed, and the state of each number not owned yet."""
        numbers = {number for _, number in found}
        await self.release(self.owned - numbers)
        self.offsets.own(found, beginnings)
        taken = numbers - self.owned
        await asyncio.gather(*(self.load(number) for number in taken))
        self.owned |= taken
        self.generation += 1
        self.log.info("partitions owned", partitions=sorted(self.owned))
        self.joined.set()

    async def revoked(self) -> None:
        """A rebalance begins (no transaction is open: consuming is only between them), or the instance stops, or
        its membership was lost: every partition is released, as each may go to another instance."""
        await self.release(set(self.owned))
        self.generation += 1

    async def release(self, numbers: set[int]) -> None:
        for number in numbers:
            self.processor.unload(number)
            self.ticks_failing.discard(number)
        self.answer_ticks(numbers)
        self.owned -= numbers
        self.offsets.release(numbers)

    async def load(self, number: int) -> None:
        """Partition N's state as committed, asked again until the broker answers; once no transaction is open on
        it (one that ended a moment ago, this instance's or the partition's previous owner's, would otherwise be
        read as if it had not committed, its markers not written yet)."""
        while True:
            try:
                topic = self.processor.state_topic
                if topic:
                    await self.settled(topic, number)
                return await self.processor.load(number, await read_partition(self.kafka, topic, number)
                                                 if topic else [])
            except TRANSIENT as exc:
                self.log.warning("partition's state not read yet: retrying", partition=number,
                                 error_type=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def settled(self, topic: str, number: int) -> None:
        """Wait until no transaction is open on partition N of `topic`: at most twice the transaction timeout, by
        which the broker has aborted any (a frozen zombie's)."""
        self.admin = self.admin or self.new_admin()
        started = time.monotonic()
        while True:
            try:
                if not await asyncio.to_thread(transaction_open, self.admin, topic, number, STABLE_WAIT_S):
                    return
            except KafkaException as exc:  # a leader moved: a new client learns where it is now
                self.log.warning("state partition's ends not known yet: asked again", partition=number,
                                 error=kafka_error(exc).name())
                self.admin = self.new_admin()
            waited = time.monotonic() - started
            if waited > 2 * TRANSACTION_TIMEOUT_S:
                self.log.warning("state partition still in a transaction: read as committed so far", partition=number)
                return
            await asyncio.sleep(0.02 if waited < 1 else 0.5)

    def new_admin(self) -> AdminClient:
        return AdminClient({**self.kafka.librdkafka(), "client.id": self.group, "logger": LIBRDKAFKA_LOG})

    # -- the loop --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                records = await self.collect()
                ticks = self.ticks_due()
                if records or ticks or self.offsets.never:
                    await self.transact(records, ticks)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of the runtime: it must not stop, nor skip records
                self.log.error("processing failed: resumed from the committed offsets", error_type=type(exc).__name__,
                               error=str(exc)[:200])
                await asyncio.sleep(1.0)
                await self.recover(set(self.owned))

    async def collect(self) -> list[Record]:
        """The records of the next transaction: fetched until its window closes, or none after a short wait.
        Fetched before a rebalance, they are dropped: their inputs start again where committed."""
        assert self.consumer is not None
        window = Window(self.settings.commit_interval_ms / 1000, self.batch_max)
        records: list[Record] = []
        while True:
            generation = self.generation
            got = await self.consumer.consume(self.batch_max - len(records),
                                              window.wait_s(time.monotonic(), IDLE_WAIT_S), first=not records)
            if self.generation != generation:  # the consumer moved past them: back to what is committed
                records, window = [], Window(window.interval_s, window.most)
                await self.consumer.seek(self.offsets.of(self.owned))
                continue
            records += [record for record in got if record.partition in self.owned]
            if window.closed(time.monotonic(), len(records)) or not records:
                return records

    def ticks_due(self) -> set[int]:
        """The partitions to tick: all of them every `notifier_tick_seconds`, and those asked for (`tick_now`)."""
        now, due = time.monotonic(), set(self.tick_requests) & self.owned
        if now >= self.next_tick:
            self.next_tick = now + self.settings.notifier_tick_seconds
            due |= self.owned
        return due

    async def tick_now(self, number: int) -> None:
        """Partition N's tick in the next transaction, if this instance owns N; returns once that ended: for work
        that waits on it (the recipient API's Task updates, decided in their partition's tick so that they commit
        with their state)."""
        if number in self.owned:
            future = asyncio.get_running_loop().create_future()
            self.tick_requests.setdefault(number, []).append(future)
            await future

    async def transact(self, records: list[Record], ticks: set[int]) -> None:
        """One transaction: every record's outputs, what the ticks made due, the inputs' offsets."""
        assert self.producer is not None and self.consumer is not None
        producer, given, deliveries, failed_ticks = self.producer, [], [], set()
        touched = {record.partition for record in records} | ticks
        try:
            for record in records:
                given += [Given(record.partition, record, output) for output in await self.handle(record)]
            for number in sorted(ticks):
                try:
                    given += [Given(number, None, output) for output in await self.processor.tick(number)]
                except Exception as exc:  # its memory may be half changed: reloaded once this one ends
                    self.log.warning("tick failed", partition=number, error_type=type(exc).__name__)
                    failed_ticks.add(number)
            committed = {}
            if given or records or self.offsets.never:  # else no transaction at all
                producer.begin()
                producer.send([g.output for g in given], deliveries)
                positions, group = await self.consumer.commit_point(self.offsets.committed)
                committed = self.offsets.to_commit(positions)
                await asyncio.wait_for(producer.commit(committed, group, deliveries), 2 * TRANSACTION_TIMEOUT_S)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                with contextlib.suppress(BaseException):
                    await asyncio.shield(producer.abort())
                raise
            await self.aborted(exc, touched, given, deliveries, carried_input=bool(records))
            return
        finally:
            self.answer_ticks(ticks)
        self.committed(records, given, deliveries, committed)
        if failed_ticks:
            await self.recover(failed_ticks, seek=False)
            self.ticks_failing |= failed_ticks
        self.ticks_failing -= ticks - failed_ticks

    def committed(self, records: list[Record], given: list[Given], deliveries: list[Delivery],
                  offsets: dict[Input, int]) -> None:
        """A transaction committed (or had nothing to write): what it kept pending is true now. It ends a retrying
        that a failed transaction with input began only if it carried input (what failed has gone through)."""
        self.offsets.done(offsets)
        for record in records:  # kept through aborts: each retry leaves all of them out
            self.poison.pop((record.topic, record.partition, record.offset), None)
        if records or not self.input_failed:
            self.failures, self.retrying, self.input_failed = 0, False, False
        produced: dict[int, list[tuple[Outbound, int]]] = {}
        for entry, delivery in zip(given, deliveries, strict=True):
            produced.setdefault(entry.number, []).append((entry.output, delivery.offset if delivery.offset is not None
                                                          else -1))
        for number, outputs in produced.items():
            self.processor.committed(number, outputs)

    def answer_ticks(self, ticks: set[int]) -> None:
        for number in ticks:
            for future in self.tick_requests.pop(number, []):
                if not future.done():
                    future.set_result(None)

    async def aborted(self, exc: BaseException, touched: set[int], given: list[Given], deliveries: list[Delivery],
                      carried_input: bool) -> None:
        """A transaction failed: aborted, its partitions' state reloaded and their inputs back where committed; then
        retried at once when a record is to be left out, else after a backoff."""
        assert self.producer is not None
        with contextlib.suppress(Exception):
            await self.producer.abort()
        if isinstance(exc, Refused) or self.too_large(exc, given, deliveries):
            self.log.warning("transaction aborted: retried without a record",
                             error_type=type(exc.__cause__ or exc).__name__)
            await self.recover(touched)
            return
        self.failures += 1
        self.input_failed = self.input_failed or carried_input
        self.retrying = True
        wait = min(BACKOFF_S[0] * 2 ** (self.failures - 1), BACKOFF_S[1]) * random.uniform(0.8, 1.2)
        error = kafka_error(exc)
        self.log.warning("transaction aborted: retried", error_type=type(exc).__name__,
                         error=error.name() if error else "", attempt=self.failures, retry_in_s=round(wait, 2))
        await self.recover(touched, fatal=error is None or error.fatal() or not error.txn_requires_abort())
        await asyncio.sleep(wait)

    async def recover(self, numbers: set[int], fatal: bool = False, seek: bool = True) -> None:
        """After a failed transaction (or tick): the partitions' state as committed and their inputs from there.
        `fatal`: the producer is replaced (its InitProducerId ends whatever the old one left), and what is committed
        is asked of the group again (a commit whose answer was lost counts as committed)."""
        assert self.consumer is not None
        numbers &= self.owned
        for number in numbers:
            self.processor.unload(number)
        while fatal:
            try:
                if self.producer is not None:
                    self.producer.close()
                self.producer = await self.fresh_producer()
                inputs = [TopicPartition(topic, n) for topic, n in self.offsets.committed]
                found = await self.consumer.call(self._stable_offsets, self.consumer.consumer, inputs)
                self.offsets.own({(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}, {})
                fatal = False
            except TRANSIENT as exc:
                self.log.warning("producer not renewed yet: retrying", error_type=type(exc).__name__)
                await asyncio.sleep(1.0)
        for number in numbers & self.owned:
            await self.load(number)
        if seek:
            await self.consumer.seek(self.offsets.of(self.owned))

    # -- one record ------------------------------------------------------------------------------------------
    async def handle(self, record: Record) -> list[Outbound]:
        with handling(self.processor.service, record) as log:
            if (errors := self.poison.get((record.topic, record.partition, record.offset))) is not None:
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
                self.poison[(record.topic, record.partition, record.offset)] = HUB_FAILED
                raise Refused from exc
            for output in outputs:
                size, limit = record_bytes(output.key, output.value, output.headers), \
                    max_message_bytes(output.topic, self.settings)
                if size > limit:  # the broker would refuse it: the record is poison, and its state may be half kept
                    log.error("record's output too large for its topic: retried without it", output_topic=output.topic,
                              size=size, limit=limit)
                    self.poison[(record.topic, record.partition, record.offset)] = OUTPUT_TOO_LARGE
                    raise Refused
            return outputs

    def too_large(self, exc: BaseException, given: list[Given], deliveries: list[Delivery]) -> bool:
        """The broker (or librdkafka) refused a record as too large (a topic set lower than the hub thinks, by
        hand): the input whose output it was (of those refused, the largest; the one librdkafka refused to queue,
        when none was delivered with that error) is dead-lettered on the retry; True when one is."""
        refused = [entry for entry, delivery in zip(given, deliveries, strict=False) if is_too_large(delivery.error)]
        if not refused and is_too_large(exc) and len(deliveries) < len(given):
            refused = [given[len(deliveries)]]
        refused = [entry for entry in refused if entry.record is not None]
        if not refused:
            return False
        entry = max(refused, key=lambda e: record_bytes(e.output.key, e.output.value, e.output.headers))
        record = entry.record
        assert record is not None
        if (record.topic, record.partition, record.offset) in self.poison:
            return False  # even its dead letter was refused: retried with backoff, not in a loop without one
        self.log.error("record's output refused as too large: retried without it", topic=record.topic,
                       partition=record.partition, offset=record.offset, output_topic=entry.output.topic)
        self.poison[(record.topic, record.partition, record.offset)] = OUTPUT_TOO_LARGE
        return True

    def fitting(self, letter: Outbound) -> Outbound:
        """A dead letter as it fits its topic: without the raw value when even that is too large (an input topic
        set larger by hand than the dead letters take), so that the partition still moves on."""
        if record_bytes(letter.key, letter.value, letter.headers) <= max_message_bytes(letter.topic, self.settings):
            return letter
        self.log.error("dead letter too large: written without its value", size=len(letter.value))
        return dataclasses.replace(letter, value=b"", headers={**letter.headers, "value-dropped": "too large"})

    def tell_refused(self, record: Record, errors: list[ReferralError]) -> list[Outbound]:
        """The processor's answer to the sender of a record the runtime refused; none if even that fails."""
        try:
            return self.processor.refused(record, errors)
        except Exception as exc:
            self.log.warning("refusal not told", topic=record.topic, offset=record.offset,
                             error_type=type(exc).__name__)
            return []


async def read_partition(kafka: KafkaConnection, topic: str, number: int) -> list[Record]:
    """Every committed record of one partition, from its beginning to its last stable offset."""
    return [Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
            for r in await read_records(kafka, [topic], only={number})]


def document_input(broker: KafkaBroker, title: str, description: str, *, topic: str | None = None,
                   pattern: str | None = None, schema: type = bytes) -> None:
    """Declare an input on a documentation-only broker (`Runtime.specification`)."""
    async def handler(body) -> None:  # never called: the runtime consumes
        pass

    handler.__annotations__["body"] = schema
    broker.subscriber(*([topic] if topic else []), pattern=pattern, title=title, description=description)(handler)
