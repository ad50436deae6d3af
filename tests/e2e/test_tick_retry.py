"""A tick whose transaction fails (the broker paused while it runs) is tried again once the broker is back: its
due record is written with no new input, and the runtime is ready again on its own.

The failed try writes to a topic that exists only once the broker is back: its first send waits for metadata the
paused broker cannot give, so nothing of it can reach a commit. (Had its records got that far, a commit whose
answer was lost could still land, and the output would not prove a retry.)"""

import asyncio
import os
import signal
import uuid

import pytest
from aiokafka import ConsumerRecord

from services.infra import processing
from services.infra.kafka import Outbound, outbound
from services.infra.processing import Processor, Runtime
from services.infra.provisioning import TopicSpec, provision_topics
from tests.conftest import TestKafka
from tests.kafka_client import read_topic

pytestmark = pytest.mark.e2e

PAUSED_MAX_S = 15.0
TRANSACTION_TIMEOUT_S = 2.0
"""Shorter than the pause, so the tick's transaction is given up while the broker does not answer."""


class Alarm(Processor):
    """One timer on partition 0: due once `armed` is set, written with a state record that says it fired. Its
    first due tick pauses the broker (`pause`), so that tick's transaction fails."""

    service = "tick-retry-test"

    def __init__(self, run: str, pause) -> None:
        self.run, self.pause = run, pause
        self.inputs, self.state_topic = rf"{run}\.in", f"{run}.state"
        self.armed, self.fired, self.ticks_due = False, False, 0

    async def load(self, partition: int, state: list[ConsumerRecord]) -> None:
        if partition == 0:
            self.fired = any(record.value == b"fired" for record in state)

    async def handle(self, record: ConsumerRecord) -> list[Outbound]:
        return []

    async def tick(self, partition: int) -> list[Outbound]:
        if partition != 0 or not self.armed or self.fired:
            return []
        self.ticks_due += 1
        if self.ticks_due == 1:
            self.pause()
        return [outbound(f"{self.run}.out", b"due", b"alarm", schema="test/1"),
                outbound(self.state_topic, b"fired", b"alarm", schema="test/1", partition=0)]

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        if partition == 0 and produced:
            self.fired = True


async def test_a_failed_tick_is_retried_and_fires_without_new_input(
        private_kafka: TestKafka, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "TRANSACTION_TIMEOUT_S", TRANSACTION_TIMEOUT_S)
    run = f"tick-{uuid.uuid4().hex[:8]}"
    provision_topics(private_kafka.admin, [
        TopicSpec(f"{run}.in", 3, 1, {}), TopicSpec(f"{run}.state", 3, 1, {"cleanup.policy": "compact"})])
    assert private_kafka.local is not None
    pid = private_kafka.local.nodes[0].pid()
    assert pid is not None
    paused = asyncio.Event()

    def pause() -> None:
        os.kill(pid, signal.SIGSTOP)
        paused.set()

    alarm = Alarm(run, pause)
    running = Runtime(alarm, private_kafka.settings(notifier_tick_seconds=0.2), kafka=private_kafka.admin)
    await running.start()
    try:
        for _ in range(300):  # partitions owned and positioned
            if 0 in running.owned and running.healthy():
                break
            await asyncio.sleep(0.1)
        assert 0 in running.owned and running.healthy()
        alarm.armed = True
        try:
            await asyncio.wait_for(paused.wait(), 10)
            for _ in range(int(PAUSED_MAX_S * 10)):
                if not running.healthy():
                    break
                await asyncio.sleep(0.1)
            assert not running.healthy()  # the tick's transaction failed
        finally:
            os.kill(pid, signal.SIGCONT)
        provision_topics(private_kafka.admin, [TopicSpec(f"{run}.out", 1, 1, {})])
        outputs = await read_topic(private_kafka.admin, f"{run}.out", lambda r: True, 1, timeout_s=60, settle_s=1)
        for _ in range(300):
            if running.healthy():
                break
            await asyncio.sleep(0.1)
        assert running.healthy()
    finally:
        await running.stop()
    assert [r.value for r in outputs] == [b"due"] and alarm.ticks_due >= 2  # fired by a retry
