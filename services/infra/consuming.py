"""The one way the runtime handles a record: context for the logs, and the dead letter of a record it puts aside.

pydantic messages quote their input (personal data), so every record is handled inside `handling`, which binds
safe context (topic, partition, offset) and counts it; a record that cannot be used becomes a dead letter instead
of blocking its partition.
"""

import contextlib
import json
from collections.abc import Iterator

import structlog
from aiokafka import ConsumerRecord

from schemas.errors import ReferralError
from services.infra import metrics, topics
from services.infra.contract import Output
from services.infra.kafka import Outbound
from services.infra.logging import get_logger

DEAD_LETTER_SCHEMA = "verwijshub.DeadLetter/1"
"""A dead letter: the record's raw bytes and key as received; why and whence in its headers."""
DEAD_LETTER = Output("dead-letters", topics.DEAD_LETTERS, bytes, (
    "Records the service could not use: raw bytes and key as received; headers `errors` (JSON list of code, "
    "location, message), `channel`, `origin-topic|partition|offset`, `origin-header-*`."),
    schema=DEAD_LETTER_SCHEMA, content_type="application/octet-stream")


def record_context(record: ConsumerRecord) -> dict[str, object]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


@contextlib.contextmanager
def handling(service: str, record: ConsumerRecord) -> Iterator[structlog.stdlib.BoundLogger]:
    context = record_context(record)
    metrics.MESSAGES_CONSUMED.labels(service, context["topic"]).inc()
    with metrics.HANDLER_SECONDS.labels(service).time(), \
            structlog.contextvars.bound_contextvars(service=service, **context):
        yield get_logger()


def dead_letter_record(record: ConsumerRecord, errors: list[ReferralError], channel: str | None = None) -> Outbound:
    """The dead letter of a record: its raw bytes, its key, why, and where it came from."""
    origin = {f"origin-{k}": str(v) for k, v in record_context(record).items()}
    metrics.DEAD_LETTERS.labels(origin["origin-topic"], errors[0].code.value if errors else "").inc()
    origin_headers = {f"origin-header-{k}": v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                      for k, v in record.headers or ()}
    return DEAD_LETTER.record(
        record.value or b"", record.key, channel=channel or "",
        extra_headers={**origin_headers, **origin, "errors": json.dumps(
            [e.model_dump(mode="json") for e in errors], ensure_ascii=False)})
