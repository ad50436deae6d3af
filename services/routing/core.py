"""Routing's core per youth: what to publish for a referral, a recipient's feedback, or a provider's stop.

Pure functions over one youth's `YouthRouting` (services/notifier/followup.py is the model): each returns the new
state, the effects in the order they are to be published, and a few words for the log. The processor around it
(app.py) decodes, fetches the youth's state, calls these and turns the effects into records.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback, FeedbackKind, not_recipient
from schemas.indications import Indication, YouthIndications
from schemas.lifecycle import ChangeKind, ReferralChange, RoutedChange
from schemas.referral import Referral
from schemas.registry import Provider, Registry
from schemas.routing import OpenReferral, RecipientKind, RoutingAlert, RoutingDecision, YouthRouting
from services.routing.policy import (
    PROVIDER_STOPPED,
    decide,
    redecide_after_decline,
    redecide_for_specialist_care,
    reroute_after_stop,
)


@dataclass(frozen=True)
class Decided:
    """A decision for `routing.decisions.v1` (the notifier hands over from it)."""

    decision: RoutingDecision


@dataclass(frozen=True)
class Forwarded:
    """A referral's change for `routing.decisions.v1`, to the recipient holding it or refused (the notifier tells
    whom it concerns)."""

    routed: RoutedChange


@dataclass(frozen=True)
class Alerted:
    """An alert for `alerts.v1`."""

    alert: RoutingAlert


@dataclass(frozen=True)
class IndicationsChanged:
    """The youth's whole list for `indications.v1` (compaction keeps one record per youth)."""

    indications: YouthIndications


@dataclass(frozen=True)
class Refused:
    """Feedback routing does not act on: it goes to the dead letters with `error` (a fixed text), as if it had not
    come. Always the only effect of its step."""

    error: ReferralError


Effect = Decided | Forwarded | Alerted | IndicationsChanged | Refused


class Step(NamedTuple):
    state: YouthRouting
    effects: list[Effect]
    outcome: str = ""
    """What happened, for the log (no personal data)."""


def is_empty(state: YouthRouting, today: date) -> bool:
    """No open referral and no indication running today or later: the youth leaves routing's state (a tombstone)."""
    return not state.referrals and all(i.end < today for i in state.indications)


def _with_decision(state: YouthRouting, decision: RoutingDecision, declined: Iterable[str]) -> YouthRouting:
    """The referral open with its new recipient, or gone when the decision rejects it."""
    referrals = dict(state.referrals)
    if decision.recipient is None:
        referrals.pop(decision.referral_id, None)
    else:
        referrals[decision.referral_id] = OpenReferral(decision=decision, declined=sorted(set(declined)))
    return state.model_copy(update={"referrals": referrals})


# -- referrals ---------------------------------------------------------------------------------------
def on_referral(state: YouthRouting, referral: Referral, registry: Registry, now: datetime,
                load: Mapping[str, int]) -> Step:
    """Decide a normalised referral with the youth's indications and the providers' open load."""
    decision = decide(referral, registry, now, indications=state.indications, load=load)
    before = state.referrals.get(referral.referral_id)
    return Step(_with_decision(state, decision, before.declined if before else ()), [Decided(decision)], "decided")


# -- amendments and cancellations --------------------------------------------------------------------
AMENDMENT_REROUTES = ReferralError(
    code=ErrorCode.AMENDMENT_REROUTES, location="",
    message="This document would change how the referral is routed (its referral date, product, specialist or "
            "continued care, or preferred provider); the referral stands as it was. Send a new referral under a new "
            "referral id, and cancel this one if it no longer holds.")
NOT_OPEN = ReferralError(
    code=ErrorCode.REFERRAL_CLOSED, location="",
    message="This referral is no longer open (closed by its recipient, or rejected); nothing was changed.")


def rerouting_facts(held: Referral, amended: Referral) -> list[str]:
    """What the amendment states differently from the referral held of what routing decides on: the referral date,
    and the product, specialist or continued care and preferred provider where the amendment states them (a
    ZorgDomein letter or supplement carries no ServiceRequest, so it names none of them: that is no change). The
    youth is intake's to bind (another youth is another referral: `REFERRAL_ID_CONFLICT`)."""
    changed = []
    if amended.referral_date != held.referral_date:
        changed.append("referral date")
    if amended.product is not None and amended.product != held.product:
        changed.append("product")
    if amended.specialist_asked and not held.specialist_asked:
        changed.append("specialist care")
    if amended.continuation and not held.continuation:
        changed.append("continued care")
    if amended.preferred_provider is not None and amended.preferred_provider != held.preferred_provider:
        changed.append("preferred provider")
    return changed


def on_change(state: YouthRouting, change: ReferralChange, now: datetime) -> Step:
    """A referral's amendment or cancellation. Forwarded to the recipient of the referral's latest decision while
    it is open; a cancellation also ends the referral here (as `closed` feedback does). The rule for an amendment
    that would change the routing (docs/domain.md, "One referral, several documents"): refused with
    `AMENDMENT_REROUTES`, the referral left as it was, never re-routed on it: its recipient may be in contact with the
    family already, and a referrer who means another referral says so with a new one."""
    found = state.referrals.get(change.referral_id)
    if found is None or found.decision.recipient is None:
        return Step(state, [Forwarded(RoutedChange(change=change, errors=[NOT_OPEN], decided_at=now))],
                    f"{change.kind.value} of a referral not open: refused")
    recipient = found.decision.recipient
    if change.kind is ChangeKind.CANCELLATION:
        referrals = {rid: r for rid, r in state.referrals.items() if rid != change.referral_id}
        return Step(state.model_copy(update={"referrals": referrals}),
                    [Forwarded(RoutedChange(change=change, recipient=recipient, decided_at=now))], "cancelled")
    assert change.referral is not None
    if changed := rerouting_facts(found.decision.referral, change.referral):
        return Step(state, [Forwarded(RoutedChange(change=change, errors=[AMENDMENT_REROUTES], decided_at=now))],
                    f"amendment changing {', '.join(changed)}: refused")
    return Step(state, [Forwarded(RoutedChange(change=change, recipient=recipient, decided_at=now))],
                f"amendment forwarded to {recipient.id}")


# -- feedback ----------------------------------------------------------------------------------------
ROUTING_FEEDBACK = frozenset({FeedbackKind.DECLINED, FeedbackKind.CLOSED, FeedbackKind.INDICATION_STARTED,
                              FeedbackKind.SPECIALIST_NEEDED})
"""The kinds routing acts on; the notifier follows up (and refuses) every kind."""
INDICATION_OUTSIDE_CONTRACT = ReferralError(
    code=ErrorCode.INDICATION_INVALID, location="/product",
    message="An indication needs a product of the contract of the provider that sends it.")
INDICATION_BAD_END = ReferralError(
    code=ErrorCode.INDICATION_INVALID, location="/indication_end",
    message="An indication needs an end date, not before its start and within the longest indication the region "
            "issues.")
SPECIALIST_NOT_FROM_WIJ = ReferralError(
    code=ErrorCode.SPECIALIST_REQUEST_INVALID, location="/kind",
    message="Only a WIJ team's triage asks for specialist care.")
SPECIALIST_WITHOUT_PRODUCT = ReferralError(
    code=ErrorCode.SPECIALIST_REQUEST_INVALID, location="/product",
    message="A request for specialist care needs a product code of the registry.")


def open_with(state: YouthRouting, referral_id: str, kind: RecipientKind, source: str) -> OpenReferral | None:
    """The open referral when its latest decision names this recipient; feedback from any other is not acted on."""
    found = state.referrals.get(referral_id)
    recipient = found.decision.recipient if found else None
    return found if recipient is not None and recipient.kind is kind and recipient.id == source else None


def _refused(state: YouthRouting, error: ReferralError, why: str) -> Step:
    return Step(state, [Refused(error)], why)


def on_feedback(state: YouthRouting, kind: RecipientKind, source: str, feedback: Feedback, registry: Registry,
                now: datetime, load: Mapping[str, int], indication_max_days: int) -> Step:
    """Feedback from recipient `kind`/`source` (the topic it came on names the writer) about one of the youth's
    referrals. Acted on only when that referral is open (or accepted) with that very recipient, so a provider
    cannot steer a youth it was never handed; anything else is `Refused`."""
    if feedback.kind not in ROUTING_FEEDBACK:
        return Step(state, [], "nothing for routing")
    found = open_with(state, feedback.referral_id, kind, source)
    if found is None:
        return _refused(state, not_recipient(), f"{feedback.kind.value} of a referral not with this recipient: refused")
    match feedback.kind:
        case FeedbackKind.DECLINED:
            return _declined(state, found, source, feedback, registry, now, load)
        case FeedbackKind.CLOSED:
            referrals = {rid: r for rid, r in state.referrals.items() if rid != feedback.referral_id}
            return Step(state.model_copy(update={"referrals": referrals}), [], "closed")
        case FeedbackKind.SPECIALIST_NEEDED:
            return _specialist_needed(state, found, kind, feedback, registry, now, load)
        case _:
            return _indication_started(state, kind, source, feedback, registry, indication_max_days)


def _declined(state: YouthRouting, found: OpenReferral, source: str, feedback: Feedback, registry: Registry,
              now: datetime, load: Mapping[str, int]) -> Step:
    """Decide the referral again without every recipient that declined it so far."""
    excluded = {*found.declined, source}
    decision = redecide_after_decline(found.decision, registry, now, feedback.reason, excluded, state.indications,
                                      load)
    to = decision.recipient.id if decision.recipient else None
    return Step(_with_decision(state, decision, excluded), [Decided(decision)], f"re-routed to {to}")


def _specialist_needed(state: YouthRouting, found: OpenReferral, kind: RecipientKind, feedback: Feedback,
                       registry: Registry, now: datetime, load: Mapping[str, int]) -> Step:
    """WIJ's triage asks for specialist care: the referral decided again by rule 5 (policy.redecide_for_specialist_care),
    without the recipients that declined it; only from a WIJ team and for a product of the registry."""
    if kind is not RecipientKind.WIJ_TEAM:
        return _refused(state, SPECIALIST_NOT_FROM_WIJ, "specialist-needed from a provider: refused")
    if feedback.product not in registry.products:
        return _refused(state, SPECIALIST_WITHOUT_PRODUCT, "specialist-needed without a known product: refused")
    decision = redecide_for_specialist_care(found.decision, feedback.product, registry, now, found.declined,
                                            state.indications, load)
    to = decision.recipient.id if decision.recipient else None
    return Step(_with_decision(state, decision, found.declined), [Decided(decision)],
                f"specialist care: {'kept by' if decision.kept else 're-routed to'} "
                f"{to}")


def indication_error(kind: RecipientKind, source: str, feedback: Feedback, registry: Registry,
                     max_days: int) -> ReferralError | None:
    """Why a provider's `indication-started` cannot be kept, or None: the product must be in its contract (a WIJ team
    has none), the end neither before the start (the day it was sent) nor more than `max_days` after it."""
    provider = registry.providers.get(source) if kind is RecipientKind.PROVIDER else None
    if provider is None or feedback.product not in provider.products:
        return INDICATION_OUTSIDE_CONTRACT
    start, end = feedback.at.date(), feedback.indication_end
    if end is None or not start <= end <= start + timedelta(days=max_days):
        return INDICATION_BAD_END
    return None


def _indication_started(state: YouthRouting, kind: RecipientKind, source: str, feedback: Feedback,
                        registry: Registry, max_days: int) -> Step:
    """A provider's new indication joins the youth's list, so rule 2 keeps the youth's next referral there."""
    if (error := indication_error(kind, source, feedback, registry, max_days)) is not None:
        return _refused(state, error, "indication-started outside the contract or the bound: refused")
    assert feedback.product is not None and feedback.indication_end is not None
    indication = Indication(pseudonym=state.pseudonym, product=feedback.product, provider_agb=source,
                            start=feedback.at.date(), end=feedback.indication_end, referral_id=feedback.referral_id)
    merged = merge_indication(tuple(state.indications), indication)
    return Step(state.model_copy(update={"indications": list(merged)}),
                [IndicationsChanged(YouthIndications(pseudonym=state.pseudonym, indications=list(merged)))],
                "indication recorded")


def merge_indication(current: tuple[Indication, ...], new: Indication) -> tuple[Indication, ...]:
    """Add or replace (same product, provider and start) one indication in a youth's list."""
    same = (new.product, new.provider_agb, new.start)
    return (*[i for i in current if (i.product, i.provider_agb, i.start) != same], new)


def on_indications(state: YouthRouting, indications: Iterable[Indication]) -> YouthRouting:
    """The youth's list as another writer (`verwijshub indications import`) put it on `indications.v1`."""
    return state.model_copy(update={"indications": [i for i in indications if i.pseudonym == state.pseudonym]})


# -- refusals ---------------------------------------------------------------------------------------
FEEDBACK_REFUSED = "feedback-refused"
REFUSALS_PER_ALERT = 5
"""Every 5th refusal of one recipient's feedback within REFUSAL_WINDOW raises an alert: one stray message is a
mistake, this many is a system (or a stolen credential) acting outside its referrals."""
REFUSAL_WINDOW = timedelta(hours=1)
REFUSALS_KEPT = 10 * REFUSALS_PER_ALERT
"""Refusals remembered per recipient at most, so a flood costs bounded memory (it still alerts)."""
Position = tuple[str, int, int]
"""A record's topic, partition and offset."""


def count_refusal(recent: Mapping[Position, datetime], position: Position,
                  now: datetime) -> tuple[dict[Position, datetime], bool]:
    """One recipient's refusals within the window with this one added, and whether it is an alert's: keyed by the
    record's position, so a batch retried after an abort counts it once and decides the same."""
    kept = {p: at for p, at in recent.items() if now - at < REFUSAL_WINDOW}
    kept.setdefault(position, now)
    kept = dict(list(kept.items())[-REFUSALS_KEPT:])
    return kept, (list(kept).index(position) + 1) % REFUSALS_PER_ALERT == 0


def refusals_alert(kind: RecipientKind, source: str, pseudonym: str, now: datetime) -> RoutingAlert:
    """The alert that a recipient keeps sending feedback about referrals that are not its own."""
    who = {"provider": source} if kind is RecipientKind.PROVIDER else {"team": source}
    return RoutingAlert(kind=FEEDBACK_REFUSED, at=now, pseudonym=pseudonym, **who, message=(
        f"{REFUSALS_PER_ALERT} feedback messages of {kind.value} {source} refused within "
        f"{REFUSAL_WINDOW.total_seconds() / 3600:g} hour(s): it acts outside its referrals (check its system, "
        "or rotate its credential)."))


# -- provider stops ----------------------------------------------------------------------------------
def stopped_providers(registry: Registry, today: date) -> dict[str, Provider]:
    return {p.agb: p for p in registry.providers.values() if p.stopped_on is not None and p.stopped_on <= today}


def pending_with(indications: Iterable[Indication], agb: str, today: date) -> tuple[Indication, ...]:
    """The indications with a stopped provider that still run and were not re-routed yet."""
    return tuple(i for i in indications if i.provider_agb == agb and i.end >= today and i.rerouted_on is None)


def stop_due(recipients: Iterable[tuple[RecipientKind, str]], indications: Iterable[Indication],
             stopped: Mapping[str, Provider], today: date) -> bool:
    """Whether a youth has stop work: an open referral with a stopped provider, or an indication to re-route.
    Over (kind, id) pairs, so the in-memory index can ask without the referrals themselves."""
    indications = tuple(indications)
    return (any(kind is RecipientKind.PROVIDER and rid in stopped for kind, rid in recipients)
            or any(pending_with(indications, agb, today) for agb in {i.provider_agb for i in indications} & stopped.keys()))


def on_stop(state: YouthRouting, registry: Registry, today: date, now: datetime) -> Step:
    """Every open referral with a provider stopped by `today` goes to the youth's WIJ team (alert, then decision);
    a running indication with it without such a referral (imported, or its referral no longer with the provider)
    gets the alert only; the indications are marked `rerouted_on` last. All of it in one state change, so it
    happens once, also across restarts."""
    stopped = stopped_providers(registry, today)
    effects: list[Effect] = []
    referrals = dict(state.referrals)
    marked: set[Indication] = set()
    covered: set[str] = set()
    for referral_id, found in sorted(state.referrals.items()):
        recipient = found.decision.recipient
        if recipient is None or recipient.kind is not RecipientKind.PROVIDER or recipient.id not in stopped:
            continue
        provider, running = stopped[recipient.id], pending_with(state.indications, recipient.id, today)
        products = sorted({i.product for i in running})
        what = "the open handover" + (f" and the running indication(s) for {', '.join(products)}" if products else "")
        decision = reroute_after_stop(found.decision.referral, provider, registry, now, what)
        team = decision.recipient.id if decision.recipient else None
        effects += [Alerted(RoutingAlert(
            kind=PROVIDER_STOPPED, at=now, pseudonym=state.pseudonym, referral_id=referral_id, provider=provider.agb,
            team=team, message=f"{provider.name} stopped: {what} re-routed to WIJ team {team} (warm handover)")),
            Decided(decision)]
        referrals[referral_id] = found.model_copy(update={"decision": decision})
        marked |= set(running)
        covered.add(provider.agb)
    for agb in sorted({i.provider_agb for i in state.indications} & stopped.keys() - covered):
        running = pending_with(state.indications, agb, today)
        if not running:
            continue
        provider = stopped[agb]
        effects.append(Alerted(RoutingAlert(
            kind=PROVIDER_STOPPED, at=now, pseudonym=state.pseudonym, provider=agb,
            message=f"{provider.name} stopped: a youth with a running indication "
                    + ("whose referral is no longer open with it" if any(i.referral_id for i in running)
                       else "imported without referral")
                    + "; the provider asks the client to report at WIJ, which takes the youth on")))
        marked |= set(running)
    if not effects:
        return Step(state, [], "nothing to re-route")
    indications = [i.model_copy(update={"rerouted_on": today}) if i in marked else i for i in state.indications]
    if marked:
        effects.append(IndicationsChanged(YouthIndications(pseudonym=state.pseudonym, indications=indications)))
    return Step(state.model_copy(update={"referrals": referrals, "indications": indications}), effects,
                f"{sum(isinstance(e, Alerted) for e in effects)} re-routed")
