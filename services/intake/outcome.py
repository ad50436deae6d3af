"""What an adapter returns: a canonical `Referral`, or a `Rejection` listing every error found."""

from dataclasses import dataclass, field

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


@dataclass
class ErrorList:
    """Collects errors while an adapter reads a message, so that all of them are reported at once."""

    errors: list[ReferralError] = field(default_factory=list)

    def add(self, code: ErrorCode, location: str, message: str) -> None:
        self.errors.append(ReferralError(code=code, location=location, message=message))

    def __bool__(self) -> bool:
        return bool(self.errors)
