"""Consumer lag of the hub's groups, read from Kafka: committed offset, log end, lag, and lag in time.

`LagMonitor.sample()` looks once at every group (the hub's, or all) and keeps a sliding window of
samples per partition, so that each partition and group gets a status by the rules in `rules.py`.
The lag in time is the age of the oldest record the group has not consumed: the timestamp of the
record at its committed offset, found without reading it (operations may not read topics that carry
personal data; see `record_times`).
"""

import time
from collections import deque
from dataclasses import asdict, dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from services.infra import metrics
from services.infra.kafka import log_offsets
from services.infra.connection import KafkaConnection
from services.ops.rules import (
    GroupStatus,
    PartitionStatus,
    Sample,
    group_status,
    partition_status,
)

HUB_GROUP_PREFIX = "verwijshub-"
TIMES_KEPT = 10_000
"""Record timestamps a LagMonitor keeps before it forgets them all (a few per lagging partition are in use)."""


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    log_end: int
    lag: int
    lag_seconds: float | None
    status: PartitionStatus


@dataclass(frozen=True)
class GroupLag:
    group: str
    status: GroupStatus
    state: str
    """The broker's view of the group: Stable, Empty, PreparingRebalance, ..."""
    members: int
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_seconds(self) -> float | None:
        return max((p.lag_seconds for p in self.partitions if p.lag_seconds is not None), default=None)

    def as_json(self) -> dict:
        return {**asdict(self), "lag": self.lag, "lag_seconds": self.lag_seconds}


class LagMonitor:
    def __init__(self, kafka: KafkaConnection, window: int = 5, all_groups: bool = False,
                 groups: set[str] | None = None) -> None:
        self.kafka, self.window, self.all_groups, self.only = kafka, window, all_groups, groups
        self.samples: dict[tuple[str, str, int], deque[Sample]] = {}
        self.times: dict[tuple[TopicPartition, int], int] = {}
        """Timestamps found by `record_times`, by partition and offset: a record's timestamp never changes."""
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect; both clients are set only once started, so a failed start can simply be tried again."""
        admin = AIOKafkaAdminClient(**self.kafka.client_options(), client_id="verwijshub-lag")
        await admin.start()
        consumer = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False,
                                    client_id="verwijshub-lag")
        try:
            await consumer.start()
        except Exception:
            await admin.close()
            raise
        self.admin, self.consumer = admin, consumer

    async def stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        if self.admin:
            await self.admin.close()

    async def groups(self) -> list[str]:
        names = sorted({entry[0] for entry in await self.admin.list_consumer_groups()})
        if self.only is not None:
            return [name for name in names if name in self.only]
        return names if self.all_groups else [name for name in names if name.startswith(HUB_GROUP_PREFIX)]

    async def describe(self, names: list[str]) -> dict[str, tuple[str, int]]:
        """group -> (state, number of members)."""
        found: dict[str, tuple[str, int]] = {}
        for name in names:  # one group per request: aiokafka 0.14 cannot decode Kafka 4.1's answer for several
            for response in await self.admin.describe_consumer_groups([name]):
                for group in response.groups:  # (error_code, group, state, protocol_type, protocol, members, ...)
                    found[group[1]] = (group[2], len(group[5]))
        return found

    async def record_times(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """The timestamp (ms) of the record at each offset, without fetching a record (which needs Read, and
        operations may not read topics with personal data). ListOffsets by time (Describe suffices) answers
        the first offset whose timestamp is at or after a time; a binary search over time, all partitions in
        each request, finds the largest time whose answer is still at or before the offset: the record's
        timestamp. Exact when timestamps grow with offsets (broker append order; producers' clocks nearly so).
        None for an offset whose record retention has removed before it was first asked. A record's timestamp
        never changes, so each partition and offset is searched once (the next samples of a group that has
        not moved, and `lag`'s recipients, ask the broker nothing)."""
        known = {tp: self.times[(tp, offset)] for tp, offset in offsets.items() if (tp, offset) in self.times}
        offsets = {tp: offset for tp, offset in offsets.items() if tp not in known}
        low = dict.fromkeys(offsets, 0)
        high = dict.fromkeys(offsets, int(time.time() * 1000) + 86_400_000)
        while pending := [tp for tp in offsets if high[tp] - low[tp] > 1]:
            middle = {tp: (low[tp] + high[tp]) // 2 for tp in pending}
            found = await self.consumer.offsets_for_times(middle)
            for tp in pending:
                answer = found.get(tp)
                if answer is not None and answer.offset <= offsets[tp]:
                    low[tp] = middle[tp]
                else:
                    high[tp] = middle[tp]
        if len(self.times) > TIMES_KEPT:
            self.times.clear()
        self.times.update({(tp, offsets[tp]): low[tp] for tp in offsets if low[tp]})
        return {**known, **{tp: low[tp] or None for tp in offsets}}

    async def retention(self, names: list[str]) -> dict[str, str]:
        """Each topic's `retention.ms` as the broker has it (DescribeConfigs, one request for all); a topic the
        broker does not describe to this principal (no DescribeConfigs right, no such topic) is left out, and so
        is every topic when the request fails."""
        if not names:
            return {}
        wanted = [ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": None}) for name in names]
        try:
            responses = await self.admin.describe_configs(wanted)
        except KafkaError:
            return {}
        found = {}
        for response in responses:
            for error_code, _, _, name, entries, *_ in response.resources:
                if error_code:
                    continue
                found.update({name: entry[1] for entry in entries if entry[0] == "retention.ms"})
        return found

    async def sample(self) -> list[GroupLag]:
        """One look at every group; each partition's status judged on its window of samples."""
        names = await self.groups()
        described = await self.describe(names) if names else {}
        offsets = {name: await self.admin.list_consumer_group_offsets(name) for name in names}
        partitions = sorted({tp for committed in offsets.values() for tp in committed})
        ends = await log_offsets(self.consumer, partitions)
        now, result = time.time(), []
        for name in names:
            lagging = {tp: meta.offset for tp, meta in offsets[name].items()
                       if 0 <= meta.offset < ends.get(tp, meta.offset)}
            written_ms = await self.record_times(lagging) if lagging else {}
            state, members = described.get(name, ("Unknown", 0))
            rows = []
            for tp, meta in sorted(offsets[name].items()):
                if meta.offset < 0:
                    continue
                sample = Sample(committed=meta.offset, log_end=ends.get(tp, meta.offset))
                window = self.samples.setdefault((name, tp.topic, tp.partition), deque(maxlen=self.window))
                window.append(sample)
                written = written_ms.get(tp)
                age = (round(max(now - written / 1000, 0.0), 3) if written else None) if sample.lag else 0.0
                rows.append(PartitionLag(tp.topic, tp.partition, sample.committed, sample.log_end, sample.lag, age,
                                         partition_status(list(window), members > 0)))
            result.append(GroupLag(name, group_status([r.status for r in rows]), state, members, rows))
        return result


def format_age(seconds: float | None) -> str:
    """A lag in time as people read it: `12.3 s`, or `-` when unknown."""
    return "-" if seconds is None else f"{seconds:.1f} s"


STATUS_VALUE = {GroupStatus.OK: 0, GroupStatus.WARN: 1, GroupStatus.ERR: 2}


def export(groups: list[GroupLag]) -> None:
    """The lag of each group into the Prometheus gauges (`verwijshub_consumer_lag*`, `..._group_status`)."""
    for group in groups:
        metrics.GROUP_STATUS.labels(group.group).set(STATUS_VALUE[group.status])
        for row in group.partitions:
            labels = (group.group, row.topic, str(row.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(row.lag)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(row.lag_seconds or 0.0)
