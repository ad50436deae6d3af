"""Dead letters an operator can act on: the pure part (no I/O).

A dead letter (`referrals.dlq.v1`, `services/infra/consuming.py`) holds a record's raw bytes and key as received,
with `errors`, `channel` and `origin-*` headers. Its id is `<partition>-<offset>` on the dead-letter topic.
A replay marker (`dlq.replays.v1`, compacted, keyed by that id) says when, by whom and with what outcome it was
re-submitted or tried, and how many attempts were made; it holds no personal data.

Rows (`rows`) are what `dlq list` shows: ids, times, channel, origin, error codes with their locations, the
referrer's referral id when the channel's adapter can read it, and the state. Never an error's message (an
adapter's message may quote a value, e.g. a date), never the content.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar

from aiokafka import ConsumerRecord
from pydantic import BaseModel, ValidationError

from schemas.deadletters import DeadLetterSummary, PendingCount
from schemas.errors import ErrorCode
from schemas.feedback import Feedback
from schemas.referral import Channel, Referral
from schemas.registry import Registry
from schemas.routing import RoutingDecision
from services.infra import topics
from services.intake.adapters import read_referral
from services.intake.senders import sender_rejection
from services.routing.policy import decide

TRANSIENT_CODES = frozenset({ErrorCode.PRODUCT_UNKNOWN.value})
"""Causes that can pass without the referrer doing anything: a product the registry in force does not know yet.
Every other code waits for the referrer (or the recipient) to send a corrected message."""


class Outcome(StrEnum):
    RESUBMITTED = "resubmitted"
    """Passed the offline check and went back on its origin topic."""
    ALREADY_ACCEPTED = "already-accepted"
    """The referrer sent the referral again meanwhile and intake accepted it: nothing re-submitted."""
    STILL_REJECTED = "still-rejected"
    """Failed the offline check again: not re-submitted, still pending."""


DONE = frozenset({Outcome.RESUBMITTED, Outcome.ALREADY_ACCEPTED})


class ReplayMarker(BaseModel):
    """One record on `dlq.replays.v1`, keyed by the dead letter's id. No personal data."""

    SCHEMA: ClassVar[str] = "verwijshub.DeadLetterReplay/1"
    dead_letter_id: str
    at: datetime
    by: str
    """The principal that replayed it."""
    outcome: Outcome
    codes: list[str] = []
    """The codes of the offline check when still rejected."""
    attempts: int = 1
    """Attempts so far, this one included (the topic is compacted: only the latest marker per id stays)."""
    automatic: bool = False
    """Made by the automatic retry after a registry was published."""
    resubmitted_to: str | None = None
    """`<topic>` the message went back on."""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    at: datetime
    channel: str
    origin_topic: str
    origin_partition: int | None
    origin_offset: int | None
    errors: list[dict[str, str]]
    key: bytes | None
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def codes(self) -> list[str]:
        return [e.get("code", "") for e in self.errors]

    @property
    def feedback(self) -> bool:
        return self.origin_topic.startswith("feedback.")

    @property
    def transient(self) -> bool:
        return bool(self.codes) and set(self.codes) <= TRANSIENT_CODES

    @property
    def origin_headers(self) -> dict[str, str]:
        return {name.removeprefix("origin-header-"): value for name, value in self.headers.items()
                if name.startswith("origin-header-")}

    @property
    def replay_of(self) -> str | None:
        """The dead letter this one re-dead-letters, when a replayed message was refused again."""
        return self.origin_headers.get("replay-of")


def dead_letter_id(partition: int, offset: int) -> str:
    return f"{partition}-{offset}"


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def from_record(record: ConsumerRecord) -> DeadLetter:
    headers = {name: value.decode(errors="replace") for name, value in record.headers or ()}
    try:
        errors = [{"code": str(e.get("code", "")), "location": str(e.get("location", "")),
                   "message": str(e.get("message", ""))} for e in json.loads(headers.get("errors") or "[]")]
    except (ValueError, AttributeError):
        errors = []
    return DeadLetter(
        id=dead_letter_id(record.partition, record.offset), at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        channel=headers.get("channel", ""), origin_topic=headers.get("origin-topic", ""),
        origin_partition=_int(headers.get("origin-partition")), origin_offset=_int(headers.get("origin-offset")),
        errors=errors, key=record.key, raw=record.value or b"", headers=headers)


# -- reading a dead letter again, offline -------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """What the adapter (and, for a referral, the routing policy) say now, offline. No content."""

    accepted: bool
    codes: list[str]
    referrer_referral_id: str | None = None
    """The referrer's referral id (inbound), or the hub referral id the feedback names."""
    referral_id: str | None = None
    """The hub referral id, when the referral is readable now."""
    routing: str = ""
    """The routing decision now, in words (rule and recipient kind and id), for an accepted referral."""


def describe_decision(decision: RoutingDecision) -> str:
    if decision.recipient is None:
        codes = ",".join(e.code.value for e in decision.errors)
        return f"{decision.rule}: rejected ({codes})"
    return f"{decision.rule} -> {decision.recipient.kind.value} {decision.recipient.id}"


def check(letter: DeadLetter, registry: Registry, now: datetime, *, pseudonym_key: str, max_bytes: int) -> Check:
    """Run the channel's adapter on the raw message as intake would now (and routing's policy on an accepted
    referral; without running indications, which only routing knows); a feedback message against its schema
    (whether it names a referral open with its sender, only the notifier knows)."""
    if letter.feedback:
        try:
            feedback = Feedback.model_validate_json(letter.raw)
        except ValidationError:
            return Check(False, [ErrorCode.SCHEMA_INVALID.value])
        return Check(True, [], referrer_referral_id=feedback.referral_id, referral_id=feedback.referral_id,
                     routing="the notifier checks it again")
    try:
        channel = Channel(letter.channel)
    except ValueError:
        return Check(False, letter.codes)
    if (topics.inbound(letter.origin_topic) or (None,))[0] is not channel:  # a hub-internal record (routing's, ...)
        return Check(False, letter.codes)
    outcome = read_referral(channel, letter.raw, known_products=frozenset(registry.products),
                            pseudonym_key=pseudonym_key, received_at=now, max_bytes=max_bytes)
    if isinstance(outcome, Referral) and (refused := sender_rejection(registry, letter.origin_topic, outcome)):
        outcome = refused  # from an organisation that may not send as its referrer: still so
    if not isinstance(outcome, Referral):
        return Check(False, sorted({e.code.value for e in outcome.errors}), outcome.referrer_referral_id)
    return Check(True, [], outcome.referrer_referral_id, outcome.referral_id,
                 describe_decision(decide(outcome, registry, now)))


# -- rows ---------------------------------------------------------------------------------------------
class State(StrEnum):
    PENDING = "pending"
    REPLAYED = "replayed"
    ALL = "all"


@dataclass(frozen=True)
class Row:
    id: str
    at: datetime
    channel: str
    origin: str
    errors: list[str]
    """`CODE@location`."""
    referral_id: str | None
    state: State
    outcome: str
    attempts: int

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "at": self.at.isoformat(), "channel": self.channel, "origin": self.origin,
                "errors": self.errors, "referrer_referral_id": self.referral_id, "state": self.state.value,
                "outcome": self.outcome, "attempts": self.attempts}


def state_of(marker: ReplayMarker | None) -> State:
    return State.REPLAYED if marker is not None and marker.outcome in DONE else State.PENDING


def row(letter: DeadLetter, marker: ReplayMarker | None, referral_id: str | None) -> Row:
    origin = f"{letter.origin_topic}/{letter.origin_partition}/{letter.origin_offset}"
    outcome = ""
    if marker is not None:
        outcome = marker.outcome.value + (f" ({','.join(marker.codes)})" if marker.codes else "") + \
            f" {marker.at.isoformat(timespec='seconds')} by {marker.by}" + (" (auto)" if marker.automatic else "")
    return Row(letter.id, letter.at, letter.channel, origin,
               [f"{e['code']}@{e['location']}" if e["location"] else e["code"] for e in letter.errors],
               referral_id, state_of(marker), outcome, marker.attempts if marker else 0)


SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: datetime) -> datetime:
    """`2h`, `30m`, `1d`, `90s` before now, or an ISO 8601 time (UTC when it names no offset)."""
    match = SINCE.match(text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: float(match.group(1))})
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def select(letters: list[DeadLetter], markers: dict[str, ReplayMarker], *, channel: str | None = None,
           code: str | None = None, since: datetime | None = None, state: State = State.PENDING,
           ids: list[str] | None = None) -> list[DeadLetter]:
    """The dead letters matching every filter given, oldest first."""
    chosen = []
    for letter in sorted(letters, key=lambda d: (d.at, d.id)):
        if ids is not None and letter.id not in ids:
            continue
        if channel and letter.channel != channel and not letter.origin_topic.startswith(f"feedback.{channel}"):
            continue
        if code and code not in letter.codes:
            continue
        if since and letter.at < since:
            continue
        if state is not State.ALL and state_of(markers.get(letter.id)) is not state:
            continue
        chosen.append(letter)
    return chosen


def next_marker(letter: DeadLetter, previous: ReplayMarker | None, result: Check, *, at: datetime, by: str,
                already_accepted: bool, automatic: bool = False) -> ReplayMarker:
    """The marker of one replay: resubmitted when the offline check passes (unless intake accepted the same
    referral meanwhile), else still rejected with its codes; the attempts counted on."""
    if already_accepted:
        outcome = Outcome.ALREADY_ACCEPTED
    else:
        outcome = Outcome.RESUBMITTED if result.accepted else Outcome.STILL_REJECTED
    return ReplayMarker(dead_letter_id=letter.id, at=at, by=by, outcome=outcome,
                        codes=[] if result.accepted else result.codes,
                        attempts=(previous.attempts if previous else 0) + 1, automatic=automatic,
                        resubmitted_to=letter.origin_topic if outcome is Outcome.RESUBMITTED else None)


def summarise(letters: list[DeadLetter], markers: dict[str, ReplayMarker], at: datetime) -> DeadLetterSummary:
    """The pending dead letters counted per channel and code, with the oldest's time: no id, no content."""
    pending = select(letters, markers, state=State.PENDING)
    counts: dict[tuple[str, str], PendingCount] = {}
    for letter in pending:  # oldest first, so the first of each pair is its oldest
        for code in sorted(set(letter.codes)) or [""]:
            found = counts.setdefault((letter.channel, code), PendingCount(channel=letter.channel, code=code,
                                                                           count=0, oldest_at=letter.at))
            found.count += 1
    return DeadLetterSummary(at=at, total=len(letters), pending=len(pending),
                             oldest_pending_at=pending[0].at if pending else None,
                             counts=[counts[k] for k in sorted(counts)])


def due_for_auto_retry(letters: list[DeadLetter], markers: dict[str, ReplayMarker],
                       max_attempts: int) -> list[DeadLetter]:
    """Pending dead letters of a transient cause with fewer than `max_attempts` automatic attempts so far."""
    return [d for d in select(letters, markers, state=State.PENDING)
            if d.transient and not d.feedback and (markers[d.id].attempts if d.id in markers else 0) < max_attempts]
