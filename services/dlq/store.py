"""Dead letters on Kafka: read them and their replay markers, re-submit them, record the markers.

Only the admin principal may read `referrals.dlq.v1` (raw personal data); every function here takes the
admin's connection. The decisions are in `core.py`.
"""

from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from schemas.deadletters import SUMMARY_KEY, DeadLetterSummary
from schemas.registry import Registry
from services.dlq.core import (
    Check,
    DeadLetter,
    Outcome,
    ReplayMarker,
    check,
    from_record,
    next_marker,
    summarise,
)
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.contract import Output, output_for
from services.infra.kafka import Outbound, produce, read_records, read_to_end
from services.infra.registry_files import load_registry
from services.infra.registry_topic import latest_registry
from services.infra.settings import Settings


async def dead_letters(kafka: KafkaConnection) -> list[DeadLetter]:
    return [from_record(record) for record in await read_records(kafka, [topics.DEAD_LETTERS])]


async def markers(kafka: KafkaConnection) -> dict[str, ReplayMarker]:
    """The latest marker per dead letter id (a tombstone or an unreadable record forgets it)."""
    found: dict[str, ReplayMarker] = {}
    for key, value in await read_to_end(kafka, topics.DLQ_REPLAYS):
        if key is None:
            continue
        try:
            found[key.decode()] = ReplayMarker.model_validate_json(value or b"")
        except ValidationError:
            found.pop(key.decode(), None)
    return found


async def accepted_referral_ids(kafka: KafkaConnection) -> set[str]:
    """The hub referral ids intake accepted (`intake.accepted.v1`, its dedup ledger)."""
    return {key.decode() for key, value in await read_to_end(kafka, topics.INTAKE_ACCEPTED) if key and value}


async def registry_in_force(kafka: KafkaConnection, settings: Settings) -> Registry:
    """The registry published on `registry.v1`, else the configured files."""
    return await latest_registry(kafka) or load_registry(settings.registry_dir)


INBOUND_SCHEMA = "verwijshub.Inbound/1"
"""A referrer's or recipient's message as it sent it, which `dlq replay` put back on its origin topic."""


def _resubmitted(name: str, address: str, what: str) -> Output:
    return Output(f"replayed-{name}", address, bytes, (
        f"`dlq replay`: a dead letter's {what} put back as sent, with its original key and headers (its own `schema`, "
        "else `verwijshub.Inbound/1`) and `replay-of: <dead letter id>`."), schema=INBOUND_SCHEMA,
        content_type="application/octet-stream")


RESUBMITTED = (_resubmitted("referrals", topics.referrals("{channel}"), "referral"),
               _resubmitted("wij-feedback", topics.wij_feedback("{team}"), "feedback"),
               _resubmitted("provider-feedback", topics.provider_feedback("{agb}"), "feedback"))
REPLAYS = Output("dlq-replays", topics.DLQ_REPLAYS, ReplayMarker, (
    "Internal, compacted: one marker per dead letter `dlq replay` re-submitted or tried, keyed by its id "
    "`<partition>-<offset>`; no personal data."))
SUMMARY = Output("dead-letter-summary", topics.OPS_DEAD_LETTERS, DeadLetterSummary, (
    "For operations, compacted: the pending dead letters per channel and code with the oldest one's time (key "
    "`summary`); no ids, no content."))
WRITES = (*RESUBMITTED, REPLAYS, SUMMARY)
"""What the admin's `dlq` commands write."""


def resubmission(letter: DeadLetter) -> Outbound:
    """The message again on its origin topic, with its original key and headers, and `replay-of: <id>`."""
    original = letter.origin_headers
    return output_for(letter.origin_topic, RESUBMITTED).record(
        letter.raw, letter.key, topic=letter.origin_topic, correlation_id=original.get("correlation-id", ""),
        channel=letter.channel or original.get("channel", ""), schema=original.get("schema") or INBOUND_SCHEMA,
        content_type=original.get("content-type", "application/octet-stream"),
        extra_headers={**original, "replay-of": letter.id})


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    check: Check
    marker: ReplayMarker


async def replay(kafka: KafkaConnection, settings: Settings, letters: list[DeadLetter],
                 known: dict[str, ReplayMarker], *, at: datetime, dry_run: bool,
                 automatic: bool = False) -> list[Replayed]:
    """Check each dead letter offline; unless `dry_run`, re-submit those that pass to their origin topic and
    record a marker for each (a dry run reads, and writes nothing)."""
    registry = await registry_in_force(kafka, settings)
    accepted = await accepted_referral_ids(kafka)
    key = settings.youth_pseudonym_key()
    results = []
    for letter in letters:
        result = check(letter, registry, at, pseudonym_key=key, max_bytes=settings.max_message_bytes)
        already = not letter.feedback and result.accepted and result.referral_id in accepted
        results.append(Replayed(letter, result, next_marker(letter, known.get(letter.id), result, at=at,
                                                            by=kafka.username or "", already_accepted=already,
                                                            automatic=automatic)))
    if not dry_run and results:
        # the messages first, then the markers: a crash between them leaves a dead letter pending whose
        # replay already went out; replayed again, intake's ledger drops it
        await produce(kafka, [resubmission(r.letter) for r in results if r.marker.outcome is Outcome.RESUBMITTED])
        await produce(kafka, [REPLAYS.record(r.marker, r.letter.id, channel=r.letter.channel) for r in results])
    return results


async def publish_summary(kafka: KafkaConnection, letters: list[DeadLetter], known: dict[str, ReplayMarker],
                          at: datetime) -> None:
    """The pending dead letters in numbers on `ops.deadletters.v1`, for operations (no personal data)."""
    await produce(kafka, [SUMMARY.record(summarise(letters, known, at), SUMMARY_KEY)])
