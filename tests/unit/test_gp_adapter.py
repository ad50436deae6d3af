"""The GP Bundle -> canonical Referral mapping, over the hand-written example and variations of it."""

from datetime import UTC, date, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral, ReferrerType
from services.infra.pseudonym import youth_pseudonym
from services.intake.gp import parse_gp
from services.intake.outcome import Rejection
from tests.referrals import GP_EXAMPLE, gp_bytes

PRODUCTS = frozenset({"45A51", "54B01"})
NOW = datetime(2026, 3, 12, 10, 0, tzinfo=UTC)


def parse(raw: bytes):
    return parse_gp(raw, known_products=PRODUCTS, pseudonym_key="test-key", received_at=NOW)


def codes(outcome) -> list[ErrorCode]:
    assert isinstance(outcome, Rejection), outcome
    return [error.code for error in outcome.errors]


def test_the_handwritten_example_maps_field_by_field():
    referral = parse(GP_EXAMPLE.read_bytes())
    assert isinstance(referral, Referral)
    assert referral.channel is Channel.GP
    assert referral.referrer.type is ReferrerType.HUISARTS
    assert referral.referrer.identifier == "01012345"
    assert referral.referrer.display == "J. Bakker"
    assert referral.referrer_referral_id == "ZD-2026-000123"
    assert referral.referral_date == date(2026, 3, 12)
    assert referral.youth.bsn == "999911120"
    assert referral.youth.birth_date == date(2012, 5, 17)
    assert referral.youth.postcode == "9712 HB"
    assert (referral.youth.given_name, referral.youth.family_name) == ("Sanne", "de Vries")
    assert referral.youth.pseudonym == youth_pseudonym("999911120", "test-key")
    assert referral.product is None  # a plain 'basis jeugdhulp' referral names no product
    assert not referral.specialist_asked and not referral.continuation
    assert referral.preferred_provider is None
    assert "Slaapproblemen" in referral.free_text and "vrouwelijke" in referral.free_text
    assert referral.received_at == NOW


def test_product_categories_and_preferred_provider_are_read():
    referral = parse(gp_bytes(product="54B01", categories=["specialist", "continuation"],
                              performer_agb="98000033", birth_date="2005-01-01"))
    assert referral.product == "54B01"
    assert referral.specialist_asked and referral.continuation
    assert referral.preferred_provider == "98000033"


def test_same_referral_gets_the_same_hub_id_and_another_gets_another():
    first, again, other = parse(gp_bytes()), parse(gp_bytes()), parse(gp_bytes(referral_id="ZD-2"))
    assert first.referral_id == again.referral_id != other.referral_id


@pytest.mark.parametrize(("changes", "expected", "location"), [
    ({"bsn": ""}, ErrorCode.BSN_MISSING, "Patient.identifier"),
    ({"bsn": "123456789"}, ErrorCode.BSN_INVALID, "Patient.identifier"),
    ({"practitioner_agb": "1234"}, ErrorCode.AGB_INVALID, "Practitioner.identifier"),
    ({"product": "99X99"}, ErrorCode.PRODUCT_UNKNOWN, "ServiceRequest.code.coding"),
    ({"birth_date": "2012-02-30"}, ErrorCode.DATE_INVALID, "Bundle.entry[2].resource.birthDate"),
    ({"birth_date": "2008-03-12"}, ErrorCode.AGE_OUT_OF_RANGE, "Patient.birthDate"),
    ({"postcode": "97 12"}, ErrorCode.SCHEMA_INVALID, "Patient.address.postalCode"),
])
def test_invalid_fields_are_rejected_with_code_and_location(changes, expected, location):
    outcome = parse(gp_bytes(**changes))
    assert codes(outcome) == [expected]
    assert outcome.errors[0].location == location
    assert outcome.referrer_referral_id == "ZD-2026-000123"  # so the GP can be told


def test_all_errors_are_reported_not_only_the_first():
    assert set(codes(parse(gp_bytes(bsn="1", practitioner_agb="x", product="00000")))) == {
        ErrorCode.BSN_INVALID, ErrorCode.AGB_INVALID, ErrorCode.PRODUCT_UNKNOWN}


def test_eighteenth_birthday_on_the_referral_date_is_too_old_unless_continuation():
    assert codes(parse(gp_bytes(birth_date="2008-03-12"))) == [ErrorCode.AGE_OUT_OF_RANGE]
    assert isinstance(parse(gp_bytes(birth_date="2008-03-13")), Referral)
    assert isinstance(parse(gp_bytes(birth_date="2008-03-12", categories=["continuation"])), Referral)


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\xff\xfe not json", ErrorCode.UNPARSEABLE),
    (b'{"resourceType": "Patient"}', ErrorCode.CHANNEL_MISMATCH),
    (b"MSH|^~\\&|HIS|UMCG|||20260312||REF^I12|1|P|2.5", ErrorCode.CHANNEL_MISMATCH),
    (b'{"resourceType": "Bundle", "type": "message", "entry": []}', ErrorCode.SCHEMA_INVALID),
    (b" " * (1024 * 1024 + 1), ErrorCode.TOO_LARGE),
])
def test_messages_that_are_no_gp_bundle_are_rejected(raw, expected):
    assert expected in codes(parse(raw))


@pytest.mark.parametrize(("authored_on", "expected"), [
    ("2026-03-12T09:30:00+01:00", date(2026, 3, 12)),
    ("2026-03-12T23:30:00-05:00", date(2026, 3, 12)),  # the date where it was written
])
def test_authored_on_as_a_date_time_is_the_referral_date(authored_on, expected):
    """FHIR's authoredOn is a dateTime; it was once compared with the birth date and raised TypeError."""
    referral = parse(gp_bytes(authored_on=authored_on))
    assert isinstance(referral, Referral) and referral.referral_date == expected


def test_authored_on_far_in_the_future_is_a_coded_rejection():
    assert codes(parse(gp_bytes(authored_on="9999-12-31T23:59:59+14:00"))) == [ErrorCode.AGE_OUT_OF_RANGE]
