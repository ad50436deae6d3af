"""A referral id bound to its first content: whether an accepted referral is new, a repeat, or a conflict. Pure.

The hub referral id is a function of channel, referrer and the referrer's referral id (`hub_referral_id`), so
anyone who can write a channel's topic and knows (or guesses) a referrer's AGB and numbering can send a referral
under an id another referrer will use. Until this module, intake dropped every second message with a known id as
"duplicate referral ignored": whoever sent first won, and a genuine re-send with changed content vanished too,
after the referrer had been told received (202, AA). Now intake records with each accepted id the digest of what
was referred (`intake.accepted.v1`, `services/intake/ledger.py`), and a later message with that id is judged:

- **new**: the id is not in the ledger: accepted;
- **repeat**: the same digest: the same referral sent again (a retry, a redelivery, the gateway's resend after a
  timeout): no second effect, as before;
- **conflict**: another digest: refused with `REFERRAL_ID_CONFLICT` (a dead letter and the `rejected` status,
  as every rejection) and an alert, never dropped in silence. The first referral stands unchanged.

Since issue 21 a changed message is an **amendment** when it is of the same referral: the same organisation's topic
brought it and it names the same youth (the referral id stays bound to its youth: the youth's pseudonym keys the
referral's partition, and another youth is another referral). Every later document's digest is recorded too, so
each has one effect; once cancelled, a referral takes nothing more (`REFERRAL_CLOSED`). Whether an amendment would
change the routing is routing's to judge (`services/routing/core.py`, `on_change`).
"""

import hashlib
import json
from datetime import datetime
from enum import StrEnum

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import AcceptedReferral, Channel, Referral
from schemas.routing import RoutingAlert
from services.intake.outcome import Rejection

HUB_SET_FIELDS = frozenset({"received_at", "referral_id"})
"""What the hub adds to a referral rather than the referrer stating it: when intake read it (a redelivery reads it
again, later), and the id derived from channel, referrer and referral id (the ledger's key already)."""
TRANSPORT_FIELDS = frozenset({"fhir_version"})
"""What the hub notes of how a referral was sent rather than what was referred: the same referral sent again in
the other FHIR version (STU3 or R4) is a repeat; and left out, the field leaves the digests recorded before it."""
NO_DIGEST = ""
"""The digest of a ledger record written before intake recorded digests: its content is unknown, so a referral
with its id counts as a repeat, as every known id did then."""
REFERRAL_ID_CONFLICT = "referral-id-conflict"
"""The alert's kind on `alerts.v1`."""
REFERRAL_ID_LOCATION: dict[Channel, str] = {
    Channel.GP: "ServiceRequest.identifier", Channel.SPECIALIST: "RF1-6",
    Channel.GI: "/referral_id", Channel.GGD: "/referral_id", Channel.COURT: "/referral_id"}
"""Where each channel's message carries the referrer's referral id (a ZorgDomein document's is its Composition's
identifier, which the canonical referral no longer tells apart)."""


class Seen(StrEnum):
    NEW = "new"
    REPEAT = "repeat"
    AMENDMENT = "amendment"
    CONFLICT = "conflict"
    CLOSED = "closed"
    """Of a referral its referrer cancelled."""


def referral_digest(referral: Referral) -> str:
    """SHA-256 (hex) of the canonical referral without what the hub set itself (`HUB_SET_FIELDS`) or noted of the
    transport (`TRANSPORT_FIELDS`), and without the youth's pseudonym (derived from the BSN, which is in; a new
    pseudonym key must not make every referral a conflict).

    Why the canonical referral and not the message: the message also carries transport details that legitimately
    change when the same referral is sent again (a FHIR Bundle's id, MessageHeader and timestamp, HL7's MSH-7 and
    MSH-10 control id, the segment separators, JSON whitespace and key order, surrounding blanks of a name), and
    none of them reach the recipient. What the canonical referral holds is what the referrer stated and the
    recipient is handed: the youth, the referrer, dates, product, flags, preferences and free text. Two messages
    that agree on all of it are the same referral, whatever they looked like; two that differ in any of it are not,
    and handing over only the first would leave the second's change unseen.

    Fields at their default are left out, so a field added to the canonical model later, with a default, does not
    change the digest of the referrals recorded before it."""
    content = referral.model_dump(mode="json", exclude_defaults=True,
                                  exclude={**dict.fromkeys(HUB_SET_FIELDS | TRANSPORT_FIELDS, True),
                                           "youth": {"pseudonym"}})
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seen(recorded: AcceptedReferral | None, digest: str, pseudonym: str | None = None,
         organisation: str = "") -> Seen:
    """What a referral with `digest` (of youth `pseudonym`, from `organisation`'s topic; "" the channel's own) is,
    given what the ledger holds for its id (None: the id is unknown)."""
    if recorded is None:
        return Seen.NEW
    if recorded.digest in (None, NO_DIGEST) or digest == recorded.digest or digest in recorded.digests:
        return Seen.REPEAT
    if recorded.cancelled:
        return Seen.CLOSED
    if recorded.pseudonym is None or recorded.pseudonym != pseudonym or (recorded.organisation or "") != organisation:
        return Seen.CONFLICT  # another youth, or another writer, or a record from before amendments: bound as before
    return Seen.AMENDMENT


class Cancelled(StrEnum):
    CANCEL = "cancel"
    REPEAT = "repeat"
    UNKNOWN = "unknown"


def cancellation_verdict(recorded: AcceptedReferral | None, organisation: str) -> Cancelled:
    """A cancellation of the referral the ledger holds as `recorded`, from `organisation`'s topic: only the
    organisation that sent the referral may cancel it; to any other it is unknown (nothing tells it what exists)."""
    if recorded is None or recorded.pseudonym is None or (recorded.organisation or "") != organisation:
        return Cancelled.UNKNOWN
    return Cancelled.REPEAT if recorded.cancelled else Cancelled.CANCEL


def unknown_rejection(channel: Channel, referrer_referral_id: str | None, location: str) -> Rejection:
    """A change (cancellation, ZorgDomein supplement) of a referral the hub does not hold from this sender."""
    return Rejection([ReferralError(
        code=ErrorCode.REFERRAL_UNKNOWN, location=location,
        message="No referral with this referral id was received from this sender; nothing was changed.")],
        referrer_referral_id)


def closed_rejection(referral: Referral) -> Rejection:
    return Rejection([ReferralError(
        code=ErrorCode.REFERRAL_CLOSED, location=REFERRAL_ID_LOCATION[referral.channel],
        message="This referral was cancelled; it takes no more documents. Send a new referral under a new "
                "referral id.")], referral.referrer_referral_id)


def conflict_rejection(referral: Referral) -> Rejection:
    """The rejection of a referral whose id is bound to other content; its text quotes nothing submitted."""
    return Rejection([ReferralError(
        code=ErrorCode.REFERRAL_ID_CONFLICT, location=REFERRAL_ID_LOCATION[referral.channel],
        message="This referral id was already used for a referral with other content; that referral stands. "
                "Send a new referral under a new referral id.")], referral.referrer_referral_id)


def conflict_alert(channel: Channel, now: datetime) -> RoutingAlert:
    """The alert for operations: which channel and code, nothing of the referral (the dead letter holds it, for
    the admin). A conflict is a second sender using another's referral ids, or a referrer re-sending a changed
    referral under its old id; either way someone must look."""
    return RoutingAlert(kind=REFERRAL_ID_CONFLICT, at=now, channel=channel, message=(
        f"A referral on channel {channel.value} came with a referral id already bound to other content: refused "
        f"({ErrorCode.REFERRAL_ID_CONFLICT.value}), the first referral stands. Another sender using that "
        f"referrer's ids, or a changed re-send: see `verwijshub dlq list --code "
        f"{ErrorCode.REFERRAL_ID_CONFLICT.value} --channel {channel.value}`."))
