"""What routing remembers between referrals, rebuilt from Kafka: the registry in force, the youths'
running indications, and the latest decision per referral (open handovers, declines, load).

Pure bookkeeping without I/O: the service feeds it records and asks it what to do.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from schemas.indications import Indication, YouthIndications
from schemas.registry import Provider, Registry
from schemas.routing import RecipientKind, RoutingDecision
from services.routing.policy import PROVIDER_STOPPED


@dataclass(frozen=True)
class StopWork:
    """One thing to do because a provider stopped: re-route an open referral (a decision), or, for an
    imported indication without a referral, alert WIJ so the youth is taken on."""

    provider: Provider
    pseudonym: str
    decision: RoutingDecision | None
    """The open referral's latest decision, when there is one."""
    indications: tuple[Indication, ...]
    """The youth's running indications with the provider (marked re-routed afterwards)."""


@dataclass
class RoutingState:
    registry: Registry
    indications: dict[str, tuple[Indication, ...]] = field(default_factory=dict)
    decisions: dict[str, RoutingDecision] = field(default_factory=dict)
    declined: dict[str, frozenset[str]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    load: Counter[str] = field(default_factory=Counter)

    def indications_of(self, pseudonym: str) -> tuple[Indication, ...]:
        return self.indications.get(pseudonym, ())

    def apply_indications(self, pseudonym: str, value: YouthIndications | None) -> None:
        if value is None or not value.indications:
            self.indications.pop(pseudonym, None)
        else:
            self.indications[pseudonym] = tuple(value.indications)

    def apply_decision(self, decision: RoutingDecision) -> None:
        """Keep the latest decision per referral (read back from the log, so idempotent), the recipients
        that declined it, and the open handovers per provider."""
        old = self.decisions.get(decision.referral_id)
        if old is not None and old.decided_at > decision.decided_at:
            return
        if old is not None and old.recipient and old.recipient.kind is RecipientKind.PROVIDER:
            self.load[old.recipient.id] -= 1
        self.decisions[decision.referral_id] = decision
        if decision.trace and decision.trace[0].rule == "declined" and decision.previous_recipient:
            self.declined[decision.referral_id] = (self.declined.get(decision.referral_id, frozenset())
                                                   | {decision.previous_recipient.id})
        if decision.recipient and decision.recipient.kind is RecipientKind.PROVIDER:
            self.load[decision.recipient.id] += 1

    def close(self, referral_id: str) -> None:
        decision = self.decisions.get(referral_id)
        if referral_id not in self.closed and decision and decision.recipient \
                and decision.recipient.kind is RecipientKind.PROVIDER:
            self.load[decision.recipient.id] -= 1
        self.closed.add(referral_id)

    def open_load(self) -> dict[str, int]:
        return {agb: n for agb, n in self.load.items() if n > 0}

    def stop_work(self, today: date) -> list[StopWork]:
        """Every open handover and running indication with a provider stopped by `today` that was not
        re-routed yet. Re-routed ones drop out by themselves: the referral's latest decision then names
        the WIJ team, and the indication carries `rerouted_on`."""
        stopped = {p.agb: p for p in self.registry.providers.values()
                   if p.stopped_on is not None and p.stopped_on <= today}
        if not stopped:
            return []
        work: list[StopWork] = []
        covered: set[tuple[str, str]] = set()
        for decision in self.decisions.values():
            recipient = decision.recipient
            if (recipient is None or recipient.kind is not RecipientKind.PROVIDER or recipient.id not in stopped
                    or decision.referral_id in self.closed):
                continue
            pseudonym = decision.referral.youth.pseudonym
            running = tuple(i for i in self._pending(pseudonym, recipient.id, today))
            work.append(StopWork(stopped[recipient.id], pseudonym, decision, running))
            covered.add((pseudonym, recipient.id))
        for pseudonym, indications in self.indications.items():
            for agb in sorted({i.provider_agb for i in indications} & stopped.keys()):
                if (pseudonym, agb) in covered:
                    continue
                running = self._pending(pseudonym, agb, today)
                if not running:
                    continue
                referral_ids = [i.referral_id for i in running if i.referral_id in self.decisions]
                decision = self.decisions[referral_ids[0]] if referral_ids else None
                if decision is not None and decision.rule == PROVIDER_STOPPED:
                    decision = None  # the referral was re-routed already; only the marks are left to write
                work.append(StopWork(stopped[agb], pseudonym, decision, running))
        return work

    def _pending(self, pseudonym: str, agb: str, today: date) -> tuple[Indication, ...]:
        return tuple(i for i in self.indications_of(pseudonym)
                     if i.provider_agb == agb and i.end >= today and i.rerouted_on is None)


def merge_indication(current: tuple[Indication, ...], new: Indication) -> tuple[Indication, ...]:
    """Add or replace (same product, provider and start) one indication in a youth's list."""
    same = (new.product, new.provider_agb, new.start)
    return (*[i for i in current if (i.product, i.provider_agb, i.start) != same], new)
