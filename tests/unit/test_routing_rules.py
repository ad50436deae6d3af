"""Every routing rule and its boundaries, table-driven, on the shipped registry (changed where a row says)."""

from datetime import UTC, date, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.indications import Indication
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.registry import Registry
from schemas.routing import RecipientKind
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.routing.policy import (
    BEHAVIOURAL_SCIENTIST,
    CENTRAL_ENTRANCE,
    PROVIDER_STOPPED,
    decide,
    redecide_after_decline,
    reroute_after_stop,
)

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, tzinfo=UTC)
PSEUDONYM = "ab" * 32
NOORDERLICHT, STADSGEZIN, SCHEIDING_EN_ZO = "98000011", "98000022", "98000066"


def referral(day: str = "2026-03-12", channel: Channel = Channel.GP, product: str | None = None,
             specialist: bool = False, born: str = "2012-05-17", postcode: str = "9712 HB",
             continuation: bool = False, preferred: str | None = None, rid: str = "r-1") -> Referral:
    return Referral(
        referral_id=rid, channel=channel,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=f"ext-{rid}", referral_date=date.fromisoformat(day),
        youth=Youth(bsn="999911120", pseudonym=PSEUDONYM, birth_date=date.fromisoformat(born), postcode=postcode),
        product=product, specialist_asked=specialist, continuation=continuation, preferred_provider=preferred,
        received_at=NOW)


def with_provider(agb: str, **changes) -> Registry:
    providers = {**REGISTRY.providers, agb: REGISTRY.providers[agb].model_copy(update=changes)}
    return REGISTRY.model_copy(update={"providers": providers})


def indication(agb: str = NOORDERLICHT, product: str = "45A51", start: str = "2025-01-01",
               end: str = "2026-12-31") -> Indication:
    return Indication(pseudonym=PSEUDONYM, product=product, provider_agb=agb, start=date.fromisoformat(start),
                      end=date.fromisoformat(end))


# (name, referral, expected rule, expected recipient kind, expected id or None for "any", flags)
CASES = [
    ("plain BJH goes to the PC4 team", referral(), "basis-jeugdhulp", RecipientKind.WIJ_TEAM, "centrum", []),
    ("Haren edge 9750", referral(postcode="9750 AA"), "basis-jeugdhulp", RecipientKind.WIJ_TEAM, "haren", []),
    ("Noordlaren 9479 belongs to Haren", referral(postcode="9479 AA"), "basis-jeugdhulp",
     RecipientKind.WIJ_TEAM, "haren", []),
    ("Ten Boer edge 9798", referral(postcode="9798 AA"), "basis-jeugdhulp", RecipientKind.WIJ_TEAM, "ten-boer", []),
    ("municipal PC4 without team", referral(postcode="9747 AA"), "basis-jeugdhulp", RecipientKind.WIJ_TEAM,
     "entree", [CENTRAL_ENTRANCE]),
    # rule 3: channel join dates (gp 2023-01-01, others 2024-01-01)
    ("GI the day before joining: old route", referral(day="2023-12-31", channel=Channel.GI, product="45A51"),
     "referrer-not-in-bjh", RecipientKind.PROVIDER, None, []),
    ("GI on its join day: BJH", referral(day="2024-01-01", channel=Channel.GI, product="45A51"),
     "basis-jeugdhulp", RecipientKind.WIJ_TEAM, "centrum", []),
    ("GP the day before joining", referral(day="2022-12-31", product="45A04"), "referrer-not-in-bjh",
     RecipientKind.PROVIDER, None, []),
    ("court before joining without product: team, escalated", referral(day="2023-06-01", channel=Channel.COURT),
     "referrer-not-in-bjh", RecipientKind.WIJ_TEAM, "centrum", [BEHAVIOURAL_SCIENTIST]),
    # rule 4: product BJH dates (50G41 from 2024-01-01), and specialist products
    ("50G41 the day before BJH takes it", referral(day="2023-12-31", product="50G41"), "product-not-in-bjh",
     RecipientKind.PROVIDER, None, []),
    ("50G41 on the day BJH takes it", referral(day="2024-01-01", product="50G41"), "basis-jeugdhulp",
     RecipientKind.WIJ_TEAM, "centrum", []),
    ("specialist product 54B01 goes to a provider", referral(product="54B01"), "product-not-in-bjh",
     RecipientKind.PROVIDER, None, []),
    ("placement 43A03: only the accepting foster-care providers", referral(product="43A03"),
     "product-not-in-bjh", RecipientKind.PROVIDER, None, []),
    # rule 5: the Open House closes on 2025-07-01
    ("specialist asked the day before the Open House closes", referral(day="2025-06-30", product="45A56",
     specialist=True), "specialist-asked", RecipientKind.PROVIDER, None, []),
    ("specialist asked on the day the Open House closes", referral(day="2025-07-01", product="45A56",
     specialist=True), "specialist-asked", RecipientKind.WIJ_TEAM, "centrum", [BEHAVIOURAL_SCIENTIST]),
    ("specialist asked without product", referral(specialist=True), "specialist-asked", RecipientKind.WIJ_TEAM,
     "centrum", [BEHAVIOURAL_SCIENTIST]),
    ("specialist asked, no team for PC4", referral(postcode="9747 AB", specialist=True, day="2025-07-01",
     product="45A53"), "specialist-asked", RecipientKind.WIJ_TEAM, "entree",
     [CENTRAL_ENTRANCE, BEHAVIOURAL_SCIENTIST]),
]


@pytest.mark.parametrize(("name", "ref", "rule", "kind", "recipient", "flags"), CASES, ids=[c[0] for c in CASES])
def test_rule_table(name, ref, rule, kind, recipient, flags):
    decision = decide(ref, REGISTRY, NOW)
    assert decision.rule == rule
    assert decision.recipient.kind is kind
    if recipient is not None:
        assert decision.recipient.id == recipient
    else:
        provider = REGISTRY.providers[decision.recipient.id]
        assert ref.product in provider.products and provider.accepting and provider.stopped_on is None
        assert decision.recipient.topic == f"handovers.provider.{provider.agb}.v1"
    assert decision.flags == flags
    assert decision.trace[-1].rule == rule and decision.trace[-1].decided
    assert all(not step.decided for step in decision.trace[:-1])
    assert decision.registry_version == REGISTRY.version


# age: under 18 on the referral date, under 23 for continued care
AGES = [
    ("17, the day before turning 18", "2008-03-13", False, None),
    ("18 on the referral date", "2008-03-12", False, ErrorCode.AGE_OUT_OF_RANGE),
    ("18 continuing care", "2008-03-12", True, None),
    ("22 continuing care, a day before 23", "2003-03-13", True, None),
    ("23 on the referral date, continuing care", "2003-03-12", True, ErrorCode.AGE_OUT_OF_RANGE),
]


@pytest.mark.parametrize(("name", "born", "continuation", "error"), AGES, ids=[a[0] for a in AGES])
def test_age_boundaries(name, born, continuation, error):
    decision = decide(referral(born=born, continuation=continuation), REGISTRY, NOW)
    if error is None:
        assert decision.rule == "basis-jeugdhulp" and not decision.rejected
    else:
        assert decision.rejected and decision.rule == "reject-unroutable"
        assert [e.code for e in decision.errors] == [error]
        assert "or older on the referral date" in decision.trace[0].reason


@pytest.mark.parametrize("postcode", ["9401 AA", "9710 AA", "9760 AA", "9799 AA", "9480 AA", "1012 AB"])
def test_postcodes_just_outside_the_municipality_are_rejected(postcode):
    decision = decide(referral(postcode=postcode), REGISTRY, NOW)
    assert decision.rejected and [e.code for e in decision.errors] == [ErrorCode.OUTSIDE_MUNICIPALITY]
    assert postcode[:4] in decision.trace[0].reason


def test_age_and_postcode_both_reported():
    decision = decide(referral(born="2000-01-01", postcode="1012 AB"), REGISTRY, NOW)
    assert {e.code for e in decision.errors} == {ErrorCode.AGE_OUT_OF_RANGE, ErrorCode.OUTSIDE_MUNICIPALITY}


# rule 2: running indications, and a provider stopped the day before vs the day of the referral
@pytest.mark.parametrize(("stopped_on", "kept"), [(None, True), ("2026-03-13", True), ("2026-03-12", False),
                                                  ("2026-03-11", False)])
def test_running_indication_keeps_the_provider_until_it_stops(stopped_on, kept):
    registry = with_provider(NOORDERLICHT, stopped_on=date.fromisoformat(stopped_on) if stopped_on else None)
    decision = decide(referral(product="45A51"), registry, NOW, indications=[indication()])
    if kept:
        assert (decision.rule, decision.recipient.id) == ("running-indication", NOORDERLICHT)
        assert "until 2026-12-31" in decision.trace[1].reason
    else:
        assert (decision.rule, decision.recipient.id) == ("basis-jeugdhulp", "centrum")


@pytest.mark.parametrize(("ind", "kept"), [
    (indication(end="2026-03-12"), True),      # ends on the referral date: still running
    (indication(end="2026-03-11"), False),     # ended the day before
    (indication(product="45A04"), False),      # another product
    (indication(start="2026-03-13"), False),   # starts later
])
def test_running_indication_boundaries(ind, kept):
    decision = decide(referral(product="45A51"), REGISTRY, NOW, indications=[ind])
    assert (decision.rule == "running-indication") is kept


def test_another_youths_indication_does_not_count():
    other = indication().model_copy(update={"pseudonym": "cd" * 32})
    assert decide(referral(product="45A51"), REGISTRY, NOW, indications=[other]).rule == "basis-jeugdhulp"


# provider choice
def test_preferred_provider_is_chosen_when_contracted_active_and_accepting():
    decision = decide(referral(product="54B01", preferred="98000101"), REGISTRY, NOW)
    assert decision.recipient.id == "98000101"
    assert "preferred provider" in decision.trace[-1].reason


@pytest.mark.parametrize(("preferred", "registry"), [
    (STADSGEZIN, REGISTRY),                                                   # not contracted for 54B01
    ("98000101", with_provider("98000101", accepting=False)),                 # not accepting
    ("98000101", with_provider("98000101", stopped_on=date(2026, 3, 12))),    # stopped on the day
    ("12345678", REGISTRY),                                                   # unknown
])
def test_ineligible_preferred_provider_is_passed_over_with_a_reason(preferred, registry):
    decision = decide(referral(product="54B01", preferred=preferred), registry, NOW)
    assert decision.recipient.kind is RecipientKind.PROVIDER and decision.recipient.id != preferred
    assert "54B01" in registry.providers[decision.recipient.id].products
    assert f"preferred provider {preferred} is not contracted" in decision.trace[-1].reason


def test_choice_spreads_over_eligible_providers_and_is_deterministic():
    eligible = {p.agb for p in REGISTRY.providers.values() if "54B01" in p.products and p.accepting}
    chosen = [decide(referral(product="54B01", rid=f"r-{i}"), REGISTRY, NOW).recipient.id for i in range(60)]
    assert set(chosen) == eligible, "every eligible provider gets some referrals, never always the first"
    again = [decide(referral(product="54B01", rid=f"r-{i}"), REGISTRY, NOW).recipient.id for i in range(60)]
    assert chosen == again


def test_choice_prefers_the_provider_with_fewest_open_handovers():
    eligible = sorted(p.agb for p in REGISTRY.providers.values() if "54B01" in p.products and p.accepting)
    load = {agb: 5 for agb in eligible} | {eligible[-1]: 1}
    assert decide(referral(product="54B01"), REGISTRY, NOW, load=load).recipient.id == eligible[-1]


def test_no_eligible_provider_goes_to_the_team_flagged():
    registry = with_provider("98000044", accepting=False)
    registry = registry.model_copy(update={"providers": {
        **registry.providers, "98000112": registry.providers["98000112"].model_copy(update={"accepting": False})}})
    decision = decide(referral(product="43A03"), registry, NOW)
    assert (decision.recipient.id, decision.flags) == ("centrum", [BEHAVIOURAL_SCIENTIST])
    assert "no provider is contracted for 43A03, active and accepting" in decision.trace[-1].reason


def test_dates_come_from_the_registry_not_the_code():
    products = {**REGISTRY.products, "45A56": REGISTRY.products["45A56"].model_copy(
        update={"open_house_until": date(2026, 1, 1)})}
    closed_earlier = REGISTRY.model_copy(update={"products": products})
    ref = referral(day="2025-12-31", product="45A56", specialist=True)
    assert decide(ref, REGISTRY, NOW).recipient.kind is RecipientKind.WIJ_TEAM
    assert decide(ref, closed_earlier, NOW).recipient.kind is RecipientKind.PROVIDER


# re-routes
def test_decline_reroutes_without_the_recipient_that_declined():
    first = decide(referral(product="54B01"), REGISTRY, NOW)
    again = redecide_after_decline(first, REGISTRY, NOW, "no capacity", {first.recipient.id})
    assert again.recipient.id != first.recipient.id and again.recipient.kind is RecipientKind.PROVIDER
    assert again.previous_recipient == first.recipient
    assert again.trace[0].rule == "declined" and "no capacity" in again.trace[0].reason


def test_team_that_declines_hands_to_the_central_entrance():
    first = decide(referral(), REGISTRY, NOW)
    again = redecide_after_decline(first, REGISTRY, NOW, None, {"centrum"})
    assert (again.recipient.id, again.flags) == ("entree", [CENTRAL_ENTRANCE])


def test_provider_stopped_goes_to_the_youths_team_naming_the_old_provider():
    registry = with_provider(NOORDERLICHT, stopped_on=date(2026, 4, 1))
    decision = reroute_after_stop(referral(product="45A51"), registry.providers[NOORDERLICHT], registry, NOW,
                                  "the running indication for 45A51")
    assert (decision.rule, decision.recipient.id) == (PROVIDER_STOPPED, "centrum")
    assert decision.previous_recipient.id == NOORDERLICHT
    assert "stopped on 2026-04-01" in decision.trace[0].reason
