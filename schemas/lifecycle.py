"""What arrives for a referral after it: amendments and cancellations (issue 21), and the JSON channels' withdrawal.

A referral's identity is (channel, sender, referral id): the hub referral id (`hub_referral_id`) and the organisation
whose topic first brought it. What arrives later under that identity is part of it: the same content again is a
repeat (no effect), changed content an **amendment**, a cancellation document (ZorgDomein's Annuleringsbericht,
HL7 v2 REF^I14, the JSON `Withdrawal`, a FHIR Task set to `cancelled` at the gateway) a **cancellation**. Intake
writes a `ReferralChange` to `referrals.normalised.v1` (keyed by the youth's pseudonym, so it follows the referral
in its partition); routing forwards it to the recipient holding the referral as a `RoutedChange` on
`routing.decisions.v1`; the notifier delivers it (docs/design.md, "One referral, several documents").
"""

from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ReferralError
from schemas.referral import MAX_ID_CHARS, Channel, Referral
from schemas.routing import Recipient


class ChangeKind(StrEnum):
    AMENDMENT = "amendment"
    CANCELLATION = "cancellation"


class ReferralChange(BaseModel):
    """Intake's record of a later document of a known referral, on `referrals.normalised.v1` beside the referrals
    (header `schema: verwijshub.ReferralChange/1`). An amendment carries the whole referral as the new document
    states it (`referral`: routing compares its routing facts with the referral it holds) and what the recipient is
    to read (`text`: the new document's free text); a cancellation only the ids."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.ReferralChange/1"
    """The `schema` header of this message on Kafka."""

    kind: ChangeKind
    referral_id: str = Field(description="The hub referral id of the referral changed.")
    channel: Channel
    referrer_referral_id: str
    pseudonym: str = Field(description="The youth pseudonym of the referral (the record's key).")
    at: datetime
    document: str | None = Field(default=None, description=(
        "What kind of document brought the change, where the channel says so (ZorgDomein: `referral-letter`, "
        "`appointment-request`, `supplement`, `cancellation`; HL7: `REF^I14`; `withdrawal`; `Task`)."))
    referral: Referral | None = Field(default=None, description="An amendment's referral as its document states it.")
    text: str | None = Field(default=None, description="An amendment's free text, for the recipient.")
    reason: str | None = Field(default=None, max_length=2000, description="A cancellation's reason, if given.")


class RoutedChange(BaseModel):
    """Routing's answer to a `ReferralChange`, on `routing.decisions.v1` beside the decisions (header
    `schema: verwijshub.RoutedChange/1`): the change with the recipient holding the referral, or, when routing
    does not forward it, `errors` (`AMENDMENT_REROUTES`, `REFERRAL_CLOSED`) for the referrer."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RoutedChange/1"
    """The `schema` header of this message on Kafka."""

    change: ReferralChange
    recipient: Recipient | None = None
    errors: list[ReferralError] = []
    decided_at: datetime


class Withdrawal(BaseModel):
    """The gi, ggd and court channels' withdrawal document: the referrer withdraws a referral it sent
    (`schemas/json/withdrawal.schema.json`; unknown fields refused). Sent as any referral of the channel is: on the
    organisation's topic, or `POST /referrals/<channel>` at the gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    document: Literal["withdrawal"] = Field(description="Marks the document as a withdrawal, not a referral.")
    channel: Literal["gi", "ggd", "court"]
    referral_id: str = Field(min_length=1, max_length=MAX_ID_CHARS,
                             description="The referrer's referral id of the referral withdrawn, as it was sent.")
    referrer_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description=(
        "The referrer as the referral named it: the institution's AGB (gi), the doctor's AGB or BIG (ggd), the "
        "issuer's id (court)."))
    withdrawn_on: date | None = None
    reason: str | None = Field(default=None, max_length=2000)
