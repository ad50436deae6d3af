"""The JSON documents the gi, ggd and court referrers send. Their JSON Schemas under `schemas/json/` are
generated from these models (`python -m schemas.generate`), never written by hand.

The models fix the structure and the types; the checks that need a sentence of their own (elfproef,
AGB, postcode, age, known product) are the intake's, so a referrer gets one coded error per problem.
"""

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.referral import MAX_FREE_TEXT_CHARS, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_NOTES_CHARS


def _at_most(chars: int) -> dict[str, int]:
    """A text's limit in the published schema; intake checks it (TOO_LONG at the field, not SCHEMA_INVALID)."""
    return {"maxLength": chars}


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboundYouth(_Document):
    """The youth referred: personal data, sent only to the hub over the channel's own topic."""

    bsn: str = Field(description="BSN, 9 digits passing the 11-test (elfproef); leading zeros kept.",
                     examples=["999911120"])
    birth_date: date
    postcode: str = Field(description="Dutch postcode, `1234 AB` (`1234ab` is accepted).", examples=["9712 HB"])
    given_name: str | None = Field(default=None, json_schema_extra=_at_most(MAX_NAME_CHARS))
    family_name: str | None = Field(default=None, json_schema_extra=_at_most(MAX_NAME_CHARS))


class _Referral(_Document):
    """What every JSON channel carries besides what its kind of referrer knows."""

    referral_id: str = Field(min_length=1, description="The referrer's own id of this referral (the Kafka key).",
                             json_schema_extra=_at_most(MAX_ID_CHARS))
    referral_date: date
    youth: InboundYouth
    product: str | None = Field(default=None, description="iJw product code, e.g. `50G41`; none: basis jeugdhulp.")
    specialist_care_asked: bool = False
    continuation: bool = Field(default=False, description="Continues youth care that started before 18 (up to 23).")
    preferred_provider_agb: str | None = Field(default=None, description="AGB of the provider the client prefers.")
    preference_notes: str | None = Field(default=None, description="E.g. a wish for a professional who fits.",
                                         json_schema_extra=_at_most(MAX_NOTES_CHARS))
    free_text: str | None = Field(default=None, json_schema_extra=_at_most(MAX_FREE_TEXT_CHARS))


class Contact(_Document):
    name: str
    phone: str | None = None
    email: str | None = None


class GiInstitution(_Document):
    agb: str = Field(description="The institution's AGB code, 8 digits.", examples=["98000101"])
    name: str = Field(json_schema_extra=_at_most(MAX_NAME_CHARS))


class GiReferral(_Referral):
    """A referral from a Gecertificeerde Instelling (certified child-protection institution)."""

    channel: Literal["gi"]
    institution: GiInstitution
    case_number: str = Field(min_length=1)
    measure: Literal["OTS", "voogdij", "none"] = Field(
        description="The court measure the GI carries out: OTS, voogdij, or none (werken zonder maatregel).")
    case_manager: Contact


class GgdDoctor(_Document):
    agb: str | None = Field(default=None, description="The youth doctor's AGB code, 8 digits.")
    big: str | None = Field(default=None, description="The youth doctor's BIG number, 11 digits (if no AGB).")
    name: str = Field(json_schema_extra=_at_most(MAX_NAME_CHARS))


class School(_Document):
    name: str
    brin: str | None = Field(default=None, description="The school's BRIN code, e.g. `12AB`.")


class GgdReferral(_Referral):
    """A referral from a GGD youth doctor (jeugdarts), often school-related."""

    channel: Literal["ggd"]
    ggd: str = Field(description="The GGD the doctor works for.")
    doctor: GgdDoctor
    school: School | None = None


class CourtIssuer(_Document):
    kind: Literal["rechtbank", "raad-voor-de-kinderbescherming", "officier-van-justitie"]
    id: str = Field(min_length=1, description="The organisation's identifier (e.g. its OIN).",
                    json_schema_extra=_at_most(MAX_ID_CHARS))
    name: str = Field(json_schema_extra=_at_most(MAX_NAME_CHARS))


class CourtOrder(_Document):
    date: date
    kind: str = Field(min_length=1, description="E.g. `ondertoezichtstelling`, `omgangsregeling`.")


class CourtReferral(_Referral):
    """A referral from a court, the Raad voor de Kinderbescherming or the Officier van Justitie."""

    channel: Literal["court"]
    issuer: CourtIssuer
    case_number: str = Field(min_length=1)
    order: CourtOrder


INBOUND_MODELS: dict[str, type[_Referral]] = {"gi": GiReferral, "ggd": GgdReferral, "court": CourtReferral}
"""The JSON document model of each JSON channel."""
