"""Routing's core per youth: declines, closures, indications and provider stops as state and effects."""

from datetime import UTC, date, datetime, timedelta

import pytest

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.registry import Registry
from schemas.routing import RecipientKind, YouthRouting
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.routing.core import (
    Alerted,
    REFUSALS_KEPT,
    REFUSALS_PER_ALERT,
    Decided,
    IndicationsChanged,
    Refused,
    count_refusal,
    is_empty,
    on_feedback,
    on_indications,
    on_referral,
    on_stop,
    refusals_alert,
    stop_due,
    stopped_providers,
)

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, tzinfo=UTC)
TODAY = NOW.date()
PSEUDONYM = "ab" * 32
NOORDERLICHT = "98000011"
MARTINI = "98000033"
"""Of the providers with 46A02 in their contract, the one a 46A02 referral goes to when none has open load."""
PROVIDER, WIJ = RecipientKind.PROVIDER, RecipientKind.WIJ_TEAM
MAX_DAYS = Settings(_env_file=None).indication_max_days


def with_provider(agb: str, **changes) -> Registry:
    providers = {**REGISTRY.providers, agb: REGISTRY.providers[agb].model_copy(update=changes)}
    return REGISTRY.model_copy(update={"providers": providers})


def referral(rid: str = "r-1", product: str | None = None, postcode: str = "9712 HB") -> Referral:
    return Referral(
        referral_id=rid, channel=Channel.GP,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=f"ext-{rid}", referral_date=TODAY,
        youth=Youth(bsn="999911120", pseudonym=PSEUDONYM, birth_date=date(2012, 5, 17), postcode=postcode,
                    given_name="Sanne", family_name="Jansen"),
        product=product, received_at=NOW)


def indication(agb: str = NOORDERLICHT, product: str = "45A51", end: str = "2026-12-31", **more) -> Indication:
    return Indication(pseudonym=PSEUDONYM, product=product, provider_agb=agb, start=date(2025, 1, 1),
                      end=date.fromisoformat(end), **more)


def feedback(kind: FeedbackKind, rid: str = "r-1", **more) -> Feedback:
    return Feedback(referral_id=rid, kind=kind, at=NOW + timedelta(hours=1), **more)


def answer(state: YouthRouting, kind: RecipientKind, source: str, given: Feedback, registry: Registry = REGISTRY):
    """Routing's step for one feedback message, with the default bound on indications."""
    return on_feedback(state, kind, source, given, registry, NOW, {}, MAX_DAYS)


def routed(product: str | None = "54B01", rid: str = "r-1", state: YouthRouting | None = None) -> YouthRouting:
    return on_referral(state or YouthRouting(pseudonym=PSEUDONYM), referral(rid, product), REGISTRY, NOW, {}).state


def test_a_referral_is_open_with_its_recipient_and_a_rejection_is_not_kept():
    state, effects, _ = on_referral(YouthRouting(pseudonym=PSEUDONYM), referral(product="54B01"), REGISTRY, NOW, {})
    (decided,) = effects
    assert isinstance(decided, Decided) and decided.decision.recipient.kind is PROVIDER
    assert state.referrals["r-1"].decision == decided.decision and state.referrals["r-1"].declined == []
    rejected = on_referral(YouthRouting(pseudonym=PSEUDONYM), referral(postcode="1012 AB"), REGISTRY, NOW, {})
    assert rejected.effects[0].decision.rejected and rejected.state.referrals == {}
    assert is_empty(rejected.state, TODAY)


def test_the_youths_indications_keep_the_referral_with_their_provider():
    state = on_indications(YouthRouting(pseudonym=PSEUDONYM), [indication(), indication().model_copy(
        update={"pseudonym": "cd" * 32})])
    assert len(state.indications) == 1, "only the youth's own"
    step = on_referral(state, referral(product="45A51"), REGISTRY, NOW, {})
    assert (step.effects[0].decision.rule, step.effects[0].decision.recipient.id) == ("running-indication",
                                                                                      NOORDERLICHT)


def test_a_decline_redecides_without_every_recipient_that_declined():
    state = routed()
    first = state.referrals["r-1"].decision.recipient.id
    state, effects, outcome = answer(state, PROVIDER, first, feedback(FeedbackKind.DECLINED, reason="full"))
    (again,) = [e.decision for e in effects]
    assert again.recipient.id != first and again.previous_recipient.id == first and outcome.startswith("re-routed")
    assert again.trace[0].rule == "declined" and "full" in again.trace[0].reason
    assert state.referrals["r-1"].declined == [first]
    second = again.recipient.id
    state, effects, _ = answer(state, PROVIDER, second, feedback(FeedbackKind.DECLINED))
    assert effects[0].decision.recipient.id not in {first, second}
    assert state.referrals["r-1"].declined == sorted({first, second})


def refusal(step) -> ReferralError:
    """The error of a refused step, which changed nothing."""
    (refused,) = step.effects
    assert isinstance(refused, Refused) and "refused" in step.outcome
    return refused.error


def test_feedback_from_another_recipient_is_refused_and_changes_nothing():
    state = routed()
    recipient = state.referrals["r-1"].decision.recipient.id
    other = next(agb for agb in REGISTRY.providers if agb != recipient)
    for kind in (FeedbackKind.DECLINED, FeedbackKind.CLOSED):
        step = answer(state, PROVIDER, other, feedback(kind))
        assert step.state is state and refusal(step).code is ErrorCode.NOT_RECIPIENT
    step = answer(state, WIJ, recipient, feedback(FeedbackKind.DECLINED))
    assert step.state is state and refusal(step).code is ErrorCode.NOT_RECIPIENT, "the kind counts too"
    step = answer(state, PROVIDER, recipient, feedback(FeedbackKind.DECLINED, rid="r-2"))
    assert refusal(step).code is ErrorCode.NOT_RECIPIENT, "another referral of the youth"
    assert answer(state, PROVIDER, recipient, feedback(FeedbackKind.ACCEPTED)).state is state


def test_a_closed_referral_leaves_the_state_and_is_never_rerouted():
    state = routed(product="45A51", state=on_indications(YouthRouting(pseudonym=PSEUDONYM), [indication()]))
    provider = state.referrals["r-1"].decision.recipient.id
    assert provider == NOORDERLICHT
    closed, effects, outcome = answer(state, PROVIDER, provider, feedback(FeedbackKind.CLOSED))
    assert closed.referrals == {} and effects == [] and outcome == "closed"
    assert not is_empty(closed, TODAY), "the running indication stays"
    assert is_empty(on_indications(closed, []), TODAY), "then nothing: a tombstone"
    assert refusal(answer(closed, PROVIDER, provider, feedback(FeedbackKind.DECLINED))).code is \
        ErrorCode.NOT_RECIPIENT, "a closed referral is no longer the provider's"
    stopped = with_provider(provider, stopped_on=TODAY)
    assert not [e for e in on_stop(closed, stopped, TODAY, NOW).effects if isinstance(e, Decided)], \
        "the indication gets its alert and mark, the closed referral no decision"


def started(product: str = "46A02", end: date | None = date(2027, 1, 1), rid: str = "r-1") -> Feedback:
    return feedback(FeedbackKind.INDICATION_STARTED, rid=rid, product=product, indication_end=end)


def test_indication_started_is_recorded_and_kept_as_the_youths_list():
    state = routed(product="46A02")
    assert state.referrals["r-1"].decision.recipient.id == MARTINI
    state, effects, outcome = answer(state, PROVIDER, MARTINI, started())
    (changed,) = effects
    assert isinstance(changed, IndicationsChanged) and outcome == "indication recorded"
    assert [(i.product, i.provider_agb, i.referral_id) for i in changed.indications.indications] == [
        ("46A02", MARTINI, "r-1")]
    assert state.indications == changed.indications.indications
    again, effects, _ = answer(state, PROVIDER, MARTINI, started())
    assert len(again.indications) == 1, "the same indication replaces itself"
    longest = (NOW + timedelta(hours=1)).date() + timedelta(days=MAX_DAYS)
    assert isinstance(answer(state, PROVIDER, MARTINI, started(end=longest)).effects[0], IndicationsChanged), \
        "the longest the region issues"


def test_an_indication_for_a_youth_never_handed_to_the_provider_is_refused():
    state = routed(product="46A02")
    other = NOORDERLICHT
    for step in (answer(YouthRouting(pseudonym=PSEUDONYM), PROVIDER, MARTINI, started()),
                 answer(state, PROVIDER, other, started(product="45A51")),
                 answer(state, WIJ, "centrum", started())):
        assert refusal(step).code is ErrorCode.NOT_RECIPIENT and step.state.indications == []
    after = on_referral(state, referral("r-2", "45A51"), REGISTRY, NOW, {}).effects[0].decision
    assert after.rule != "running-indication", "the next referral is routed as if it had not come"


@pytest.mark.parametrize(("given", "location"), [
    (started(product="45A51"), "/product"),  # Noorderlicht's, not Martini's
    (started(product=None), "/product"),
    (started(end=date(2099, 1, 1)), "/indication_end"),
    (started(end=date(2026, 3, 11)), "/indication_end"),  # the day before it starts
    (started(end=None), "/indication_end"),
])
def test_an_indication_outside_the_contract_or_the_bound_is_refused_with_a_fixed_text(given, location):
    state = routed(product="46A02")
    step = answer(state, PROVIDER, MARTINI, given)
    error = refusal(step)
    assert (error.code, error.location) == (ErrorCode.INDICATION_INVALID, location) and step.state is state
    assert "45A51" not in error.message and "2099" not in error.message and "2026" not in error.message
    assert on_referral(state, referral("r-2", given.product or "45A51"), REGISTRY, NOW, {}).effects[0] \
        .decision.rule != "running-indication", "the next referral is routed as if it had not come"


def test_a_stopped_or_unknown_provider_has_no_contract_to_start_an_indication_in():
    state = routed(product="46A02")
    gone = REGISTRY.model_copy(update={"providers": {a: p for a, p in REGISTRY.providers.items() if a != MARTINI}})
    assert refusal(answer(state, PROVIDER, MARTINI, started(), gone)).code is ErrorCode.INDICATION_INVALID


def test_every_fifth_refusal_of_one_recipient_within_the_hour_alerts():
    recent: dict = {}
    alerts = []
    for offset in range(REFUSALS_PER_ALERT * 2):
        recent, alert = count_refusal(recent, ("feedback.provider.98000011.v1", 0, offset), NOW)
        alerts.append(alert)
    assert alerts == ([False] * (REFUSALS_PER_ALERT - 1) + [True]) * 2
    again, alert = count_refusal(recent, ("feedback.provider.98000011.v1", 0, REFUSALS_PER_ALERT - 1), NOW)
    assert alert and again == recent, "a batch retried counts a refusal once and decides the same"
    later, alert = count_refusal(recent, ("feedback.provider.98000011.v1", 0, 99), NOW + timedelta(hours=2))
    assert not alert and len(later) == 1, "older refusals have left the window"
    flood: dict = {}
    for offset in range(REFUSALS_KEPT * 3):
        flood, _ = count_refusal(flood, ("t", 0, offset), NOW)
    assert len(flood) == REFUSALS_KEPT
    message = refusals_alert(PROVIDER, NOORDERLICHT, PSEUDONYM, NOW)
    assert (message.kind, message.provider, message.team) == ("feedback-refused", NOORDERLICHT, None)


def test_a_provider_stop_reroutes_the_open_referral_once_and_marks_its_indications():
    state = on_indications(YouthRouting(pseudonym=PSEUDONYM), [indication()])
    state = on_referral(state, referral(product="45A51"), REGISTRY, NOW, {}).state
    assert state.referrals["r-1"].decision.recipient.id == NOORDERLICHT
    registry = with_provider(NOORDERLICHT, stopped_on=date(2026, 4, 1))
    assert on_stop(state, registry, date(2026, 3, 31), NOW).effects == [], "not before the stop date"

    day = date(2026, 4, 1)
    later = NOW + timedelta(days=20)
    after, effects, outcome = on_stop(state, registry, day, later)
    alert, decided, marks = effects
    assert isinstance(alert, Alerted) and isinstance(decided, Decided) and isinstance(marks, IndicationsChanged)
    decision = decided.decision
    assert (decision.rule, decision.recipient.kind, decision.previous_recipient.id) == (
        "provider-stopped", WIJ, NOORDERLICHT)
    assert (alert.alert.referral_id, alert.alert.team, alert.alert.provider) == ("r-1", decision.recipient.id,
                                                                                 NOORDERLICHT)
    assert "45A51" in alert.alert.message and "999911120" not in alert.alert.model_dump_json()
    assert [i.rerouted_on for i in marks.indications.indications] == [day]
    assert after.referrals["r-1"].decision == decision and after.indications == marks.indications.indications
    assert outcome == "1 re-routed"
    assert on_stop(after, registry, day, later).effects == [], "once"
    assert not stop_due([(WIJ, decision.recipient.id)], after.indications, stopped_providers(registry, day), day)


def test_an_imported_indication_without_referral_gets_an_alert_and_its_mark():
    state = on_indications(YouthRouting(pseudonym=PSEUDONYM), [indication(), indication(product="45A04")])
    registry = with_provider(NOORDERLICHT, stopped_on=TODAY)
    after, effects, _ = on_stop(state, registry, TODAY, NOW)
    alert, marks = effects
    assert alert.alert.referral_id is None and alert.alert.team is None and "without referral" in alert.alert.message
    assert all(i.rerouted_on == TODAY for i in marks.indications.indications)
    assert on_stop(after, registry, TODAY, NOW).effects == []


@pytest.mark.parametrize(("end", "due"), [("2026-04-01", True), ("2026-03-31", False)])
def test_an_ended_indication_needs_no_reroute(end, due):
    registry, day = with_provider(NOORDERLICHT, stopped_on=date(2026, 4, 1)), date(2026, 4, 1)
    state = on_indications(YouthRouting(pseudonym=PSEUDONYM), [indication(end=end)])
    assert bool(on_stop(state, registry, day, NOW).effects) is due
    assert stop_due([], state.indications, stopped_providers(registry, day), day) is due
    assert is_empty(state, day) is not due


# -- WIJ's triage asks for specialist care (rule 5) -----------------------------------------------------
SPECIALIST_PROVIDERS = {agb for agb, p in REGISTRY.providers.items() if "45A56" in p.products and p.accepting}


def with_team(day: date) -> YouthRouting:
    """A basis jeugdhulp referral (no product) of `day`, open with WIJ Centrum."""
    given = referral().model_copy(update={"referral_date": day})
    state = on_referral(YouthRouting(pseudonym=PSEUDONYM), given, REGISTRY, NOW, {}).state
    assert state.referrals["r-1"].decision.recipient.id == "centrum"
    return state


def test_specialist_needed_before_the_open_house_closes_goes_to_an_open_house_provider_as_a_warm_handover():
    state = with_team(date(2025, 6, 30))  # the day before 45A56's Open House closes
    state, effects, outcome = answer(state, WIJ, "centrum", feedback(FeedbackKind.SPECIALIST_NEEDED, product="45A56"))
    (decision,) = [e.decision for e in effects]
    assert (decision.rule, decision.recipient.kind) == ("specialist-asked", PROVIDER)
    assert decision.recipient.id in SPECIALIST_PROVIDERS
    assert decision.previous_recipient.id == "centrum" and not decision.kept
    assert decision.flags == ["warm-handover"]
    assert decision.referral.product == "45A56" and decision.referral.specialist_asked
    assert [(t.rule, t.decided) for t in decision.trace][:1] == [("specialist-needed", False)]
    assert "centrum" in decision.trace[0].reason and "until 2025-07-01" in decision.trace[-1].reason
    assert state.referrals["r-1"].decision == decision and outcome == f"specialist care: re-routed to " \
        f"{decision.recipient.id}"


def test_specialist_needed_from_the_closing_date_stays_with_the_team_flagged_for_its_behavioural_scientist():
    state = with_team(date(2025, 7, 1))
    state, effects, outcome = answer(state, WIJ, "centrum", feedback(FeedbackKind.SPECIALIST_NEEDED, product="45A56"))
    (decision,) = [e.decision for e in effects]
    assert (decision.rule, decision.recipient.id, decision.flags) == ("specialist-asked", "centrum",
                                                                     ["behavioural-scientist"])
    assert decision.kept and outcome == "specialist care: kept by centrum"
    assert "closed for 45A56 since 2025-07-01" in decision.trace[-1].reason
    assert state.referrals["r-1"].decision == decision


def test_specialist_needed_skips_a_provider_that_declined_the_referral():
    state = with_team(date(2025, 3, 10))
    state, effects, _ = answer(state, WIJ, "centrum", feedback(FeedbackKind.SPECIALIST_NEEDED, product="45A56"))
    first = effects[0].decision.recipient.id
    state, effects, _ = answer(state, PROVIDER, first, feedback(FeedbackKind.DECLINED))
    assert effects[0].decision.recipient.id in SPECIALIST_PROVIDERS - {first}, "still a 45A56 provider, not the decliner"


@pytest.mark.parametrize(("kind", "source", "product", "location"), [
    (PROVIDER, NOORDERLICHT, "45A56", "/kind"),  # a provider holding the referral: not WIJ's triage
    (WIJ, "centrum", None, "/product"),
    (WIJ, "centrum", "99X99", "/product"),
])
def test_specialist_needed_not_from_wij_or_without_a_known_product_is_refused(kind, source, product, location):
    state = with_team(date(2025, 3, 10))
    if kind is PROVIDER:  # hand it to the provider first, by WIJ's own request
        state = answer(state, WIJ, "centrum", feedback(FeedbackKind.SPECIALIST_NEEDED, product="45A56")).state
        source = state.referrals["r-1"].decision.recipient.id
    error = refusal(answer(state, kind, source, feedback(FeedbackKind.SPECIALIST_NEEDED, product=product)))
    assert (error.code, error.location) == (ErrorCode.SPECIALIST_REQUEST_INVALID, location)


def test_specialist_needed_from_a_team_the_referral_is_not_with_is_not_recipient():
    state = with_team(date(2025, 3, 10))
    error = refusal(answer(state, WIJ, "beijum", feedback(FeedbackKind.SPECIALIST_NEEDED, product="45A56")))
    assert error.code is ErrorCode.NOT_RECIPIENT
