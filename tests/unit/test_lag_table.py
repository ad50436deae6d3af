"""The `verwijshub lag` table: caught-up topics share a row, lagging partitions are listed, JSON has all."""

import json

from rich.console import Console

from services.ops.commands import as_json, table
from services.ops.lag import GroupLag, PartitionLag
from services.ops.rules import GroupStatus, PartitionStatus


def rows(topic: str, lags: list[int], status: PartitionStatus = PartitionStatus.OK) -> list[PartitionLag]:
    return [PartitionLag(topic, p, 10, 10 + lag, lag, 4.0 if lag else 0.0, status if lag else PartitionStatus.OK)
            for p, lag in enumerate(lags)]


def rendered(groups, every_partition=False) -> str:
    console = Console(record=True, width=200)
    console.print(table(groups, every_partition))
    return console.export_text()


GROUPS = [
    GroupLag("verwijshub-notifier", GroupStatus.OK, "Stable", 1,
             [r for t in ("a.v1", "b.v1", "c.v1", "d.v1") for r in rows(t, [0, 0])]),
    GroupLag("verwijshub-routing", GroupStatus.ERR, "Empty", 0, rows("referrals.normalised.v1", [0, 3, 0],
                                                                       PartitionStatus.STOP)),
]


def test_caught_up_topics_share_a_row_and_lagging_partitions_are_listed() -> None:
    text = rendered(GROUPS)
    assert "4 topics caught up" in text and "a.v1" not in text
    routing = [line for line in text.splitlines() if "STOP" in line]
    assert len(routing) == 2  # the topic's row and partition 1's
    assert "referrals.normalised.v1" in routing[0] and " 3 " in routing[1]


def test_every_partition_on_request_and_in_json() -> None:
    assert all(t in rendered(GROUPS, every_partition=True) for t in ("a.v1", "d.v1"))
    document = json.loads(as_json(GROUPS))
    routing = document["groups"][1]
    assert routing["status"] == "ERR" and routing["lag"] == 3 and routing["lag_seconds"] == 4.0
    assert [p["status"] for p in routing["partitions"]] == ["OK", "STOP", "OK"]
