"""Who may send as whom: a referrer organisation's credential (its Kafka principal, gateway token or MLLP client
certificate) may send referrals only on its own channel and only naming a referrer it lists (`referrers.json`,
`senders`). Pure; the gateway and intake both judge with it.

Why: the hub referral id is a function of channel, referrer and referral id, so a system that could write under
another referrer's AGB could take that referrer's referral ids (the genuine referral then meets
`REFERRAL_ID_CONFLICT`) or refer in its name. The organisation is known from what authenticated it, never from the
message: the principal from the topic it wrote (`referrals.<channel>.<organisation>.v1`, which only it and the
gateway may write), the token's principal, the certificate's organisation.
"""

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Channel, Referral
from schemas.registry import ReferrerOrganisation, Registry
from services.infra import principals

REFERRER_LOCATION: dict[Channel, str] = {
    Channel.GP: "Practitioner.identifier", Channel.SPECIALIST: "PRD-7", Channel.GI: "/institution/agb",
    Channel.GGD: "/doctor", Channel.COURT: "/issuer/id"}
"""Where each channel's message names its referrer."""


def organisation_of(registry: Registry, principal: str) -> ReferrerOrganisation | None:
    """The referrer organisation a principal (`referrer-<id>`) stands for, or None (no referrer, or not in the
    registry in force)."""
    return next((org for org in registry.referrers.values() if principals.referrer(org.id) == principal), None)


def organisation_sending_as(registry: Registry, channel: Channel, identifier: str) -> ReferrerOrganisation | None:
    """The organisation of `channel` that lists the referrer `identifier` (the first by id), or None: whom a tool
    sends a referral file as (`verwijshub send`, `simulate`)."""
    return next((org for org in sorted(registry.referrers.values(), key=lambda org: org.id)
                 if org.channel is channel and identifier in org.senders), None)


def sender_errors(organisation: ReferrerOrganisation, referral: Referral) -> list[ReferralError]:
    """Nothing when `organisation` may send `referral`, else the one error saying so; its text quotes nothing
    submitted."""
    if referral.channel is organisation.channel and referral.referrer.identifier in organisation.senders:
        return []
    return [ReferralError(code=ErrorCode.SENDER_NOT_ALLOWED, location=REFERRER_LOCATION[referral.channel],
                          message="The referrer this message names is not one the sending organisation may send "
                                  "as; the hub's registry lists who may send for whom.")]


def cancellation_sender_errors(organisation: ReferrerOrganisation, channel: Channel,
                               referrer_identifier: str | None) -> list[ReferralError]:
    """As `sender_errors`, for a cancellation naming `referrer_identifier` (None: a Task, which names the referral by
    its hub id only; intake then checks the organisation against the one that sent the referral)."""
    if channel is organisation.channel and (referrer_identifier is None or referrer_identifier in organisation.senders):
        return []
    return [ReferralError(code=ErrorCode.SENDER_NOT_ALLOWED, location=REFERRER_LOCATION[channel],
                          message="The referrer this message names is not one the sending organisation may send "
                                  "as; the hub's registry lists who may send for whom.")]
