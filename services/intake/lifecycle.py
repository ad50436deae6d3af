"""Cancellations on every channel, read before a referral is: the document that withdraws a referral sent earlier.

Pure. `read_message` is what intake and the gateway call: a cancellation (`Cancellation`) when the message is one,
else the channel's adapter (`read_referral`: a `Referral` or a `Rejection`). Per channel:

- **gp**: ZorgDomein's cancellation (Annuleringsbericht), a FHIR document whose Composition is of type
  `cancellation` (`http://zorgdomein.nl/terminology/code-system/document-type`), its identifier the ZD number of
  the referral, its zd-sender (or author) the GP, as in every ZorgDomein document;
- **specialist**: HL7 v2 `REF^I14` ("cancel patient referral", v2.5 chapter 11.3.3: the message the standard
  defines for it), RF1-6 the referral id, PRD role `RP` the referrer (PRD-7). Why I14 and not RF1-1 status
  (`HL70283`, e.g. `C` cancelled) in an I13 "modify": the status field describes the referral as the sender's
  system holds it, and systems fill it unevenly (the examples send `P` pending on a new referral); the event type
  is an explicit request the ACK answers, and I14 is the event the standard names for exactly this;
- **gi, ggd, court**: the `Withdrawal` document (`schemas/lifecycle.py`, `schemas/json/withdrawal.schema.json`);
- **any channel**: a FHIR `Task` with status `cancelled` and the hub referral id as its id: what the gateway writes
  for a referrer's `PUT`/`PATCH /fhir/Task/{id}` (services/gateway/api.py). It names no referrer: intake takes the
  referral's sender from its ledger, and only that organisation's topic may cancel it.

A ZorgDomein supplement (Nazending) is no cancellation: it reads as a referral document (services/intake/gp.py) and
intake makes it part of the referral of its ZD number (services/intake/repeats.py).
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import hl7
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.lifecycle import Withdrawal
from schemas.referral import AGB_SYSTEM, Channel, Referral, hub_referral_id
from services.intake import specialist as hl7_reading
from services.intake.adapters import read_referral
from services.intake.gp import DOCUMENT_TYPE_SYSTEMS, ZD_SENDER_EXTENSION
from services.intake.outcome import ErrorList, Rejection, schema_message
from services.intake.reading import clean_text, too_large

CANCELLATION_DOCUMENT = "cancellation"
TASK_LOCATION = "Task.id"


@dataclass(frozen=True)
class Cancellation:
    """A referrer's cancellation of a referral: the hub referral id it names, and where the message said so."""

    channel: Channel
    referral_id: str
    referrer_referral_id: str | None
    location: str
    """Where the message names the referral (a `REFERRAL_UNKNOWN` points there)."""
    document: str
    referrer_identifier: str | None = None
    """The referrer the message names (checked against the sending organisation); None for a Task, which names the
    referral by its hub id only."""
    reason: str | None = None


Outcome = Referral | Cancellation | Rejection


def read_message(channel: Channel, raw: bytes, *, known_products: frozenset[str], pseudonym_key: str | None,
                 received_at: datetime, max_bytes: int) -> Outcome:
    """A cancellation, or the channel's adapter's verdict."""
    if too_large(raw, max_bytes) is None:
        found = cancellation(channel, raw)
        if found is not None:
            return found
    return read_referral(channel, raw, known_products=known_products, pseudonym_key=pseudonym_key,
                         received_at=received_at, max_bytes=max_bytes)


def document_kind(raw: bytes) -> str | None:
    """The kind of a ZorgDomein document (`referral-letter`, `appointment-request`, `supplement`, ...), for the
    record of an amendment; None for any other message."""
    try:
        document = json.loads(raw)
        composition = document["entry"][0]["resource"]
        codes = [c.get("code") for c in composition["type"]["coding"] if c.get("system") in DOCUMENT_TYPE_SYSTEMS]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return next((c for c in codes if isinstance(c, str)), None) if composition.get("resourceType") == "Composition" \
        else None


def cancellation(channel: Channel, raw: bytes) -> Cancellation | Rejection | None:
    """The cancellation `raw` is, its rejection when it is one but unreadable, or None when it is no cancellation."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        if document.get("resourceType") == "Task":
            return _task(channel, document)
        if channel is Channel.GP and document.get("resourceType") == "Bundle":
            return _zorgdomein(document)
        if channel in (Channel.GI, Channel.GGD, Channel.COURT) and document.get("document") == "withdrawal":
            return _withdrawal(channel, document)
        return None
    if channel is Channel.SPECIALIST and text.startswith("MSH"):
        return _ref_i14(text)
    return None


def _task(channel: Channel, task: dict[str, Any]) -> Cancellation | Rejection:
    referral_id = clean_text(task.get("id")) if isinstance(task.get("id"), str) else None
    errors = ErrorList()
    if task.get("status") != "cancelled":
        errors.add(ErrorCode.SCHEMA_INVALID, "Task.status", "A referrer may only set its referral's Task to "
                   "'cancelled'.")
    if not referral_id or len(referral_id) > 100:
        errors.add(ErrorCode.SCHEMA_INVALID, TASK_LOCATION, "The Task's id must be the hub referral id.")
    if errors:
        return Rejection(errors.errors)
    reason = task.get("statusReason") if isinstance(task.get("statusReason"), dict) else {}
    return Cancellation(channel, referral_id, None, TASK_LOCATION, "Task",
                        reason=_reason(reason.get("text")))


def _reason(value: Any) -> str | None:
    text = clean_text(value) if isinstance(value, str) else None
    return text[:2000] if text else None  # a reason for the log of the referrer's own change; never routed on


def _zorgdomein(bundle: dict[str, Any]) -> Cancellation | Rejection | None:
    """ZorgDomein's cancellation document; None for any other Bundle (a referral, read by the gp adapter)."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)] \
        if isinstance(bundle.get("entry"), list) else []
    resources = [e.get("resource") if isinstance(e.get("resource"), dict) else {} for e in entries]
    if bundle.get("type") != "document" or not resources or resources[0].get("resourceType") != "Composition":
        return None
    composition = resources[0]
    codings = (composition.get("type") or {}).get("coding") if isinstance(composition.get("type"), dict) else None
    kinds = {c.get("code") for c in codings or [] if isinstance(c, dict) and c.get("system") in DOCUMENT_TYPE_SYSTEMS}
    if CANCELLATION_DOCUMENT not in kinds:
        return None
    index: dict[str, dict[str, Any]] = {}
    for entry, resource in zip(entries, resources):
        if isinstance(entry.get("fullUrl"), str):
            index[entry["fullUrl"]] = resource
        if isinstance(resource.get("id"), str) and isinstance(resource.get("resourceType"), str):
            index[f"{resource['resourceType']}/{resource['id']}"] = resource
    errors = ErrorList()
    identifier = composition.get("identifier") if isinstance(composition.get("identifier"), dict) else {}
    zd_number = clean_text(identifier.get("value")) if isinstance(identifier.get("value"), str) else None
    if not zd_number or len(zd_number) > 100:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.identifier", "The cancellation's ZD number is missing.")
    agb = _zd_sender_agb(composition, index)
    if agb is None:
        errors.add(ErrorCode.SCHEMA_INVALID, "Composition.author", "Neither the zd-sender nor an author of the "
                   "cancellation is a Practitioner with an AGB code (or a PractitionerRole with one) of the Bundle.")
    if errors:
        return Rejection(errors.errors, zd_number if zd_number and len(zd_number) <= 100 else None)
    section_texts = [clean_text(s.get("title")) for s in composition.get("section") or [] if isinstance(s, dict)]
    return Cancellation(Channel.GP, hub_referral_id(Channel.GP, agb, zd_number), zd_number, "Composition.identifier",
                        CANCELLATION_DOCUMENT, referrer_identifier=agb,
                        reason=_reason("; ".join(t for t in section_texts if t)))


def _zd_sender_agb(composition: dict[str, Any], index: dict[str, dict[str, Any]]) -> str | None:
    references = [ext.get("valueReference") for ext in composition.get("extension") or []
                  if isinstance(ext, dict) and ext.get("url") == ZD_SENDER_EXTENSION]
    references += [a for a in composition.get("author") or []]
    for reference in references:
        target = index.get(reference.get("reference")) if isinstance(reference, dict) else None
        if target and target.get("resourceType") == "PractitionerRole":
            practitioner = target.get("practitioner")
            target = index.get(practitioner.get("reference")) if isinstance(practitioner, dict) else None
        if target and target.get("resourceType") == "Practitioner":
            for found in target.get("identifier") or []:
                if isinstance(found, dict) and found.get("system") == AGB_SYSTEM and isinstance(found.get("value"), str):
                    return clean_text(found["value"])
    return None


def _withdrawal(channel: Channel, document: dict[str, Any]) -> Cancellation | Rejection:
    referral_id = clean_text(document.get("referral_id")) if isinstance(document.get("referral_id"), str) else None
    try:
        withdrawal = Withdrawal.model_validate(document)
    except ValidationError as exc:
        errors = ErrorList()
        for problem in exc.errors(include_input=False, include_url=False):
            errors.add(ErrorCode.SCHEMA_INVALID, "/" + "/".join(str(p) for p in problem["loc"]),
                       schema_message(problem))
        return Rejection(errors.errors, referral_id if referral_id and len(referral_id) <= 100 else None)
    if withdrawal.channel != channel.value:
        return Rejection([ReferralError(code=ErrorCode.CHANNEL_MISMATCH, location="/channel", message=(
            f"A document of another channel was sent on the {channel} channel."))], withdrawal.referral_id.strip())
    referral_id, referrer = withdrawal.referral_id.strip(), withdrawal.referrer_id.strip()
    return Cancellation(channel, hub_referral_id(channel, referrer, referral_id), referral_id, "/referral_id",
                        "withdrawal", referrer_identifier=referrer, reason=_reason(withdrawal.reason))


def _ref_i14(text: str) -> Cancellation | Rejection | None:
    """HL7 v2 REF^I14; None for any other message (the specialist adapter reads it, or refuses it)."""
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    head = text.split("\r", 1)[0]
    if len(head) < 8 or "I14" not in head:
        return None
    try:
        message = hl7.parse(text)
    except Exception:  # python-hl7 raises assorted errors on malformed ER7; the specialist adapter reports it
        return None
    if (hl7_reading._get(message, "MSH.F9.R1.C1"), hl7_reading._get(message, "MSH.F9.R1.C2")) != ("REF", "I14"):
        return None
    errors = ErrorList()
    referral_id = hl7_reading._get(message, "RF1.F6.R1.C1") or None
    if not referral_id or len(referral_id) > 100:
        errors.add(ErrorCode.SCHEMA_INVALID, "RF1-6", "The originating referral identifier (RF1-6) of the referral "
                   "to cancel is missing.")
    referring, _ = hl7_reading._providers(message)
    agb = hl7_reading._field(referring, 7, 1, 1) if referring is not None else ""
    if not agb:
        errors.add(ErrorCode.SCHEMA_INVALID, "PRD-7", "No PRD segment with role 'RP' naming the referrer's AGB.")
    if errors:
        return Rejection(errors.errors, referral_id if referral_id and len(referral_id) <= 100 else None)
    return Cancellation(Channel.SPECIALIST, hub_referral_id(Channel.SPECIALIST, agb, referral_id), referral_id,
                        "RF1-6", "REF^I14", referrer_identifier=agb)
