"""What an adapter returns: a canonical `Referral`, or a `Rejection` listing every error found."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Referral


@dataclass(frozen=True)
class Rejection:
    """A message the hub cannot use. `referrer_referral_id` is set when it could still be read,
    so that the referrer can be told."""

    errors: list[ReferralError]
    referrer_referral_id: str | None = None
    failure: str | None = None
    """The type of an exception an adapter raised (a bug), for the log; None for an ordinary rejection."""

    def __post_init__(self) -> None:
        if not self.errors:
            raise ValueError("a rejection needs at least one error")


ParseOutcome = Referral | Rejection


SCHEMA_ONLY_MESSAGES = frozenset({
    "missing", "extra_forbidden", "string_type", "string_too_short", "string_too_long", "string_pattern_mismatch",
    "int_type", "int_parsing", "float_type", "float_parsing", "bool_type", "bool_parsing", "date_type",
    "date_parsing", "date_from_datetime_parsing", "datetime_type", "datetime_parsing", "list_type", "dict_type",
    "model_type", "model_attributes_type", "literal_error", "enum", "too_short", "too_long", "greater_than",
    "greater_than_equal", "less_than", "less_than_equal", "union_tag_not_found"})
"""pydantic error types whose text names only what the schema expects (`Field required`, `String should match
pattern ...`); the others (a validator's `value_error`, `union_tag_invalid`) may quote the value submitted."""


def schema_message(problem: Mapping[str, Any]) -> str:
    """A pydantic problem as a fixed text: its own where that quotes the schema alone, a general one otherwise."""
    if problem.get("type") in SCHEMA_ONLY_MESSAGES:
        return f"{str(problem['msg']).rstrip('.')}."
    return "This field does not match the schema."


@dataclass
class ErrorList:
    """Collects errors while an adapter reads a message, so that all of them are reported at once."""

    errors: list[ReferralError] = field(default_factory=list)

    def add(self, code: ErrorCode, location: str, message: str) -> None:
        self.errors.append(ReferralError(code=code, location=location, message=message))

    def __bool__(self) -> bool:
        return bool(self.errors)
