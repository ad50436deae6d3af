"""Topic names of the public contract (docs/design.md, "Topics"): one place, so no service spells them itself."""

from schemas.referral import Channel
from schemas.registry import Registry

NORMALISED = "referrals.normalised.v1"
DEAD_LETTERS = "referrals.dlq.v1"
DECISIONS = "routing.decisions.v1"
REGISTRY = "registry.v1"
INDICATIONS = "indications.v1"
ALERTS = "alerts.v1"
INTAKE_ACCEPTED = "intake.accepted.v1"
"""Internal, compacted: one record per referral intake accepted, keyed by hub referral id (deduplication)."""

NOTIFIER_STATE = "notifier.state.v1"
"""Internal, compacted: the notifier's follow-up of one youth (open handovers, contact clocks, reminders),
keyed by youth pseudonym and in the same partition as the youth's decisions and feedback."""

OPS_RECIPIENTS = "ops.recipients.v1"
"""Compacted, no personal data: per notifier partition (key: its number), the contact clocks per recipient
(open, at risk, breached), which the notifier publishes so operations can show them without reading its state."""

COMPACTED = frozenset({REGISTRY, INDICATIONS, INTAKE_ACCEPTED, NOTIFIER_STATE, OPS_RECIPIENTS})


def referrals(channel: Channel) -> str:
    return f"referrals.{channel}.v1"


def status(channel: Channel) -> str:
    return f"status.{channel}.v1"


def wij_handovers(team_id: str) -> str:
    return f"handovers.wij.{team_id}.v1"


def provider_handovers(agb: str) -> str:
    return f"handovers.provider.{agb}.v1"


def wij_feedback(team_id: str) -> str:
    return f"feedback.wij.{team_id}.v1"


def provider_feedback(agb: str) -> str:
    return f"feedback.provider.{agb}.v1"


def all_topics(registry: Registry) -> list[str]:
    """Every topic the hub uses, recipients' included, so each exists before its first message."""
    names = [NORMALISED, DEAD_LETTERS, DECISIONS, REGISTRY, INDICATIONS, ALERTS, INTAKE_ACCEPTED, NOTIFIER_STATE,
             OPS_RECIPIENTS]
    for channel in Channel:
        names += [referrals(channel), status(channel)]
    for team_id in registry.teams:
        names += [wij_handovers(team_id), wij_feedback(team_id)]
    for agb in registry.providers:
        names += [provider_handovers(agb), provider_feedback(agb)]
    return names
