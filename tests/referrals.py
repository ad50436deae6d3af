"""Test referrals: the hand-written examples under schemas/examples, varied per test."""

import json
import random
from typing import Any

from services.analytics import messages
from services.analytics.messages import GP_EXAMPLE  # noqa: F401  (tests import the example from here)

BSNS_MADE: set[str] = set()
"""Every BSN the tests made: the log scan at the end of the run looks for each of them."""


def random_bsn(rng: random.Random | None = None) -> str:
    """A BSN that passes the elfproef, different per call, so tests never share a youth."""
    bsn = messages.random_bsn(rng)
    BSNS_MADE.add(bsn)
    return bsn


def gp_bundle(**changes: Any) -> dict[str, Any]:
    """The GP example Bundle with some fields replaced (services/analytics/messages.py says which)."""
    return messages.gp_bundle(**changes)


def gp_bytes(**changes: Any) -> bytes:
    return json.dumps(gp_bundle(**changes)).encode()
