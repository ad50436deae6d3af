"""Reading a raw inbound message the same way on every channel: its size, its JSON, its text.

Referrers' systems send what they send. These turn the pathological (too large, nested thousands deep,
numbers of thousands of digits, invalid UTF-8, lone surrogates, control characters) into a coded
rejection rather than an exception, and clean text one way, so that a name reads the same whichever
channel brought it.
"""

import re
from typing import Any

from pydantic_core import from_json

from schemas.errors import ErrorCode, ReferralError
from services.intake.outcome import Rejection

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 controls and DEL, less tab, line feed and carriage return: no referral text holds them (NUL above all
breaks the recipients' databases and C strings)."""


def reject(code: ErrorCode, location: str, message: str, referrer_referral_id: str | None = None) -> Rejection:
    return Rejection([ReferralError(code=code, location=location, message=message)], referrer_referral_id)


def too_large(raw: bytes, max_bytes: int) -> Rejection | None:
    if len(raw) > max_bytes:
        return reject(ErrorCode.TOO_LARGE, "", f"The message is {len(raw)} bytes; at most {max_bytes}.")
    return None


def has_control_character(text: str) -> bool:
    return _CONTROL.search(text) is not None


def read_json(raw: bytes) -> Any:
    """The JSON value in `raw`, or a `Rejection`. The parser is pydantic's (jiter), not the standard
    library's: it stops at 200 levels of nesting, at numbers too long to convert, at invalid UTF-8 and at
    lone surrogates (`"\\ud800"`) with an error, where `json.loads` raises RecursionError or ValueError or
    returns a string that cannot be encoded again. NaN and Infinity are not JSON and are refused too."""
    try:
        value = from_json(raw, allow_inf_nan=False)
    except ValueError:
        code = ErrorCode.CHANNEL_MISMATCH if raw.lstrip().startswith(b"MSH|") else ErrorCode.UNPARSEABLE
        return reject(code, "", "Not a JSON document.")
    where = _control_character_at(value, "")
    if where is not None:
        return reject(ErrorCode.SCHEMA_INVALID, where, "The text holds a control character (e.g. NUL).")
    return value


def _control_character_at(value: Any, pointer: str) -> str | None:
    """The JSON pointer of the first string (or key) with a control character; the depth is bounded by the parser."""
    if isinstance(value, str):
        return pointer if has_control_character(value) else None
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(key, str) and has_control_character(key):
            return pointer or "/"
        escaped = str(key).replace("~", "~0").replace("/", "~1")
        found = _control_character_at(child, f"{pointer}/{escaped}")
        if found is not None:
            return found
    return None


def clean_text(value: Any) -> str | None:
    """The one way the hub reads a name or free text on every channel: trimmed, and blank (or not text at
    all) is absent, so `" de Vries "` reaches the recipient as `de Vries` and `"  "` as no name."""
    return (value.strip() or None) if isinstance(value, str) else None


def cleaned_document(value: Any) -> Any:
    """A JSON document with every string cleaned by `clean_text` and blank ones dropped, so a blank field
    counts as an absent one (a blank BSN is BSN_MISSING, not a type error; FHIR forbids empty strings). An
    object or list left empty by that is absent too: `{"text": " "}` is no note at all (FHIR forbids empty
    elements as well)."""
    if isinstance(value, dict):
        cleaned = ((key, cleaned_document(child)) for key, child in value.items())
        return {key: child for key, child in cleaned if not _absent(child)}
    if isinstance(value, list):
        return [child for child in map(cleaned_document, value) if not _absent(child)]
    return clean_text(value) if isinstance(value, str) else value


def _absent(value: Any) -> bool:
    return value is None or value == {} or value == []
