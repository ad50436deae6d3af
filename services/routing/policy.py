"""The routing policy of DOMAIN.md as pure rules over a referral and the registry.

Rules are evaluated in order; the first that decides wins. Every rule evaluated leaves a line in
the trace, so that a person can check why a referral went where it went.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Referral
from schemas.registry import Registry
from schemas.routing import Recipient, RecipientKind, RoutingDecision, RuleOutcome
from services.infra import topics

CENTRAL_ENTRANCE = "central-entrance"


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


Rule = Callable[[Referral, Registry], Verdict]


def wij_team_recipient(registry: Registry, team_id: str) -> Recipient:
    team = registry.teams[team_id]
    return Recipient(kind=RecipientKind.WIJ_TEAM, id=team.id, name=team.name, topic=topics.wij_handovers(team.id))


def reject_unroutable(referral: Referral, registry: Registry) -> Verdict:
    pc4 = referral.youth.pc4
    if pc4 not in registry.postcodes:
        return Verdict(
            reason=f"postcode area {pc4} is not in the municipality's postcode table: rejected",
            errors=[ReferralError(code=ErrorCode.OUTSIDE_MUNICIPALITY, location="youth.postcode",
                                  message=f"Postcode area {pc4} lies outside the municipality of Groningen.")],
        )
    return Verdict(reason=f"postcode area {pc4} lies in the municipality")


def basis_jeugdhulp(referral: Referral, registry: Registry) -> Verdict:
    pc4 = referral.youth.pc4
    team_id = registry.postcodes.get(pc4)
    if team_id is None:
        central = registry.central_entrance()
        return Verdict(reason=f"postcode area {pc4} maps to no WIJ team: the central WIJ entrance",
                       recipient=wij_team_recipient(registry, central.id), flags=(CENTRAL_ENTRANCE,))
    return Verdict(reason=f"basis jeugdhulp by the WIJ team of postcode area {pc4}",
                   recipient=wij_team_recipient(registry, team_id))


RULES: tuple[tuple[str, Rule], ...] = (
    ("reject-unroutable", reject_unroutable),
    ("basis-jeugdhulp", basis_jeugdhulp),
)


def decide(referral: Referral, registry: Registry, now: datetime) -> RoutingDecision:
    trace: list[RuleOutcome] = []
    for rule_id, rule in RULES:
        verdict = rule(referral, registry)
        trace.append(RuleOutcome(rule=rule_id, decided=verdict.decides, reason=verdict.reason))
        if verdict.decides:
            return RoutingDecision(
                referral_id=referral.referral_id, recipient=verdict.recipient, rule=rule_id, trace=trace,
                flags=list(verdict.flags), errors=verdict.errors, decided_at=now,
                registry_version=registry.version, referral=referral,
            )
    raise AssertionError("the last rule always decides")
