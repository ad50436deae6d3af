"""One record of a hub topic -> the pseudonymised facts the analytics store keeps of it. Pure: no Kafka, no DuckDB.

Why a core of its own: what may leave the topics for the store is the part a privacy officer must be able to
check. Only these leave: the youth pseudonym, the age in years on the referral date, the PC4 and its WIJ team,
dates and times, and codes (channel, referrer type, product, rule, recipient id, status, error code, feedback
kind, GI measure). Never a BSN, a name, a birth date, a full postcode, a referrer's own referral id, or any free
text (reasons, messages, notes, traces): the functions below copy named fields, never a whole record.

Each fact names its source (topic, partition, offset), so reading a topic again writes the same rows: the store
upserts on that key, and on the hub referral id for the one `referrals` row per referral.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from schemas.feedback import Feedback
from schemas.routing import RoutingAlert, RoutingDecision
from schemas.status import StatusEvent
from services.infra import topics

STATUS_TOPIC = re.compile(r"^status\.([a-z]+)\.v1$")
FEEDBACK_TOPIC = re.compile(r"^feedback\.(wij|provider)\.([^.]+)\.v1$")
INPUT_PATTERN = r"^(routing\.decisions\.v1|alerts\.v1|status\.[a-z]+\.v1|feedback\.(wij|provider)\.[^.]+\.v1)$"
"""What the sink reads: decisions, statuses, feedback and alerts. No handover topic (BSN, names, notices), no
inbound or normalised referral, no dead letter."""


@dataclass(frozen=True)
class Fact:
    """One row for one table of the store (`services/analytics/store.py` holds the tables' columns)."""

    table: str
    row: dict[str, Any]


def age_in_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def utc(moment: datetime | None) -> datetime | None:
    """Naive UTC, as the store keeps times (so no time zone library is needed to read them back)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment else None


def _codes(errors: list[Any]) -> str:
    return ",".join(sorted({error.code.value for error in errors}))


def facts_of(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             team_of_pc4: dict[str, str]) -> list[Fact]:
    """The facts of one record; none for a record that is not the model its topic carries (it stays on the
    topic, and the dead-letter handling of the hub is not the store's business)."""
    source = {"topic": topic, "partition": partition, "offset": offset}
    if value is None:
        return []
    try:
        if topic == topics.DECISIONS:
            return decision_facts(RoutingDecision.model_validate_json(value), source, team_of_pc4)
        if topic == topics.ALERTS:
            alert = RoutingAlert.model_validate_json(value)
            return [Fact("alerts", {**source, "kind": alert.kind, "at": utc(alert.at), "pseudonym": alert.pseudonym,
                                    "referral_id": alert.referral_id, "provider": alert.provider,
                                    "team": alert.team})]
        if STATUS_TOPIC.match(topic):
            event = StatusEvent.model_validate_json(value)
            return [Fact("statuses", {**source, "referral_id": event.referral_id, "channel": event.channel.value,
                                      "status": event.status.value, "at": utc(event.at),
                                      "error_codes": _codes(event.errors)})]
        if found := FEEDBACK_TOPIC.match(topic):
            feedback = Feedback.model_validate_json(value)
            return [Fact("feedback", {
                **source, "recipient_kind": found.group(1), "recipient_id": found.group(2),
                "pseudonym": key.decode(errors="replace") if key else None, "referral_id": feedback.referral_id,
                "kind": feedback.kind.value, "at": utc(feedback.at), "contact_at": utc(feedback.contact_at),
                "product": feedback.product, "indication_end": feedback.indication_end})]
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    return []


def decision_facts(decision: RoutingDecision, source: dict[str, Any], team_of_pc4: dict[str, str]) -> list[Fact]:
    referral = decision.referral
    youth = referral.youth
    recipient, previous = decision.recipient, decision.previous_recipient
    return [
        Fact("referrals", {
            "referral_id": referral.referral_id, "channel": referral.channel.value,
            "referrer_type": referral.referrer.type.value, "referral_date": referral.referral_date,
            "pseudonym": youth.pseudonym, "age_years": age_in_years(youth.birth_date, referral.referral_date),
            "pc4": youth.pc4, "team": team_of_pc4.get(youth.pc4) or None, "product": referral.product,
            "specialist_asked": referral.specialist_asked, "continuation": referral.continuation,
            "gi_measure": referral.measure}),
        Fact("decisions", {
            **source, "referral_id": decision.referral_id, "decided_at": utc(decision.decided_at),
            "rule": decision.rule, "recipient_kind": recipient.kind.value if recipient else None,
            "recipient_id": recipient.id if recipient else None,
            "previous_kind": previous.kind.value if previous else None,
            "previous_id": previous.id if previous else None, "flags": ",".join(sorted(decision.flags)),
            "error_codes": _codes(decision.errors)}),
    ]
