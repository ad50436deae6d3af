"""The notifier's core: what to publish for a decision, a recipient's feedback, or the passing of time.

Pure functions over one youth's `YouthFollowUp`: each returns the new state and the effects (statuses to
the referrer, handovers, notices to recipients, alerts) in the order they are to be published. The
service around it only decodes, calls these, publishes the effects and stores the state.
"""

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time

from dateutil.relativedelta import relativedelta

from schemas.errors import ReferralError
from schemas.feedback import NOT_RECIPIENT_MESSAGE, Feedback, FeedbackKind, not_recipient
from schemas.indications import Indication
from schemas.lifecycle import ChangeKind, RoutedChange
from schemas.notices import (
    ClockCounts,
    ContactClock,
    IndicationWatch,
    NoticeKind,
    OpenHandover,
    RecipientClocks,
    RecipientNotice,
    YouthFollowUp,
)
from schemas.routing import Recipient, RecipientKind, RoutingAlert, RoutingDecision
from schemas.status import ReferralStatus, StatusEvent
from services.infra import principals, topics
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.routing.policy import PROVIDER_STOPPED, WARM_HANDOVER

CONTACT_WORKING_DAYS = 5
AT_RISK_WORKING_DAYS = CONTACT_WORKING_DAYS - 1
"""`sla-at-risk` when one working day is left."""
FIRST_REMINDER = relativedelta(months=3)
SECOND_REMINDER = relativedelta(months=2)


@dataclass(frozen=True)
class HandOver:
    decision: RoutingDecision


@dataclass(frozen=True)
class Amend:
    """An amendment for the recipient holding the referral: a FHIR message pointing at its Task (handover.py)."""

    routed: RoutedChange


@dataclass(frozen=True)
class Notify:
    topic: str
    notice: RecipientNotice


@dataclass(frozen=True)
class Alert:
    alert: RoutingAlert


Effect = StatusEvent | HandOver | Amend | Notify | Alert


class FeedbackRefused(Exception):
    """Feedback the hub cannot act on; `error` says why (it goes to the dead-letter topic)."""

    def __init__(self, error: ReferralError) -> None:
        super().__init__(error.message)
        self.error = error


def status(handover: OpenHandover, kind: ReferralStatus, now: datetime, detail: str | None = None) -> StatusEvent:
    return StatusEvent.of(handover.channel, handover.referrer_referral_id, handover.referral_id, kind, now, detail)


def start_clock(now: datetime, calendar: WorkingCalendar) -> ContactClock:
    return ContactClock(started_at=now, at_risk_at=calendar.add_working_days(now, AT_RISK_WORKING_DAYS),
                        due_at=calendar.add_working_days(now, CONTACT_WORKING_DAYS))


# -- decisions ---------------------------------------------------------------------------------------
def apply_decision(state: YouthFollowUp, decision: RoutingDecision, now: datetime, calendar: WorkingCalendar,
                   team_of_youth: str | None) -> tuple[YouthFollowUp, list[Effect]]:
    """A routing decision: hand over (or re-route) and tell the referrer; the same decision again does nothing.

    `team_of_youth` is the WIJ team of the youth's postcode, remembered for re-triage notices."""
    referral = decision.referral
    if decision.recipient is None:
        return state, [StatusEvent.of(referral.channel, referral.referrer_referral_id, referral.referral_id,
                                      ReferralStatus.REJECTED, now, errors=decision.errors)]
    recipient = decision.recipient
    before = state.handovers.get(decision.referral_id)
    if before is not None and before.recipient == recipient:
        if decision.kept:  # decided again, it stays: the recipient hears why (its clock runs on)
            return state, [Notify(recipient.topic, RecipientNotice(
                kind=NoticeKind.KEPT, at=now, referral_id=decision.referral_id,
                message=f"Decided again by rule '{decision.rule}': the referral stays with you"
                        + (f", flagged {', '.join(decision.flags)}." if decision.flags else ".")))]
        return state, []  # already handed to this recipient: a repeated decision
    previous = decision.previous_recipient or (before.recipient if before else None)
    handover = OpenHandover(
        referral_id=decision.referral_id, referrer_referral_id=referral.referrer_referral_id,
        channel=referral.channel, recipient=recipient,
        clock=start_clock(now, calendar) if recipient.kind is RecipientKind.WIJ_TEAM else None, previous=previous,
        previous_declined=before is not None and before.recipient == previous and before.declined)
    effects: list[Effect] = []
    if previous is None:
        effects.append(status(handover, ReferralStatus.ROUTED, now, f"to {recipient.name} ({recipient.kind.value})"))
    else:
        effects.append(status(handover, ReferralStatus.REROUTED, now,
                              f"from {previous.name} to {recipient.name} (rule {decision.rule})"))
        if WARM_HANDOVER in decision.flags:  # care moves on (a provider's stop, WIJ's triage): the old party hears
            why = "Your stop moved" if decision.rule == PROVIDER_STOPPED else "Specialist care, as you asked, moved"
            effects.append(Notify(previous.topic, RecipientNotice(
                kind=NoticeKind.HANDED_OVER_ELSEWHERE, at=now, referral_id=decision.referral_id,
                message=f"{why} this referral to {recipient.name}; they will contact you for a warm handover.")))
    effects += [HandOver(decision), status(handover, ReferralStatus.HANDED_OVER, now, f"to {recipient.name}")]
    team_id = recipient.id if recipient.kind is RecipientKind.WIJ_TEAM else team_of_youth or state.team_id
    return state.model_copy(update={"handovers": {**state.handovers, decision.referral_id: handover},
                                    "team_id": team_id}), effects


# -- amendments and cancellations --------------------------------------------------------------------
def apply_change(state: YouthFollowUp, routed: RoutedChange, now: datetime) -> tuple[YouthFollowUp, list[Effect]]:
    """Routing's answer to a referral's amendment or cancellation.

    Refused (`errors`): the referrer is told `change-refused` with the codes, nothing else changes. An amendment:
    delivered to the recipient holding the referral, the referrer told `amended`. A cancellation closes the
    referral: the recipient gets a `cancelled` notice, the referrer `cancelled`, and the follow-up is dropped, so
    its contact clock and reminders stop (no at-risk or breach afterwards). A change whose referral the notifier no
    longer follows (closed meanwhile) is told to the referrer the same way, without a recipient."""
    change = routed.change
    if routed.errors or routed.recipient is None:
        return state, [StatusEvent.of(change.channel, change.referrer_referral_id, change.referral_id,
                                      ReferralStatus.CHANGE_REFUSED, now, errors=routed.errors,
                                      detail=f"{change.kind.value} not applied")]
    recipient, handover = routed.recipient, state.handovers.get(change.referral_id)
    if change.kind is ChangeKind.AMENDMENT:
        what = change.document or "amended referral"
        return state, [Amend(routed), StatusEvent.of(change.channel, change.referrer_referral_id, change.referral_id,
                                                     ReferralStatus.AMENDED, now, f"{what} delivered to {recipient.name}")]
    handovers = {rid: h for rid, h in state.handovers.items() if rid != change.referral_id}
    effects: list[Effect] = [
        Notify(recipient.topic, RecipientNotice(
            kind=NoticeKind.CANCELLED, at=now, referral_id=change.referral_id,
            message="The referrer cancelled this referral: it is closed, no contact is expected any more.")),
        StatusEvent.of(change.channel, change.referrer_referral_id, change.referral_id, ReferralStatus.CANCELLED,
                       now, f"closed; {recipient.name} told")]
    if handover is None:
        return state, effects
    return state.model_copy(update={"handovers": handovers}), effects


# -- feedback ----------------------------------------------------------------------------------------
def _refuse(message: str = NOT_RECIPIENT_MESSAGE, location: str = "/referral_id") -> FeedbackRefused:
    return FeedbackRefused(not_recipient(location, message))


def apply_feedback(state: YouthFollowUp, kind: RecipientKind, source_id: str, feedback: Feedback,
                   now: datetime) -> tuple[YouthFollowUp, list[Effect]]:
    """Feedback from the recipient `kind`/`source_id` (from the feedback topic it came on).

    Raises FeedbackRefused for feedback about a referral that is not open with that recipient, so a
    provider can never move another's referral."""
    if feedback.kind is FeedbackKind.EVALUATION_DONE:
        return _evaluation_done(state, kind, source_id, feedback)
    handover = state.handovers.get(feedback.referral_id)
    if handover is None or not _is(handover.recipient, kind, source_id):
        if handover is not None and _is(handover.previous, kind, source_id) and feedback.kind in _REDECIDING:
            return _after_its_redecision(state, handover, feedback, now)
        raise _refuse()
    handovers = dict(state.handovers)
    match feedback.kind:
        case FeedbackKind.ACCEPTED:
            effects = [status(handover, ReferralStatus.ACCEPTED, now, f"by {handover.recipient.name}")]
        case FeedbackKind.DECLINED:  # routing re-routes; the clock of this recipient stops
            handovers[feedback.referral_id] = handover.model_copy(update={"clock": None, "declined": True})
            effects = [status(handover, ReferralStatus.DECLINED, now, f"by {handover.recipient.name}; the hub "
                              "looks for another recipient")]
        case FeedbackKind.CONTACT_MADE:
            handovers[feedback.referral_id] = handover.model_copy(update={"clock": None})
            effects = [status(handover, ReferralStatus.CONTACT_MADE, now,
                              f"by {handover.recipient.name}" + (f" on {feedback.contact_at.date().isoformat()}"
                                                                 if feedback.contact_at else ""))]
        case FeedbackKind.CLOSED:
            del handovers[feedback.referral_id]
            effects = [status(handover, ReferralStatus.CLOSED, now, f"by {handover.recipient.name}")]
        case _:  # indication-started, specialist-needed: routing acts (its decision brings the statuses)
            effects = []
    return state.model_copy(update={"handovers": handovers}), effects


_REDECIDING = frozenset({FeedbackKind.DECLINED, FeedbackKind.SPECIALIST_NEEDED})
"""Feedback on which routing decides the referral again, so it may reach the notifier after that decision."""


def _is(recipient: Recipient | None, kind: RecipientKind, source_id: str) -> bool:
    return recipient is not None and recipient.kind is kind and recipient.id == source_id


def _after_its_redecision(state: YouthFollowUp, handover: OpenHandover, feedback: Feedback,
                          now: datetime) -> tuple[YouthFollowUp, list[Effect]]:
    """Feedback of the previous recipient that routing has already acted on: a decline still tells the referrer
    (once); a request for specialist care brought its statuses with the decision."""
    if feedback.kind is not FeedbackKind.DECLINED or handover.previous_declined:
        return state, []
    previous = handover.previous
    assert previous is not None
    told = handover.model_copy(update={"previous_declined": True})
    return (state.model_copy(update={"handovers": {**state.handovers, handover.referral_id: told}}),
            [status(handover, ReferralStatus.DECLINED, now, f"by {previous.name}; the referral went on to "
                                                            f"{handover.recipient.name}")])


def _evaluation_done(state: YouthFollowUp, kind: RecipientKind, agb: str,
                     feedback: Feedback) -> tuple[YouthFollowUp, list[Effect]]:
    """The provider's final evaluation of an indication: its second reminder is not needed."""
    matching = {key: watch for key, watch in state.watches.items()
                if kind is RecipientKind.PROVIDER and watch.provider_agb == agb
                and (feedback.product in (None, watch.product))}
    if not matching:
        raise _refuse("No running indication of this youth with the provider that sent the evaluation.",
                      "/product")
    done = {key: watch.model_copy(update={"evaluation_done": True}) for key, watch in matching.items()}
    return state.model_copy(update={"watches": {**state.watches, **done}}), []


# -- indications -------------------------------------------------------------------------------------
def apply_indications(state: YouthFollowUp, indications: list[Indication], today: date) -> YouthFollowUp:
    """The youth's running indications (from `indications.v1`): one watch each, reminders already sent kept.
    An indication re-routed after its provider stopped, or already ended, needs no reminder."""
    watches = {}
    for indication in indications:
        if indication.rerouted_on is not None or indication.end < today:
            continue
        watch = IndicationWatch(product=indication.product, provider_agb=indication.provider_agb,
                                end=indication.end, referral_id=indication.referral_id)
        watches[watch.key] = state.watches.get(watch.key, watch)
    return state.model_copy(update={"watches": watches})


# -- time --------------------------------------------------------------------------------------------
def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), AMSTERDAM)


def first_reminder_at(watch: IndicationWatch) -> datetime:
    return _start_of(watch.end - FIRST_REMINDER)


def second_reminder_at(watch: IndicationWatch) -> datetime:
    return _start_of(watch.end - SECOND_REMINDER)


def next_due(state: YouthFollowUp) -> datetime | None:
    """When something will next be due for this youth (None: nothing pending), so the timer looks only there."""
    moments = []
    for handover in state.handovers.values():
        clock = handover.clock
        if clock is not None and not clock.breached_sent:
            moments.append(clock.due_at if clock.at_risk_sent else clock.at_risk_at)
    for watch in state.watches.values():
        if not watch.first_sent:
            moments.append(first_reminder_at(watch))
        elif not watch.second_sent and not watch.evaluation_done:
            moments.append(second_reminder_at(watch))
    return min(moments, default=None)


def due_effects(state: YouthFollowUp, now: datetime, fallback_team: str) -> tuple[YouthFollowUp, list[Effect]]:
    """Everything due at `now`: at-risk and breached contact clocks, expiry reminders. Each is marked sent in
    the returned state, so it is published once; one that came due while the notifier was down fires now."""
    effects: list[Effect] = []
    handovers = dict(state.handovers)
    for referral_id, handover in state.handovers.items():
        clock = handover.clock
        if clock is None:
            continue
        if not clock.at_risk_sent and now >= clock.at_risk_at and now < clock.due_at:
            clock = clock.model_copy(update={"at_risk_sent": True})
            effects += [
                Notify(handover.recipient.topic, RecipientNotice(
                    kind=NoticeKind.SLA_AT_RISK, at=now, referral_id=referral_id, due=clock.due_at,
                    message="One working day left for first contact with the resident.")),
                status(handover, ReferralStatus.SLA_AT_RISK, now, f"first contact due by {clock.due_at.isoformat()}")]
        if not clock.breached_sent and now >= clock.due_at:
            clock = clock.model_copy(update={"at_risk_sent": True, "breached_sent": True})
            message = f"No first contact reported within {CONTACT_WORKING_DAYS} working days."
            effects += [
                Notify(handover.recipient.topic, RecipientNotice(
                    kind=NoticeKind.SLA_BREACHED, at=now, referral_id=referral_id, due=clock.due_at,
                    message=message)),
                status(handover, ReferralStatus.SLA_BREACHED, now, f"first contact was due by {clock.due_at.isoformat()}"),
                Alert(RoutingAlert(kind="sla-breached", at=now, pseudonym=state.pseudonym, referral_id=referral_id,
                                   team=handover.recipient.id, message=f"{handover.recipient.name}: {message}"))]
        handovers[referral_id] = handover.model_copy(update={"clock": clock})
    watches = dict(state.watches)
    for key, watch in state.watches.items():
        provider_topic = topics.provider_handovers(watch.provider_agb)
        about = {"at": now, "referral_id": watch.referral_id, "product": watch.product, "indication_end": watch.end}
        if not watch.first_sent and now >= first_reminder_at(watch):
            late = now >= second_reminder_at(watch)  # first heard of it within 2 months: one reminder is enough
            watch = watch.model_copy(update={"first_sent": True, "second_sent": late})
            effects += [
                Notify(provider_topic, RecipientNotice(
                    kind=NoticeKind.EVALUATION_DUE, **about,
                    message=f"The indication for {watch.product} ends on {watch.end.isoformat()}: make the final "
                            "evaluation now and tell the client to report at a WIJ team.")),
                Notify(topics.wij_handovers(state.team_id or fallback_team), RecipientNotice(
                    kind=NoticeKind.RETRIAGE_EXPECTED, **about,
                    message=f"A youth of your area has an indication for {watch.product} ending on "
                            f"{watch.end.isoformat()}: expect the client for a re-triage."))]
        elif not watch.second_sent and not watch.evaluation_done and now >= second_reminder_at(watch):
            watch = watch.model_copy(update={"second_sent": True})
            effects.append(Notify(provider_topic, RecipientNotice(
                kind=NoticeKind.EVALUATION_REMINDER, **about,
                message=f"Second reminder: no final evaluation reported for the indication for {watch.product} "
                        f"ending on {watch.end.isoformat()}; less than 2 months are left.")))
        watches[key] = watch
    return state.model_copy(update={"handovers": handovers, "watches": watches}), effects


def is_empty(state: YouthFollowUp) -> bool:
    return not state.handovers and not state.watches


# -- for operations ----------------------------------------------------------------------------------
def recipient_principal(kind: RecipientKind, recipient_id: str) -> str:
    return principals.wij_team(recipient_id) if kind is RecipientKind.WIJ_TEAM else principals.provider(recipient_id)


YouthClocks = tuple[tuple[str, int, int, int], ...]
"""One youth's contact clocks per recipient principal: (principal, open, at risk, breached). The notifier keeps
this per youth, so that a partition's summary sums small tuples instead of parsing every open youth's state."""


def youth_clocks(state: YouthFollowUp) -> YouthClocks:
    """The contact clocks of the youth's open handovers per recipient principal: open (not breached, at risk
    included), at risk (at-risk notice sent, not breached), breached. Recipients without a clock are absent."""
    counts: dict[str, tuple[int, int, int]] = {}
    for handover in state.handovers.values():
        if (clock := handover.clock) is None:
            continue
        who = sys.intern(recipient_principal(handover.recipient.kind, handover.recipient.id))
        running, at_risk, breached = counts.get(who, (0, 0, 0))
        counts[who] = (running + (not clock.breached_sent), at_risk + (clock.at_risk_sent and not clock.breached_sent),
                       breached + clock.breached_sent)
    return tuple((who, *map(int, counted)) for who, counted in sorted(counts.items()))


def summed_clocks(youths: Iterable[YouthClocks]) -> dict[str, ClockCounts]:
    """The clocks of many youths per recipient principal."""
    totals: dict[str, tuple[int, int, int]] = {}
    for clocks in youths:
        for who, running, at_risk, breached in clocks:
            before = totals.get(who, (0, 0, 0))
            totals[who] = (before[0] + running, before[1] + at_risk, before[2] + breached)
    return {who: ClockCounts(open=running, at_risk=at_risk, breached=breached)
            for who, (running, at_risk, breached) in sorted(totals.items())}


def partition_clocks(partition: int, youths: Iterable[YouthClocks], now: datetime) -> tuple[bytes, RecipientClocks]:
    """The `ops.recipients.v1` record (key, value) of one owned notifier partition."""
    return str(partition).encode(), RecipientClocks(partition=partition, at=now, recipients=summed_clocks(youths))
