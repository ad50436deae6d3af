"""Feedback from a recipient about a handover it received (docs/design.md, "Canonical model").

Keyed like the handover it answers (youth pseudonym) and carrying the hub referral id.
"""

from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from schemas.errors import ErrorCode, ReferralError


class FeedbackKind(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONTACT_MADE = "contact-made"
    INDICATION_STARTED = "indication-started"
    EVALUATION_DONE = "evaluation-done"
    CLOSED = "closed"
    SPECIALIST_NEEDED = "specialist-needed"
    """A WIJ team's triage found that the youth needs specialist care for `product`: routing decides again (rule 5)."""


class Feedback(BaseModel):
    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Feedback/1"
    """The `schema` header of this message on Kafka."""

    referral_id: str
    kind: FeedbackKind
    at: datetime
    reason: str | None = None
    """Why, for `declined` (the hub re-routes excluding this recipient)."""
    contact_at: datetime | None = None
    """When the resident was first contacted, for `contact-made`."""
    product: str | None = None
    """For `indication-started`: the product of the new indication; for `specialist-needed`: the product WIJ's
    triage asks specialist care for."""
    indication_end: date | None = None
    """For `indication-started`: the end date of the new indication."""


NOT_RECIPIENT_MESSAGE = ("This referral is not open with the recipient that sent the feedback (or the message is not "
                         "keyed by the youth pseudonym of its handover).")


def not_recipient(location: str = "/referral_id", message: str = NOT_RECIPIENT_MESSAGE) -> ReferralError:
    """The one refusal of feedback from a recipient the referral is not with, by routing and the notifier alike:
    the topic names the writer (the ACLs see to that), and a recipient speaks only about its own referrals."""
    return ReferralError(code=ErrorCode.NOT_RECIPIENT, location=location, message=message)
