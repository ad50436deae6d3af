"""Kafka wiring shared by the services: brokers, headers, topic creation, readiness."""

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from services.infra import principals, topics
from services.infra.connection import KafkaConnection
from services.infra.settings import Settings

JSON = "application/json"


HEADROOM_BYTES = 64 * 1024
"""Room in a record beside its value: key, headers (a dead letter's copy the input's), the batch's overhead."""
OUTBOUND_RECORD_BYTES = 1024 * 1024
"""`max.message.bytes` of every topic the hub writes but the dead letters, as Kafka's default: the text limits of
`schemas/referral.py` keep each record about one referral (referral, decision, handover) under 150 KB, worst case
(docs/design.md, "Record sizes"). Also the producers' batch size, so that a batch of many records fits too."""


def inbound_record_bytes(settings: Settings) -> int:
    """`max.message.bytes` of a channel's inbound topic: the largest referral accepted, with its key and headers."""
    return settings.max_message_bytes + HEADROOM_BYTES


def dead_letter_bytes(settings: Settings) -> int:
    """`max.message.bytes` of the dead-letter topic: the largest record of any input, raw, and the headers saying
    why and whence."""
    return max(inbound_record_bytes(settings), OUTBOUND_RECORD_BYTES) + HEADROOM_BYTES


def max_message_bytes(topic: str, settings: Settings) -> int:
    """The largest record (its batch, as the broker counts) a topic takes: set on it (provisioning) and checked by
    the runtime before it sends."""
    if topic == topics.DEAD_LETTERS:
        return dead_letter_bytes(settings)
    return inbound_record_bytes(settings) if topics.submitted(topic) else OUTBOUND_RECORD_BYTES


def request_bytes(settings: Settings) -> int:
    """A producer's `max_request_size` (aiokafka refuses a larger record before it is sent) and a partition fetch's
    size: the largest record of any topic. A transaction's records for one partition travel in few requests (an
    idempotent aiokafka producer has one request in flight per broker; 16 KiB batches would cost a round trip per
    few referrals); a batch is at most `OUTBOUND_RECORD_BYTES`, so that it fits any topic, a single record larger
    than that travels in a batch of its own."""
    return dead_letter_bytes(settings)


def record_bytes(key: bytes | None, value: bytes | None, headers: dict[str, str]) -> int:
    """What a record's batch of its own weighs, as aiokafka and the broker count it."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key, value, [(name, header.encode()) for name, header in headers.items()])


def make_broker(settings: Settings, service: str, broker_class: type[KafkaBroker] = KafkaBroker) -> KafkaBroker:
    """A FastStream broker whose producer waits for all in-sync replicas and never writes twice
    (`broker_class`: a subclass that runs more at start and stop, as routing's state follower)."""
    connection = settings.connection(principals.service(service))
    return broker_class(
        connection.servers,
        security=connection.faststream_security(),
        allow_auto_create_topics=False,  # topics are the admin's to create (`up`, `access sync`), never a service's
        client_id=f"verwijshub-{service}",
        acks="all",
        enable_idempotence=True,
        max_request_size=request_bytes(settings),
        logger=logging.getLogger(f"verwijshub.{service}"),  # FastStream's lines as JSON, like ours
    )


def group_id(service: str) -> str:
    return f"verwijshub-{service}"


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


@dataclass(frozen=True)
class Outbound:
    """One record the hub writes, built only by `outbound`: topic, key, value and the contract's headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    partition: int | None = None


@dataclass(frozen=True)
class Record:
    """One record as the runtime consumed it (services/infra/librdkafka.py), with the fields of aiokafka's
    `ConsumerRecord`, which the hub's other readers return: a processor reads either the same way."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """Milliseconds since the epoch, as the producer (or the broker) set it."""
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def outbound(topic: str, message: BaseModel | bytes, key: str | bytes | None, *, correlation_id: str = "",
             channel: str = "", schema: str | None = None, content_type: str = JSON, partition: int | None = None,
             extra_headers: dict[str, str] | None = None) -> Outbound:
    """The record for a hub message. A model names its own schema (`SCHEMA`); raw bytes (a dead letter, a FHIR
    handover) say theirs. Every record carries `content-type`, `schema`, `correlation-id` (the hub referral id)
    and `channel` (docs/design.md, "Message headers")."""
    value = message if isinstance(message, bytes) else encode(message)
    headers = {**(extra_headers or {}), "content-type": content_type,
               "schema": schema or type(message).SCHEMA, "correlation-id": correlation_id, "channel": str(channel)}
    return Outbound(topic, key.encode() if isinstance(key, str) else key, value, headers, partition)


async def publish(broker: KafkaBroker, record: Outbound, confirm: bool = True) -> asyncio.Future | None:
    """Send one outbound record; with `confirm=False` return its delivery, to be awaited with others."""
    delivery = await broker.publish(record.value, record.topic, key=record.key, partition=record.partition,
                                    headers=record.headers, no_confirm=not confirm)
    return None if confirm else delivery


async def produce(kafka: KafkaConnection, records: list[Outbound]) -> None:
    """Send outbound records with a producer of its own (the commands, which run no FastStream broker)."""
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for record in records:
            await producer.send(record.topic, record.value, key=record.key, partition=record.partition,
                                headers=[(name, value.encode()) for name, value in record.headers.items()])
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until_ready(kafka: KafkaConnection, timeout_s: float = 60.0, brokers: int = 1) -> None:
    """Wait until the cluster answers a metadata request naming at least `brokers` brokers; raise TimeoutError
    if it does not in time."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    addresses = [address.rpartition(":") for address in kafka.bootstrap.split(",")[:brokers]]
    while time.monotonic() < deadline:
        try:  # a plain TCP probe first: aiokafka logs every refused connection as an error
            for host, _, port in addresses:
                _reader, writer = await asyncio.open_connection(host, int(port))
                writer.close()
        except OSError as exc:
            last_error = exc
            await asyncio.sleep(0.3)
            continue
        admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if len(cluster.get("brokers") or ()) >= brokers:
                return
            last_error = RuntimeError(f"{len(cluster.get('brokers') or ())} of {brokers} brokers registered")
        except (KafkaError, OSError) as exc:
            last_error = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
    raise TimeoutError(f"Kafka at {kafka.bootstrap} did not answer within {timeout_s:.0f}s ({last_error!r})")


DESCRIBE_ATTEMPTS, DESCRIBE_BACKOFF_S = 10, 0.5


async def partitions_of(kafka: KafkaConnection, names: list[str]) -> list[TopicPartition]:
    """The partitions of existing topics (a topic that does not exist yet has none). After a retriable error they
    are asked again, up to DESCRIBE_ATTEMPTS times DESCRIBE_BACKOFF_S apart: a broker just back from a pause
    answered a start's first metadata request without its brokers, and the `NodeNotReadyError` that followed ended
    the start with a traceback instead of a wait."""
    for attempt in range(1, DESCRIBE_ATTEMPTS + 1):
        admin = AIOKafkaAdminClient(**kafka.client_options())
        await admin.start()
        try:
            described = await admin.describe_topics(names)
            break
        except KafkaError as exc:
            if not exc.retriable or attempt == DESCRIBE_ATTEMPTS:
                raise
        finally:
            await admin.close()
        await asyncio.sleep(DESCRIBE_BACKOFF_S)
    return [TopicPartition(d["topic"], p["partition"]) for d in described if not d.get("error_code")
            for p in sorted(d.get("partitions") or (), key=lambda p: p["partition"])]


@dataclass(frozen=True)
class Span:
    """Where a partition's records begin and end, and the first offset at or after a time (when asked)."""

    begin: int
    end: int
    since: int | None = None


async def log_offsets(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], *,
                      end: bool = True) -> dict[TopicPartition, int]:
    """Each partition's end (or beginning) offset, asked per topic and all at once. aiokafka learns the leaders
    of topics it does not track one topic per retry (its backoff and a metadata request each): a fresh consumer
    asking the ends of 40 topics in one call waited 4.4 s; asked together, every topic joins one refresh."""
    by_topic: defaultdict[str, list[TopicPartition]] = defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp)
    ask = consumer.end_offsets if end else consumer.beginning_offsets
    found: dict[TopicPartition, int] = {}
    for offsets in await asyncio.gather(*(ask(tps) for tps in by_topic.values())):
        found.update(offsets)
    return found


async def _spans(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                 since_ms: int | None = None) -> dict[TopicPartition, Span]:
    begins = await log_offsets(consumer, partitions, end=False)
    ends = await log_offsets(consumer, partitions)
    found = await consumer.offsets_for_times({tp: since_ms for tp in partitions}) if since_ms is not None else {}
    return {tp: Span(begins[tp], ends[tp], (found[tp].offset if found.get(tp) else ends[tp])
                     if since_ms is not None else None) for tp in partitions}


async def partition_spans(kafka: KafkaConnection, names: list[str],
                          since_ms: int | None = None) -> dict[TopicPartition, Span]:
    """Each partition's span from ListOffsets alone (Describe suffices; no record is read): how operations and
    the analytics sink count dead letters, whose content they may not see."""
    partitions = await partitions_of(kafka, names)
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        return await _spans(consumer, partitions, since_ms)
    finally:
        await consumer.stop()


async def read_records(kafka: KafkaConnection, names: list[str], *, only: set[int] | None = None,
                       since_ms: int | None = None, last: int | None = None) -> list[ConsumerRecord]:
    """The records of topics (or of their partitions `only`) up to their current end: from the beginning, from
    the time `since_ms`, or the `last` few of each partition."""
    partitions = [tp for tp in await partitions_of(kafka, names) if only is None or tp.partition in only]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        spans = await _spans(consumer, partitions, since_ms)
        ends = {tp: span.end for tp, span in spans.items()}
        for tp, span in spans.items():
            if since_ms is not None:
                consumer.seek(tp, span.since)
            elif last is not None:
                consumer.seek(tp, max(span.end - last, span.begin))
            else:
                consumer.seek(tp, span.begin)
        records: list[ConsumerRecord] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
        return records
    finally:
        await consumer.stop()


async def read_to_end(kafka: KafkaConnection, topic: str,
                      only: set[int] | None = None) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of a topic (or of its partitions `only`), from the start to the current end."""
    return [(record.key, record.value) for record in await read_records(kafka, [topic], only=only)]
