"""Status events to the referrer: one clear answer for every step of its referral, never a BSN."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from schemas.errors import ReferralError
from schemas.referral import Channel


class ReferralStatus(StrEnum):
    RECEIVED = "received"
    REJECTED = "rejected"
    ROUTED = "routed"
    HANDED_OVER = "handed-over"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONTACT_MADE = "contact-made"
    SLA_AT_RISK = "sla-at-risk"
    SLA_BREACHED = "sla-breached"
    REROUTED = "rerouted"
    CLOSED = "closed"
    AMENDED = "amended"
    CANCELLED = "cancelled"
    CHANGE_REFUSED = "change-refused"


FHIR_TASK_STATUS: dict[ReferralStatus, str] = {
    ReferralStatus.RECEIVED: "received",
    ReferralStatus.REJECTED: "rejected",
    ReferralStatus.ROUTED: "ready",
    ReferralStatus.HANDED_OVER: "requested",
    ReferralStatus.ACCEPTED: "accepted",
    ReferralStatus.DECLINED: "rejected",
    ReferralStatus.CONTACT_MADE: "in-progress",
    ReferralStatus.SLA_AT_RISK: "in-progress",
    ReferralStatus.SLA_BREACHED: "in-progress",
    ReferralStatus.REROUTED: "requested",
    ReferralStatus.CLOSED: "completed",
    ReferralStatus.AMENDED: "requested",
    ReferralStatus.CANCELLED: "cancelled",
    ReferralStatus.CHANGE_REFUSED: "requested",
}
"""The FHIR R4 Task.status each hub status corresponds to; the hub status itself is the businessStatus."""


class StatusEvent(BaseModel):
    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.StatusEvent/1"
    """The `schema` header of this message on Kafka."""

    referrer_referral_id: str
    referral_id: str | None = None
    channel: Channel
    status: ReferralStatus
    at: datetime
    task_status: str
    business_status: str
    detail: str | None = None
    errors: list[ReferralError] = []

    @classmethod
    def of(cls, channel: Channel, referrer_referral_id: str, referral_id: str | None, status: ReferralStatus,
           at: datetime, detail: str | None = None, errors: list[ReferralError] | None = None) -> "StatusEvent":
        return cls(
            referrer_referral_id=referrer_referral_id, referral_id=referral_id, channel=channel,
            status=status, at=at, task_status=FHIR_TASK_STATUS[status], business_status=status.value,
            detail=detail, errors=errors or [],
        )
