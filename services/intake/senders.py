"""Intake's sender check: a referral read from a referrer organisation's own topic must name a referrer that
organisation may send as (`services/access/senders.py`). Pure.

Intake cannot trust a header or the message to say who wrote a record; the topic does: only the organisation's
principal (and the gateway, for the organisation it authenticated) may write `referrals.<channel>.<id>.v1`. The
channel's own topic, `referrals.<channel>.v1`, is written by the admin alone (replays, tests), whom the hub
trusts: its records are not bound to an organisation.
"""

from datetime import datetime
from typing import Any

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Channel, Referral
from schemas.registry import Registry
from schemas.routing import RoutingAlert
from services.access.senders import REFERRER_LOCATION, cancellation_sender_errors, sender_errors
from services.infra import topics
from services.intake.outcome import Rejection

SENDER_NOT_ALLOWED = "sender-not-allowed"
"""The alert's kind on `alerts.v1`."""


def sender_rejection(registry: Registry, topic: str, referral: Referral) -> Rejection | None:
    """None when the writer of `topic` may send `referral`, else its rejection (`SENDER_NOT_ALLOWED`)."""
    channel, organisation_id = topics.inbound(topic) or (referral.channel, None)
    if organisation_id is None:
        return None
    organisation = registry.referrers.get(organisation_id)
    errors = (sender_errors(organisation, referral) if organisation is not None and organisation.channel is channel
              else [ReferralError(code=ErrorCode.SENDER_NOT_ALLOWED, location=REFERRER_LOCATION[channel],
                                  message="The organisation of this topic is not a referrer of this channel in "
                                          "the hub's registry.")])
    return Rejection(errors, referral.referrer_referral_id) if errors else None


def cancellation_sender_rejection(registry: Registry, topic: str, cancellation: Any) -> Rejection | None:
    """None when the writer of `topic` may send a cancellation naming its referrer (a Task names none: the ledger's
    sender decides), else its rejection (`SENDER_NOT_ALLOWED`)."""
    channel, organisation_id = topics.inbound(topic) or (cancellation.channel, None)
    if organisation_id is None:
        return None
    organisation = registry.referrers.get(organisation_id)
    errors = (cancellation_sender_errors(organisation, channel, cancellation.referrer_identifier)
              if organisation is not None else sender_errors_unknown(channel))
    return Rejection(errors, cancellation.referrer_referral_id) if errors else None


def sender_errors_unknown(channel: Channel) -> list[ReferralError]:
    return [ReferralError(code=ErrorCode.SENDER_NOT_ALLOWED, location=REFERRER_LOCATION[channel],
                          message="The organisation of this topic is not a referrer of this channel in the hub's "
                                  "registry.")]


def sender_alert(channel: Channel, organisation_id: str, now: datetime) -> RoutingAlert:
    """For operations: which organisation tried to send as a referrer it may not (no youth, no referral)."""
    return RoutingAlert(kind=SENDER_NOT_ALLOWED, at=now, channel=channel, message=(
        f"The referrer organisation {organisation_id} sent a referral on channel {channel.value} naming a referrer "
        f"it may not send as: refused ({ErrorCode.SENDER_NOT_ALLOWED.value}). See `verwijshub dlq list --code "
        f"{ErrorCode.SENDER_NOT_ALLOWED.value} --channel {channel.value}`."))
