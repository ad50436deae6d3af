"""The routing policy of docs/domain.md as pure rules over a referral, the registry and the youth's indications.

Rules are evaluated in order; the first that decides wins. Every rule evaluated leaves a line in
the trace, so that a person can check why a referral went where it went. Every date the policy
turns on (channel join dates, BJH start dates, the Open House closing) is registry data.
"""

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from schemas.errors import ErrorCode, ReferralError
from schemas.indications import Indication
from schemas.referral import Referral
from schemas.registry import Provider, Registry
from schemas.routing import Recipient, RecipientKind, RoutingDecision, RuleOutcome
from services.infra import topics
from services.intake.outcome import ErrorList
from services.intake.validation import check_age

CENTRAL_ENTRANCE = "central-entrance"
BEHAVIOURAL_SCIENTIST = "behavioural-scientist"
WARM_HANDOVER = "warm-handover"
PROVIDER_STOPPED = "provider-stopped"
SPECIALIST_NEEDED = "specialist-needed"
"""The trace's first line when WIJ's triage asks for specialist care (the kind of that feedback)."""


@dataclass(frozen=True)
class Verdict:
    """What one rule says: it decides (recipient, or errors for a rejection) or passes with a reason."""

    reason: str
    recipient: Recipient | None = None
    errors: list[ReferralError] = field(default_factory=list)
    flags: tuple[str, ...] = ()

    @property
    def decides(self) -> bool:
        return self.recipient is not None or bool(self.errors)


@dataclass(frozen=True)
class Situation:
    """Everything a rule may look at; `excluded` holds recipients (team ids, AGBs) that declined,
    `load` the open handovers per provider AGB (spreads the choice)."""

    referral: Referral
    registry: Registry
    indications: tuple[Indication, ...] = ()
    excluded: frozenset[str] = frozenset()
    load: Mapping[str, int] = field(default_factory=dict)

    @property
    def day(self) -> date:
        return self.referral.referral_date


Rule = Callable[[Situation], Verdict]


def wij_team_recipient(registry: Registry, team_id: str) -> Recipient:
    team = registry.teams[team_id]
    return Recipient(kind=RecipientKind.WIJ_TEAM, id=team.id, name=team.name, topic=topics.wij_handovers(team.id))


def provider_recipient(provider: Provider) -> Recipient:
    return Recipient(kind=RecipientKind.PROVIDER, id=provider.agb, name=provider.name,
                     topic=topics.provider_handovers(provider.agb))


def provider_active(provider: Provider, day: date) -> bool:
    """A provider with `stopped_on` D no longer takes youths from D on (the day itself included)."""
    return provider.stopped_on is None or day < provider.stopped_on


def open_house_open(registry: Registry, product: str, day: date) -> bool:
    """Whether providers may still take the product: the eleven until their Open House closes,
    every other (specialist) product always, by contract."""
    known = registry.products.get(product)
    return known is None or known.open_house_until is None or day < known.open_house_until


def youth_team(s: Situation) -> tuple[Recipient, tuple[str, ...], str]:
    """The WIJ team of the youth's PC4; the central entrance when none maps or the team declined."""
    pc4 = s.referral.youth.pc4
    team_id = s.registry.postcodes.get(pc4)
    if team_id is not None and team_id not in s.excluded:
        return wij_team_recipient(s.registry, team_id), (), f"the WIJ team of postcode area {pc4}"
    central = s.registry.central_entrance()
    why = "maps to no WIJ team" if team_id is None else f"has team {team_id}, which declined"
    return (wij_team_recipient(s.registry, central.id), (CENTRAL_ENTRANCE,),
            f"the central WIJ entrance (postcode area {pc4} {why})")


def _spread(referral_id: str, agb: str) -> str:
    return hashlib.sha256(f"{referral_id}|{agb}".encode()).hexdigest()


def choose_provider(s: Situation, product: str) -> tuple[Provider | None, str]:
    """The client's preferred provider when eligible; else the eligible one with the fewest open
    handovers, ties broken by a hash of referral id and AGB (deterministic, spread over providers)."""
    def eligible(p: Provider) -> bool:
        return (product in p.products and provider_active(p, s.day) and p.accepting
                and p.agb not in s.excluded)

    preferred_agb = s.referral.preferred_provider
    note = ""
    if preferred_agb:
        preferred = s.registry.providers.get(preferred_agb)
        if preferred is not None and eligible(preferred):
            return preferred, f"the client's preferred provider {preferred.name} ({preferred.agb})"
        note = f"preferred provider {preferred_agb} is not contracted for {product}, active and accepting; "
    candidates = [p for p in s.registry.providers.values() if eligible(p)]
    if not candidates:
        return None, note + f"no provider is contracted for {product}, active and accepting"
    chosen = min(candidates, key=lambda p: (s.load.get(p.agb, 0), _spread(s.referral.referral_id, p.agb)))
    return chosen, note + (f"{chosen.name} ({chosen.agb}), one of {len(candidates)} eligible providers, "
                           f"chosen by load ({s.load.get(chosen.agb, 0)} open) and referral hash")


def _to_provider(s: Situation, product: str, why: str) -> Verdict:
    """A provider for the product, or the youth's WIJ team flagged for its behavioural scientist."""
    provider, how = choose_provider(s, product)
    if provider is not None:
        return Verdict(reason=f"{why}: {how}", recipient=provider_recipient(provider))
    team, flags, which = youth_team(s)
    return Verdict(reason=f"{why}: {how}, so {which} with an escalation to its behavioural scientist",
                   recipient=team, flags=(*flags, BEHAVIOURAL_SCIENTIST))


def reject_unroutable(s: Situation) -> Verdict:
    referral, pc4 = s.referral, s.referral.youth.pc4
    errors = ErrorList()
    check_age(referral.youth.birth_date, referral.referral_date, referral.continuation, "youth.birth_date", errors)
    if pc4 not in s.registry.postcodes:
        errors.add(ErrorCode.OUTSIDE_MUNICIPALITY, "youth.postcode",
                   "The postcode area lies outside the municipality of Groningen.")
    if errors:  # the trace is the audit trail (the referral is in the decision): it names the area, the error not
        outside = f" (postcode area {pc4})" if pc4 not in s.registry.postcodes else ""
        return Verdict(reason="rejected: " + " ".join(e.message for e in errors.errors) + outside,
                       errors=errors.errors)
    limit = "23 (continued care)" if referral.continuation else "18"
    return Verdict(reason=f"the youth is under {limit} on the referral date and postcode area {pc4} "
                          "lies in the municipality")


def running_indication(s: Situation) -> Verdict:
    product = s.referral.product
    if product is None:
        return Verdict(reason="no product asked for, so no running indication to keep")
    for indication in sorted(s.indications, key=lambda i: (i.end, i.provider_agb), reverse=True):
        if indication.product != product or not indication.running_on(s.day):
            continue
        provider = s.registry.providers.get(indication.provider_agb)
        if provider is None or not provider_active(provider, s.day) or provider.agb in s.excluded:
            continue
        return Verdict(reason=f"the youth has a running indication for {product} with {provider.name} "
                              f"({provider.agb}) until {indication.end}: it stays there",
                       recipient=provider_recipient(provider))
    return Verdict(reason=f"no running indication for {product} with an active provider on {s.day}")


def referrer_not_in_bjh(s: Situation) -> Verdict:
    channel = s.referral.channel
    join = s.registry.channels.get(channel)
    joins_on = join.joins_bjh_on if join else None
    if joins_on is not None and s.day >= joins_on:
        return Verdict(reason=f"channel {channel} joined BJH on {joins_on}, before the referral date {s.day}")
    why = (f"channel {channel} joins BJH only on {joins_on}" if joins_on
           else f"channel {channel} has no BJH join date") + ": the old route"
    if s.referral.product is None:
        team, flags, which = youth_team(s)
        return Verdict(reason=f"{why}, but no product is named to choose a provider for, so {which} "
                              "with an escalation to its behavioural scientist",
                       recipient=team, flags=(*flags, BEHAVIOURAL_SCIENTIST))
    if not open_house_open(s.registry, s.referral.product, s.day):
        team, flags, which = youth_team(s)
        return Verdict(reason=f"{why}, but the Open House is closed for {s.referral.product}, so {which} "
                              "with an escalation to its behavioural scientist",
                       recipient=team, flags=(*flags, BEHAVIOURAL_SCIENTIST))
    return _to_provider(s, s.referral.product, f"{why}, an Open House provider for {s.referral.product}")


def product_not_in_bjh(s: Situation) -> Verdict:
    code = s.referral.product
    if code is None:
        return Verdict(reason="no product named: basis jeugdhulp")
    product = s.registry.products.get(code)
    bjh_from = product.bjh_from if product else None
    if bjh_from is not None and s.day >= bjh_from:
        return Verdict(reason=f"product {code} is delivered by BJH since {bjh_from}")
    why = (f"product {code} is delivered by BJH only from {bjh_from}" if bjh_from
           else f"product {code} is not a BJH product")
    return _to_provider(s, code, f"{why}: a contracted provider")


def specialist_asked(s: Situation) -> Verdict:
    if not s.referral.specialist_asked:
        return Verdict(reason="no specialist care asked for")
    code = s.referral.product
    team, flags, which = youth_team(s)
    if code is None:
        return Verdict(reason=f"specialist care asked for without a product: {which} with an escalation "
                              "to its behavioural scientist", recipient=team, flags=(*flags, BEHAVIOURAL_SCIENTIST))
    product = s.registry.products.get(code)
    until = product.open_house_until if product else None
    if until is not None and s.day < until:
        return _to_provider(s, code, f"specialist care asked for; the Open House is open for {code} "
                                     f"until {until}: an Open House provider")
    closed = f"closed for {code} since {until}" if until else f"not open for {code}"
    return Verdict(reason=f"specialist care asked for, but the Open House is {closed}: {which} with an "
                          "escalation to its behavioural scientist",
                   recipient=team, flags=(*flags, BEHAVIOURAL_SCIENTIST))


def basis_jeugdhulp(s: Situation) -> Verdict:
    team, flags, which = youth_team(s)
    return Verdict(reason=f"basis jeugdhulp by {which}", recipient=team, flags=flags)


RULES: tuple[tuple[str, Rule], ...] = (
    ("reject-unroutable", reject_unroutable),
    ("running-indication", running_indication),
    ("referrer-not-in-bjh", referrer_not_in_bjh),
    ("product-not-in-bjh", product_not_in_bjh),
    ("specialist-asked", specialist_asked),
    ("basis-jeugdhulp", basis_jeugdhulp),
)


def decide(referral: Referral, registry: Registry, now: datetime, *, indications: Collection[Indication] = (),
           excluded: Collection[str] = (), load: Mapping[str, int] | None = None,
           previous: Recipient | None = None, preamble: list[RuleOutcome] | None = None) -> RoutingDecision:
    """Decide one referral. `excluded`/`previous`/`preamble` serve a re-route after a decline."""
    situation = Situation(referral, registry, tuple(i for i in indications if i.pseudonym == referral.youth.pseudonym),
                          frozenset(excluded), load or {})
    trace: list[RuleOutcome] = list(preamble or [])
    for rule_id, rule in RULES:
        verdict = rule(situation)
        trace.append(RuleOutcome(rule=rule_id, decided=verdict.decides, reason=verdict.reason))
        if verdict.decides:
            return RoutingDecision(
                referral_id=referral.referral_id, recipient=verdict.recipient, rule=rule_id, trace=trace,
                flags=list(verdict.flags), errors=verdict.errors, decided_at=now,
                registry_version=registry.version, previous_recipient=previous, referral=referral,
            )
    raise AssertionError("the last rule always decides")


def redecide_after_decline(previous: RoutingDecision, registry: Registry, now: datetime, reason: str | None,
                           excluded: Collection[str], indications: Collection[Indication] = (),
                           load: Mapping[str, int] | None = None) -> RoutingDecision:
    """The referral again, without every recipient that declined it so far."""
    declined = previous.recipient
    assert declined is not None
    line = RuleOutcome(rule="declined", decided=False,
                       reason=f"{declined.name} ({declined.id}) declined" + (f" ({reason})" if reason else "")
                       + ": decided again without " + ", ".join(sorted(excluded)))
    return decide(previous.referral, registry, now, indications=indications, excluded=excluded, load=load,
                  previous=declined, preamble=[line])


def redecide_for_specialist_care(previous: RoutingDecision, product: str, registry: Registry, now: datetime,
                                 excluded: Collection[str], indications: Collection[Indication] = (),
                                 load: Mapping[str, int] | None = None) -> RoutingDecision:
    """WIJ's triage says the referral needs specialist care for `product`: decided again as a referral asking for it,
    on its referral date like every decision. Rule 5 sends it to an Open House provider while the Open House is open
    for the product, else the team keeps it, flagged for its behavioural scientist (`previous_recipient` is then the
    recipient itself); a running indication (rule 2) or a product outside BJH (rule 4) decides first. A move is a
    warm handover from the team."""
    team = previous.recipient
    assert team is not None
    referral = previous.referral.model_copy(update={"product": product, "specialist_asked": True})
    line = RuleOutcome(rule=SPECIALIST_NEEDED, decided=False,
                       reason=f"{team.name} ({team.id}) found at triage that specialist care is needed for {product}: "
                              "decided again as a referral asking for it")
    decision = decide(referral, registry, now, indications=indications, excluded=excluded, load=load, previous=team,
                      preamble=[line])
    moved = decision.recipient is not None and not decision.kept
    return decision.model_copy(update={"flags": [*decision.flags, WARM_HANDOVER]}) if moved else decision


def reroute_after_stop(referral: Referral, provider: Provider, registry: Registry, now: datetime,
                       what: str) -> RoutingDecision:
    """A stopped provider's youth goes to its WIJ team as a warm handover naming the old provider."""
    situation = Situation(referral, registry)
    team, flags, which = youth_team(situation)
    reason = (f"{provider.name} ({provider.agb}) stopped on {provider.stopped_on}; {what} goes to {which} "
              "as a warm handover")
    return RoutingDecision(
        referral_id=referral.referral_id, recipient=team, rule=PROVIDER_STOPPED,
        trace=[RuleOutcome(rule=PROVIDER_STOPPED, decided=True, reason=reason)],
        flags=[*flags, WARM_HANDOVER], decided_at=now, registry_version=registry.version,
        previous_recipient=provider_recipient(provider), referral=referral,
    )
