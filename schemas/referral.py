"""The canonical referral: what every channel's message is normalised to."""

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Channel(StrEnum):
    """The referrer channels of the hub; each has its own inbound topic and format."""

    GP = "gp"
    GI = "gi"
    GGD = "ggd"
    COURT = "court"
    SPECIALIST = "specialist"


class ReferrerType(StrEnum):
    """iJw code list 'type verwijzer' (JW315/JW321): the kinds of referrer the hub serves."""

    HUISARTS = "02"
    JEUGDARTS = "03"
    GECERTIFICEERDE_INSTELLING = "04"
    MEDISCH_SPECIALIST = "05"
    RECHTER_RAAD_OVJ = "08"


REFERRER_TYPE_OF_CHANNEL: dict[Channel, ReferrerType] = {
    Channel.GP: ReferrerType.HUISARTS,
    Channel.GGD: ReferrerType.JEUGDARTS,
    Channel.GI: ReferrerType.GECERTIFICEERDE_INSTELLING,
    Channel.SPECIALIST: ReferrerType.MEDISCH_SPECIALIST,
    Channel.COURT: ReferrerType.RECHTER_RAAD_OVJ,
}

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
AGB_SYSTEM = "http://fhir.nl/fhir/NamingSystem/agb-z"
BIG_SYSTEM = "http://fhir.nl/fhir/NamingSystem/big"
"""The Dutch FHIR naming systems of BSN, AGB and BIG numbers (docs/domain.md, "Identifiers"), as every channel
and the handover name them."""
PRODUCT_SYSTEM = "urn:ijw:productcode"
CATEGORY_SYSTEM = "urn:verwijshub:referral-category"
"""The iJw product code and the hub's referral categories (`specialist`, `continuation`) in FHIR codings, as
the GP channel reads them and the handover writes them."""

_HUB_ID_NAMESPACE = uuid.UUID("7a1d2c57-1b8e-4f2e-9f3a-6c0de5a0b1e1")


def hub_referral_id(channel: Channel, referrer_id: str, referrer_referral_id: str) -> str:
    """The hub's id of a referral: the same referral sent twice gets the same id (deduplication)."""
    return str(uuid.uuid5(_HUB_ID_NAMESPACE, f"{channel}|{referrer_id}|{referrer_referral_id}"))


class Referrer(BaseModel):
    """Who referred: the identifier system says what kind of id it is (AGB, URA, a GI's own)."""

    model_config = ConfigDict(frozen=True)

    type: ReferrerType
    identifier_system: str
    identifier: str
    display: str | None = None


class Youth(BaseModel):
    """The youth referred. Personal data: goes only to the one recipient, never to logs or keys."""

    model_config = ConfigDict(frozen=True)

    bsn: str = Field(pattern=r"^\d{9}$")
    pseudonym: str = Field(description="HMAC-SHA256 of the BSN under the hub's key, hex.")
    birth_date: date
    postcode: str = Field(pattern=r"^\d{4} [A-Z]{2}$", description="Normalised as `1234 AB`.")
    given_name: str | None = None
    family_name: str | None = None

    @property
    def pc4(self) -> str:
        return self.postcode[:4]


class Referral(BaseModel):
    """A referral as the hub understands it, whatever channel it came in on."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Referral/1"
    """The `schema` header of this message on Kafka."""

    referral_id: str = Field(description="The hub's id; see `hub_referral_id`.")
    channel: Channel
    referrer: Referrer
    referrer_referral_id: str
    referral_date: date
    youth: Youth
    product: str | None = Field(default=None, description="iJw product code; none for plain 'basis jeugdhulp'.")
    specialist_asked: bool = False
    continuation: bool = Field(default=False, description="Continues care that started before 18.")
    preferred_provider: str | None = Field(default=None, description="AGB of the provider the client prefers.")
    preference_notes: str | None = None
    free_text: str | None = None
    received_at: datetime
    measure: Literal["OTS", "voogdij", "none"] | None = Field(
        default=None, description="gi only: the court measure the institution carries out (OTS, voogdij, or none: "
        "werken zonder maatregel), so the GI stream can be monitored per measure; None on other channels.")


class AcceptedReferral(BaseModel):
    """Internal, compacted `intake.accepted.v1` (key: hub referral id): intake accepted this referral, so the
    same referral sent again has no second effect. No personal data."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Accepted/1"
    """The `schema` header of this message on Kafka."""

    referral_id: str
    channel: Channel
    referrer_referral_id: str
    accepted_at: datetime
    origin: str = Field(description="topic/partition/offset of the inbound record.")
