"""The recipient API's state: each handover as a FHIR Task its recipient moves on (services/recipients/).

`RecipientTasks` is the value of the compacted `recipients.state.v1` (key: youth pseudonym, in the partition of the
youth's handovers): the Tasks of one youth at the recipients that use the API, their versions and where on the
handover topics their records lie. Written in the same transaction as the feedback a Task update becomes, so a
restarted service carries on from it; the handover topics' own retention (90 days) does not bound a Task's life.
No BSN or name (a decline's reason is the recipient's own text): the handover itself is read back from its
topic when a recipient asks for it.
"""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class TaskStatus(StrEnum):
    """The FHIR R4 Task.status values a handover's Task takes (HL7 BSeR)."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    """The referral left this recipient: its referrer cancelled it, or the hub handed it over elsewhere."""


class RecordRef(BaseModel):
    """Where a record lies: a handover or a notice on a recipient's handover topic."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    schema_: str = Field(default="", alias="schema", description="The record's `schema` header.")


class RecipientTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The handover message's Task id (one per handover).")
    bundle_id: str = Field(description="The handover message Bundle's id.")
    referral_id: str
    owner: str = Field(description="The recipient's principal: `wij-<team>` or `provider-<agb>`.")
    status: TaskStatus = TaskStatus.REQUESTED
    business_status: str | None = Field(default=None, description="`contact-made`, `indication-started`.")
    status_reason: str | None = Field(default=None, description="The recipient's own reason for a decline.")
    contact_at: datetime | None = None
    indication_product: str | None = None
    indication_end: str | None = None
    version: int = 1
    handed_over_at: datetime
    last_updated: datetime
    handover: RecordRef
    notices: list[RecordRef] = Field(default=[], description="Later records about this Task on the same topic.")
    last_change: str | None = Field(default=None, description="Digest of the update that made this version from "
                                    "the one before: the same update retried is answered, not applied again.")


class RecipientTasks(BaseModel):
    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RecipientTasks/1"
    """The `schema` header of this message on Kafka."""

    pseudonym: str
    tasks: dict[str, RecipientTask] = {}


class SubscriptionStatus(StrEnum):
    """FHIR R4 Subscription.status: requested until the handshake succeeds, error while the hook fails."""

    REQUESTED = "requested"
    ACTIVE = "active"
    ERROR = "error"
    OFF = "off"


class PayloadContent(StrEnum):
    """The backport IG's payload content codes (extension backport-payload-content)."""

    EMPTY = "empty"
    ID_ONLY = "id-only"
    FULL_RESOURCE = "full-resource"


class SubscriptionEvent(BaseModel):
    """One numbered event: a Task of the subscriber new or changed."""

    model_config = ConfigDict(frozen=True)

    number: int
    task_id: str
    at: datetime


class SeenTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    last_updated: datetime


class Subscription(BaseModel):
    """A recipient's FHIR Subscription (Subscriptions Backport IG, R4) and where its delivery stands: the value of the
    compacted `recipients.subscriptions.v1` (key: the subscription id). Written before a notification is sent (so an
    event number, once sent, is never given to another Task) and after it was delivered. No personal data: Task ids,
    versions and times only; the endpoint and reason are the recipient's own."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Subscription/1"

    id: str
    owner: str = Field(description="The recipient's principal: `wij-<team>` or `provider-<agb>`.")
    endpoint: str = Field(description="The recipient's https rest-hook.")
    headers: list[str] = Field(default=[], description="Subscription.channel.header, sent with every notification.")
    payload: PayloadContent = PayloadContent.ID_ONLY
    heartbeat_s: int | None = None
    timeout_s: int = 10
    reason: str = ""
    end: datetime | None = None
    status: SubscriptionStatus = SubscriptionStatus.REQUESTED
    created_at: datetime
    handshaken: bool = False
    events: int = Field(default=0, description="eventsSinceSubscriptionStart: the last event number given.")
    pending: list[SubscriptionEvent] = Field(default=[], description="Numbered, not yet delivered, oldest first.")
    dropped: int = Field(default=0, description="Events given up undelivered (more pending than kept): the receiver "
                         "sees the gap in the numbers and polls.")
    seen: dict[str, SeenTask] = Field(default={}, description="The Task versions already numbered, of Tasks changed "
                                      "since the horizon (watermark - grace).")
    watermark: datetime
    attempts: int = 0
    next_attempt: datetime | None = None
    last_sent: datetime | None = None
    error: str | None = None
