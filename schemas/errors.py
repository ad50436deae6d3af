"""Why a message was refused: a stable code, where in the message, and a sentence a person understands."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ErrorCode(StrEnum):
    UNPARSEABLE = "UNPARSEABLE"
    SCHEMA_INVALID = "SCHEMA_INVALID"
    BSN_MISSING = "BSN_MISSING"
    BSN_INVALID = "BSN_INVALID"
    AGB_INVALID = "AGB_INVALID"
    PRODUCT_UNKNOWN = "PRODUCT_UNKNOWN"
    DATE_INVALID = "DATE_INVALID"
    AGE_OUT_OF_RANGE = "AGE_OUT_OF_RANGE"
    OUTSIDE_MUNICIPALITY = "OUTSIDE_MUNICIPALITY"
    CHANNEL_MISMATCH = "CHANNEL_MISMATCH"
    TOO_LARGE = "TOO_LARGE"
    TOO_LONG = "TOO_LONG"
    """A text field longer than the canonical model allows (`schemas/referral.py`, `TEXT_LIMITS`)."""
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    """What the hub would write for this record is larger than its topic takes (`max.message.bytes`)."""
    NOT_RECIPIENT = "NOT_RECIPIENT"
    """Feedback about a referral that is not open with the recipient that sent it."""
    INDICATION_INVALID = "INDICATION_INVALID"
    """An `indication-started` without a product of the provider's contract, or ending before it starts or later
    than the region's longest indication (`VERWIJSHUB_INDICATION_MAX_DAYS`)."""
    SPECIALIST_REQUEST_INVALID = "SPECIALIST_REQUEST_INVALID"
    """A `specialist-needed` from other than a WIJ team, or without a product of the registry."""
    REFERRAL_ID_CONFLICT = "REFERRAL_ID_CONFLICT"
    """A referral whose hub referral id (channel, referrer, referral id) intake already accepted with other content:
    the id stays bound to its first referral (`services/intake/repeats.py`)."""
    SENDER_NOT_ALLOWED = "SENDER_NOT_ALLOWED"
    """The referrer the message names (its AGB, BIG or issuer id) is not one the organisation whose credential,
    token or certificate sent it may send as (`referrers.json`, `services/access/senders.py`)."""
    REFERRAL_UNKNOWN = "REFERRAL_UNKNOWN"
    """An amendment (a ZorgDomein supplement) or a cancellation of a referral the hub never accepted from that
    sender (channel, referrer, referral id): there is nothing to change."""
    REFERRAL_CLOSED = "REFERRAL_CLOSED"
    """A change of a referral that is no longer open: cancelled, closed by its recipient, or rejected by routing."""
    AMENDMENT_REROUTES = "AMENDMENT_REROUTES"
    """An amendment that would change the routing (another youth, referral date, product, specialist or continued
    care, preferred provider): refused, the referral stands as it was; the referrer sends a new referral (and may
    cancel this one)."""
    RATE_LIMITED = "RATE_LIMITED"
    """More messages from one organisation than the gateway takes per minute (MLLP: an AR; HTTPS answers 429)."""


class ReferralError(BaseModel):
    """One problem with one message; `location` is a JSON pointer, FHIR path or HL7 field (`PID-3`)."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    location: str
    message: str
