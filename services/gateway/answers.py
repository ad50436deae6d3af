"""What the gateway answers, in each sender's own standard: FHIR OperationOutcome, the hub's JSON rejection, and
the HL7 v2 original-mode acknowledgement. Pure: a submission's outcome in, a response body out."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.errors import ErrorCode, ReferralError

ERROR_CODE_SYSTEM = "urn:verwijshub:error-code"
REFERRAL_ID_SYSTEM = "urn:verwijshub:referral-id"
STRUCTURE = {ErrorCode.UNPARSEABLE, ErrorCode.SCHEMA_INVALID, ErrorCode.CHANNEL_MISMATCH}
"""Codes of a message that could not be read as its format: 400. Every other code breaks a rule of the hub: 422."""


def http_status(errors: list[ReferralError]) -> int:
    """413 for a message too large, 400 when its structure is wrong, else 422 (FHIR's own split)."""
    codes = {error.code for error in errors}
    if ErrorCode.TOO_LARGE in codes:
        return 413
    return 400 if codes & STRUCTURE else 422


def task_location(referral_id: str) -> str:
    return f"/fhir/Task/{referral_id}"


# --- JSON channels -------------------------------------------------------------------------------------------

class Submitted(BaseModel):
    """A referral the gateway wrote to Kafka: intake takes it from there. The same answer for a re-sent one."""

    referral_id: str = Field(description="The hub's referral id (the same for the same channel, referrer and "
                                         "referrer's referral id).")
    referrer_referral_id: str
    status: Literal["submitted"] = "submitted"
    location: str = Field(description="Where the referral's state can be followed (a FHIR Task).")


class Rejected(BaseModel):
    """The hub's rejection shape, as `verwijshub check` prints it: every error found."""

    rejected: Literal[True] = True
    errors: list[ReferralError]


class GatewayProblem(BaseModel):
    """Not about the referral: authentication, the rate limit, a slow sender, Kafka unavailable."""

    error: Literal["unauthenticated", "forbidden", "not-found", "rate-limited", "timeout", "unavailable"]
    detail: str


def submitted(referral_id: str, referrer_referral_id: str) -> Submitted:
    return Submitted(referral_id=referral_id, referrer_referral_id=referrer_referral_id,
                     location=task_location(referral_id))


# --- FHIR ----------------------------------------------------------------------------------------------------

class IssueType(StrEnum):
    STRUCTURE = "structure"
    BUSINESS_RULE = "business-rule"
    TOO_LONG = "too-long"
    INFORMATIONAL = "informational"


PROBLEM_ISSUE_TYPE = {"unauthenticated": "login", "forbidden": "forbidden", "not-found": "not-found",
                      "rate-limited": "throttled", "timeout": "timeout", "unavailable": "transient"}


def operation_outcome(errors: list[ReferralError]) -> dict[str, Any]:
    """Every error as an issue: the hub's code in `details.coding`, its message as `details.text` and
    `diagnostics`, its location as a FHIRPath `expression` (none when the error is about the whole message)."""
    issues = []
    for error in errors:
        kind = (IssueType.TOO_LONG if error.code in (ErrorCode.TOO_LARGE, ErrorCode.TOO_LONG) else
                IssueType.STRUCTURE if error.code in STRUCTURE else IssueType.BUSINESS_RULE)
        issue: dict[str, Any] = {"severity": "error", "code": kind.value, "diagnostics": error.message,
                                 "details": {"coding": [{"system": ERROR_CODE_SYSTEM, "code": error.code.value}],
                                             "text": error.message}}
        if error.location:
            issue["expression"] = [error.location]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}


def _informational(referral_id: str, text: str) -> dict[str, Any]:
    """An informational OperationOutcome naming the hub referral id."""
    return {"resourceType": "OperationOutcome", "id": referral_id, "issue": [{
        "severity": "information", "code": IssueType.INFORMATIONAL.value,
        "details": {"coding": [{"system": REFERRAL_ID_SYSTEM, "code": referral_id}], "text": text}}]}


def accepted_outcome(referral_id: str, referrer_referral_id: str) -> dict[str, Any]:
    """The 2xx body of a referral (its hub id also in Location)."""
    return _informational(referral_id, f"Referral {referrer_referral_id} submitted as hub referral {referral_id}; "
                                       f"follow it at {task_location(referral_id)}.")


def cancelled_outcome(referral_id: str, referrer_referral_id: str) -> dict[str, Any]:
    """The 202 body of a cancellation."""
    return _informational(referral_id, f"Cancellation of referral {referrer_referral_id} submitted; the Task at "
                                       f"{task_location(referral_id)} shows 'cancelled' once the hub closed it.")


def problem_outcome(problem: GatewayProblem) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": PROBLEM_ISSUE_TYPE[problem.error], "diagnostics": problem.detail}]}


OPERATION_OUTCOME_SCHEMA = {
    "type": "object", "required": ["resourceType", "issue"],
    "properties": {"resourceType": {"const": "OperationOutcome"}, "id": {"type": "string"},
                   "issue": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "required": ["severity", "code"],
                       "properties": {"severity": {"enum": ["fatal", "error", "warning", "information"]},
                                      "code": {"type": "string"}, "diagnostics": {"type": "string"},
                                      "expression": {"type": "array", "items": {"type": "string"}},
                                      "details": {"type": "object"}}}}},
    "description": "A FHIR R4 OperationOutcome (http://hl7.org/fhir/R4/operationoutcome.html).",
}
TASK_SCHEMA = {"type": "object", "required": ["resourceType", "id", "status", "intent"],
               "properties": {"resourceType": {"const": "Task"}, "id": {"type": "string"},
                              "status": {"type": "string"}, "intent": {"const": "order"},
                              "businessStatus": {"type": "object"}},
               "description": "A FHIR R4 Task (http://hl7.org/fhir/R4/task.html): status and businessStatus from "
                              "the referral's status events."}
FHIR_BUNDLE_SCHEMA = {"type": "object", "description": "A FHIR STU3 or R4 Bundle: a message (first entry a "
                                                       "MessageHeader) or a document (first entry a Composition); "
                                                       "see schemas/CHANNELS.md."}


# --- HL7 v2 --------------------------------------------------------------------------------------------------

AckCode = Literal["AA", "AE", "AR"]
HL7_ERROR_CODE = {ErrorCode.SCHEMA_INVALID: "101^Required field missing", ErrorCode.BSN_MISSING:
                  "101^Required field missing", ErrorCode.PRODUCT_UNKNOWN: "103^Table value not found",
                  ErrorCode.CHANNEL_MISMATCH: "200^Unsupported message type", ErrorCode.UNPARSEABLE:
                  "102^Data type error", ErrorCode.TOO_LARGE: "207^Application internal error"}
"""HL7 table 0357 (message error condition codes); the rest of the hub's codes are data type errors (102)."""


def header_fields(message: str) -> list[str]:
    """MSH read leniently as a list where index n is MSH-n (MSH-1 is the field separator); [] when no MSH."""
    first = message.replace("\r\n", "\r").replace("\n", "\r").lstrip().split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return []
    separator = first[3]
    return ["", separator, *first.split(separator)[1:]]


def _field(fields: list[str], n: int) -> str:
    return fields[n] if n < len(fields) else ""


def escape(text: str) -> str:
    """HL7 v2 escape sequences for the default delimiters, so a message text never breaks the segment."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\")
            .replace("&", "\\T\\").replace("\r", " ").replace("\n", " "))


def hl7_location(location: str) -> str:
    """`PID-3` -> `PID^1^3` (ERR-2, ERL: segment, sequence, field); `MSH` -> `MSH^1`; '' stays ''."""
    segment, _, field = location.partition("-")
    if not segment.isalnum() or len(segment) != 3:
        return ""
    return f"{segment}^1^{field}" if field.isdigit() else f"{segment}^1"


def acknowledgement(message: str, code: AckCode, errors: list[ReferralError], now: datetime, control_id: str,
                    text: str = "") -> str:
    """The original-mode ACK: sending and receiving application and facility swapped, MSA-2 = MSH-10, one ERR
    per error (ERR-2 the location, ERR-3 the HL7 condition, ERR-4 severity, ERR-5 the hub's code, ERR-7 the
    location as the hub names it (`PID-3`), ERR-8 the message). Segments end in CR."""
    fields = header_fields(message)
    version = _field(fields, 12) or "2.5"
    trigger = _field(fields, 9).split(_field(fields, 2)[:1] or "^")
    event = trigger[1] if len(trigger) > 1 else ""
    msh = "|".join(["MSH", "^~\\&", _field(fields, 5), _field(fields, 6), _field(fields, 3), _field(fields, 4),
                    now.strftime("%Y%m%d%H%M%S"), "", f"ACK^{event}^ACK" if event else "ACK", control_id, "P",
                    version])
    segments = [msh, "|".join(["MSA", code, _field(fields, 10), escape(text)[:80]])]
    for error in errors:
        condition = HL7_ERROR_CODE.get(error.code, "102^Data type error")
        segments.append("|".join(["ERR", "", hl7_location(error.location), f"{condition}^HL70357", "E",
                                  f"{error.code.value}^^VERWIJSHUB", "", escape(error.location),
                                  escape(error.message)]))
    return "\r".join(segments) + "\r"
