"""GP adapter cases found by the property tests, kept as plain regression tests."""

import json
from datetime import UTC, datetime

from schemas.errors import ErrorCode
from services.intake.gp import parse_gp
from services.intake.outcome import Rejection
from tests.referrals import gp_bundle


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
