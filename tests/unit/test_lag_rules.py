"""The lag rules, table-driven: each window of samples and what it means."""

import pytest

from services.ops.rules import GroupStatus, PartitionStatus, Sample, group_status, partition_status


def window(*pairs: tuple[int, int]) -> list[Sample]:
    return [Sample(committed=c, log_end=e) for c, e in pairs]


@pytest.mark.parametrize(("samples", "members", "expected"), [
    (window((10, 10), (10, 10), (10, 10)), True, PartitionStatus.OK),          # caught up
    (window((5, 10), (10, 10), (10, 15)), True, PartitionStatus.OK),           # lag 0 once in the window
    (window((0, 10), (4, 12), (9, 12)), True, PartitionStatus.OK),             # catching up
    (window((0, 10), (4, 16), (8, 22)), True, PartitionStatus.WARN),           # moving, lag growing
    (window((0, 10), (5, 15), (10, 20)), True, PartitionStatus.WARN),          # moving, lag fixed
    (window((3, 10), (3, 10), (3, 10)), True, PartitionStatus.STALL),          # members, no progress
    (window((3, 10), (3, 12), (3, 15)), True, PartitionStatus.STALL),
    (window((3, 10), (3, 10), (3, 10)), False, PartitionStatus.STOP),          # nobody consumes
    (window((0, 0), (0, 10)), False, PartitionStatus.OK),                      # was caught up in the window
    (window((8, 10), (5, 10)), True, PartitionStatus.REWIND),                  # offset reset backwards
    (window((3, 10)), True, PartitionStatus.OK),                               # one sample: too early
    ([], True, PartitionStatus.OK),
])
def test_partition_status(samples, members, expected) -> None:
    assert partition_status(samples, members) is expected


@pytest.mark.parametrize(("statuses", "expected"), [
    ([PartitionStatus.OK, PartitionStatus.OK], GroupStatus.OK),
    ([PartitionStatus.OK, PartitionStatus.WARN], GroupStatus.WARN),
    ([PartitionStatus.WARN, PartitionStatus.STALL], GroupStatus.ERR),
    ([PartitionStatus.STOP], GroupStatus.ERR),
    ([PartitionStatus.REWIND, PartitionStatus.OK], GroupStatus.ERR),
    ([], GroupStatus.OK),
])
def test_group_status(statuses, expected) -> None:
    assert group_status(statuses) is expected


class FakeLog:
    """ListOffsets by time over a partition whose records have these timestamps (ms), offset by offset."""

    def __init__(self, timestamps: list[int]) -> None:
        self.timestamps, self.requests = timestamps, 0

    async def offsets_for_times(self, wanted: dict) -> dict:
        self.requests += 1
        found = {}
        for tp, at in wanted.items():
            offset = next((o for o, t in enumerate(self.timestamps) if t >= at), None)
            found[tp] = None if offset is None else type("Answer", (), {"offset": offset})()
        return found


async def test_record_times_finds_each_records_timestamp_and_asks_once_per_offset() -> None:
    from aiokafka import TopicPartition

    from services.ops.lag import LagMonitor

    tp = TopicPartition("handovers.wij.centrum.v1", 0)
    log = FakeLog([1_700_000_000_000, 1_700_000_000_000, 1_700_000_050_123, 1_700_000_999_999])
    monitor = LagMonitor(kafka=None)
    monitor.consumer = log
    assert await monitor.record_times({tp: 2}) == {tp: 1_700_000_050_123}
    searched = log.requests
    assert searched > 20  # a binary search over time
    assert await monitor.record_times({tp: 2}) == {tp: 1_700_000_050_123} and log.requests == searched
    assert await monitor.record_times({tp: 0}) == {tp: 1_700_000_000_000} and log.requests > searched
