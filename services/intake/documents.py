"""The gi, ggd and court channels: JSON documents (models in `schemas/inbound.py`) to the canonical `Referral`.

The pydantic model checks structure and types; the shared checks of `validation` then run on every
field that is there, even when the structure has errors elsewhere, so the referrer hears of all
problems at once. Locations are JSON pointers (`/youth/bsn`). Every string is cleaned before the model
sees it (`reading.cleaned_document`): names and notes trimmed, blank ones absent, as on every channel.
"""

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.inbound import INBOUND_MODELS, CourtReferral, GgdReferral, GiReferral
from schemas.referral import (
    AGB_SYSTEM,
    BIG_SYSTEM,
    REFERRER_TYPE_OF_CHANNEL,
    Channel,
    Referral,
    Referrer,
    Youth,
    hub_referral_id,
)
from services.infra.pseudonym import youth_pseudonym_if_keyed
from services.intake import validation as v
from services.intake.outcome import ErrorList, ParseOutcome, Rejection, schema_message
from services.intake.reading import clean_text, cleaned_document, read_json, reject, too_large

_DATE_FIELDS = {"referral_date", "birth_date", "date"}


_REFERRER_OF = {Channel.GI: "institution", Channel.GGD: "doctor", Channel.COURT: "issuer"}
"""The object of each document that names the referrer."""


def parse_gi(raw: bytes, **options: Any) -> ParseOutcome:
    return parse_document(Channel.GI, raw, **options)


def parse_ggd(raw: bytes, **options: Any) -> ParseOutcome:
    return parse_document(Channel.GGD, raw, **options)


def parse_court(raw: bytes, **options: Any) -> ParseOutcome:
    return parse_document(Channel.COURT, raw, **options)


def parse_document(channel: Channel, raw: bytes, *, known_products: frozenset[str], pseudonym_key: str | None,
                   received_at: datetime, max_bytes: int = 1024 * 1024) -> ParseOutcome:
    if rejection := too_large(raw, max_bytes):
        return rejection
    document = read_json(raw)
    if isinstance(document, Rejection):
        return document
    if not isinstance(document, dict):
        return reject(ErrorCode.SCHEMA_INVALID, "", f"The {channel} channel takes a JSON object.")
    if "resourceType" in document:
        return reject(ErrorCode.CHANNEL_MISMATCH, "/resourceType",
                      f"A FHIR resource was sent on the {channel} channel, which takes its own JSON document "
                      f"(schemas/json/{channel}-referral.schema.json).")
    sent_channel = document.get("channel")
    if isinstance(sent_channel, str) and sent_channel != channel.value and sent_channel in set(Channel):
        return reject(ErrorCode.CHANNEL_MISMATCH, "/channel",
                      f"A document of another channel was sent on the {channel} channel.",
                      clean_text(document.get("referral_id")))

    cleaned = cleaned_document(document)
    errors = ErrorList()
    model = None
    try:
        model = INBOUND_MODELS[channel.value].model_validate(cleaned)
    except ValidationError as exc:
        _structure_errors(exc, errors)
    referrer_referral_id = clean_text(cleaned.get("referral_id"))
    values = _field_checks(channel, cleaned, known_products, errors)
    if model is not None:
        v.check_age(model.youth.birth_date, model.referral_date, model.continuation, "/youth/birth_date", errors)
    if errors or model is None:
        if not errors:
            errors.add(ErrorCode.SCHEMA_INVALID, "", "The document is incomplete.")
        return Rejection(errors.errors, referrer_referral_id)
    return _referral(channel, model, values, pseudonym_key, received_at)


def _field_checks(channel: Channel, doc: dict[str, Any], known_products: frozenset[str],
                  errors: ErrorList) -> dict[str, str | None]:
    """The checks with codes of their own, on whichever of these fields are present."""
    reported = {error.location for error in errors.errors}
    youth = doc.get("youth") if isinstance(doc.get("youth"), dict) else {}
    values: dict[str, str | None] = {}
    if "/youth/bsn" not in reported and youth:
        values["bsn"] = v.check_bsn(clean_text(youth.get("bsn")), "/youth/bsn", errors)
    if "/youth/postcode" not in reported and clean_text(youth.get("postcode")):
        values["postcode"] = v.check_postcode(clean_text(youth.get("postcode")), "/youth/postcode", errors)
    product = clean_text(doc.get("product"))
    if product:
        v.check_product(product, known_products, "/product", errors)
    if clean_text(doc.get("preferred_provider_agb")):
        values["preferred"] = v.check_agb(clean_text(doc.get("preferred_provider_agb")), "/preferred_provider_agb",
                                          errors, "preferred provider's AGB code")
    texts = {"referrer_referral_id": (doc.get("referral_id"), "/referral_id"),
             "youth.given_name": (youth.get("given_name"), "/youth/given_name"),
             "youth.family_name": (youth.get("family_name"), "/youth/family_name"),
             "preference_notes": (doc.get("preference_notes"), "/preference_notes"),
             "free_text": (doc.get("free_text"), "/free_text")}
    referrer = doc.get(_REFERRER_OF[channel]) if isinstance(doc.get(_REFERRER_OF[channel]), dict) else {}
    texts["referrer.display"] = (referrer.get("name"), f"/{_REFERRER_OF[channel]}/name")
    if channel is Channel.COURT:  # the others' identifiers are AGB or BIG numbers, their system the issuer's kind
        texts["referrer.identifier"] = (referrer.get("id"), "/issuer/id")
    v.check_lengths(texts, errors)
    if channel is Channel.GI:
        institution = doc.get("institution") if isinstance(doc.get("institution"), dict) else {}
        if "agb" in institution:
            values["referrer"] = v.check_agb(clean_text(institution.get("agb")), "/institution/agb", errors,
                                             "institution's AGB code")
    elif channel is Channel.GGD:
        doctor = doc.get("doctor") if isinstance(doc.get("doctor"), dict) else {}
        agb, big = clean_text(doctor.get("agb")), clean_text(doctor.get("big"))
        if agb or not big:
            values["referrer"] = v.check_agb(agb, "/doctor/agb", errors,
                                             "youth doctor's AGB code (or, without one, an 11-digit BIG number)")
        elif not (big.isascii() and big.isdigit() and len(big) == 11):
            errors.add(ErrorCode.SCHEMA_INVALID, "/doctor/big", "The youth doctor's BIG number must be 11 digits.")
        else:
            values["referrer"] = big
    return values


def _referral(channel: Channel, model: Any, values: dict[str, str | None], pseudonym_key: str | None,
              received_at: datetime) -> Referral:
    bsn, postcode = values["bsn"], values["postcode"]
    assert bsn and postcode
    if isinstance(model, GiReferral):
        referrer = Referrer(type=REFERRER_TYPE_OF_CHANNEL[channel], identifier_system=AGB_SYSTEM,
                            identifier=model.institution.agb.strip(), display=model.institution.name)
    elif isinstance(model, GgdReferral):
        system = AGB_SYSTEM if model.doctor.agb else BIG_SYSTEM
        referrer = Referrer(type=REFERRER_TYPE_OF_CHANNEL[channel], identifier_system=system,
                            identifier=str(values["referrer"]), display=model.doctor.name)
    else:
        assert isinstance(model, CourtReferral)
        referrer = Referrer(type=REFERRER_TYPE_OF_CHANNEL[channel],
                            identifier_system=f"urn:verwijshub:referrer:{model.issuer.kind}",
                            identifier=model.issuer.id.strip(), display=model.issuer.name)
    referral_id = model.referral_id.strip()
    return Referral(
        referral_id=hub_referral_id(channel, referrer.identifier, referral_id),
        channel=channel,
        referrer=referrer,
        referrer_referral_id=referral_id,
        referral_date=model.referral_date,
        youth=Youth(bsn=bsn, pseudonym=youth_pseudonym_if_keyed(bsn, pseudonym_key),
                    birth_date=model.youth.birth_date,
                    postcode=postcode, given_name=model.youth.given_name, family_name=model.youth.family_name),
        product=model.product.strip() if model.product else None,
        specialist_asked=model.specialist_care_asked,
        continuation=model.continuation,
        preferred_provider=values.get("preferred"),
        preference_notes=model.preference_notes,
        free_text=model.free_text,
        received_at=received_at,
        measure=model.measure if isinstance(model, GiReferral) else None,
    )


def _structure_errors(exc: ValidationError, errors: ErrorList) -> None:
    for problem in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in problem["loc"]]
        pointer = "/" + "/".join(loc)
        if loc == ["youth", "bsn"] and problem["type"] == "missing":
            errors.add(ErrorCode.BSN_MISSING, pointer, "The youth's BSN is missing.")
        elif loc and loc[-1] in _DATE_FIELDS:
            errors.add(ErrorCode.DATE_INVALID, pointer, "Not a real date (YYYY-MM-DD).")
        elif problem["type"] == "extra_forbidden":
            errors.add(ErrorCode.SCHEMA_INVALID, pointer, "This field is not part of the document's schema.")
        else:
            errors.add(ErrorCode.SCHEMA_INVALID, pointer, schema_message(problem))
