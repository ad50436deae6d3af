"""The recipients as operations sees them: does each WIJ team and provider read its handover topic, how old is
its oldest unread handover, how many of its contact clocks run, are at risk, are breached.

Read as the operations principal, which reads no record with personal data: the teams and providers come
from `registry.v1`, the clocks from the notifier's counts on `ops.recipients.v1`, and the rest from offsets
alone: a recipient's consumer groups are named `<principal>.<anything>` (`wij-centrum.epd`); a record on its
handover topic counts as read when any of its groups committed past it, and with no group everything on the
topic is unread. The oldest unread record's time is found with ListOffsets (`LagMonitor.record_times`).
A recipient whose oldest unread record is older than half its topic's retention is AT RISK OF LOSS: the
retention is the topic's `retention.ms` as the broker has it (DescribeConfigs, granted to operations on the
handover topics only), or, where the broker does not say, what the settings give the handovers class.
The handover topic also carries the notifier's notices to the recipient; offsets cannot tell them apart from
handovers, so "handovers" here means every record on that topic. The judging and merging are pure functions.
"""

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.notices import ClockCounts, RecipientClocks
from schemas.registry import Registry
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.kafka import log_offsets, read_to_end
from services.infra.registry_files import load_registry
from services.infra.registry_topic import latest_registry
from services.notifier.calendar import WorkingCalendar
from services.ops.lag import LagMonitor

LATE_AFTER_WORKING_DAYS = 1.0
"""An unread handover older than this (in working days) marks its recipient LATE: the promise of first
contact is 5 working days, and a handover nobody reads is a child nobody contacts."""
LOSS_RISK_SHARE = 0.5
"""An unread record older than this share of its topic's retention marks its recipient AT RISK OF LOSS: the
broker deletes a record once it is older than the retention, read or not, so half of it leaves time to act."""
AT_RISK_OF_LOSS = "AT RISK OF LOSS"
REGISTRY_EVERY_S = 30.0
CLOCKS_EVERY_S = 5.0


class RecipientStatus(StrEnum):
    OK = "OK"
    """Nothing unread on its handover topic."""
    WAITING = "WAITING"
    """Unread records, the oldest not older than a working day."""
    LATE = "LATE"
    """An unread record older than a working day."""


@dataclass(frozen=True)
class Recipient:
    principal: str
    kind: str
    """wij-team or provider"""
    id: str
    name: str
    topic: str


def recipients_of(registry: Registry) -> list[Recipient]:
    """Every WIJ team and provider of the registry, teams first, each with its principal and handover topic."""
    return ([Recipient(principals.wij_team(t.id), "wij-team", t.id, t.name, topics.wij_handovers(t.id))
             for t in sorted(registry.teams.values(), key=lambda t: t.id)]
            + [Recipient(principals.provider(p.agb), "provider", p.agb, p.name, topics.provider_handovers(p.agb))
               for p in sorted(registry.providers.values(), key=lambda p: p.agb)])


def groups_of(principal: str, group_names: Iterable[str]) -> list[str]:
    """The consumer groups of a recipient: named `<principal>.<anything>` (a dot never occurs in a principal)."""
    return sorted(name for name in group_names if name.startswith(principal + "."))


def read_position(log_start: int, log_end: int, committed: Iterable[int]) -> int:
    """Up to where a recipient has read one partition: the furthest any of its groups committed, never before
    the log start (retention removed what lies before) nor after the end; with no group, the log start."""
    return min(max([log_start, *committed]), log_end)


def judge(unread: int, oldest_working_days: float | None,
          late_after: float = LATE_AFTER_WORKING_DAYS) -> RecipientStatus:
    if not unread:
        return RecipientStatus.OK
    if oldest_working_days is not None and oldest_working_days > late_after:
        return RecipientStatus.LATE
    return RecipientStatus.WAITING


def retention_ms(value: str | None) -> int | None:
    """A topic's `retention.ms` as the broker or the settings give it: milliseconds, or None for kept forever
    (-1) or unknown."""
    try:
        ms = int(value) if value is not None else -1
    except ValueError:
        return None
    return ms if ms >= 0 else None


def topic_retention(topic: str, described: dict[str, str], configured: str | None) -> tuple[int | None, str]:
    """The retention that deletes a topic's records and where it came from: the broker's value when it described
    the topic (`described`: topic -> `retention.ms`), else the settings' (`configured`)."""
    if topic in described:
        return retention_ms(described[topic]), "broker"
    return retention_ms(configured), "settings"


def at_risk_of_loss(oldest_unread_seconds: float | None, retention: int | None,
                    share: float = LOSS_RISK_SHARE) -> bool:
    """Whether the oldest unread record is older than `share` of the retention (ms; None: kept forever)."""
    if oldest_unread_seconds is None or retention is None:
        return False
    return oldest_unread_seconds * 1000 > retention * share


def merge_clocks(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, ClockCounts]:
    """The notifier's counts on `ops.recipients.v1`, in log order: the latest value per key (one key per notifier
    partition; an empty value removes it), summed per recipient. Unreadable values are skipped."""
    latest: dict[bytes, RecipientClocks] = {}
    for key, value in records:
        if key is None:
            continue
        if not value:
            latest.pop(key, None)
            continue
        try:
            latest[key] = RecipientClocks.model_validate_json(value)
        except ValidationError:
            continue
    total: dict[str, ClockCounts] = {}
    for summary in latest.values():
        for who, counts in summary.recipients.items():
            total[who] = total.get(who, ClockCounts()) + counts
    return dict(sorted(total.items()))


@dataclass(frozen=True)
class RecipientView:
    principal: str
    kind: str
    id: str
    name: str
    topic: str
    groups: list[str]
    """Its consumer groups that have committed an offset on its handover topic."""
    members: int
    """Members of those groups now (0: nobody is connected to read)."""
    handovers: int
    """Records on its handover topic now (handovers and notices)."""
    unread: int
    oldest_unread_at: datetime | None
    oldest_unread_seconds: float | None
    oldest_unread_working_days: float | None
    status: RecipientStatus
    clocks: ClockCounts = field(default_factory=ClockCounts)
    retention_ms: int | None = None
    """Its handover topic's retention (None: kept forever, or not known)."""
    retention_from: str = "settings"
    """Where the retention came from: `broker` (the topic's configuration) or `settings` (its class's setting)."""
    at_risk_of_loss: bool = False
    """Its oldest unread record is older than half the retention: the broker deletes it, read or not, at the
    retention."""

    @property
    def attention(self) -> bool:
        """Shown in `lag`'s table without --recipients: something unread, or a clock at risk or breached."""
        return self.status is not RecipientStatus.OK or bool(self.clocks.at_risk or self.clocks.breached)

    @property
    def marks(self) -> str:
        """Its status as shown: `LATE`, or `LATE, AT RISK OF LOSS`."""
        return f"{self.status}, {AT_RISK_OF_LOSS}" if self.at_risk_of_loss else str(self.status)

    def as_json(self) -> dict:
        document = asdict(self)
        document["oldest_unread_at"] = self.oldest_unread_at.isoformat() if self.oldest_unread_at else None
        document["clocks"] = self.clocks.model_dump()
        document["read"] = bool(self.groups)
        return document


def recipient_view(recipient: Recipient, groups: list[str], members: int,
                   partitions: dict[int, tuple[int, int, int]], oldest_unread_ms: int | None,
                   clocks: ClockCounts, now: datetime, calendar: WorkingCalendar,
                   retention: tuple[int | None, str] = (None, "settings")) -> RecipientView:
    """One recipient judged: `partitions` maps each partition of its handover topic to (log start, log end, read
    position); `oldest_unread_ms` is the time of the oldest record at a read position that is not the end;
    `retention` its topic's retention in ms (None: kept forever) and where that came from (`topic_retention`)."""
    unread = sum(end - position for _, end, position in partitions.values())
    at = datetime.fromtimestamp(oldest_unread_ms / 1000, UTC) if unread and oldest_unread_ms else None
    seconds = round(max((now - at).total_seconds(), 0.0), 3) if at else None
    working_days = round(calendar.working_days_between(at, now), 4) if at else None
    return RecipientView(recipient.principal, recipient.kind, recipient.id, recipient.name, recipient.topic, groups,
                         members, sum(end - start for start, end, _ in partitions.values()), unread, at, seconds,
                         working_days, judge(unread, working_days), clocks, retention[0], retention[1],
                         at_risk_of_loss(seconds, retention[0]))


def format_working_days(days: float | None) -> str:
    return "-" if days is None else f"{days:.2f} wd"


def format_retention(ms: int | None) -> str:
    """A topic's retention: `90.0 d`, or `kept` when records are kept forever."""
    return "kept" if ms is None else format_duration(ms / 1000)


def format_duration(seconds: float | None) -> str:
    """An age as people read it: `42 s`, `12 min`, `5.5 h`, `7.0 d`, or `-` when none."""
    if seconds is None:
        return "-"
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172_800)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}" if unit != "h" else f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86_400:.1f} d"


class RecipientWatch:
    """The recipients' view for `lag` and its exporter: the registry in force (re-read every 30 s; the files
    when none is published), the notifier's clock counts (every 5 s) and, at every look, the offsets and the
    handover topics' retention (`configured`: a topic's `retention.ms` by the settings, where the broker does
    not describe it)."""

    def __init__(self, monitor: LagMonitor, registry_dir: Path, calendar: WorkingCalendar, clock: Clock,
                 configured: Callable[[str], str | None] = lambda topic: None) -> None:
        self.monitor, self.registry_dir, self.calendar, self.clock = monitor, registry_dir, calendar, clock
        self.configured = configured
        self.registry: Registry | None = None
        self.clocks: dict[str, ClockCounts] = {}
        self.read_at = {"registry": float("-inf"), "clocks": float("-inf")}

    async def refresh(self, now_s: float) -> None:
        """A broker whose ACLs predate these reads (`verwijshub access sync` grants them) refuses them: then the
        registry files and no clock counts, rather than no view at all."""
        kafka = self.monitor.kafka
        if now_s - self.read_at["registry"] >= REGISTRY_EVERY_S or self.registry is None:
            try:
                published = await latest_registry(kafka)
            except KafkaError:
                published = None
            self.registry = published or self.registry or load_registry(self.registry_dir)
            self.read_at["registry"] = now_s
        if now_s - self.read_at["clocks"] >= CLOCKS_EVERY_S:
            try:
                self.clocks = merge_clocks(await read_to_end(kafka, topics.OPS_RECIPIENTS))
            except KafkaError:
                self.clocks = {}
            self.read_at["clocks"] = now_s

    async def look(self, now_s: float) -> list[RecipientView]:
        """Every recipient now (`now_s`: a monotonic time for the refresh intervals)."""
        await self.refresh(now_s)
        monitor, wanted = self.monitor, recipients_of(self.registry)
        described = await monitor.admin.describe_topics([r.topic for r in wanted])
        partitions = [TopicPartition(d["topic"], p["partition"]) for d in described if not d.get("error_code")
                      for p in d.get("partitions") or ()]
        starts = await log_offsets(monitor.consumer, partitions, end=False)
        ends = await log_offsets(monitor.consumer, partitions)
        all_groups = {entry[0] for entry in await monitor.admin.list_consumer_groups()}
        positions: dict[TopicPartition, int] = {}
        reading: dict[str, list[str]] = {}
        for recipient in wanted:
            committed: dict[TopicPartition, list[int]] = {}
            for group in groups_of(recipient.principal, all_groups):
                offsets = await monitor.admin.list_consumer_group_offsets(group)
                mine = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == recipient.topic
                        and meta.offset >= 0}
                if mine:
                    reading.setdefault(recipient.principal, []).append(group)
                for tp, offset in mine.items():
                    committed.setdefault(tp, []).append(offset)
            for tp in partitions:
                if tp.topic == recipient.topic:
                    positions[tp] = read_position(starts[tp], ends[tp], committed.get(tp, ()))
        unread = {tp: position for tp, position in positions.items() if position < ends[tp]}
        times = await monitor.record_times(unread) if unread else {}
        members = await monitor.describe(sorted({g for groups in reading.values() for g in groups}))
        retained = await monitor.retention([r.topic for r in wanted])
        now, views = self.clock.now(), []
        for recipient in wanted:
            mine = {tp.partition: (starts[tp], ends[tp], positions[tp]) for tp in positions
                    if tp.topic == recipient.topic}
            oldest = min((times[tp] for tp in times if tp.topic == recipient.topic and times[tp]), default=None)
            groups = reading.get(recipient.principal, [])
            views.append(recipient_view(recipient, groups, sum(members.get(g, ("", 0))[1] for g in groups), mine,
                                        oldest, self.clocks.get(recipient.principal, ClockCounts()), now,
                                        self.calendar, topic_retention(recipient.topic, retained,
                                                                       self.configured(recipient.topic))))
        return views


def export(views: list[RecipientView]) -> None:
    """The recipients into the Prometheus gauges (`verwijshub_recipient_*`), labelled by principal name."""
    for view in views:
        metrics.RECIPIENT_UNREAD.labels(view.principal).set(view.unread)
        metrics.RECIPIENT_READERS.labels(view.principal).set(len(view.groups))
        metrics.RECIPIENT_OLDEST_UNREAD_SECONDS.labels(view.principal).set(view.oldest_unread_seconds or 0.0)
        metrics.RECIPIENT_OLDEST_UNREAD_WORKING_DAYS.labels(view.principal).set(view.oldest_unread_working_days or 0.0)
        metrics.RECIPIENT_RETENTION_SECONDS.labels(view.principal).set(
            -1.0 if view.retention_ms is None else view.retention_ms / 1000)
        metrics.RECIPIENT_AT_RISK_OF_LOSS.labels(view.principal).set(int(view.at_risk_of_loss))
        for state, count in view.clocks.model_dump().items():
            metrics.RECIPIENT_CONTACT_CLOCKS.labels(view.principal, state).set(count)
