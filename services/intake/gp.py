"""GP channel: a FHIR R4 message Bundle (ZorgDomein style) to the canonical `Referral`.

The Bundle is validated with fhir.resources (R4B models, wire-compatible with R4 for these resources);
the mapping then reads the ServiceRequest, the Patient and the requesting Practitioner. Every string of the
Bundle is cleaned first (`reading.cleaned_document`), so names and notes arrive trimmed, blank ones absent.
"""

from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import (
    AGB_SYSTEM,
    BSN_SYSTEM,
    CATEGORY_SYSTEM,
    PRODUCT_SYSTEM,
    REFERRER_TYPE_OF_CHANNEL,
    Channel,
    Referral,
    Referrer,
    Youth,
    hub_referral_id,
)
from services.infra.pseudonym import youth_pseudonym
from services.intake import validation as v
from services.intake.outcome import ErrorList, ParseOutcome, Rejection
from services.intake.reading import clean_text, cleaned_document, read_json, reject, too_large

_DATE_FIELDS = {"birthDate", "authoredOn"}


def parse_gp(raw: bytes, *, known_products: frozenset[str], pseudonym_key: str, received_at: datetime,
             max_bytes: int = 1024 * 1024) -> ParseOutcome:
    if rejection := too_large(raw, max_bytes):
        return rejection
    document = read_json(raw)
    if isinstance(document, Rejection):
        return document
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return reject(ErrorCode.CHANNEL_MISMATCH, "/resourceType",
                      "The gp channel takes a FHIR message Bundle (resourceType 'Bundle').")
    try:
        bundle = Bundle.model_validate(cleaned_document(document))
    except ValidationError as exc:
        return Rejection(_fhir_validation_errors(exc), _service_request_identifier(document))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        # fhir.resources raises plain errors for some malformed input, e.g. KeyError for an unknown
        # resourceType inside an entry (found by the property tests)
        return reject(ErrorCode.SCHEMA_INVALID, "Bundle.entry.resource",
                      f"Not a valid FHIR R4 Bundle ({type(exc).__name__}: an unknown resource type or a malformed "
                      "element).", _service_request_identifier(document))
    return _map_bundle(bundle, known_products, pseudonym_key, received_at)


def _map_bundle(bundle: Bundle, known_products: frozenset[str], pseudonym_key: str,
                received_at: datetime) -> ParseOutcome:
    errors = ErrorList()
    resources = [entry.resource for entry in bundle.entry or [] if entry.resource is not None]
    if bundle.type != "message" or not resources or resources[0].get_resource_type() != "MessageHeader":
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.type",
                   "The Bundle must be of type 'message' with a MessageHeader as its first entry.")
    by_type: dict[str, list[Any]] = {}
    for resource in resources:
        by_type.setdefault(resource.get_resource_type(), []).append(resource)
    request = _single(by_type, "ServiceRequest", errors)
    patient = _single(by_type, "Patient", errors)
    practitioner = _single(by_type, "Practitioner", errors)
    if request is None or patient is None or practitioner is None:
        return Rejection(errors.errors)

    referrer_referral_id = _identifier(request.identifier, None)
    if not referrer_referral_id:
        errors.add(ErrorCode.SCHEMA_INVALID, "ServiceRequest.identifier", "The referral's own identifier is missing.")
    referral_date = v.check_date(request.authoredOn, "ServiceRequest.authoredOn", errors, "referral date")
    product = _product(request)
    v.check_product(product, known_products, "ServiceRequest.code.coding", errors)
    categories = {c.code for cc in request.category or [] for c in cc.coding or [] if c.system == CATEGORY_SYSTEM}
    preferred = _preferred_provider(request, errors)

    bsn = v.check_bsn(_identifier(patient.identifier, BSN_SYSTEM), "Patient.identifier", errors)
    birth_date = v.check_date(patient.birthDate, "Patient.birthDate", errors, "birth date")
    postcode = v.check_postcode(next((a.postalCode for a in patient.address or [] if a.postalCode), None),
                                "Patient.address.postalCode", errors)
    agb = v.check_agb(_identifier(practitioner.identifier, AGB_SYSTEM), "Practitioner.identifier", errors,
                      "GP's AGB code")
    continuation = "continuation" in categories
    if birth_date and referral_date:
        v.check_age(birth_date, referral_date, continuation, "Patient.birthDate", errors)
    if errors or None in (referrer_referral_id, referral_date, bsn, birth_date, postcode, agb):
        return Rejection(errors.errors, referrer_referral_id)

    name = (patient.name or [None])[0]
    return Referral(
        referral_id=hub_referral_id(Channel.GP, agb, referrer_referral_id),
        channel=Channel.GP,
        referrer=Referrer(type=REFERRER_TYPE_OF_CHANNEL[Channel.GP], identifier_system=AGB_SYSTEM,
                          identifier=agb, display=_practitioner_name(practitioner)),
        referrer_referral_id=referrer_referral_id,
        referral_date=referral_date,
        youth=Youth(
            bsn=bsn, pseudonym=youth_pseudonym(bsn, pseudonym_key), birth_date=birth_date, postcode=postcode,
            given_name=" ".join(g for g in name.given if g) or None if name and name.given else None,
            family_name=name.family if name else None,
        ),
        product=product,
        specialist_asked="specialist" in categories,
        continuation=continuation,
        preferred_provider=preferred,
        free_text=_free_text(request),
        received_at=received_at,
    )


def _single(by_type: dict[str, list[Any]], resource_type: str, errors: ErrorList) -> Any:
    found = by_type.get(resource_type, [])
    if len(found) != 1:
        errors.add(ErrorCode.SCHEMA_INVALID, f"Bundle.entry.resource.ofType({resource_type})",
                   f"The Bundle must hold exactly one {resource_type}; it holds {len(found)}.")
        return None
    return found[0]


def _identifier(identifiers: list[Any] | None, system: str | None) -> str | None:
    for identifier in identifiers or []:
        if (system is None or identifier.system == system) and identifier.value and identifier.value.strip():
            return identifier.value.strip()
    return None


def _product(request: Any) -> str | None:
    codings = request.code.coding if request.code and request.code.coding else []
    return next((c.code.strip() for c in codings if c.system == PRODUCT_SYSTEM and c.code), None)


def _preferred_provider(request: Any, errors: ErrorList) -> str | None:
    for performer in request.performer or []:
        if performer.identifier is not None and performer.identifier.system == AGB_SYSTEM:
            return v.check_agb(performer.identifier.value, "ServiceRequest.performer.identifier", errors,
                               "preferred provider's AGB code")
    return None


def _free_text(request: Any) -> str | None:
    parts = [rc.text for rc in request.reasonCode or [] if rc and rc.text]
    parts += [note.text for note in request.note or [] if note and note.text]
    return "\n".join(parts) or None


def _practitioner_name(practitioner: Any) -> str | None:
    name = (practitioner.name or [None])[0]
    return (name.text or " ".join([*(g for g in name.given or [] if g), name.family or ""]).strip() or None) if name else None


def _service_request_identifier(document: dict[str, Any]) -> str | None:
    """The referral id from a Bundle that failed validation, read leniently, so the GP can be told."""
    entries = document.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
            identifiers = resource.get("identifier")
            for identifier in identifiers if isinstance(identifiers, list) else []:
                if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                    return clean_text(identifier["value"])
    return None


def _fhir_validation_errors(exc: ValidationError) -> list[ReferralError]:
    errors = ErrorList()
    for problem in exc.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        code = ErrorCode.DATE_INVALID if set(map(str, problem["loc"])) & _DATE_FIELDS else ErrorCode.SCHEMA_INVALID
        errors.add(code, f"Bundle{path}", problem["msg"])
    return errors.errors
