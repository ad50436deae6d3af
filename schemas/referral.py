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


class FhirVersion(StrEnum):
    """The FHIR versions the gp channel reads, by the values of FHIR's own `fhirVersion` parameter (major.minor):
    STU3 is what ZorgDomein speaks, R4 what the hub writes (docs/design.md, "FHIR versions")."""

    STU3 = "3.0"
    R4 = "4.0"


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

MAX_ID_CHARS = 100
MAX_SYSTEM_CHARS = 200
MAX_NAME_CHARS = 200
MAX_NOTES_CHARS = 2_000
MAX_FREE_TEXT_CHARS = 20_000
TEXT_LIMITS: dict[str, int] = {
    "referrer.identifier_system": MAX_SYSTEM_CHARS, "referrer.identifier": MAX_ID_CHARS,
    "referrer.display": MAX_NAME_CHARS, "referrer_referral_id": MAX_ID_CHARS,
    "youth.given_name": MAX_NAME_CHARS, "youth.family_name": MAX_NAME_CHARS,
    "preference_notes": MAX_NOTES_CHARS, "free_text": MAX_FREE_TEXT_CHARS,
}
"""The longest text (in characters) of each field a referrer fills, so that every record the hub writes about a
referral fits its topic (docs/design.md, "Record sizes"): what the hub writes can be larger than what came in
(JSON escapes a `"` as two bytes, a control character as six; a non-ASCII letter is up to four bytes of UTF-8).
All together 22,800 characters, at most 6 bytes each: 136,800 bytes. The canonical referral holds each once, the
routing decision embeds the referral once, the FHIR handover Bundle holds each once and the referrer's three
(500 characters) twice (Task and ServiceRequest requester): each record under 150 KB beside the 1 MiB its topic
takes. Longer than its limit, a field is refused (`TOO_LONG`), never cut."""

_HUB_ID_NAMESPACE = uuid.UUID("7a1d2c57-1b8e-4f2e-9f3a-6c0de5a0b1e1")


def hub_referral_id(channel: Channel, referrer_id: str, referrer_referral_id: str) -> str:
    """The hub's id of a referral: the same referral sent twice gets the same id (deduplication)."""
    return str(uuid.uuid5(_HUB_ID_NAMESPACE, f"{channel}|{referrer_id}|{referrer_referral_id}"))


class Referrer(BaseModel):
    """Who referred: the identifier system says what kind of id it is (AGB, URA, a GI's own)."""

    model_config = ConfigDict(frozen=True)

    type: ReferrerType
    identifier_system: str = Field(max_length=MAX_SYSTEM_CHARS)
    identifier: str = Field(max_length=MAX_ID_CHARS)
    display: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class Youth(BaseModel):
    """The youth referred. Personal data: goes only to the one recipient, never to logs or keys."""

    model_config = ConfigDict(frozen=True)

    bsn: str = Field(pattern=r"^\d{9}$")
    pseudonym: str = Field(description="HMAC-SHA256 of the BSN under the hub's key, hex.")
    birth_date: date
    postcode: str = Field(pattern=r"^\d{4} [A-Z]{2}$", description="Normalised as `1234 AB`.")
    given_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    family_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

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
    referrer_referral_id: str = Field(max_length=MAX_ID_CHARS)
    referral_date: date
    youth: Youth
    product: str | None = Field(default=None, description="iJw product code; none for plain 'basis jeugdhulp'.")
    specialist_asked: bool = False
    continuation: bool = Field(default=False, description="Continues care that started before 18.")
    preferred_provider: str | None = Field(default=None, description="AGB of the provider the client prefers.")
    preference_notes: str | None = Field(default=None, max_length=MAX_NOTES_CHARS)
    free_text: str | None = Field(default=None, max_length=MAX_FREE_TEXT_CHARS)
    received_at: datetime
    measure: Literal["OTS", "voogdij", "none"] | None = Field(
        default=None, description="gi only: the court measure the institution carries out (OTS, voogdij, or none: "
        "werken zonder maatregel), so the GI stream can be monitored per measure; None on other channels.")
    fhir_version: FhirVersion | None = Field(
        default=None, description="gp only: the FHIR version of the Bundle received (`3.0` STU3, `4.0` R4), the "
        "version its sender speaks; None on other channels. How it was sent, not what was referred: "
        "not part of the referral's digest (`services/intake/repeats.py`).")


class AcceptedReferral(BaseModel):
    """Internal, compacted `intake.accepted.v1` (key: hub referral id): intake accepted this referral, so the
    same referral sent again has no second effect, and the id stays bound to this content. No personal data: the
    digest is a one-way hash of the whole content, which reveals none of it (it can only confirm an exact copy held
    already), and only intake and the admin read this topic."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.Accepted/1"
    """The `schema` header of this message on Kafka."""

    referral_id: str
    channel: Channel
    referrer_referral_id: str
    accepted_at: datetime
    origin: str = Field(description="topic/partition/offset of the inbound record.")
    digest: str | None = Field(default=None, description=(
        "SHA-256 (hex) of the referral's content as the referrer stated it (`services/intake/repeats.py`): a "
        "later referral with this id and another digest is refused (`REFERRAL_ID_CONFLICT`). None on records "
        "written before intake recorded it."))
    organisation: str | None = Field(default=None, description=(
        "The referrer organisation whose topic brought the referral (`referrals.<channel>.<organisation>.v1`); "
        "empty for the channel's own topic; None on records written before it. Only it may amend or cancel."))
    pseudonym: str | None = Field(default=None, description=(
        "The youth pseudonym of the referral (not the BSN), so that a cancellation, which need not name the youth, "
        "follows the referral into its partition."))
    digests: list[str] = Field(default=[], description=(
        "The digests of the later documents of this referral (amendments), so each has one effect."))
    cancelled: bool = Field(default=False, description="Cancelled by its referrer: nothing more is taken for it.")
