"""The gi, ggd and court JSON adapters: mapping, every error at once, and the edge cases of the issue."""

import copy
import json
from datetime import UTC, date, datetime

import pytest

from schemas.referral import Channel, Referral, ReferrerType
from services.infra.settings import REPO_ROOT
from services.intake.documents import parse_document
from services.intake.outcome import Rejection

EXAMPLES = {c: json.loads(next((REPO_ROOT / "schemas" / "examples" / c).glob("valid-*.json")).read_text())
            for c in ("gi", "ggd", "court")}
PRODUCTS = frozenset({"45A56", "50G26", "50G41"})
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)


def parse(channel: str, document: dict | bytes):
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_document(Channel(channel), raw, known_products=PRODUCTS, pseudonym_key="k", received_at=NOW)


def doc(channel: str, **youth: object) -> dict:
    document = copy.deepcopy(EXAMPLES[channel])
    document["youth"].update(youth)
    return document


def codes(outcome) -> list[str]:
    assert isinstance(outcome, Rejection), outcome
    return sorted(e.code.value for e in outcome.errors)


def test_gi_maps_institution_and_referral():
    referral = parse("gi", EXAMPLES["gi"])
    assert isinstance(referral, Referral)
    assert referral.referrer.type is ReferrerType.GECERTIFICEERDE_INSTELLING
    assert (referral.referrer.identifier, referral.referrer.display) == ("98000101", "Jeugdbescherming Noord")
    assert referral.referrer_referral_id == "JBN-2026-00871" and referral.product == "45A56"
    assert referral.youth.birth_date == date(2012, 5, 17) and referral.youth.family_name == "de Vries"


def test_ggd_uses_big_when_no_agb_and_normalises_the_postcode():
    document = copy.deepcopy(EXAMPLES["ggd"])
    document["doctor"] = {"big": "19012345601", "name": "A. Smit"}
    referral = parse("ggd", document)
    assert referral.referrer.identifier_system.endswith("/big") and referral.referrer.identifier == "19012345601"
    assert referral.referrer.type is ReferrerType.JEUGDARTS and referral.youth.postcode == "9713 AB"
    assert referral.preference_notes == "Liefst na schooltijd."


def test_court_referrer_is_the_issuer():
    referral = parse("court", EXAMPLES["court"])
    assert referral.referrer.type is ReferrerType.RECHTER_RAAD_OVJ
    assert referral.referrer.identifier == "00000001003214345000"
    assert referral.youth.birth_date == date(2016, 2, 29)


def test_the_same_referral_gets_the_same_hub_id_across_channels_only_per_channel():
    gi, again = parse("gi", EXAMPLES["gi"]), parse("gi", EXAMPLES["gi"])
    assert gi.referral_id == again.referral_id
    other = copy.deepcopy(EXAMPLES["gi"])
    other["referral_id"] = "JBN-2026-00872"
    assert parse("gi", other).referral_id != gi.referral_id


@pytest.mark.parametrize("channel", ["gi", "ggd", "court"])
@pytest.mark.parametrize(("birth", "continuation", "expected"), [
    ("2008-03-12", False, ["AGE_OUT_OF_RANGE"]),  # 18 exactly on the referral date
    ("2008-03-13", False, []),
    ("2008-03-12", True, []),
    ("2003-03-12", True, ["AGE_OUT_OF_RANGE"]),   # 23 with continued care
    ("2008-02-29", False, ["AGE_OUT_OF_RANGE"]),  # leap-day birthday, 18 on 1 March 2026
    ("2026-03-13", False, ["DATE_INVALID"]),      # born after the referral
    ("2012-02-30", False, ["DATE_INVALID"]),
])
def test_ages(channel, birth, continuation, expected):
    document = doc(channel, birth_date=birth)
    document["continuation"] = continuation
    outcome = parse(channel, document)
    assert (codes(outcome) if expected else isinstance(outcome, Referral)) == (expected or True)


def test_leap_day_birthday_is_not_18_on_28_february():
    document = doc("gi", birth_date="2008-02-29")
    document["referral_date"] = "2026-02-28"
    assert isinstance(parse("gi", document), Referral)


@pytest.mark.parametrize(("youth", "expected"), [
    ({"bsn": "012345672"}, []),                    # leading zero is a real BSN
    ({"bsn": "12345672"}, ["BSN_INVALID"]),        # ... and is not to be dropped
    ({"bsn": 999911120}, ["SCHEMA_INVALID"]),      # a number loses leading zeros: must be a string
    ({"bsn": ""}, ["BSN_MISSING"]),
    ({"bsn": " \t "}, ["BSN_MISSING"]),
    ({"postcode": "9712ab"}, []),
    ({"postcode": "9712 AB"}, []),
    ({"postcode": " "}, ["SCHEMA_INVALID"]),
    ({"postcode": "9712-AB"}, ["SCHEMA_INVALID"]),
    ({"given_name": "  "}, []),
])
def test_youth_fields(youth, expected):
    outcome = parse("court", doc("court", **youth))
    assert (codes(outcome) if expected else isinstance(outcome, Referral)) == (expected or True)


def test_all_errors_are_reported_with_json_pointers():
    document = doc("gi", bsn="111111111", postcode="x", birth_date="not a date")
    document["institution"]["agb"] = "123"
    document["product"] = "ZZZZZ"
    document["extra"] = 1
    outcome = parse("gi", document)
    assert {(e.code.value, e.location) for e in outcome.errors} == {
        ("BSN_INVALID", "/youth/bsn"), ("SCHEMA_INVALID", "/youth/postcode"), ("DATE_INVALID", "/youth/birth_date"),
        ("AGB_INVALID", "/institution/agb"), ("PRODUCT_UNKNOWN", "/product"), ("SCHEMA_INVALID", "/extra")}
    assert outcome.referrer_referral_id == "JBN-2026-00871"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json", ["UNPARSEABLE"]),
    (b"[1, 2]", ["SCHEMA_INVALID"]),
    (b"MSH|^~\\&|HIS", ["CHANNEL_MISMATCH"]),
    (b'{"resourceType": "Bundle"}', ["CHANNEL_MISMATCH"]),
    (b"{}", None),  # an empty object: schema errors, never a crash
])
def test_documents_of_another_kind(raw, expected):
    outcome = parse("ggd", raw)
    if expected is None:
        assert "SCHEMA_INVALID" in codes(outcome)
    else:
        assert codes(outcome) == expected
