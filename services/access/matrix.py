"""The ACL matrix: who may do what on which topic and group, derived from the registry. Pure.

One source for the local broker (`verwijshub access sync`), the Strimzi manifests (`access export`) and the
table in docs/security.md. The hub's services get topic families by prefix (a recipient added later is
covered at once); referrers and recipients get their own topics by literal name and consumer groups that
start with their principal's name. Nobody but the admin, the only super user, may create or delete topics or
alter ACLs.
"""

import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from schemas.referral import Channel
from schemas.registry import Registry
from services.infra import principals, topics


class Resource(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactionalId"
    """A producer's transactional id (a service instance's one: services/infra/processing.py)."""


class Pattern(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    READ = "Read"
    WRITE = "Write"
    DESCRIBE = "Describe"
    DESCRIBE_CONFIGS = "DescribeConfigs"
    """A topic's configuration (retention, cleanup policy): no records. Neither implies nor is implied by
    Describe."""


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW binding: `principal` may `operation` on the resource `name` (or every name starting with it)."""

    principal: str
    resource: Resource
    pattern: Pattern
    name: str
    operation: Operation


IMPLIES_DESCRIBE = frozenset({Operation.READ, Operation.WRITE, Operation.DESCRIBE})
"""Kafka's rule: a principal that may read or write a topic (or group) may also describe it."""


def allows(granted: list[Grant], principal: str, resource: Resource, name: str, operation: Operation) -> bool:
    """Whether the grants let `principal` do `operation` on the resource `name`, as Kafka's authorizer
    decides it (a literal `*` matches every name; Read and Write imply Describe)."""
    wanted = IMPLIES_DESCRIBE if operation is Operation.DESCRIBE else {operation}
    return any(g.principal == principal and g.resource is resource and g.operation in wanted
               and (g.name == "*" or (name.startswith(g.name) if g.pattern is Pattern.PREFIXED else name == g.name))
               for g in granted)


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    """admin, service, operations, referrer, recipient."""


def _topics(principal: str, operation: Operation, *names: str, pattern: Pattern = Pattern.LITERAL) -> list[Grant]:
    return [Grant(principal, Resource.TOPIC, pattern, name, operation) for name in names]


def _group(principal: str, name: str, pattern: Pattern = Pattern.LITERAL) -> Grant:
    return Grant(principal, Resource.GROUP, pattern, name, Operation.READ)


def _own_groups(principal: str) -> Grant:
    """Consumer groups named `<principal>.<anything>`: the dot cannot occur in a principal's name, so one
    team's prefix never covers another's (`wij-centrum.` is no prefix of `wij-centrum-oost.`)."""
    return _group(principal, f"{principal}.", Pattern.PREFIXED)


def _transactions(principal: str) -> Grant:
    """Transactional ids `<principal>-<host>-<slot>`: one per instance of the service (`claim_instance`)."""
    return Grant(principal, Resource.TRANSACTIONAL_ID, Pattern.PREFIXED, f"{principal}-", Operation.WRITE)


def referrer_grants(channel: str, organisation_id: str) -> list[Grant]:
    """Write its own inbound topic (so the topic names the writer: intake knows who sent a record from it), read
    its channel's status with groups of its own prefix; nothing else."""
    who = principals.referrer(organisation_id)
    return [*_topics(who, Operation.WRITE, f"referrals.{channel}.{organisation_id}.v1"),
            *_topics(who, Operation.READ, f"status.{channel}.v1"), _own_groups(who)]


def recipient_grants(kind: str, recipient_id: str, *, write: bool = True, read: bool = True) -> list[Grant]:
    """Read its own handover topic with groups of its own prefix, write its own feedback topic; nothing else.
    A stopped provider loses `write` at once and `read` after the grace period."""
    who = principals.wij_team(recipient_id) if kind == "wij" else principals.provider(recipient_id)
    grants = _topics(who, Operation.WRITE, f"feedback.{kind}.{recipient_id}.v1") if write else []
    if read:
        grants += [*_topics(who, Operation.READ, f"handovers.{kind}.{recipient_id}.v1"),
                   _own_groups(who)]
    return grants


def service_grants() -> list[Grant]:
    """Exactly the topics and groups each service uses (routing never reads a handover; intake never a decision)."""
    intake, routing, notifier = (principals.service(name) for name in ("intake", "routing", "notifier"))
    prefix = Pattern.PREFIXED
    channels = [channel.value for channel in Channel]
    return [
        *_topics(intake, Operation.READ, *(f"referrals.{c}." for c in channels), pattern=prefix),
        *_topics(intake, Operation.READ, topics.INTAKE_ACCEPTED, topics.REGISTRY),
        *_topics(intake, Operation.WRITE, topics.NORMALISED, topics.DEAD_LETTERS, topics.INTAKE_ACCEPTED,
                 topics.ALERTS),
        *_topics(intake, Operation.WRITE, "status.", pattern=prefix),
        _group(intake, principals.service("intake")), _transactions(intake),
        *_topics(routing, Operation.READ, topics.NORMALISED, topics.REGISTRY, topics.INDICATIONS, topics.ROUTING_STATE,
                 topics.ROUTING_LOAD),
        *_topics(routing, Operation.READ, "feedback.", pattern=prefix),
        *_topics(routing, Operation.WRITE, topics.DECISIONS, topics.INDICATIONS, topics.ALERTS, topics.DEAD_LETTERS,
                 topics.ROUTING_STATE, topics.ROUTING_LOAD),
        _group(routing, principals.service("routing")), _transactions(routing),
        *_topics(notifier, Operation.READ, topics.DECISIONS, topics.INDICATIONS, topics.REGISTRY,
                 topics.NOTIFIER_STATE),
        *_topics(notifier, Operation.READ, "feedback.", pattern=prefix),
        *_topics(notifier, Operation.WRITE, topics.NOTIFIER_STATE, topics.ALERTS, topics.DEAD_LETTERS,
                 topics.OPS_RECIPIENTS),
        *_topics(notifier, Operation.WRITE, "handovers.", "status.", pattern=prefix),
        _group(notifier, principals.service("notifier")), _transactions(notifier),
    ]


def gateway_grants(organisations: list[tuple[str, str]]) -> list[Grant]:
    """The referrer gateway writes each referrer organisation's own inbound topic (`organisations`: channel and
    id) for the organisations it authenticated, never a channel's topic, and reads the status topics (no group: it
    follows them from the start) to answer a referrer's Task, and the registry (the organisations, the products).
    It writes no dead letter and reads no personal data but the statuses, which carry none."""
    gateway = principals.GATEWAY
    return [*_topics(gateway, Operation.WRITE, *(f"referrals.{channel}.{org}.v1" for channel, org in organisations)),
            *_topics(gateway, Operation.READ, "status.", pattern=Pattern.PREFIXED),
            *_topics(gateway, Operation.READ, topics.REGISTRY)]


def recipients_grants() -> list[Grant]:
    """The recipient API (services/recipients/): reads every handover topic and writes every feedback topic (by
    prefix: a recipient added later is served at once; the API lets a recipient's token move only its own Tasks, and
    the feedback goes to that recipient's own topic), and its compacted state, with its own group and transactional
    ids, and its compacted subscriptions (the FHIR Subscriptions it delivers to the recipients' hooks). Nothing else: no decision, inbound, status or other state topic."""
    who = principals.RECIPIENTS
    return [*_topics(who, Operation.READ, "handovers.", pattern=Pattern.PREFIXED),
            *_topics(who, Operation.WRITE, "feedback.", pattern=Pattern.PREFIXED),
            *_topics(who, Operation.READ, topics.RECIPIENTS_STATE, topics.RECIPIENTS_SUBSCRIPTIONS),
            *_topics(who, Operation.WRITE, topics.RECIPIENTS_STATE, topics.RECIPIENTS_SUBSCRIPTIONS),
            _group(who, principals.RECIPIENTS), _transactions(who)]


def operations_grants() -> list[Grant]:
    """Lag, the exporter and the status page: describe every topic and group (offsets and timestamps, never
    records), and read what carries no BSN, name, address or free text: the status topics, the registry (teams
    and providers, to list the recipients), the notifier's clock counts per recipient and the pending dead letters'
    counts per channel and code. No topic with
    personal data (inbound, normalised, decisions, handovers, feedback, dead letters, state) is readable. The
    handover topics' configuration (DescribeConfigs, prefix `handovers.` only) gives their retention as the broker
    has it, for AT RISK OF LOSS (an unread handover older than half of it)."""
    ops = principals.OPERATIONS
    return [Grant(ops, Resource.TOPIC, Pattern.LITERAL, "*", Operation.DESCRIBE),
            Grant(ops, Resource.GROUP, Pattern.LITERAL, "*", Operation.DESCRIBE),
            *_topics(ops, Operation.DESCRIBE_CONFIGS, "handovers.", pattern=Pattern.PREFIXED),
            *_topics(ops, Operation.READ, "status.", pattern=Pattern.PREFIXED),
            *_topics(ops, Operation.READ, topics.REGISTRY, topics.OPS_RECIPIENTS, topics.OPS_DEAD_LETTERS)]


def analytics_grants() -> list[Grant]:
    """The analytics sink: read decisions, statuses, feedback and alerts (which it keeps as pseudonymised facts)
    with its own group, and describe the dead-letter topic (counted from offsets: a dead letter holds a raw
    referral). No handover, inbound, normalised or state topic."""
    who = principals.ANALYTICS
    return [*_topics(who, Operation.READ, topics.DECISIONS, topics.ALERTS),
            *_topics(who, Operation.READ, "status.", "feedback.", pattern=Pattern.PREFIXED),
            *_topics(who, Operation.DESCRIBE, topics.DEAD_LETTERS), _group(who, principals.ANALYTICS)]


def all_principals(registry: Registry) -> list[Principal]:
    return [Principal(principals.ADMIN, "admin"),
            *(Principal(principals.service(name), "service") for name in ("intake", "routing", "notifier")),
            Principal(principals.GATEWAY, "service"), Principal(principals.RECIPIENTS, "service"),
            Principal(principals.OPERATIONS, "operations"), Principal(principals.ANALYTICS, "analytics"),
            *(Principal(principals.referrer(org), "referrer") for org in sorted(registry.referrers)),
            *(Principal(principals.wij_team(team), "recipient") for team in sorted(registry.teams)),
            *(Principal(principals.provider(agb), "recipient") for agb in sorted(registry.providers))]


def grants(registry: Registry, today: date, grace: timedelta) -> list[Grant]:
    """Every grant the registry implies on `today`; a provider that stopped keeps reading for `grace`."""
    organisations = [(org.channel.value, org.id) for org in registry.referrers.values()]
    result = [*service_grants(), *gateway_grants(organisations), *recipients_grants(), *operations_grants(),
              *analytics_grants()]
    for channel, org in organisations:
        result += referrer_grants(channel, org)
    for team in sorted(registry.teams):
        result += recipient_grants("wij", team)
    for agb, provider in sorted(registry.providers.items()):
        stopped = provider.stopped_on is not None and provider.stopped_on <= today
        gone = provider.stopped_on is not None and provider.stopped_on + grace <= today
        result += recipient_grants("provider", agb, write=not stopped, read=not gone)
    return sorted(set(result))


def generic_grants() -> list[Grant]:
    """The matrix with placeholders for referrers' channels and recipients' ids (for documents)."""
    return [*service_grants(), *gateway_grants([("<channel>", "<org>")]), *recipients_grants(), *operations_grants(),
            *analytics_grants(),
            *referrer_grants("<channel>", "<org>"),
            *recipient_grants("wij", "<id>"), *recipient_grants("provider", "<agb>")]


def matrix_table() -> str:
    """The matrix as a Markdown table, by principal kind with placeholders (docs/security.md embeds it)."""
    lines = ["| principal | resource | name | pattern | operations |", "|---|---|---|---|---|",
             f"| `{principals.ADMIN}` | cluster | * | - | super user: everything (the only one) |"]
    merged: dict[tuple[str, Resource, str, Pattern], list[str]] = {}
    for g in generic_grants():
        merged.setdefault((g.principal, g.resource, g.name, g.pattern), []).append(g.operation.value)
    for (who, resource, name, pattern), operations in merged.items():
        lines.append(f"| `{who}` | {resource.value} | `{name}` | {pattern.value} | {', '.join(operations)} |")
    return "\n".join(lines) + "\n"


def _covers(grant: Grant, topic: str) -> bool:
    channels = "|".join(channel.value for channel in Channel)
    pattern = re.escape(grant.name).replace(re.escape("<channel>"), f"({channels})").replace(
        re.escape("<id>"), "[a-z0-9-]+").replace(re.escape("<org>"), "[a-z0-9-]+").replace(
        re.escape("<agb>"), "[0-9]{8}")
    if grant.name == "*":
        return True
    return bool(re.fullmatch(pattern + (".*" if grant.pattern is Pattern.PREFIXED else ""), topic))


def who_may(topic: str) -> dict[str, list[str]]:
    """Which principals may write (publish) and read (subscribe) `topic`, by the generic matrix; the admin,
    a super user, may always."""
    granted = [g for g in generic_grants() if g.resource is Resource.TOPIC and _covers(g, topic)]
    return {"publish": sorted({g.principal for g in granted if g.operation is Operation.WRITE}),
            "subscribe": sorted({g.principal for g in granted if g.operation is Operation.READ})}
