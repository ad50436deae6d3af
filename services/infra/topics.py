"""Topic names of the public contract (docs/design.md, "Topics"): one place, so no service spells them itself."""

from enum import StrEnum

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

ROUTING_STATE = "routing.state.v1"
"""Internal, compacted: routing's open work of one youth (open referrals with their latest decision, declines,
indications), keyed by youth pseudonym and in the same partition as the youth's referrals and feedback."""

ROUTING_LOAD = "routing.load.v1"
"""Internal, compacted, no personal data: per routing partition (key: its number), the open handovers per provider,
which each routing instance publishes so every instance spreads referrals by the load of all partitions."""

OPS_RECIPIENTS = "ops.recipients.v1"
"""Compacted, no personal data: per notifier partition (key: its number), the contact clocks per recipient
(open, at risk, breached), which the notifier publishes so operations can show them without reading its state."""

RECIPIENTS_STATE = "recipients.state.v1"
"""Internal, compacted: the recipient API's Tasks of one youth (status, version, where its handover and notices lie),
keyed by youth pseudonym and in the same partition as the youth's handovers; written with the feedback a Task update
becomes."""

RECIPIENTS_SUBSCRIPTIONS = "recipients.subscriptions.v1"
"""Internal, compacted: the recipient API's FHIR Subscriptions (one record per subscription, keyed by its id: the
subscriber, its rest-hook, its event counter and the events it has yet to deliver)."""

DLQ_REPLAYS = "dlq.replays.v1"
"""Internal, compacted, no personal data: one marker per dead letter that `verwijshub dlq replay` re-submitted
or tried (key: the dead letter's id `<partition>-<offset>`; value: when, by whom, the outcome, the attempts)."""

OPS_DEAD_LETTERS = "ops.deadletters.v1"
"""Compacted, no personal data: the pending dead letters counted per channel and code, with the oldest one's time
(one record, key `summary`), written by the admin's `dlq` commands so operations can show them without reading
the dead letters."""

INTERNAL = frozenset({INTAKE_ACCEPTED, NOTIFIER_STATE, ROUTING_STATE, ROUTING_LOAD, RECIPIENTS_STATE,
                      RECIPIENTS_SUBSCRIPTIONS, DLQ_REPLAYS})
"""The hub's own state: written and read only by its services and the admin's commands, no outside party's contract
(the AsyncAPI document tags them `internal`)."""
COMPACTED = frozenset({REGISTRY, INDICATIONS, INTAKE_ACCEPTED, NOTIFIER_STATE, ROUTING_STATE, ROUTING_LOAD,
                       RECIPIENTS_STATE, RECIPIENTS_SUBSCRIPTIONS, OPS_RECIPIENTS, DLQ_REPLAYS, OPS_DEAD_LETTERS})


class TopicClass(StrEnum):
    """Topics grouped by how long their records must live (docs/design.md, "Retention")."""

    INBOUND = "inbound"
    """Referrals as sent and as normalised: processed in seconds, kept for replays and investigation."""
    HANDOVERS = "handovers"
    FEEDBACK = "feedback"
    STATUS = "status"
    DEAD_LETTERS = "dead-letters"
    ALERTS = "alerts"
    DECISIONS = "decisions"
    """The audit trail of routing."""
    INTERNAL = "internal"
    """Compacted state: kept as long as its key lives (the latest record per key)."""


def topic_class(name: str) -> TopicClass:
    if name in COMPACTED:
        return TopicClass.INTERNAL
    if name == DEAD_LETTERS:
        return TopicClass.DEAD_LETTERS
    if name == DECISIONS:
        return TopicClass.DECISIONS
    if name == ALERTS:
        return TopicClass.ALERTS
    prefixes = {"referrals.": TopicClass.INBOUND, "handovers.": TopicClass.HANDOVERS,
                "feedback.": TopicClass.FEEDBACK, "status.": TopicClass.STATUS}
    return next((kind for prefix, kind in prefixes.items() if name.startswith(prefix)), TopicClass.INTERNAL)


def referrals(channel: Channel) -> str:
    return f"referrals.{channel}.v1"


def organisation_referrals(channel: Channel, organisation_id: str) -> str:
    """A referrer organisation's own inbound topic: only it (as `referrer-<id>`) and the gateway (for it) may write
    it, so the topic names who wrote a record (services/access/senders.py)."""
    return f"referrals.{channel}.{organisation_id}.v1"


def inbound(name: str) -> tuple[Channel, str | None] | None:
    """The channel of an inbound topic and the organisation whose own topic it is (None: the channel's topic,
    written only by the admin); None for any other topic."""
    parts = name.split(".")
    if len(parts) not in (3, 4) or parts[0] != "referrals" or parts[-1] != "v1" or parts[1] not in set(Channel):
        return None
    return Channel(parts[1]), (parts[2] if len(parts) == 4 else None)


def submitted(name: str) -> bool:
    """Whether a topic is an inbound topic, written by referrers (and the gateway, the admin) rather than the hub."""
    return inbound(name) is not None


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
             ROUTING_STATE, ROUTING_LOAD, RECIPIENTS_STATE, RECIPIENTS_SUBSCRIPTIONS, OPS_RECIPIENTS, DLQ_REPLAYS,
             OPS_DEAD_LETTERS]
    for channel in Channel:
        names += [referrals(channel), status(channel)]
    for team_id in registry.teams:
        names += [wij_handovers(team_id), wij_feedback(team_id)]
    for agb in registry.providers:
        names += [provider_handovers(agb), provider_feedback(agb)]
    names += [organisation_referrals(org.channel, org.id) for org in registry.referrers.values()]
    return names
