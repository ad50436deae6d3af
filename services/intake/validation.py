"""Checks shared by every channel adapter: BSN, AGB, postcode, dates, age, product, text lengths.

Every message is a fixed text (`what` is the adapter's own label): an error travels on status topics, in dead-letter
headers and in the gateway's Task, which operations and analytics read, so it never quotes a submitted value; the
value stays in the dead letter's raw bytes."""

import re
from datetime import date, datetime

from typing import Any

from schemas.errors import ErrorCode
from schemas.referral import TEXT_LIMITS
from services.intake.outcome import ErrorList

_POSTCODE = re.compile(r"^\s*(\d{4})\s*([A-Za-z]{2})\s*$")
ADULT_AGE = 18
CONTINUATION_AGE = 23


def bsn_passes_elfproef(bsn: str) -> bool:
    """The 11-test: 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 must be divisible by 11 (and not all zeros)."""
    if not re.fullmatch(r"\d{9}", bsn) or bsn == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(bsn[:8], range(9, 1, -1))) - int(bsn[8])
    return total % 11 == 0


def check_bsn(value: str | None, location: str, errors: ErrorList) -> str | None:
    bsn = (value or "").strip()
    if not bsn:
        errors.add(ErrorCode.BSN_MISSING, location, "The youth's BSN is missing.")
        return None
    if not bsn_passes_elfproef(bsn):
        errors.add(ErrorCode.BSN_INVALID, location, "The BSN is not 9 digits passing the 11-test (elfproef).")
        return None
    return bsn


def check_agb(value: str | None, location: str, errors: ErrorList, what: str = "AGB code") -> str | None:
    agb = (value or "").strip()
    if not re.fullmatch(r"\d{8}", agb):
        errors.add(ErrorCode.AGB_INVALID, location, f"The {what} must be 8 digits.")
        return None
    return agb


def normalise_postcode(value: str | None) -> str | None:
    """`1234ab`, `1234 AB`, ` 1234  ab ` all become `1234 AB`; anything else None."""
    match = _POSTCODE.match(value or "")
    return f"{match.group(1)} {match.group(2).upper()}" if match else None


def check_postcode(value: str | None, location: str, errors: ErrorList) -> str | None:
    postcode = normalise_postcode(value)
    if postcode is None:
        errors.add(ErrorCode.SCHEMA_INVALID, location, "The postcode must look like '1234 AB'.")
    return postcode


def check_date(value: object, location: str, errors: ErrorList, what: str) -> date | None:
    """Accepts a date or an ISO `YYYY-MM-DD` string (a longer dateTime is cut to its date, as is a datetime:
    FHIR's authoredOn is a dateTime, and a datetime does not compare with a date)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
        errors.add(ErrorCode.DATE_INVALID, location, f"The {what} is not a real date (YYYY-MM-DD).")
        return None
    errors.add(ErrorCode.DATE_INVALID, location, f"The {what} is missing.")
    return None


def age_on(birth_date: date, on: date) -> int:
    """Whole years; someone born on 29 February turns a year older on 1 March in common years."""
    had_birthday = (on.month, on.day) >= (birth_date.month, birth_date.day)
    return on.year - birth_date.year - (0 if had_birthday else 1)


def check_age(birth_date: date, referral_date: date, continuation: bool, location: str,
              errors: ErrorList) -> None:
    if birth_date > referral_date:
        errors.add(ErrorCode.DATE_INVALID, location, "The birth date lies after the referral date.")
        return
    limit = CONTINUATION_AGE if continuation else ADULT_AGE
    if age_on(birth_date, referral_date) >= limit:
        why = "continued care (started before 18)" if continuation else "youth care"
        errors.add(ErrorCode.AGE_OUT_OF_RANGE, location,
                   f"The youth is {limit} or older on the referral date; {why} is for under-{limit}s.")


def check_product(code: str | None, known_products: frozenset[str], location: str, errors: ErrorList) -> None:
    if code is not None and code not in known_products:
        errors.add(ErrorCode.PRODUCT_UNKNOWN, location, "The product code is not in the iJw product table.")


def check_lengths(texts: dict[str, tuple[Any, str]], errors: ErrorList) -> None:
    """Each canonical text field (a key of `TEXT_LIMITS`) with its value and where the message holds it: longer
    than its limit is TOO_LONG there (the message names the limit, never the value; nothing is cut)."""
    for name, (value, location) in texts.items():
        limit = TEXT_LIMITS[name]
        if isinstance(value, str) and len(value) > limit:
            errors.add(ErrorCode.TOO_LONG, location, f"This field holds at most {limit} characters.")
