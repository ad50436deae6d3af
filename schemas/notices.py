"""What the notifier tells recipients besides handovers, and the follow-up state it keeps per youth.

`RecipientNotice` goes on a recipient's own handover topic (header `schema: verwijshub.Notice/1`), so a
team or provider reads everything meant for it from one topic. `YouthFollowUp` is the value of the
compacted `notifier.state.v1` (key: youth pseudonym): the open handovers, contact clocks and expiry
reminders of one youth, so that a restarted or newly assigned notifier carries on where the last left off.
"""

from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.referral import Channel
from schemas.routing import Recipient


class NoticeKind(StrEnum):
    SLA_AT_RISK = "sla-at-risk"
    SLA_BREACHED = "sla-breached"
    HANDED_OVER_ELSEWHERE = "handed-over-elsewhere"
    """To the recipient a referral moved away from as a warm handover (a stopped provider; a WIJ team whose triage
    asked for specialist care): the new recipient will contact it."""
    KEPT = "kept"
    """To the recipient a re-decision left the referral with, and why (WIJ's request for specialist care when no
    Open House provider may take it: flagged for its behavioural scientist)."""
    CANCELLED = "cancelled"
    """To the recipient holding a referral its referrer cancelled: the referral is closed, its contact clock
    stopped."""
    EVALUATION_DUE = "evaluation-due"
    EVALUATION_REMINDER = "evaluation-reminder"
    RETRIAGE_EXPECTED = "retriage-expected"


class RecipientNotice(BaseModel):
    """A notice for one team or provider; names the hub referral id or the indication, never the youth."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Notice/1"
    """The `schema` header of this message on Kafka."""

    kind: NoticeKind
    at: datetime
    referral_id: str | None = None
    product: str | None = None
    indication_end: date | None = None
    due: datetime | None = Field(default=None, description="The deadline the notice is about, if any.")
    message: str


class ContactClock(BaseModel):
    """The promise of first contact within 5 working days of a handover to a WIJ team."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime
    at_risk_at: datetime
    due_at: datetime
    at_risk_sent: bool = False
    breached_sent: bool = False


class OpenHandover(BaseModel):
    """A referral handed to `recipient` and not closed: feedback for it is accepted from that recipient only."""

    model_config = ConfigDict(frozen=True)

    referral_id: str
    referrer_referral_id: str
    channel: Channel
    recipient: Recipient
    clock: ContactClock | None = None
    declined: bool = False
    """This recipient declined it; the hub re-decides (the referrer was told `declined`)."""
    previous: Recipient | None = None
    """Who held it before this re-decision. The notifier reads decisions and feedback from different topics, so
    the feedback that caused the re-decision (a decline, WIJ's request for specialist care) can arrive after it:
    from `previous` it is taken for what it was, not refused."""
    previous_declined: bool = False
    """`previous` declined and the referrer was told, so its decline arriving again has no effect."""


class IndicationWatch(BaseModel):
    """The expiry reminders of one running indication (3 and 2 months before its end)."""

    model_config = ConfigDict(frozen=True)

    product: str
    provider_agb: str
    end: date
    referral_id: str | None = None
    first_sent: bool = False
    second_sent: bool = False
    evaluation_done: bool = False

    @property
    def key(self) -> str:
        return f"{self.provider_agb}:{self.product}:{self.end.isoformat()}"


class ClockCounts(BaseModel):
    """Contact clocks of one recipient: open (running, at risk included), at risk (its at-risk notice sent,
    not breached), breached (the promise was not kept and the handover is still open)."""

    model_config = ConfigDict(frozen=True)

    open: int = 0
    at_risk: int = 0
    breached: int = 0

    def __add__(self, other: "ClockCounts") -> "ClockCounts":
        return ClockCounts(open=self.open + other.open, at_risk=self.at_risk + other.at_risk,
                           breached=self.breached + other.breached)


class RecipientClocks(BaseModel):
    """The value on the compacted `ops.recipients.v1`, key the notifier partition's number (text): the contact
    clocks of that partition's open handovers per recipient principal (`wij-<team>`, `provider-<agb>`).
    Counts only, never a pseudonym, referral id or name, so operations may read it."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RecipientClocks/1"
    """The `schema` header of this message on Kafka."""

    partition: int
    at: datetime
    recipients: dict[str, ClockCounts] = {}


class YouthFollowUp(BaseModel):
    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.YouthFollowUp/1"
    """The `schema` header of this message on Kafka."""

    pseudonym: str
    team_id: str | None = Field(default=None, description="The youth's WIJ team, for re-triage notices.")
    handovers: dict[str, OpenHandover] = {}
    watches: dict[str, IndicationWatch] = {}
    seen: dict[str, int] = Field(default={}, description="topic:partition -> the last offset applied, so a "
                                 "record delivered again after a rebalance is not acted on twice.")
