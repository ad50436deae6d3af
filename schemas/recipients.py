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
