"""The processing runtime's Kafka clients, on librdkafka (confluent-kafka): a consumer and one transactional producer
per service instance, driven from asyncio.

librdkafka speaks KIP-447: a transaction's offsets carry the consumer group's generation, so an instance that lost
its partitions (a zombie) has its commit refused, and one transactional producer serves every partition the
instance owns (aiokafka 0.14 cannot: it needed a producer per partition number). Measured on this machine, a
transactional 3-hop passthrough moved twice the records per second of aiokafka's at a quarter of the client CPU.

Why not `confluent_kafka.aio`: its consumer dispatches every call to a thread pool and its rebalance callbacks too,
and its producer adds a batching layer in Python. Here the consumer has one thread of its own, on which every one of
its calls runs (its rebalance callbacks run there, inside `consume`, and hop to the event loop for what is async);
the producer's `produce` only queues, so it runs on the event loop, and its blocking transaction calls in a thread.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from services.infra.connection import KafkaConnection
from services.infra.kafka import OUTBOUND_RECORD_BYTES, Outbound, Record
from services.infra.offsets import Input

TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
"""A broker's (or librdkafka's own) refusal of a record larger than its topic or a request takes: never passes."""
SESSION_TIMEOUT_MS = 10_000
"""How long the group waits for a silent instance before it gives its partitions to another (aiokafka's default,
which the hub had: a frozen instance is fenced after 10 s, not librdkafka's 45)."""
LIBRDKAFKA_LOG = logging.getLogger("verwijshub.librdkafka")
"""librdkafka's own log lines (connections, retries), as JSON like the hub's: they name brokers, never records."""


def consumer_config(kafka: KafkaConnection, group: str, fetch_wait_ms: int, fetch_bytes: int) -> dict[str, Any]:
    """A service's consumer: committed records only, offsets committed only inside the producer's transactions,
    the range assignor (partition N of every input to the same instance, which owns N's state: the inputs are
    co-partitioned, which the cooperative-sticky assignor does not keep)."""
    return {**kafka.librdkafka(), "group.id": group, "client.id": group, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "partition.assignment.strategy": "range", "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3, "fetch.wait.max.ms": fetch_wait_ms,
            "max.partition.fetch.bytes": fetch_bytes, "queued.max.messages.kbytes": 16 * 1024,
            "topic.metadata.refresh.interval.ms": 30_000,  # a recipient's new feedback topic is followed within 30 s
            "logger": LIBRDKAFKA_LOG}


def producer_config(kafka: KafkaConnection, transactional_id: str, timeout_s: float, max_bytes: int
                    ) -> dict[str, Any]:
    """A service instance's transactional producer. `murmur2_random` is Java's (and aiokafka's) partitioner: every
    producer of the hub puts a key in the same partition, so a youth's records meet in one partition number."""
    return {**kafka.librdkafka(), "client.id": transactional_id, "transactional.id": transactional_id,
            "transaction.timeout.ms": int(timeout_s * 1000), "partitioner": "murmur2_random",
            "message.max.bytes": max_bytes, "batch.size": OUTBOUND_RECORD_BYTES, "linger.ms": 2,
            "retry.backoff.ms": 10, "logger": LIBRDKAFKA_LOG}


def kafka_error(exc: BaseException) -> KafkaError | None:
    return exc.args[0] if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) \
        else None


def is_too_large(exc: BaseException | KafkaError | None) -> bool:
    error = exc if isinstance(exc, KafkaError) else kafka_error(exc) if exc is not None else None
    return error is not None and error.code() in TOO_LARGE_CODES


def record_of(message: Message) -> Record:
    return Record(message.topic(), message.partition(), message.offset(), message.timestamp()[1], message.key(),
                  message.value(), tuple(message.headers() or ()))


def transaction_open(admin: AdminClient, topic: str, number: int, timeout_s: float) -> bool:
    """Whether a transaction is open on a partition: its last stable offset (where `read_committed` readers stop)
    is behind its end. Also for a moment after a transaction ended: its markers are written after it commits or
    aborts, so until then its records stay behind the last stable offset. Blocking."""
    tp = TopicPartition(topic, number)
    stable, end = (admin.list_offsets({tp: OffsetSpec.latest()}, isolation_level=level,
                                     request_timeout=timeout_s)[tp].result().offset
                   for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED))
    return stable < end


class ConsumerThread:
    """A librdkafka consumer whose every call runs on one thread of its own: `call` from the event loop. Its
    rebalance callbacks run on that thread too, inside `consume`: what they do on the loop must not `call`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=str(config.get("client.id")))
        self.consumer = Consumer(config)

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, lambda: function(*args, **kwargs))

    async def consume(self, most: int, timeout_s: float, first: bool = False) -> list[Record]:
        """Up to `most` records within `timeout_s` (librdkafka's `consume` waits for all of them or the time); with
        `first`, as soon as there is one, with what else has arrived. Errors librdkafka reports in-band (a broker
        away, a topic gone) are logged: it retries them itself."""
        def take() -> list[Message]:
            if not first:
                return self.consumer.consume(most, timeout_s)
            one = self.consumer.poll(timeout_s)
            return [] if one is None else [one, *self.consumer.consume(most - 1, 0)] if most > 1 else [one]

        records = []
        for message in await self.call(take):
            if (error := message.error()) is not None:
                LIBRDKAFKA_LOG.warning("consumer error: %s", error.name())
            else:
                records.append(record_of(message))
        return records

    async def commit_point(self, inputs: Iterable[Input]) -> tuple[dict[Input, int], Any]:
        """What a transaction commits, in one call on the consumer's thread: each input's next offset to consume
        (past the transaction markers librdkafka skipped) and the group's metadata (generation, member)."""
        def ask() -> tuple[list[TopicPartition], Any]:
            return (self.consumer.position([TopicPartition(topic, n) for topic, n in inputs]),
                    self.consumer.consumer_group_metadata())
        found, group = await self.call(ask)
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}, group

    async def seek(self, offsets: dict[Input, int]) -> None:
        """Read again from these offsets (of assigned inputs): records fetched before are dropped by librdkafka."""
        def seek_all() -> None:
            for (topic, number), offset in offsets.items():
                self.consumer.seek(TopicPartition(topic, number, offset))
        await self.call(seek_all)

    async def close(self) -> None:
        try:
            await self.call(self.consumer.close)
        finally:
            self.thread.shutdown(wait=False)


RESUME_WAIT_S = 0.1
"""The pause before a call librdkafka says may resume is made again."""


def resumed(call: Callable[[], Any], within_s: float) -> Any:
    """`call()`, made again while librdkafka says it may resume (a retriable error), for at most `within_s`: it
    blocks a thread, which cannot be cancelled, so the retrying is bounded."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            LIBRDKAFKA_LOG.warning("a transaction call not done yet: %s, asked again", exc.args[0].name())
            time.sleep(RESUME_WAIT_S)


@dataclass
class Delivery:
    """What became of one record sent in a transaction: its error, or its offset once delivered."""

    error: KafkaError | None = None
    offset: int | None = None

    def report(self, error: KafkaError | None, message: Message) -> None:
        self.error, self.offset = error, (message.offset() if error is None else None)


class Transactions:
    """A transactional producer: `open` (fencing an earlier incarnation of the same id), then per transaction
    `begin`, `send`, `commit` (or `abort`). Its blocking calls run in a thread."""

    def __init__(self, config: dict[str, Any], timeout_s: float) -> None:
        self.producer = Producer(config)
        self.timeout_s = timeout_s

    async def open(self) -> None:
        """InitProducerId, asked again while librdkafka says the call may resume (a slow or busy broker)."""
        await asyncio.to_thread(resumed, lambda: self.producer.init_transactions(self.timeout_s), 4 * self.timeout_s)

    def begin(self) -> None:
        self.producer.begin_transaction()

    def send(self, records: list[Outbound], deliveries: list[Delivery]) -> None:
        """Queue records in the open transaction, appending each one's `Delivery` as it is queued (librdkafka refuses
        a record over `message.max.bytes` here: the deliveries then end before it)."""
        for record in records:
            delivery = Delivery()
            kwargs: dict[str, Any] = {"key": record.key, "headers": list(record.headers.items()),
                                      "on_delivery": delivery.report}
            if record.partition is not None:
                kwargs["partition"] = record.partition
            while True:
                try:
                    self.producer.produce(record.topic, record.value, **kwargs)
                    break
                except BufferError:  # librdkafka's queue is full: let it send
                    self.producer.poll(0.1)
            deliveries.append(delivery)

    async def commit(self, offsets: dict[Input, int], group: Any, deliveries: list[Delivery]) -> None:
        """Flush; a record not delivered fails the transaction (before its offsets are sent); then the offsets with
        the group's metadata (KIP-447: refused once the group moved on without this instance), then commit (a
        retriable failure of the commit is retried: librdkafka allows it)."""
        def commit() -> None:
            if self.producer.flush(self.timeout_s):
                raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "records not delivered in time"))
            if failed := next((d.error for d in deliveries if d.error is not None), None):
                raise KafkaException(failed)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(topic, n, offset) for (topic, n), offset in offsets.items()], group,
                    self.timeout_s)
            resumed(lambda: self.producer.commit_transaction(self.timeout_s), self.timeout_s)
        await asyncio.to_thread(commit)

    async def abort(self) -> None:
        await asyncio.to_thread(self.producer.abort_transaction, self.timeout_s)

    def close(self) -> None:
        self.producer.purge()
