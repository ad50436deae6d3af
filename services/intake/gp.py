"""GP channel: a FHIR message Bundle, or a FHIR document as ZorgDomein delivers it, to the canonical `Referral`.

FHIR STU3 or R4: the version is found from the Bundle and what the hub reads is validated in it
(`services/intake/fhir_versions.py`); the mapping then reads the ServiceRequest (STU3: ReferralRequest, through
`services/intake/gp_requests.py`), the Patient and the requesting Practitioner. Every string of the Bundle is
cleaned first (`reading.cleaned_document`), so names and notes arrive trimmed, blank ones absent.
"""

import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.errors import ErrorCode
from schemas.referral import (
    AGB_SYSTEM,
    BSN_SYSTEM,
    REFERRER_TYPE_OF_CHANNEL,
    Channel,
    Referral,
    Referrer,
    Youth,
    hub_referral_id,
)
from services.infra.pseudonym import youth_pseudonym_if_keyed
from services.intake import validation as v
from services.intake.fhir_versions import REQUEST_TYPE, Entry, ReadBundle, detect_version, read_bundle
from services.intake.gp_requests import RequestedCare, identifier_value, requested_care
from services.intake.outcome import ErrorList, ParseOutcome, Rejection
from services.intake.reading import clean_text, cleaned_document, read_json, reject, too_large

ZD_DOCUMENT_TYPE_SYSTEM = "http://zorgdomein.nl/terminology/code-system/document-type"
LOINC = "http://loinc.org"
DOCUMENT_TYPE_SYSTEMS = {ZD_DOCUMENT_TYPE_SYSTEM, LOINC}
REFERRAL_DOCUMENT_TYPES = {"appointment-request", "referral-letter", "supplement", "57133-1"}
"""ZorgDomein's appointment request (Afspraakbericht), referral letter (Verwijsbrief) and supplement (Nazending) of
one referral share its ZD number: whichever comes first makes the referral, each other one (its own content) is an
amendment of it (services/intake/repeats.py); LOINC 57133-1 is the generic "Referral note". A cancellation
(Annuleringsbericht) is read by services/intake/lifecycle.py; questionnaires and other kinds are no referral
(CHANNEL_MISMATCH)."""
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
    cleaned = cleaned_document(document)
    bundle = read_bundle(cleaned, detect_version(cleaned))
    if not isinstance(bundle, ReadBundle):
        return Rejection(bundle, _request_identifier(document))
    return _map_bundle(bundle, known_products, pseudonym_key, received_at)


@dataclass(frozen=True)
class _Parts:
    """What the message form and the document form both carry, and where each came from (for errors)."""

    patient: Any
    practitioner: Any
    request: RequestedCare | None
    """The ServiceRequest (ReferralRequest): always in a message; in a document only when it names the care."""
    referrer_referral_id: str | None
    referral_date: object
    date_location: str
    free_text: str | None


def _map_bundle(bundle: ReadBundle, known_products: frozenset[str], pseudonym_key: str | None,
                received_at: datetime) -> ParseOutcome:
    errors = ErrorList()
    parts = _document_parts(bundle, errors) if bundle.type == "document" else _message_parts(bundle, errors)
    if parts is None:
        return Rejection(errors.errors)
    request, patient, practitioner = parts.request, parts.patient, parts.practitioner
    referrer_referral_id = parts.referrer_referral_id
    referral_date = v.check_date(parts.referral_date, parts.date_location, errors, "referral date")
    product, categories, preferred = None, frozenset(), None
    if request is not None:
        product, categories = request.product, request.categories
        v.check_product(product, known_products, request.location("product"), errors)
        if request.names_preferred_provider:
            preferred = v.check_agb(request.preferred_provider, request.location("preferred provider"), errors,
                                    "preferred provider's AGB code")

    bsn = v.check_bsn(identifier_value(patient.identifier, BSN_SYSTEM), "Patient.identifier", errors)
    birth_date = v.check_date(patient.birthDate, "Patient.birthDate", errors, "birth date")
    postcode = v.check_postcode(next((a.postalCode for a in patient.address or [] if a.postalCode), None),
                                "Patient.address.postalCode", errors)
    agb = v.check_agb(identifier_value(practitioner.identifier, AGB_SYSTEM), "Practitioner.identifier", errors,
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
                                 else request.location("identifier")),
        "referrer.display": (display, "Practitioner.name"), "youth.given_name": (given, "Patient.name.given"),
        "youth.family_name": (name.family if name else None, "Patient.name.family"),
        "free_text": (parts.free_text, "Composition.section" if document else request.location("free text"))},
        errors)
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
        fhir_version=bundle.version,
    )


def _message_parts(bundle: ReadBundle, errors: ErrorList) -> _Parts | None:
    """A message Bundle: MessageHeader first, then exactly one ServiceRequest (STU3: ReferralRequest), Patient and
    Practitioner."""
    entries = bundle.entries
    if bundle.type != "message" or not entries or entries[0].resource_type != "MessageHeader":
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.type",
                   "The Bundle must be of type 'message' with a MessageHeader as its first entry, or of type "
                   "'document' with a Composition as its first entry.")
    by_type: dict[str, list[Any]] = {}
    for entry in entries:
        by_type.setdefault(entry.resource_type, []).append(entry.resource)
    resource = _single(by_type, REQUEST_TYPE[bundle.version], errors)
    patient = _single(by_type, "Patient", errors)
    practitioner = _single(by_type, "Practitioner", errors)
    if resource is None or patient is None or practitioner is None:
        return None
    request = requested_care(resource)
    if not request.identifier:
        errors.add(ErrorCode.SCHEMA_INVALID, request.location("identifier"),
                   "The referral's own identifier is missing.")
    return _Parts(patient, practitioner, request, request.identifier, request.authored_on,
                  request.location("authoredOn"), request.free_text)


def _document_parts(bundle: ReadBundle, errors: ErrorList) -> _Parts | None:
    """A ZorgDomein-style FHIR document (docs/design.md, "ZorgDomein documents"): the Composition first; its
    identifier the ZD number, its type the document kind, its subject the Patient; the referring GP the
    Practitioner of the zd-sender PractitionerRole, else of the author. The product, if any, from a ServiceRequest
    (STU3: ReferralRequest) in the Bundle; none (basis jeugdhulp) when there is none."""
    entries = bundle.entries
    composition = entries[0].resource if entries else None
    if composition is None or entries[0].resource_type != "Composition":
        errors.add(ErrorCode.SCHEMA_INVALID, "Bundle.entry[0].resource",
                   "A document Bundle has a Composition as its first entry.")
        return None
    kinds = {c.code for c in composition.type.coding or [] if c.system in DOCUMENT_TYPE_SYSTEMS}
    if not kinds & REFERRAL_DOCUMENT_TYPES:
        errors.add(ErrorCode.CHANNEL_MISMATCH, "Composition.type",
                   "The gp channel takes referrals: a document of type appointment-request, referral-letter, "
                   "supplement or cancellation (ZorgDomein) or LOINC 57133-1.")
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
    request_type = REQUEST_TYPE[bundle.version]
    requests = [requested_care(e.resource) for e in entries if e.resource_type == request_type]
    if len(requests) > 1:
        errors.add(ErrorCode.SCHEMA_INVALID, f"Bundle.entry.resource.ofType({request_type})",
                   f"A referral document holds at most one {request_type}; it holds {len(requests)}.")
    if patient is None or practitioner is None or len(requests) > 1:
        return None
    identifier = composition.identifier
    zd_number = identifier.value.strip() if identifier is not None and identifier.value else None
    if not zd_number:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.identifier", "The document's ZD number is missing.")
    request = requests[0] if requests else None
    texts = [request.free_text] if request is not None else []
    texts += [_narrative(section) for section in composition.section or []]
    return _Parts(patient, practitioner, request, zd_number, composition.date, "Composition.date",
                  "\n".join(text for text in texts if text) or None)


def _resolver(entries: list[Entry]):
    """Finds a referenced resource of a type in the Bundle, by fullUrl or by `Type/id`."""
    index: dict[str, Any] = {}
    for entry in entries:
        resource = entry.resource
        if resource is None:
            continue
        if entry.full_url:
            index[entry.full_url] = resource
        if resource.id:
            index[f"{entry.resource_type}/{resource.id}"] = resource

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


def _practitioner_name(practitioner: Any) -> str | None:
    name = (practitioner.name or [None])[0]
    return (name.text or " ".join([*(g for g in name.given or [] if g), name.family or ""]).strip() or None) if name else None


def _request_identifier(document: dict[str, Any]) -> str | None:
    """The referral id from a Bundle that failed validation, read leniently, so the GP can be told."""
    entries = document.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") in REQUEST_TYPE.values():
            identifiers = resource.get("identifier")
            for identifier in identifiers if isinstance(identifiers, list) else []:
                if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                    return clean_text(identifier["value"])
    return None
