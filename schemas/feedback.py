"""Feedback from a recipient about a handover it received (docs/design.md, "Canonical model").

Keyed like the handover it answers (youth pseudonym) and carrying the hub referral id.
"""

from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class FeedbackKind(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONTACT_MADE = "contact-made"
    INDICATION_STARTED = "indication-started"
    EVALUATION_DONE = "evaluation-done"
    CLOSED = "closed"


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
    indication_end: date | None = None
    """For `indication-started`: the product and the end date of the new indication."""
