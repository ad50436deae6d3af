"""The PC4 -> WIJ team lookup and the municipality check, on the shipped registry."""

from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.routing import RecipientKind
from services.infra.registry_files import (
    RegistryError,
    load_registry,
    read_registry_dir,
    registry_from_contents,
)
from services.infra.settings import REPO_ROOT
from services.intake.gp import parse_gp
from services.routing.policy import CENTRAL_ENTRANCE, decide
from tests.referrals import gp_bytes

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, tzinfo=UTC)


def referral_in(postcode: str):
    return parse_gp(gp_bytes(postcode=postcode), known_products=frozenset(REGISTRY.products),
                    pseudonym_key="k", received_at=NOW)


@pytest.mark.parametrize(("postcode", "team"), [
    ("9712 HB", "centrum"), ("9736AB", "oosterparkwijk"), ("9751 aa", "haren"), ("9791 CD", "ten-boer"),
    ("9746 XX", "hoogkerk"),
])
def test_the_team_of_the_postcode_area_gets_the_referral(postcode, team):
    decision = decide(referral_in(postcode), REGISTRY, NOW)
    assert decision.recipient.kind is RecipientKind.WIJ_TEAM
    assert decision.recipient.id == team
    assert decision.recipient.topic == f"handovers.wij.{team}.v1"
    assert decision.rule == "basis-jeugdhulp"
    assert [step.rule for step in decision.trace] == [
        "reject-unroutable", "running-indication", "referrer-not-in-bjh", "product-not-in-bjh", "specialist-asked",
        "basis-jeugdhulp"]
    assert decision.flags == []


def test_a_municipal_postcode_without_team_goes_to_the_central_entrance_flagged():
    decision = decide(referral_in("9747 AA"), REGISTRY, NOW)
    assert decision.recipient.id == "entree"
    assert decision.flags == [CENTRAL_ENTRANCE]


@pytest.mark.parametrize("postcode", ["9401 AA", "9710 AA", "9760 AA", "1012 AB"])
def test_postcodes_outside_the_municipality_are_rejected_with_a_reason(postcode):
    decision = decide(referral_in(postcode), REGISTRY, NOW)
    assert decision.rejected
    assert [e.code for e in decision.errors] == [ErrorCode.OUTSIDE_MUNICIPALITY]
    assert decision.trace[-1].decided and postcode[:4] in decision.trace[-1].reason, "the audit trail names it"
    assert postcode[:4] not in decision.errors[0].message, "the referrer's rejected status does not"


def test_every_team_in_the_postcode_table_exists_and_a_bad_table_is_refused():
    contents = read_registry_dir(REPO_ROOT / "deploy" / "registry")
    contents["postcodes.csv"] += "9999,nowhere\n"
    with pytest.raises(RegistryError, match="nowhere"):
        registry_from_contents(contents)


def test_registry_version_follows_the_content():
    contents = read_registry_dir(REPO_ROOT / "deploy" / "registry")
    changed = {**contents, "channels.json": contents["channels.json"].replace("2024-01-01", "2024-02-01")}
    assert registry_from_contents(contents).version == REGISTRY.version != registry_from_contents(changed).version
