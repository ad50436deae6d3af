"""Test referrals: the hand-written examples under schemas/examples, varied per test."""

import json
import random
from typing import Any

from schemas.referral import Channel
from schemas.registry import ReferrerOrganisation
from services.access.senders import organisation_sending_as
from services.analytics import messages
from services.analytics.messages import GP_EXAMPLE  # noqa: F401  (tests import the example from here)
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT

EXAMPLE_BSN, SPECIALIST_EXAMPLE_ID = "999911120", "UMCG-REF-2026-0042"
"""The youth and referral id of the examples, which `channel_bytes` replaces."""

BSNS_MADE: set[str] = set()
"""Every BSN the tests made: the log scan at the end of the run looks for each of them."""


PLAIN_MLLP = {"VERWIJSHUB_MLLP_TLS": "false", "VERWIJSHUB_MLLP_PLAIN_ALLOW": "127.0.0.1=umcg"}
"""A gateway's settings for plain MLLP from this machine as UMCG (the `hl7` package's mllp_send speaks no TLS)."""


def sender(channel: Channel | str) -> ReferrerOrganisation:
    """The referrer organisation of the shipped registry that sends the channel's examples (it lists their
    referrer): whose principal, token and topic a test uses to play a referrer."""
    found = organisation_sending_as(load_registry(REPO_ROOT / "deploy" / "registry"), Channel(channel),
                                    messages.EXAMPLE_REFERRERS[channel])
    assert found is not None, channel
    return found


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


def channel_bytes(channel: str, referral_id: str, bsn: str | None = None) -> bytes:
    """A valid referral in the channel's own format (gp: a FHIR Bundle; specialist: HL7 v2; gi, ggd, court: their
    JSON documents): the channel's example with a new referral id and a new youth (a BSN the log scan knows)."""
    bsn = bsn or random_bsn()
    if channel == "gp":
        return gp_bytes(referral_id=referral_id, bsn=bsn)
    if channel == "specialist":
        text = messages.SPECIALIST_EXAMPLE.read_text()
        return text.replace(SPECIALIST_EXAMPLE_ID, referral_id).replace(EXAMPLE_BSN, bsn).encode()
    document = json.loads(messages.DOCUMENT_EXAMPLES[channel].read_text())
    document["referral_id"], document["youth"]["bsn"] = referral_id, bsn
    return json.dumps(document).encode()
