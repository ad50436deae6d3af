"""GP channel: a FHIR R4 message Bundle, or a FHIR document as ZorgDomein delivers it, to the canonical `Referral`.

The Bundle is validated with fhir.resources (R4B models, wire-compatible with R4 for these resources);
the mapping then reads the ServiceRequest, the Patient and the requesting Practitioner. Every string of the
Bundle is cleaned first (`reading.cleaned_document`), so names and notes arrive trimmed, blank ones absent.
"""

import html
import re
from dataclasses import dataclass
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
from services.infra.pseudonym import youth_pseudonym_if_keyed
from services.intake import validation as v
from services.intake.outcome import ErrorList, ParseOutcome, Rejection, schema_message
from services.intake.reading import clean_text, cleaned_document, read_json, reject, too_large

_DATE_FIELDS = {"birthDate", "authoredOn", "date"}
ZD_DOCUMENT_TYPE_SYSTEM = "http://zorgdomein.nl/terminology/code-system/document-type"
LOINC = "http://loinc.org"
DOCUMENT_TYPE_SYSTEMS = {ZD_DOCUMENT_TYPE_SYSTEM, LOINC}
REFERRAL_DOCUMENT_TYPES = {"appointment-request", "referral-letter", "57133-1"}
"""ZorgDomein's appointment request (Afspraakbericht) and referral letter (Verwijsbrief) of one transaction share
its ZD number, so either makes the referral and the other is the same referral again; LOINC 57133-1 is the
generic "Referral note". Cancellations, supplements and questionnaires are no referral (CHANNEL_MISMATCH)."""
ZD_SENDER_EXTENSION = "http://zorgdomein.nl/fhir/StructureDefinition/zd-sender"
_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def parse_gp(raw: bytes, *, known_products: frozenset[str], pseudonym_key: str | None, received_at: datetime,
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


@dataclass(frozen=True)
class _Parts:
    """What the message form and the document form both carry, and where each came from (for errors)."""

    patient: Any
    practitioner: Any
    request: Any | None
    """The ServiceRequest: always in a message; in a document only when it names the care asked for."""
    referrer_referral_id: str | None
    referral_date: object
    date_location: str
    free_text: str | None


def _map_bundle(bundle: Bundle, known_products: frozenset[str], pseudonym_key: str | None,
                received_at: datetime) -> ParseOutcome:
    errors = ErrorList()
    parts = _document_parts(bundle, errors) if bundle.type == "document" else _message_parts(bundle, errors)
    if parts is None:
        return Rejection(errors.errors)
    request, patient, practitioner = parts.request, parts.patient, parts.practitioner
    referrer_referral_id = parts.referrer_referral_id
    referral_date = v.check_date(parts.referral_date, parts.date_location, errors, "referral date")
    product = _product(request) if request is not None else None
    v.check_product(product, known_products, "ServiceRequest.code.coding", errors)
    categories = {c.code for cc in (request.category if request is not None else None) or []
                  for c in cc.coding or [] if c.system == CATEGORY_SYSTEM}
    preferred = _preferred_provider(request, errors) if request is not None else None

    bsn = v.check_bsn(_identifier(patient.identifier, BSN_SYSTEM), "Patient.identifier", errors)
    birth_date = v.check_date(patient.birthDate, "Patient.birthDate", errors, "birth date")
    postcode = v.check_postcode(next((a.postalCode for a in patient.address or [] if a.postalCode), None),
                                "Patient.address.postalCode", errors)
    agb = v.check_agb(_identifier(practitioner.identifier, AGB_SYSTEM), "Practitioner.identifier", errors,
                      "GP's AGB code")
    continuation = "continuation" in categories
    if birth_date and referral_date:
        v.check_age(birth_date, referral_date, continuation, "Patient.birthDate", errors)
    name = (patient.name or [None])[0]
    given = " ".join(g for g in name.given if g) or None if name and name.given else None
    display = _practitioner_name(practitioner)
    document = bundle.type == "document"
    v.check_lengths({
        "referrer_referral_id": (referrer_referral_id, "Composition.identifier" if document
                                 else "ServiceRequest.identifier"),
        "referrer.display": (display, "Practitioner.name"), "youth.given_name": (given, "Patient.name.given"),
        "youth.family_name": (name.family if name else None, "Patient.name.family"),
        "free_text": (parts.free_text, "Composition.section" if document else "ServiceRequest.note")}, errors)
    if errors or None in (referrer_referral_id, referral_date, bsn, birth_date, postcode, agb):
        return Rejection(errors.errors, referrer_referral_id)

    return Referral(
        referral_id=hub_referral_id(Channel.GP, agb, referrer_referral_id),
        channel=Channel.GP,
        referrer=Referrer(type=REFERRER_TYPE_OF_CHANNEL[Channel.GP], identifier_system=AGB_SYSTEM,
                          identifier=agb, display=display),
        referrer_referral_id=referrer_referral_id,
        referral_date=referral_date,
        youth=Youth(
            bsn=bsn, pseudonym=youth_pseudonym_if_keyed(bsn, pseudonym_key), birth_date=birth_date,
            postcode=postcode,
            given_name=given,
            family_name=name.family if name else None,
        ),
        product=product,
        specialist_asked="specialist" in categories,
        continuation=continuation,
        preferred_provider=preferred,
        free_text=parts.free_text,
        received_at=received_at,
    )


def _message_parts(bundle: Bundle, errors: ErrorList) -> _Parts | None:
    """A message Bundle: MessageHeader first, then exactly one ServiceRequest, Patient and Practitioner."""
    resources = [entry.resource for entry in bundle.entry or [] if entry.resource is not None]
    if bundle.type != "message" or not resources or resources[0].get_resource_type() != "MessageHeader":
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.type",
                   "The Bundle must be of type 'message' with a MessageHeader as its first entry, or of type "
                   "'document' with a Composition as its first entry.")
    by_type: dict[str, list[Any]] = {}
    for resource in resources:
        by_type.setdefault(resource.get_resource_type(), []).append(resource)
    request = _single(by_type, "ServiceRequest", errors)
    patient = _single(by_type, "Patient", errors)
    practitioner = _single(by_type, "Practitioner", errors)
    if request is None or patient is None or practitioner is None:
        return None
    referrer_referral_id = _identifier(request.identifier, None)
    if not referrer_referral_id:
        errors.add(ErrorCode.SCHEMA_INVALID, "ServiceRequest.identifier", "The referral's own identifier is missing.")
    return _Parts(patient, practitioner, request, referrer_referral_id, request.authoredOn,
                  "ServiceRequest.authoredOn", _free_text(request))


def _document_parts(bundle: Bundle, errors: ErrorList) -> _Parts | None:
    """A ZorgDomein-style FHIR document (docs/design.md, "ZorgDomein documents"): the Composition first; its
    identifier the ZD number, its type the document kind, its subject the Patient; the referring GP the
    Practitioner of the zd-sender PractitionerRole, else of the author. The product, if any, from a ServiceRequest
    in the Bundle; none (basis jeugdhulp) when there is none."""
    entries = [entry for entry in bundle.entry or [] if entry.resource is not None]
    composition = entries[0].resource if entries else None
    if composition is None or composition.get_resource_type() != "Composition":
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.entry[0].resource",
                   "A document Bundle has a Composition as its first entry.")
        return None
    kinds = {c.code for c in composition.type.coding or [] if c.system in DOCUMENT_TYPE_SYSTEMS}
    if not kinds & REFERRAL_DOCUMENT_TYPES:
        errors.add(ErrorCode.CHANNEL_MISMATCH, "Composition.type",
                   "The gp channel takes referrals: a document of type appointment-request or referral-letter "
                   "(ZorgDomein) or LOINC 57133-1.")
        return None
    found = _resolver(entries)
    patient = found(composition.subject, "Patient")
    if patient is None:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.subject", "The Composition's subject is no Patient of "
                   "the Bundle.")
    practitioner = _sender(composition, found)
    if practitioner is None:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.author", "Neither the zd-sender nor an author of the "
                   "Composition is a Practitioner (or a PractitionerRole with one) of the Bundle.")
    requests = [e.resource for e in entries if e.resource.get_resource_type() == "ServiceRequest"]
    if len(requests) > 1:
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.entry.resource.ofType(ServiceRequest)",
                   f"A referral document holds at most one ServiceRequest; it holds {len(requests)}.")
    if patient is None or practitioner is None or len(requests) > 1:
        return None
    identifier = composition.identifier
    zd_number = identifier.value.strip() if identifier is not None and identifier.value else None
    if not zd_number:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.identifier", "The document's ZD number is missing.")
    request = requests[0] if requests else None
    texts = [_free_text(request)] if request is not None else []
    texts += [_narrative(section) for section in composition.section or []]
    return _Parts(patient, practitioner, request, zd_number, composition.date, "Composition.date",
                  "\n".join(text for text in texts if text) or None)


def _resolver(entries: list[Any]):
    """Finds a referenced resource of a type in the Bundle, by fullUrl or by `Type/id`."""
    index: dict[str, Any] = {}
    for entry in entries:
        resource = entry.resource
        if entry.fullUrl:
            index[entry.fullUrl] = resource
        if resource.id:
            index[f"{resource.get_resource_type()}/{resource.id}"] = resource

    def found(reference: Any, resource_type: str) -> Any:
        resource = index.get(reference.reference) if reference is not None and reference.reference else None
        return resource if resource is not None and resource.get_resource_type() == resource_type else None

    return found


def _sender(composition: Any, found) -> Any:
    """The responsible sender: the zd-sender extension's PractitionerRole, else the authors, in that order."""
    candidates = [ext.valueReference for ext in composition.extension or []
                  if ext.url == ZD_SENDER_EXTENSION and ext.valueReference is not None]
    for reference in [*candidates, *(composition.author or [])]:
        practitioner = found(reference, "Practitioner")
        role = found(reference, "PractitionerRole")
        if practitioner is None and role is not None:
            practitioner = found(role.practitioner, "Practitioner")
        if practitioner is not None:
            return practitioner
    return None


def _narrative(section: Any) -> str | None:
    """A section's title and its narrative as plain text (the XHTML tags dropped)."""
    div = section.text.div if section.text is not None else None
    body = clean_text(html.unescape(_TAGS.sub(" ", div))) if div else None
    body = _SPACES.sub(" ", body) if body else None
    return ": ".join(part for part in (clean_text(section.title), body) if part) or None


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
        errors.add(code, f"Bundle{path}", "Not a real date (YYYY-MM-DD)." if code is ErrorCode.DATE_INVALID
                   else schema_message(problem))
    return errors.errors
