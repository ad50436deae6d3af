"""The notifier's core: handovers, the status lifecycle, feedback ownership, contact clocks, expiry reminders."""

from datetime import UTC, date, datetime, timedelta

import pytest

from schemas.errors import ErrorCode
from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication
from schemas.notices import NoticeKind, YouthFollowUp
from schemas.routing import Recipient, RecipientKind, RoutingDecision
from schemas.status import ReferralStatus, StatusEvent
from services.infra import topics
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.gp import parse_gp
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.notifier.followup import (
    Alert,
    FeedbackRefused,
    HandOver,
    Notify,
    apply_decision,
    apply_feedback,
    apply_indications,
    due_effects,
    next_due,
)
from services.notifier.handover import handover_bundle
from services.routing.policy import decide, redecide_for_specialist_care
from tests.referrals import gp_bytes

FRIDAY = datetime(2026, 3, 13, 15, tzinfo=AMSTERDAM)  # a clock started on a Friday afternoon
CALENDAR = WorkingCalendar()
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
PROVIDER = Recipient(kind=RecipientKind.PROVIDER, id="98000011", name="Noorderlicht Jeugdhulp",
                     topic=topics.provider_handovers("98000011"))


def team_decision() -> RoutingDecision:
    referral = parse_gp(gp_bytes(), received_at=FRIDAY, known_products=frozenset(REGISTRY.products),
                        pseudonym_key="k")
    decision = decide(referral, REGISTRY, FRIDAY)
    assert decision.recipient and decision.recipient.kind is RecipientKind.WIJ_TEAM
    return decision


def handed_over(decision: RoutingDecision, now: datetime = FRIDAY) -> YouthFollowUp:
    state, _ = apply_decision(YouthFollowUp(pseudonym=decision.referral.youth.pseudonym), decision, now, CALENDAR,
                              "centrum")
    return state


def source_of(decision: RoutingDecision) -> tuple[RecipientKind, str]:
    return decision.recipient.kind, decision.recipient.id


def statuses(effects) -> list[ReferralStatus]:
    return [effect.status for effect in effects if isinstance(effect, StatusEvent)]


def feedback(decision: RoutingDecision, kind: FeedbackKind, **extra) -> Feedback:
    return Feedback(referral_id=decision.referral_id, kind=kind, at=FRIDAY, **extra)


def test_a_decision_is_routed_handed_over_and_starts_the_contact_clock() -> None:
    decision = team_decision()
    state, effects = apply_decision(YouthFollowUp(pseudonym="p"), decision, FRIDAY, CALENDAR, None)
    assert statuses(effects) == [ReferralStatus.ROUTED, ReferralStatus.HANDED_OVER]
    assert [type(e) for e in effects] == [StatusEvent, HandOver, StatusEvent]
    clock = state.handovers[decision.referral_id].clock
    assert clock.at_risk_at == datetime(2026, 3, 19, 15, tzinfo=AMSTERDAM)
    assert clock.due_at == datetime(2026, 3, 20, 15, tzinfo=AMSTERDAM)
    assert state.team_id == decision.recipient.id
    assert apply_decision(state, decision, FRIDAY, CALENDAR, None) == (state, [])  # the same decision again


def test_a_rejected_decision_gives_the_referrer_the_errors_and_keeps_nothing() -> None:
    referral = parse_gp(gp_bytes(postcode="1012 AB"), received_at=FRIDAY, known_products=frozenset(REGISTRY.products),
                        pseudonym_key="k")
    state, effects = apply_decision(YouthFollowUp(pseudonym="p"), decide(referral, REGISTRY, FRIDAY), FRIDAY,
                                    CALENDAR, None)
    assert statuses(effects) == [ReferralStatus.REJECTED]
    assert effects[0].errors[0].code is ErrorCode.OUTSIDE_MUNICIPALITY and not state.handovers


def test_at_risk_and_breach_each_fire_once_at_their_moment() -> None:
    decision = team_decision()
    state = handed_over(decision)
    clock = state.handovers[decision.referral_id].clock
    assert next_due(state) == clock.at_risk_at
    assert due_effects(state, clock.at_risk_at - timedelta(seconds=1), "entree")[1] == []
    state, effects = due_effects(state, clock.at_risk_at, "entree")
    assert statuses(effects) == [ReferralStatus.SLA_AT_RISK]
    assert [e.notice.kind for e in effects if isinstance(e, Notify)] == [NoticeKind.SLA_AT_RISK]
    assert effects[0].topic == decision.recipient.topic
    assert due_effects(state, clock.at_risk_at + timedelta(hours=1), "entree")[1] == []
    assert next_due(state) == clock.due_at
    state, effects = due_effects(state, clock.due_at, "entree")
    assert statuses(effects) == [ReferralStatus.SLA_BREACHED]
    assert [e.alert.kind for e in effects if isinstance(e, Alert)] == ["sla-breached"]
    assert due_effects(state, clock.due_at + timedelta(days=30), "entree")[1] == [] and next_due(state) is None


def test_a_deadline_passed_while_down_fires_the_breach_alone() -> None:
    decision = team_decision()
    state = handed_over(decision)
    _, effects = due_effects(state, state.handovers[decision.referral_id].clock.due_at + timedelta(days=2), "entree")
    assert statuses(effects) == [ReferralStatus.SLA_BREACHED]


def test_accept_then_contact_made_stops_the_clock() -> None:
    decision = team_decision()
    state = handed_over(decision)
    state, effects = apply_feedback(state, *source_of(decision), feedback(decision, FeedbackKind.ACCEPTED), FRIDAY)
    assert statuses(effects) == [ReferralStatus.ACCEPTED]
    state, effects = apply_feedback(state, *source_of(decision), feedback(
        decision, FeedbackKind.CONTACT_MADE, contact_at=FRIDAY), FRIDAY)
    assert statuses(effects) == [ReferralStatus.CONTACT_MADE] and next_due(state) is None
    state, effects = apply_feedback(state, *source_of(decision), feedback(decision, FeedbackKind.CLOSED), FRIDAY)
    assert statuses(effects) == [ReferralStatus.CLOSED] and not state.handovers


@pytest.mark.parametrize("source", [
    (RecipientKind.PROVIDER, "98000011"), (RecipientKind.WIJ_TEAM, "oost"), (RecipientKind.PROVIDER, "centrum")])
def test_feedback_from_another_recipient_is_refused(source) -> None:
    decision = team_decision()
    state = handed_over(decision)
    with pytest.raises(FeedbackRefused) as refused:
        apply_feedback(state, *source, feedback(decision, FeedbackKind.CLOSED), FRIDAY)
    assert refused.value.error.code is ErrorCode.NOT_RECIPIENT


def test_feedback_about_an_unknown_referral_is_refused() -> None:
    decision = team_decision()
    with pytest.raises(FeedbackRefused):
        apply_feedback(YouthFollowUp(pseudonym="p"), *source_of(decision), feedback(decision, FeedbackKind.ACCEPTED),
                       FRIDAY)


def test_decline_then_a_new_decision_is_rerouted_and_handed_over() -> None:
    decision = team_decision()
    state = handed_over(decision)
    state, effects = apply_feedback(state, *source_of(decision), feedback(decision, FeedbackKind.DECLINED), FRIDAY)
    assert statuses(effects) == [ReferralStatus.DECLINED] and next_due(state) is None
    again = decision.model_copy(update={"recipient": PROVIDER, "rule": "declined",
                                        "previous_recipient": decision.recipient})
    state, effects = apply_decision(state, again, FRIDAY, CALENDAR, "centrum")
    assert statuses(effects) == [ReferralStatus.REROUTED, ReferralStatus.HANDED_OVER]
    assert state.handovers[decision.referral_id].recipient == PROVIDER
    assert state.handovers[decision.referral_id].clock is None and state.team_id == "centrum"


def test_a_provider_stop_hands_over_warmly_and_tells_the_old_provider() -> None:
    first = team_decision().model_copy(update={"recipient": PROVIDER})
    state = handed_over(first)
    team = team_decision().recipient
    stop = first.model_copy(update={"recipient": team, "rule": "provider-stopped", "previous_recipient": PROVIDER,
                                    "flags": ["warm-handover"]})
    state, effects = apply_decision(state, stop, FRIDAY, CALENDAR, None)
    notices = [e for e in effects if isinstance(e, Notify)]
    assert [n.topic for n in notices] == [PROVIDER.topic]
    assert notices[0].notice.kind is NoticeKind.HANDED_OVER_ELSEWHERE and team.name in notices[0].notice.message
    assert statuses(effects) == [ReferralStatus.REROUTED, ReferralStatus.HANDED_OVER]
    assert state.handovers[first.referral_id].clock is not None
    task = handover_bundle(stop, FRIDAY).entry[1].resource
    assert [PROVIDER.name in note.text and PROVIDER.id in note.text for note in task.note] == [False, True]


@pytest.mark.parametrize(("referral_date", "moved"), [(date(2025, 6, 30), True), (date(2025, 7, 1), False)])
def test_wijs_request_for_specialist_care_hands_over_to_a_provider_or_tells_the_team_it_stays(referral_date,
                                                                                               moved) -> None:
    first = team_decision()
    first = first.model_copy(update={"referral": first.referral.model_copy(update={"referral_date": referral_date})})
    state = handed_over(first)
    team = first.recipient
    again = redecide_for_specialist_care(first, "45A56", REGISTRY, FRIDAY, ())
    after, effects = apply_decision(state, again, FRIDAY, CALENDAR, "centrum")
    notices = [(n.topic, n.notice.kind) for n in effects if isinstance(n, Notify)]
    if moved:
        assert statuses(effects) == [ReferralStatus.REROUTED, ReferralStatus.HANDED_OVER]
        assert notices == [(team.topic, NoticeKind.HANDED_OVER_ELSEWHERE)]
        assert [e.decision.recipient.kind for e in effects if isinstance(e, HandOver)] == [RecipientKind.PROVIDER]
        assert after.handovers[first.referral_id].recipient == again.recipient
        assert after.handovers[first.referral_id].clock is None, "the team's contact clock ends with its handover"
    else:
        assert notices == [(team.topic, NoticeKind.KEPT)] and len(effects) == 1, "no status, no second handover"
        assert "behavioural-scientist" in effects[0].notice.message
        assert after == state, "the team's clock runs on"


def indication(end: date) -> Indication:
    return Indication(pseudonym="p", product="45A51", provider_agb="98000011", start=date(2026, 1, 1), end=end)


def test_expiry_reminders_at_three_and_two_months() -> None:
    state = apply_indications(YouthFollowUp(pseudonym="p", team_id="oost"), [indication(date(2026, 12, 31))],
                              date(2026, 3, 1))
    first = datetime(2026, 9, 30, tzinfo=AMSTERDAM)
    assert next_due(state) == first
    assert due_effects(state, first - timedelta(minutes=1), "entree")[1] == []
    state, effects = due_effects(state, first, "entree")
    assert [(e.topic, e.notice.kind) for e in effects] == [
        (topics.provider_handovers("98000011"), NoticeKind.EVALUATION_DUE),
        (topics.wij_handovers("oost"), NoticeKind.RETRIAGE_EXPECTED)]
    second = datetime(2026, 10, 31, tzinfo=AMSTERDAM)
    assert next_due(state) == second
    state, effects = due_effects(state, second, "entree")
    assert [e.notice.kind for e in effects] == [NoticeKind.EVALUATION_REMINDER]
    assert next_due(state) is None
    # the same list again (a restart re-reads indications.v1) keeps what was sent
    assert apply_indications(state, [indication(date(2026, 12, 31))], date(2026, 11, 1)) == state


def test_evaluation_done_saves_the_second_reminder() -> None:
    state = apply_indications(YouthFollowUp(pseudonym="p"), [indication(date(2026, 12, 31))], date(2026, 3, 1))
    state, _ = due_effects(state, datetime(2026, 9, 30, tzinfo=AMSTERDAM), "entree")
    done = Feedback(referral_id="-", kind=FeedbackKind.EVALUATION_DONE, at=FRIDAY, product="45A51")
    state, effects = apply_feedback(state, RecipientKind.PROVIDER, "98000011", done, FRIDAY)
    assert effects == [] and next_due(state) is None
    with pytest.raises(FeedbackRefused):
        apply_feedback(state, RecipientKind.PROVIDER, "98000022", done, FRIDAY)


def test_an_indication_heard_of_within_two_months_gets_one_reminder_and_its_team_notice_goes_central() -> None:
    state = apply_indications(YouthFollowUp(pseudonym="p"), [indication(date(2026, 4, 30))], date(2026, 3, 20))
    state, effects = due_effects(state, datetime(2026, 3, 20, 9, tzinfo=UTC), "entree")
    assert [(e.topic, e.notice.kind) for e in effects] == [
        (topics.provider_handovers("98000011"), NoticeKind.EVALUATION_DUE),
        (topics.wij_handovers("entree"), NoticeKind.RETRIAGE_EXPECTED)]
    assert next_due(state) is None


def test_rerouted_and_ended_indications_are_not_watched() -> None:
    rerouted = indication(date(2026, 12, 31)).model_copy(update={"rerouted_on": date(2026, 3, 1)})
    state = apply_indications(YouthFollowUp(pseudonym="p"), [rerouted, indication(date(2026, 2, 1))], date(2026, 3, 2))
    assert state.watches == {}


def test_a_decline_that_arrives_after_its_redecision_still_tells_the_referrer_once() -> None:
    """Decisions and feedback come on different topics: routing's new decision can be read first."""
    decision = team_decision()
    state = handed_over(decision)
    again = decision.model_copy(update={"recipient": PROVIDER, "rule": "declined",
                                        "previous_recipient": decision.recipient})
    state, effects = apply_decision(state, again, FRIDAY, CALENDAR, "centrum")
    assert statuses(effects) == [ReferralStatus.REROUTED, ReferralStatus.HANDED_OVER]
    decline = feedback(decision, FeedbackKind.DECLINED)
    state, effects = apply_feedback(state, *source_of(decision), decline, FRIDAY)
    assert statuses(effects) == [ReferralStatus.DECLINED] and decision.recipient.name in effects[0].detail
    assert apply_feedback(state, *source_of(decision), decline, FRIDAY)[1] == []  # told once
    assert state.handovers[decision.referral_id].recipient == PROVIDER
    with pytest.raises(FeedbackRefused):  # only the feedback routing re-decides on is taken from the one before
        apply_feedback(state, *source_of(decision), feedback(decision, FeedbackKind.CONTACT_MADE), FRIDAY)


def test_a_decline_read_before_its_redecision_is_not_told_twice() -> None:
    decision = team_decision()
    state = handed_over(decision)
    decline = feedback(decision, FeedbackKind.DECLINED)
    state, effects = apply_feedback(state, *source_of(decision), decline, FRIDAY)
    assert statuses(effects) == [ReferralStatus.DECLINED]
    again = decision.model_copy(update={"recipient": PROVIDER, "rule": "declined",
                                        "previous_recipient": decision.recipient})
    state, _ = apply_decision(state, again, FRIDAY, CALENDAR, "centrum")
    assert apply_feedback(state, *source_of(decision), decline, FRIDAY)[1] == []


def test_a_request_for_specialist_care_read_after_its_redecision_is_no_dead_letter() -> None:
    first = team_decision()
    first = first.model_copy(update={"referral": first.referral.model_copy(update={"referral_date": date(2025, 6, 1)})})
    state = handed_over(first)
    moved = first.model_copy(update={"recipient": PROVIDER, "rule": "specialist-care",
                                     "previous_recipient": first.recipient, "flags": ["warm-handover"]})
    state, _ = apply_decision(state, moved, FRIDAY, CALENDAR, None)
    request = Feedback(referral_id=first.referral_id, kind=FeedbackKind.SPECIALIST_NEEDED, at=FRIDAY, product="54B01")
    assert apply_feedback(state, *source_of(first), request, FRIDAY) == (state, [])
