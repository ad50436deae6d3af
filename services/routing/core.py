"""Routing's core per youth: what to publish for a referral, a recipient's feedback, or a provider's stop.

Pure functions over one youth's `YouthRouting` (services/notifier/followup.py is the model): each returns the new
state, the effects in the order they are to be published, and a few words for the log. The processor around it
(app.py) decodes, fetches the youth's state, calls these and turns the effects into records.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication, YouthIndications
from schemas.referral import Referral
from schemas.registry import Provider, Registry
from schemas.routing import OpenReferral, RecipientKind, RoutingAlert, RoutingDecision, YouthRouting
from services.routing.policy import PROVIDER_STOPPED, decide, redecide_after_decline, reroute_after_stop


@dataclass(frozen=True)
class Decided:
    """A decision for `routing.decisions.v1` (the notifier hands over from it)."""

    decision: RoutingDecision


@dataclass(frozen=True)
class Alerted:
    """An alert for `alerts.v1`."""

    alert: RoutingAlert


@dataclass(frozen=True)
class IndicationsChanged:
    """The youth's whole list for `indications.v1` (compaction keeps one record per youth)."""

    indications: YouthIndications


Effect = Decided | Alerted | IndicationsChanged


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


# -- feedback ----------------------------------------------------------------------------------------
def open_with(state: YouthRouting, referral_id: str, kind: RecipientKind, source: str) -> OpenReferral | None:
    """The open referral when its latest decision names this recipient; feedback from any other is not acted on."""
    found = state.referrals.get(referral_id)
    recipient = found.decision.recipient if found else None
    return found if recipient is not None and recipient.kind is kind and recipient.id == source else None


def on_feedback(state: YouthRouting, kind: RecipientKind, source: str, feedback: Feedback, registry: Registry,
                now: datetime, load: Mapping[str, int]) -> Step:
    """Feedback from recipient `kind`/`source` (from the topic it came on) about one of the youth's referrals."""
    match feedback.kind:
        case FeedbackKind.DECLINED:
            return _declined(state, kind, source, feedback, registry, now, load)
        case FeedbackKind.CLOSED:
            if open_with(state, feedback.referral_id, kind, source) is None:
                return Step(state, [], "closure of a referral that is not open with this recipient: ignored")
            referrals = {rid: r for rid, r in state.referrals.items() if rid != feedback.referral_id}
            return Step(state.model_copy(update={"referrals": referrals}), [], "closed")
        case FeedbackKind.INDICATION_STARTED:
            return _indication_started(state, kind, source, feedback)
        case _:
            return Step(state, [], "nothing for routing")


def _declined(state: YouthRouting, kind: RecipientKind, source: str, feedback: Feedback, registry: Registry,
              now: datetime, load: Mapping[str, int]) -> Step:
    """Decide the referral again without every recipient that declined it so far."""
    found = open_with(state, feedback.referral_id, kind, source)
    if found is None:
        return Step(state, [], "decline of a referral that is not with this recipient: ignored")
    excluded = {*found.declined, source}
    decision = redecide_after_decline(found.decision, registry, now, feedback.reason, excluded, state.indications,
                                      load)
    to = decision.recipient.id if decision.recipient else None
    return Step(_with_decision(state, decision, excluded), [Decided(decision)], f"re-routed to {to}")


def _indication_started(state: YouthRouting, kind: RecipientKind, source: str, feedback: Feedback) -> Step:
    """A provider's new indication joins the youth's list, so rule 2 keeps the youth's next referral there."""
    if kind is not RecipientKind.PROVIDER or not feedback.product or not feedback.indication_end:
        return Step(state, [], "indication-started without provider, product or end date: ignored")
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
