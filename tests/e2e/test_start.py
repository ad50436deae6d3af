"""A start against a broker that does not answer (paused with SIGSTOP) is never silent: it logs what it waits for
every few seconds, and becomes ready once the broker is back, or exits non-zero at its deadline naming the wait."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka, hub_env
from tests.hub_logs import log_events

pytestmark = pytest.mark.e2e


def up(kafka: TestKafka, name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log_file = ARTIFACTS / name / "hub.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    with log_file.with_suffix(".stderr.log").open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=REPO_ROOT,
                                   env=hub_env(kafka, log_file, env), stdout=subprocess.DEVNULL, stderr=stderr)
    return process, log_file


def broker_pid(kafka: TestKafka) -> int:
    assert kafka.local is not None
    pid = kafka.local.nodes[0].pid()
    assert pid is not None
    return pid


def until(done, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_start_while_the_broker_is_paused_says_what_it_waits_for_and_is_ready_once_it_is_back(
        private_kafka: TestKafka) -> None:
    pid = broker_pid(private_kafka)
    os.kill(pid, signal.SIGSTOP)
    process, log_file = up(private_kafka, "start-paused")
    try:
        try:
            assert until(lambda: any(line["event"] == "waiting" for line in log_events(log_file)), 60)
        finally:
            os.kill(pid, signal.SIGCONT)
        ended = until(lambda: process.poll() is not None
                      or any(line["event"] == "services ready" for line in log_events(log_file)), 240)
        lines = log_events(log_file)
        waits = [line for line in lines if line["event"] == "waiting"]
        assert waits and all(line["for"] and line["elapsed_s"] > 0 for line in waits)
        assert "to answer" in waits[0]["for"]  # the broker it waited for, named
        if process.poll() is None:
            assert ended and any(line["event"] == "services ready" for line in lines)
        else:  # gave up: non-zero, and said on what
            assert process.returncode != 0 and any(line["event"] == "start timed out" for line in lines)
    finally:
        stop(process)


def test_a_start_past_its_deadline_exits_non_zero_naming_what_it_waited_for(private_kafka: TestKafka) -> None:
    pid = broker_pid(private_kafka)
    os.kill(pid, signal.SIGSTOP)
    try:
        process, log_file = up(private_kafka, "start-deadline", {"VERWIJSHUB_START_TIMEOUT_S": "8"})
        try:
            assert process.wait(90) == 1
        finally:
            stop(process)
    finally:
        os.kill(pid, signal.SIGCONT)
    timed_out = [line for line in log_events(log_file) if line["event"] == "start timed out"]
    assert timed_out and "to answer" in timed_out[0]["for"]
    assert "still waiting for" in log_file.with_suffix(".stderr.log").read_text()
