"""Every channel's adapter behind one call, the only way the hub (service and command line) reads a referral."""

import dataclasses
from datetime import datetime

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import MAX_ID_CHARS, Channel
from services.intake.documents import parse_court, parse_ggd, parse_gi
from services.intake.gp import parse_gp
from services.intake.outcome import ParseOutcome, Rejection
from services.intake.specialist import parse_specialist

PARSERS = {Channel.GP: parse_gp, Channel.GI: parse_gi, Channel.GGD: parse_ggd, Channel.COURT: parse_court,
           Channel.SPECIALIST: parse_specialist}
"""The channels whose adapter exists."""


def read_referral(channel: Channel, raw: bytes, *, known_products: frozenset[str], pseudonym_key: str | None,
                  received_at: datetime, max_bytes: int) -> ParseOutcome:
    """The channel's adapter on `raw`. Without a pseudonym key (the gateway, which only validates) the youth's
    pseudonym is left NOT_COMPUTED: the checks are the same, and intake computes it. The adapters do not raise
    (the fuzz test holds them to it); should one still, on an input nobody foresaw, the message is refused as
    UNPARSEABLE rather than the intake partition stopped or the command line ending in a traceback, and `failure`
    names the exception for the log. A referral id too long to be one (TOO_LONG) is not kept to tell the referrer
    by: it would be a status's key."""
    try:
        outcome = PARSERS[channel](raw, known_products=known_products, pseudonym_key=pseudonym_key,
                                   received_at=received_at, max_bytes=max_bytes)
    except Exception as exc:
        return Rejection([ReferralError(code=ErrorCode.UNPARSEABLE, location="",
                                        message="The hub could not read this message.")],
                         failure=type(exc).__name__)
    if isinstance(outcome, Rejection) and len(outcome.referrer_referral_id or "") > MAX_ID_CHARS:
        return dataclasses.replace(outcome, referrer_referral_id=None)  # TOO_LONG: no status keyed by it
    return outcome
