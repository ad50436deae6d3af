"""The one way every hub consumer handles a record: context for the logs, and no exception escapes.

FastStream would log an escaped exception with its message, and pydantic messages quote their input
(personal data). So every handler runs inside `handling`, which binds safe context, logs only the
exception's type, and lets the caller put the record aside (dead letters) instead of blocking.
"""

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage

from schemas.errors import ReferralError
from services.infra import metrics, topics
from services.infra.kafka import Outbound, outbound, publish
from services.infra.logging import get_logger

DEAD_LETTER_SCHEMA = "verwijshub.DeadLetter/1"
"""A dead letter: the record's raw bytes and key as received; why and whence in its headers."""


def record_context(message: KafkaMessage) -> dict[str, object]:
    record = message.raw_message
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


@contextlib.contextmanager
def handling(service: str, message: KafkaMessage) -> Iterator[structlog.stdlib.BoundLogger]:
    context = record_context(message)
    metrics.MESSAGES_CONSUMED.labels(service, context["topic"]).inc()
    with metrics.HANDLER_SECONDS.labels(service).time(), \
            structlog.contextvars.bound_contextvars(service=service, **context):
        yield get_logger()


def header(message: KafkaMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def dead_letter_record(message: KafkaMessage, errors: list[ReferralError], channel: str | None = None) -> Outbound:
    """The dead letter of a record: its raw bytes, its key, why, and where it came from."""
    origin = {f"origin-{k}": str(v) for k, v in record_context(message).items()}
    metrics.DEAD_LETTERS.labels(origin["origin-topic"], errors[0].code.value if errors else "").inc()
    origin_headers = {f"origin-header-{k}": v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                      for k, v in (message.headers or {}).items()}
    return outbound(
        topics.DEAD_LETTERS, message.body, message.raw_message.key, schema=DEAD_LETTER_SCHEMA,
        content_type="application/octet-stream", channel=channel or "",
        extra_headers={**origin_headers, **origin, "errors": json.dumps([e.model_dump(mode="json") for e in errors])})


async def dead_letter(broker: KafkaBroker, message: KafkaMessage, errors: list[ReferralError],
                      channel: str | None = None) -> None:
    """Park a record on the dead-letter topic (a FastStream consumer's way; the runtime sends `dead_letter_record`)."""
    await publish(broker, dead_letter_record(message, errors, channel))


@dataclass(frozen=True)
class RecordView:
    """One record of a batch, shaped like a FastStream message for `handling` and `dead_letter`."""

    raw_message: ConsumerRecord

    @property
    def body(self) -> bytes:
        return self.raw_message.value or b""

    @property
    def headers(self) -> dict[str, bytes]:
        return dict(self.raw_message.headers or ())
