"""GP adapter: edge cases of the issue, and cases found by the property tests kept as regression tests."""

import json
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import Referral
from services.intake.gp import parse_gp
from services.intake.outcome import Rejection
from tests.referrals import gp_bundle, gp_bytes


def test_an_unknown_resource_type_in_an_entry_is_a_schema_error_not_a_crash():
    bundle = gp_bundle()
    bundle["entry"][1]["resource"]["resourceType"] = "erviceRequest"
    outcome = parse_gp(json.dumps(bundle).encode(), known_products=frozenset(), pseudonym_key="k",
                       received_at=datetime(2026, 3, 12, tzinfo=UTC))
    assert isinstance(outcome, Rejection)
    assert [e.code for e in outcome.errors] == [ErrorCode.SCHEMA_INVALID]


def test_a_malformed_identifier_or_entry_list_is_a_schema_error_not_a_crash():
    for mutate in (lambda b: b["entry"][1]["resource"].__setitem__("identifier", 1),
                   lambda b: b.__setitem__("entry", "x")):
        bundle = gp_bundle()
        mutate(bundle)
        outcome = parse_gp(json.dumps(bundle).encode(), known_products=frozenset(), pseudonym_key="k",
                           received_at=datetime(2026, 3, 12, tzinfo=UTC))
        assert isinstance(outcome, Rejection) and {e.code for e in outcome.errors} == {ErrorCode.SCHEMA_INVALID}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"birth_date": "2008-02-29", "authored_on": "2026-02-28"}, []),                   # leap-day birthday: 18 on 1 March
    ({"birth_date": "2008-02-29", "authored_on": "2026-03-01"}, ["AGE_OUT_OF_RANGE"]),
    ({"birth_date": "2008-03-12"}, ["AGE_OUT_OF_RANGE"]),                                # exactly 18
    ({"postcode": "9712AB"}, []), ({"postcode": "9712 ab"}, []), ({"postcode": "9712-ab"}, ["SCHEMA_INVALID"]),
    ({"bsn": "012345672"}, []), ({"bsn": "12345672"}, ["BSN_INVALID"]),
    ({"bsn": "   "}, ["BSN_MISSING"]), ({"referral_id": "  "}, ["SCHEMA_INVALID"]),
    ({"authored_on": " "}, ["DATE_INVALID"]),
])
def test_gp_edge_cases(changes, expected):
    outcome = parse_gp(gp_bytes(**changes), known_products=frozenset(), pseudonym_key="k",
                       received_at=datetime(2026, 3, 12, tzinfo=UTC))
    if expected:
        assert isinstance(outcome, Rejection) and sorted(e.code.value for e in outcome.errors) == expected
    else:
        assert isinstance(outcome, Referral), outcome
        assert outcome.youth.postcode == ("9712 AB" if "postcode" in changes else "9712 HB")
        assert outcome.youth.bsn == changes.get("bsn", "999911120")
