"""Specialist channel: an HL7 v2.x REF^I12 message (ER7, pipe-delimited) to the canonical `Referral`.

Library choice: `hl7` (python-hl7) rather than `hl7apy`. Both are on PyPI and parse ER7; hl7apy also
validates whole message structures against the v2.x definitions, which makes it strict about the
optional segments and fields hospital systems leave out and raises its own exceptions, whereas the
hub has to report every problem with its own stable codes and an HL7 field location anyway. python-hl7
is small, pure Python without dependencies, tolerant, and its accessor (`PID.F3.R1.C4`) maps one to
one onto the locations the referrer is told (`PID-3`). It splits segments on `\\r` only, so `\\n` and
`\\r\\n` segment ends are normalised first.

Field mapping (docs/design.md, "Inbound formats"): MSH-9 `REF^I12`; RF1-6 the referrer's referral id;
RF1-3 the product when its coding system (component 3) is `IJWPROD`; RF1-5 `SPEC` asks for specialist
care; RF1-10 `CONT` marks continued care that started before 18; RF1-7 the referral date; PRD with
role `RP` the referring specialist (AGB in PRD-7), an optional PRD with role `RT` the preferred
provider; PID-3 the BSN (assigning authority `NLMINBIZA`, type `NNNLD`), PID-5 name, PID-7 birth date,
PID-11 address (postcode in component 5); NTE-3 free text.
"""

import re
from datetime import date, datetime
from typing import Any

import hl7

from schemas.errors import ErrorCode
from schemas.referral import (
    AGB_SYSTEM,
    REFERRER_TYPE_OF_CHANNEL,
    Channel,
    Referral,
    Referrer,
    Youth,
    hub_referral_id,
)
from services.infra.pseudonym import youth_pseudonym_if_keyed
from services.intake import validation as v
from services.intake.outcome import ErrorList, ParseOutcome, Rejection
from services.intake.reading import clean_text, has_control_character, reject, too_large

BSN_AUTHORITY, BSN_TYPE = "NLMINBIZA", "NNNLD"
PRODUCT_CODING_SYSTEM = "IJWPROD"
_HL7_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
MAX_PIECES = 5_000
"""Separators (MSH-1, MSH-2 and segment ends) in one message. python-hl7 builds an object for each piece,
some microseconds each: a megabyte of `~` would hold a partition for seconds. A REF^I12 has a few hundred."""


def parse_specialist(raw: bytes, *, known_products: frozenset[str], pseudonym_key: str | None, received_at: datetime,
                     max_bytes: int = 1024 * 1024) -> ParseOutcome:
    if rejection := too_large(raw, max_bytes):
        return rejection
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return reject(ErrorCode.UNPARSEABLE, "", "The message is not UTF-8 text.")
    if has_control_character(text):
        return reject(ErrorCode.UNPARSEABLE, "", "The message holds a control character (e.g. NUL); HL7 v2 "
                      "segments end in a carriage return and hold text only.")
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip()
    if text.startswith(("{", "[", "<")):
        return reject(ErrorCode.CHANNEL_MISMATCH, "MSH",
                      "The specialist channel takes an HL7 v2 REF^I12 message (ER7), not JSON or XML.")
    if not text.startswith("MSH") or len(text) < 8:
        return reject(ErrorCode.UNPARSEABLE, "MSH", "An HL7 v2 message starts with an MSH segment.")
    pieces = sum(text.count(separator) for separator in set(text[3:8]) | {"\r"})
    if pieces > MAX_PIECES:
        return reject(ErrorCode.TOO_LARGE, "MSH", f"The message has {pieces} segments, fields, components and "
                      f"repetitions; a referral needs far fewer (at most {MAX_PIECES}).")
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on malformed ER7; all mean the same here
        return reject(ErrorCode.UNPARSEABLE, "MSH", f"Not a readable HL7 v2 message ({type(exc).__name__}).")
    return _map_message(message, known_products, pseudonym_key, received_at)


def _map_message(message: Any, known_products: frozenset[str], pseudonym_key: str | None,
                 received_at: datetime) -> ParseOutcome:
    errors = ErrorList()
    kind = (_get(message, "MSH.F9.R1.C1"), _get(message, "MSH.F9.R1.C2"))
    if kind != ("REF", "I12"):
        return reject(ErrorCode.CHANNEL_MISMATCH, "MSH-9",
                      "The specialist channel takes REF^I12 messages; this one is of another type (or none).",
                      _get(message, "RF1.F6.R1.C1") or None)
    segments = {_segment_name(segment) for segment in message}
    for required in ("RF1", "PRD", "PID"):
        if required not in segments:
            errors.add(ErrorCode.SCHEMA_INVALID, required, f"The {required} segment is missing.")

    referrer_referral_id = _get(message, "RF1.F6.R1.C1") or None
    if "RF1" in segments and not referrer_referral_id:
        errors.add(ErrorCode.SCHEMA_INVALID, "RF1-6", "The originating referral identifier (RF1-6) is missing.")
    referral_date = _date(_get(message, "RF1.F7.R1.C1"), "RF1-7", errors, "referral date (effective date)")
    product = None
    if _get(message, "RF1.F3.R1.C3") == PRODUCT_CODING_SYSTEM:
        product = _get(message, "RF1.F3.R1.C1") or None
        v.check_product(product, known_products, "RF1-3", errors)
    specialist_asked = _get(message, "RF1.F5.R1.C1").upper() == "SPEC"
    continuation = _get(message, "RF1.F10.R1.C1").upper() == "CONT"

    referring, preferred_segment = _providers(message)
    agb = None
    if "PRD" in segments:
        if referring is None:
            errors.add(ErrorCode.SCHEMA_INVALID, "PRD-1", "No PRD segment with provider role 'RP' (referring provider).")
        else:
            agb = v.check_agb(_field(referring, 7, 1, 1), "PRD-7", errors, "referring specialist's AGB code")
    preferred = None
    if preferred_segment is not None:
        preferred = v.check_agb(_field(preferred_segment, 7, 1, 1), "PRD-7", errors, "preferred provider's AGB code")

    bsn = birth_date = postcode = None
    if "PID" in segments:
        bsn = v.check_bsn(_bsn(message), "PID-3", errors)
        birth_date = _date(_get(message, "PID.F7.R1.C1"), "PID-7", errors, "birth date")
        postcode = v.check_postcode(_get(message, "PID.F11.R1.C5"), "PID-11", errors)
    if birth_date and referral_date:
        v.check_age(birth_date, referral_date, continuation, "PID-7", errors)
    notes = [_field(segment, 3, 1, 1) for segment in message if _segment_name(segment) == "NTE"]
    free_text = "\n".join(note for note in notes if note) or None
    display, given, family = _person(referring, 2), _get(message, "PID.F5.R1.C2"), _get(message, "PID.F5.R1.C1")
    v.check_lengths({"referrer_referral_id": (referrer_referral_id, "RF1-6"), "referrer.display": (display, "PRD-2"),
                     "youth.given_name": (given, "PID-5"), "youth.family_name": (family, "PID-5"),
                     "free_text": (free_text, "NTE-3")}, errors)
    if errors or None in (referrer_referral_id, referral_date, bsn, birth_date, postcode, agb):
        if not errors:  # every missing piece above adds its own error; this guards the invariant
            errors.add(ErrorCode.SCHEMA_INVALID, "", "The message lacks a required field.")
        return Rejection(errors.errors, referrer_referral_id)

    assert referral_date and bsn and birth_date and postcode and agb and referrer_referral_id
    return Referral(
        referral_id=hub_referral_id(Channel.SPECIALIST, agb, referrer_referral_id),
        channel=Channel.SPECIALIST,
        referrer=Referrer(type=REFERRER_TYPE_OF_CHANNEL[Channel.SPECIALIST], identifier_system=AGB_SYSTEM,
                          identifier=agb, display=display),
        referrer_referral_id=referrer_referral_id,
        referral_date=referral_date,
        youth=Youth(bsn=bsn, pseudonym=youth_pseudonym_if_keyed(bsn, pseudonym_key), birth_date=birth_date,
                    postcode=postcode, given_name=given or None, family_name=family or None),
        product=product,
        specialist_asked=specialist_asked,
        continuation=continuation,
        preferred_provider=preferred,
        free_text=free_text,
        received_at=received_at,
    )


def _segment_name(segment: Any) -> str:
    try:
        return str(segment[0]).strip()
    except (IndexError, TypeError):
        return ""


def _get(message: Any, key: str) -> str:
    """A field by python-hl7's accessor, cleaned like text on every channel; '' where the message does not have it."""
    try:
        return clean_text(str(message[key])) or ""
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return ""


def _field(segment: Any, field: int, repetition: int, component: int) -> str:
    try:
        return clean_text(str(segment.extract_field(1, field, repetition, component, 1))) or ""
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return ""


def _providers(message: Any) -> tuple[Any, Any]:
    referring = preferred = None
    for segment in message:
        if _segment_name(segment) == "PRD":
            role = _field(segment, 1, 1, 1).upper()
            if role == "RP" and referring is None:
                referring = segment
            elif role == "RT" and preferred is None:
                preferred = segment
    return referring, preferred


def _bsn(message: Any) -> str | None:
    """The PID-3 repetition assigned by NLMINBIZA with type NNNLD; other identifiers are ignored."""
    for segment in message:
        if _segment_name(segment) != "PID":
            continue
        for repetition in range(1, 10):
            value = _field(segment, 3, repetition, 1)
            authority = _field(segment, 3, repetition, 4).split("&")[0]
            if authority == BSN_AUTHORITY and _field(segment, 3, repetition, 5) == BSN_TYPE:
                return value
            if not value and not authority:
                break
        return None
    return None


def _person(segment: Any, field: int) -> str | None:
    if segment is None:
        return None
    family, given = _field(segment, field, 1, 1), _field(segment, field, 1, 2)
    return " ".join(part for part in (given, family) if part) or None


def _date(value: str, location: str, errors: ErrorList, what: str) -> date | None:
    """HL7 DT/TS (`YYYYMMDD`, optionally followed by a time) to a date; a DATE_INVALID error otherwise."""
    if not value:
        errors.add(ErrorCode.DATE_INVALID, location, f"The {what} is missing.")
        return None
    match = _HL7_DATE.match(value)
    if match:
        try:
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            pass
    errors.add(ErrorCode.DATE_INVALID, location, f"The {what} is not a real date (YYYYMMDD).")
    return None
