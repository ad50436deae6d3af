"""Which FHIR version a GP Bundle is written in, and the resources of it the hub reads, validated in that version.

ZorgDomein's FHIR interface follows STU3 (its client announces `FHIR 3.0.1/DSTU3`); the hub, its handovers and
other GP systems speak R4. Most of what the hub reads is spelled alike in both (Patient, Practitioner,
PractitionerRole, Composition); the rest is not: STU3 asks for care with a `ReferralRequest` where R4 has a
`ServiceRequest`, its MessageHeader carries `event` where R4 has `eventCoding`, a stylesheet `Binary` holds
`content` where R4 has `data`, a `Coverage` groups in `grouping` where R4 has `class`. A whole Bundle validated in
one version's models refuses a document of the other for an element the hub never reads.

So the version is found from the document itself (`detect_version`), and only what the hub reads is validated in
it (`read_bundle`): the Bundle's own elements and every MessageHeader, Composition, Patient, Practitioner,
PractitionerRole and ServiceRequest or ReferralRequest, with fhir.resources' models of that version (R4B's for R4,
wire-compatible for these resources). Any other entry (a stylesheet, a Coverage, an Organization, an attachment)
need only be a resource, an object naming its `resourceType`: an element the hub does not read never rejects a
referral.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class as r4_model
from fhir.resources.STU3 import get_fhir_model_class as stu3_model
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import FhirVersion
from services.intake.outcome import ErrorList, schema_message

MODELS = {FhirVersion.STU3: stu3_model, FhirVersion.R4: r4_model}
NAMES = {FhirVersion.STU3: "STU3", FhirVersion.R4: "R4"}
REQUEST_TYPE = {FhirVersion.STU3: "ReferralRequest", FhirVersion.R4: "ServiceRequest"}
"""The resource that asks for care, per version: STU3's ReferralRequest became R4's ServiceRequest."""
READ_TYPES = frozenset({"MessageHeader", "Composition", "Patient", "Practitioner", "PractitionerRole",
                        *REQUEST_TYPE.values()})
"""The resources the mapping reads (services/intake/gp.py); each is validated in the Bundle's version."""
ZORGDOMEIN_PROFILES = "http://zorgdomein.nl/fhir/StructureDefinition/"
"""ZorgDomein's profiles (zd-document, zd-patient, zd-coverage, ...) are STU3 profiles: a document claiming one
is STU3 unless its shape says otherwise."""
_DATE_FIELDS = {"birthDate", "authoredOn", "date"}


@dataclass(frozen=True)
class Entry:
    """One entry of the Bundle: its fullUrl, its resource type, and the validated resource when the hub reads it
    (None for the entries it does not)."""

    full_url: str | None
    resource_type: str
    resource: Any | None


@dataclass(frozen=True)
class ReadBundle:
    version: FhirVersion
    type: str | None
    entries: list[Entry]


def detect_version(document: dict[str, Any]) -> FhirVersion:
    """The version the Bundle is written in, by what it holds rather than what it claims, in this order:

    1. the version whose models know every element of more of the parts the hub reads (the Bundle itself, the
       MessageHeader or Composition, Patient, Practitioner(Role), the ServiceRequest or ReferralRequest): a
       ReferralRequest or a MessageHeader's `event` only STU3 knows, a ServiceRequest or a Bundle's `timestamp`
       only R4;
    2. on a tie, of more of the other entries (a Binary with `content`, a Coverage with `grouping`: STU3);
    3. then what `meta.profile` claims: one of ZorgDomein's profiles, on the Bundle or a resource, is STU3;
    4. else R4, the hub's own version (a Bundle alike in both reads the same in either).

    Why the shape first: senders do not state the version (FHIR carries it only in the HTTP media type, which a
    Kafka referrer never sends), profiles are optional, and a document read in a version whose models do not know
    its elements is refused for them. Why counts and not "all or nothing": a Bundle that mixes versions, or has a
    misspelt element, is read in the version that knows most of it, and validation then names each element that
    version does not know, rather than guessing per resource."""
    resources = [entry["resource"] for entry in _entries(document)
                 if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)]
    read = [document, *(r for r in resources if _type_of(r) in READ_TYPES)]
    others = [r for r in resources if _type_of(r) not in READ_TYPES]
    claimed = FhirVersion.STU3 if any(_claims_zorgdomein(part) for part in [document, *resources]) else None

    def evidence(version: FhirVersion) -> tuple[int, int, bool, bool]:
        return (sum(_fits(version, part) for part in read), sum(_fits(version, part) for part in others),
                claimed is version, version is FhirVersion.R4)

    return max(FhirVersion, key=evidence)


def read_bundle(document: dict[str, Any], version: FhirVersion) -> ReadBundle | list[ReferralError]:
    """The Bundle's entries with the resources the hub reads validated in `version`, or every error found."""
    errors = ErrorList()
    entries = _entries(document)
    envelope = {**document, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                      for e in entries]} if isinstance(document.get("entry"), list) else document
    bundle = _validated(version, "Bundle", envelope, "Bundle", errors)
    read: list[Entry] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            continue
        location = f"Bundle.entry[{index}].resource"
        resource_type = _type_of(resource) if isinstance(resource, dict) else None
        if resource_type is None:
            errors.add(ErrorCode.SCHEMA_INVALID, location, "An entry's resource is no FHIR resource (no resourceType).")
            continue
        model = None
        if resource_type in READ_TYPES and _elements(version, resource_type) is None:
            errors.add(ErrorCode.SCHEMA_INVALID, f"{location}.resourceType",
                       f"{resource_type} is no resource of FHIR {NAMES[version]}, the version of the rest of the "
                       f"Bundle; in FHIR {NAMES[version]} a referral asks for care with a {REQUEST_TYPE[version]}.")
        elif resource_type in READ_TYPES:
            model = _validated(version, resource_type, resource, location, errors)
        read.append(Entry(entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None, resource_type,
                          model))
    if errors or bundle is None:
        return errors.errors
    return ReadBundle(version, bundle.type, read)


def _entries(document: dict[str, Any]) -> list[Any]:
    entries = document.get("entry")
    return entries if isinstance(entries, list) else []


@lru_cache(maxsize=512)
def _elements(version: FhirVersion, resource_type: str) -> frozenset[str] | None:
    """The JSON names a resource of this type may carry in this version (elements and their `_element`
    extensions); None when the version has no such resource."""
    try:
        model = MODELS[version](resource_type)
    except (KeyError, ValueError):
        return None
    return frozenset({field.alias or name for name, field in model.model_fields.items()} | {"resourceType"})


def _type_of(part: dict[str, Any]) -> str | None:
    resource_type = part.get("resourceType")
    return resource_type if isinstance(resource_type, str) else None


def _fits(version: FhirVersion, part: dict[str, Any]) -> bool:
    resource_type = _type_of(part)
    elements = _elements(version, resource_type) if resource_type is not None else None
    return elements is not None and part.keys() <= elements


def _claims_zorgdomein(part: dict[str, Any]) -> bool:
    meta = part.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return isinstance(profiles, list) and any(isinstance(p, str) and p.startswith(ZORGDOMEIN_PROFILES)
                                              for p in profiles)


def _validated(version: FhirVersion, resource_type: str, value: dict[str, Any], location: str,
               errors: ErrorList) -> Any | None:
    try:
        return MODELS[version](resource_type).model_validate(value)
    except ValidationError as exc:
        for problem in exc.errors():
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
            if set(map(str, problem["loc"])) & _DATE_FIELDS:
                errors.add(ErrorCode.DATE_INVALID, f"{location}{path}", "Not a real date (YYYY-MM-DD).")
            else:
                errors.add(ErrorCode.SCHEMA_INVALID, f"{location}{path}", schema_message(problem))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        # fhir.resources raises plain errors for some malformed input, e.g. KeyError for an unknown
        # resourceType inside a contained resource (found by the property tests)
        errors.add(ErrorCode.SCHEMA_INVALID, location,
                   f"Not a valid FHIR {NAMES[version]} {resource_type} ({type(exc).__name__}: an unknown resource "
                   "type or a malformed element).")
    return None
