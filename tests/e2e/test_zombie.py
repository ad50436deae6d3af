"""Zombie fencing (KIP-447): an instance frozen inside its transaction's work past its session timeout, while its
partitions move to another instance, commits nothing once it is resumed (the broker refuses its offsets: the group
moved on), and every record is counted exactly once, read `read_committed`. Both instances are OS processes
running the toy processor of tests/e2e/counting.py."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from services.infra.provisioning import TopicSpec, provision_topics
from services.infra.settings import REPO_ROOT
from tests.conftest import TestKafka
from tests.hub_logs import log_events
from tests.kafka_client import produce, read_topic

pytestmark = pytest.mark.e2e

KEYS = 6
BEFORE, AFTER = 30, 30
"""Records sent before the frozen one, and after the zombie was resumed."""


def start(kafka: TestKafka, run: str, instance: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.counting", run, instance, *extra], cwd=REPO_ROOT,
                            env={**os.environ, **kafka.env(), "PYTHONPATH": str(REPO_ROOT)},
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def owned(log: Path) -> list[list[int]]:
    return [event["partitions"] for event in log_events(log) if event.get("event") == "partitions owned"]


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


async def until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def send(kafka: TestKafka, run: str, values: list[str]) -> None:
    for number, value in enumerate(values):
        await produce(kafka.admin, f"{run}.in", value.encode(), key=f"youth-{number % KEYS}".encode())


async def test_a_frozen_instance_resumed_after_its_partitions_moved_commits_nothing_and_nothing_is_counted_twice(
        private_kafka: TestKafka, tmp_path: Path) -> None:
    run = f"zombie-{uuid.uuid4().hex[:8]}"
    provision_topics(private_kafka.admin, [TopicSpec(f"{run}.in", 3, 1, {}), TopicSpec(f"{run}.out", 3, 1, {}),
                                           TopicSpec(f"{run}.state", 3, 1, {"cleanup.policy": "compact"})])
    zombie_log, other_log = tmp_path / "a.log", tmp_path / "b.log"
    zombie = start(private_kafka, run, "a", zombie_log, "--freeze-on", "freeze")
    other = None
    try:
        await until(lambda: owned(zombie_log) == [[0, 1, 2]], 120, "a owns every partition")
        before = [f"before-{n}" for n in range(BEFORE)]
        await send(private_kafka, run, [*before, "freeze"])
        await until(lambda: stopped(zombie.pid), 60, "a froze while handling its batch")
        other = start(private_kafka, run, "b", other_log)
        # b joins; the group waits for frozen a until its session times out, then gives b every partition
        await until(lambda: [0, 1, 2] in owned(other_log), 120, "b took a's partitions")
        await read_topic(private_kafka.admin, f"{run}.out", lambda r: True, BEFORE + 1, timeout_s=60)
        zombie.send_signal(signal.SIGCONT)
        await until(lambda: any(e.get("event") == "transaction aborted: retried" for e in log_events(zombie_log)),
                    60, "a's transaction refused once resumed")
        after = [f"after-{n}" for n in range(AFTER)]
        await send(private_kafka, run, after)
        outputs = await read_topic(private_kafka.admin, f"{run}.out", lambda r: True, BEFORE + 1 + AFTER,
                                   timeout_s=90, settle_s=3)
    finally:
        for process in (zombie, other):
            if process is not None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                process.wait(30)
    counted = [json.loads(r.value) for r in outputs]
    assert Counter(c["value"] for c in counted) == Counter([*before, "freeze", *after])  # each exactly once
    per_key: dict[str, list[int]] = {}
    for c in counted:
        per_key.setdefault(c["key"], []).append(c["count"])
    assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in per_key.values()), per_key
    refused = [e for e in log_events(zombie_log) if e.get("event") == "transaction aborted: retried"]
    assert refused[0]["error"] in {"ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID",
                                   "REBALANCE_IN_PROGRESS"}, refused
