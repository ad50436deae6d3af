"""Properties of the routing policy over generated referrals: one decision, a trace, determinism."""

from datetime import UTC, date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.indications import Indication
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.routing.policy import RULES, decide

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, tzinfo=UTC)
PC4S = sorted(REGISTRY.postcodes) + ["9401", "9760", "1012"]
DAYS = st.dates(date(2022, 6, 1), date(2027, 1, 1))

referrals = st.builds(
    lambda rid, channel, day, age_days, pc4, product, specialist, continuation, preferred, pseudo: Referral(
        referral_id=rid, channel=channel,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=rid, referral_date=day,
        youth=Youth(bsn="999911120", pseudonym=pseudo, birth_date=date.fromordinal(day.toordinal() - age_days),
                    postcode=f"{pc4} AB"),
        product=product, specialist_asked=specialist, continuation=continuation, preferred_provider=preferred,
        received_at=NOW),
    st.text("abcdef0123456789", min_size=1, max_size=12), st.sampled_from(list(Channel)), DAYS,
    st.integers(0, 25 * 366), st.sampled_from(PC4S), st.none() | st.sampled_from(sorted(REGISTRY.products)),
    st.booleans(), st.booleans(), st.none() | st.sampled_from(sorted(REGISTRY.providers)),
    st.sampled_from(["a" * 64, "b" * 64]))
indications = st.lists(st.builds(
    lambda pseudo, product, agb, start, days: Indication(pseudonym=pseudo, product=product, provider_agb=agb,
                                                         start=start, end=date.fromordinal(start.toordinal() + days)),
    st.sampled_from(["a" * 64, "b" * 64]), st.sampled_from(sorted(REGISTRY.products)),
    st.sampled_from(sorted(REGISTRY.providers)), DAYS, st.integers(0, 800)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(referrals, indications)
def test_every_referral_gets_exactly_one_explained_decision(referral, running):
    decision = decide(referral, REGISTRY, NOW, indications=running)
    assert decision.trace, "a decision always has a trace"
    assert [step.decided for step in decision.trace].count(True) == 1 and decision.trace[-1].decided
    assert decision.rule == decision.trace[-1].rule
    assert [s.rule for s in decision.trace] == [rule_id for rule_id, _ in RULES][:len(decision.trace)]
    assert all(step.reason for step in decision.trace)
    assert decision.rejected == bool(decision.errors) == (decision.rule == "reject-unroutable")
    if decision.recipient is not None:
        assert decision.recipient.topic.startswith("handovers.")
        if decision.recipient.kind == "provider":
            provider = REGISTRY.providers[decision.recipient.id]
            assert referral.product in provider.products or decision.rule == "running-indication"
            assert provider.stopped_on is None or referral.referral_date < provider.stopped_on


@settings(max_examples=150, deadline=None)
@given(referrals, indications)
def test_same_input_and_registry_give_the_same_decision(referral, running):
    assert decide(referral, REGISTRY, NOW, indications=running) == decide(
        referral, REGISTRY, NOW, indications=list(reversed(running)))


@settings(max_examples=150, deadline=None)
@given(referrals, indications)
def test_a_declined_recipient_is_never_chosen_again(referral, running):
    from services.routing.policy import redecide_after_decline

    first = decide(referral, REGISTRY, NOW, indications=running)
    if first.rejected:
        return
    again = redecide_after_decline(first, REGISTRY, NOW, None, {first.recipient.id}, running)
    assert again.recipient.id != first.recipient.id or again.recipient.id == REGISTRY.central_entrance().id
    assert again.previous_recipient == first.recipient and again.trace[0].rule == "declined"
