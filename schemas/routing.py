"""Routing decisions: who gets the referral, which rule decided, and the trace that explains it."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from schemas.errors import ReferralError
from schemas.indications import Indication
from schemas.referral import Channel, Referral


class RecipientKind(StrEnum):
    WIJ_TEAM = "wij-team"
    PROVIDER = "provider"


class Recipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: RecipientKind
    id: str
    name: str
    topic: str


class RuleOutcome(BaseModel):
    """One rule's verdict in words, so that a person can follow the decision."""

    model_config = ConfigDict(frozen=True)

    rule: str
    decided: bool
    reason: str


class RoutingDecision(BaseModel):
    """The routing of one referral. `recipient` is None exactly when the referral is rejected."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RoutingDecision/1"
    """The `schema` header of this message on Kafka."""

    referral_id: str
    recipient: Recipient | None
    rule: str
    trace: list[RuleOutcome]
    flags: list[str] = []
    errors: list[ReferralError] = []
    decided_at: datetime
    registry_version: str
    previous_recipient: Recipient | None = None
    """Who had the youth before, for a warm handover: a stopped provider, one that declined, or the WIJ team whose
    triage asked for specialist care; the recipient itself when that re-decision keeps the referral there."""
    referral: Referral

    @property
    def rejected(self) -> bool:
        return self.recipient is None

    @property
    def kept(self) -> bool:
        """A re-decision that leaves the referral with the recipient it was with (`previous_recipient`)."""
        before, now = self.previous_recipient, self.recipient
        return before is not None and now is not None and (before.kind, before.id) == (now.kind, now.id)


class RoutingAlert(BaseModel):
    """A message on `alerts.v1` (key: youth pseudonym, or the channel for an alert about no one youth) for
    operations and WIJ management; no personal data."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Alert/1"
    """The `schema` header of this message on Kafka."""

    kind: str
    """E.g. `provider-stopped`."""
    at: datetime
    pseudonym: str | None = None
    """The youth it is about; None for intake's `referral-id-conflict`, which names no youth."""
    channel: Channel | None = None
    """The referrer channel, for intake's `referral-id-conflict`."""
    referral_id: str | None = None
    provider: str | None = None
    team: str | None = None
    message: str


class OpenReferral(BaseModel):
    """A referral routing still answers for: its latest decision (with the referral, which a re-decision needs)
    and every recipient that declined it so far."""

    model_config = ConfigDict(frozen=True)

    decision: RoutingDecision
    declined: list[str] = []
    """Team ids and AGB codes, sorted: a re-decision excludes them all."""


class YouthRouting(BaseModel):
    """Routing's state of one youth on the compacted `routing.state.v1` (key: youth pseudonym, in the partition of
    the youth's referrals). Only open work: a closed referral leaves it, and a youth with no open referral and no
    running indication has no record (a tombstone)."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.YouthRouting/1"
    """The `schema` header of this message on Kafka."""

    pseudonym: str
    referrals: dict[str, OpenReferral] = {}
    """Hub referral id -> the open referral."""
    indications: list[Indication] = []
    """The youth's indications as on `indications.v1` (rule 2, provider stops)."""


class RoutingLoad(BaseModel):
    """The value on the compacted `routing.load.v1`, key the routing partition's number (text): the open
    handovers per provider AGB in that partition. Counts only, no personal data; routing sums every partition's
    latest record to spread referrals over providers."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RoutingLoad/1"
    """The `schema` header of this message on Kafka."""

    partition: int
    at: datetime
    open: dict[str, int] = {}
