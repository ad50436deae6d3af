"""A referral id bound to its first content: the digest, and the verdict new / repeat / conflict (pure)."""

import json
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import AcceptedReferral, Channel, Referral
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.adapters import read_referral
from services.intake.repeats import (
    NO_DIGEST,
    REFERRAL_ID_CONFLICT,
    Seen,
    conflict_alert,
    conflict_rejection,
    referral_digest,
    seen,
)
from tests.referrals import EXAMPLE_BSN, channel_bytes, gp_bundle

PRODUCTS = frozenset(load_registry(REPO_ROOT / "deploy" / "registry").products)
RECEIVED = datetime(2026, 3, 12, 9, 30, tzinfo=UTC)
SENT_BSN = "111222333"  # passes the elfproef


def read(channel: Channel, raw: bytes, received_at: datetime = RECEIVED, key: str = "k") -> Referral:
    outcome = read_referral(channel, raw, known_products=PRODUCTS, pseudonym_key=key,
                            received_at=received_at, max_bytes=1 << 20)
    assert isinstance(outcome, Referral), outcome
    return outcome


def gp(**changes: object) -> Referral:
    return read(Channel.GP, json.dumps(gp_bundle(**{"referral_id": "ZD-1", "bsn": SENT_BSN, **changes})).encode())


def test_a_redelivery_read_later_under_another_pseudonym_key_has_the_same_digest():
    first = gp()
    again = read(Channel.GP, json.dumps(gp_bundle(referral_id="ZD-1", bsn=SENT_BSN)).encode(),
                 received_at=datetime(2026, 3, 13, tzinfo=UTC), key="a rotated key")
    assert (first.received_at, first.youth.pseudonym) != (again.received_at, again.youth.pseudonym)
    assert referral_digest(again) == referral_digest(first)


def test_transport_details_of_the_message_do_not_change_the_digest():
    bundle = gp_bundle(referral_id="ZD-1", bsn=SENT_BSN)
    bundle["id"], bundle["timestamp"] = "another-bundle-id", "2026-03-12T10:00:00+01:00"
    bundle["entry"][0]["resource"]["id"] = "another-message-header"
    resent = read(Channel.GP, json.dumps(bundle, indent=2, sort_keys=True).encode())
    assert referral_digest(resent) == referral_digest(gp())
    hl7 = channel_bytes("specialist", "UMCG-1", bsn=SENT_BSN)
    resent_hl7 = hl7.replace(b"\n", b"\r").replace(b"|MSG-0001|", b"|MSG-0002|").replace(
        b"|20260312091400|", b"|20260312101500|")  # other separators, control id (MSH-10) and time (MSH-7)
    assert hl7.count(b"\n") and resent_hl7.count(b"|MSG-0002|") and resent_hl7.count(b"|20260312101500|")
    assert referral_digest(read(Channel.SPECIALIST, resent_hl7)) == referral_digest(read(Channel.SPECIALIST, hl7))


@pytest.mark.parametrize("changes", [{"bsn": EXAMPLE_BSN}, {"note": "Graag met spoed."}, {"postcode": "9743 AB"},
                                     {"given_name": "Noor"}, {"authored_on": "2026-03-11"}, {"product": "45A49"},
                                     {"categories": ["specialist"]}])
def test_anything_the_referrer_stated_changes_the_digest(changes):
    assert referral_digest(gp(**changes)) != referral_digest(gp())


def test_the_digest_is_of_the_whole_referral_id_included():
    """The same content under another referral id is another referral (it has another key in the ledger anyway)."""
    other = read(Channel.GP, json.dumps(gp_bundle(referral_id="ZD-2", bsn=SENT_BSN)).encode())
    assert referral_digest(other) != referral_digest(gp())


def recorded(digest: str | None, **more) -> AcceptedReferral:
    return AcceptedReferral(referral_id="r", channel=Channel.GP, referrer_referral_id="ZD-1", accepted_at=RECEIVED,
                            origin="t/0/0", digest=digest, **more)


def test_an_unknown_id_is_new_the_same_digest_a_repeat_another_a_conflict():
    """A record without sender and youth (written before amendments existed) binds its id as before; amendments:
    tests/unit/test_lifecycle.py."""
    digest = referral_digest(gp())
    assert seen(None, digest) is Seen.NEW
    assert seen(recorded(digest), digest) is Seen.REPEAT
    assert seen(recorded(referral_digest(gp(note="changed"))), digest) is Seen.CONFLICT


def test_an_id_recorded_before_digests_counts_as_a_repeat_as_every_known_id_did():
    assert seen(recorded(NO_DIGEST), referral_digest(gp())) is Seen.REPEAT
    assert seen(recorded(None), referral_digest(gp())) is Seen.REPEAT


@pytest.mark.parametrize(("channel", "location"), [
    (Channel.GP, "ServiceRequest.identifier"), (Channel.SPECIALIST, "RF1-6"), (Channel.GI, "/referral_id"),
    (Channel.GGD, "/referral_id"), (Channel.COURT, "/referral_id")])
def test_a_conflict_is_a_rejection_with_its_code_at_the_referral_id_quoting_nothing_submitted(channel, location):
    referral = read(channel, channel_bytes(channel.value, "REF-77-X", bsn=SENT_BSN))
    rejection = conflict_rejection(referral)
    assert rejection.referrer_referral_id == "REF-77-X"
    [error] = rejection.errors
    assert (error.code, error.location) == (ErrorCode.REFERRAL_ID_CONFLICT, location)
    submitted = {SENT_BSN, "REF-77-X", referral.referrer.identifier, referral.youth.postcode,
                 referral.youth.birth_date.isoformat(), referral.referral_date.isoformat(),
                 *(n for n in (referral.youth.given_name, referral.youth.family_name) if n)}
    assert not [value for value in submitted if value in error.message]


def test_the_conflict_alert_names_the_channel_and_code_and_no_youth():
    alert = conflict_alert(Channel.GP, RECEIVED)
    assert (alert.kind, alert.channel, alert.at) == (REFERRAL_ID_CONFLICT, Channel.GP, RECEIVED)
    assert alert.pseudonym is None and alert.referral_id is None
    assert "REFERRAL_ID_CONFLICT" in alert.message and "channel gp" in alert.message
    assert set(alert.model_dump(exclude_none=True)) == {"kind", "at", "channel", "message"}
