"""Consumer lag evaluation over a sliding window of samples, after Burrow's rules (docs/lag-rules.md).

Burrow judges a partition from the offsets a consumer committed over a window; Kafka's offset API does
not say when an offset was committed, so Verwijshub samples the committed and log-end offsets itself at
a fixed interval and judges each partition on the last N samples:

- OK: the lag was 0 in some sample of the window, or the committed offset moved and the lag shrank.
- WARN: the committed offset moves, but the lag never shrank between two samples (falling behind).
- STALL: the group has members, the committed offset did not move over the whole window, lag > 0.
- STOP: the group has no members (nobody consumes) and the lag is > 0.
- REWIND: the committed offset went backwards within the window.

A group is OK when all its partitions are, WARN when the worst is WARN, ERR when any partition is
STALL, STOP or REWIND (Burrow's group statuses). Pure functions: tests give them sample lists.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise


class PartitionStatus(StrEnum):
    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"


class GroupStatus(StrEnum):
    OK = "OK"
    WARN = "WARN"
    ERR = "ERR"


@dataclass(frozen=True)
class Sample:
    """One look at one partition: where the group is, where the log ends."""

    committed: int
    log_end: int

    @property
    def lag(self) -> int:
        return max(self.log_end - self.committed, 0)


def partition_status(window: Sequence[Sample], has_members: bool) -> PartitionStatus:
    """The status of one partition from its samples, oldest first."""
    if not window:
        return PartitionStatus.OK
    if any(later.committed < earlier.committed for earlier, later in pairwise(window)):
        return PartitionStatus.REWIND
    if any(sample.lag == 0 for sample in window):
        return PartitionStatus.OK
    if not has_members:
        return PartitionStatus.STOP
    if len(window) < 2:
        return PartitionStatus.OK  # one sample with lag: too early to judge
    if window[-1].committed == window[0].committed:
        return PartitionStatus.STALL
    if all(later.lag >= earlier.lag for earlier, later in pairwise(window)):
        return PartitionStatus.WARN
    return PartitionStatus.OK


def group_status(statuses: Sequence[PartitionStatus]) -> GroupStatus:
    if any(s in (PartitionStatus.STALL, PartitionStatus.STOP, PartitionStatus.REWIND) for s in statuses):
        return GroupStatus.ERR
    if PartitionStatus.WARN in statuses:
        return GroupStatus.WARN
    return GroupStatus.OK
