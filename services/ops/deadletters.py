"""Operations' view of the pending dead letters: the admin's summary on `ops.deadletters.v1` (counts per channel and
code, the oldest's time), into metrics and the status page. Operations never reads a dead letter.

The summary is as fresh as the last `verwijshub dlq list`, `dlq replay` or `registry publish` an admin ran (its
age is a metric and on the page); dead letters that arrived since are counted on the page from offsets alone.
"""

from datetime import datetime

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.deadletters import SUMMARY_KEY, DeadLetterSummary
from services.infra import metrics, topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import read_to_end


async def latest_summary(kafka: KafkaConnection) -> DeadLetterSummary | None:
    """The latest summary, or None when none was written (or this principal may not read it yet)."""
    latest = None
    try:
        records = await read_to_end(kafka, topics.OPS_DEAD_LETTERS)
    except KafkaError:
        return None
    for key, value in records:
        if key == SUMMARY_KEY.encode() and value:
            try:
                latest = DeadLetterSummary.model_validate_json(value)
            except ValidationError:
                continue
    return latest


def oldest_pending_seconds(summary: DeadLetterSummary | None, now: datetime) -> float:
    if summary is None or summary.oldest_pending_at is None:
        return 0.0
    return max(0.0, (now - summary.oldest_pending_at).total_seconds())


def export(summary: DeadLetterSummary | None, now: datetime, limit_s: float) -> None:
    """The summary into `verwijshub_dead_letters_pending{channel,code}` and the oldest's age (which keeps growing
    between summaries, so a dead letter nobody replays still raises DeadLetterWaiting)."""
    metrics.DEAD_LETTERS_PENDING_LIMIT_SECONDS.set(limit_s)
    metrics.DEAD_LETTERS_PENDING.clear()
    if summary is None:
        return
    for count in summary.counts:
        metrics.DEAD_LETTERS_PENDING.labels(count.channel, count.code).set(count.count)
    metrics.DEAD_LETTERS_OLDEST_PENDING_SECONDS.set(oldest_pending_seconds(summary, now))
    metrics.DEAD_LETTERS_SUMMARY_AGE_SECONDS.set(max(0.0, (now - summary.at).total_seconds()))
