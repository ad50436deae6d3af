"""Broker and hub fixtures for the end-to-end tests.

A broker is found in the order docs/design.md gives: VERWIJSHUB_KAFKA_BOOTSTRAP if set; else a
testcontainers Kafka where a Docker engine answers; else the local Apache Kafka (real jars from Maven
Central), started once per test session on free ports with a throwaway data directory.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.infra.local_kafka import LocalKafka
from services.infra.settings import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no client library, no socket, no engine: all mean "no Docker here"
        return False


@contextlib.contextmanager
def new_broker(data_dir: Path) -> Iterator[str]:
    """A broker of its own: a testcontainers Kafka where Docker answers, else the local Apache Kafka."""
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:8.0.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    cache = Path(os.environ.get("VERWIJSHUB_CACHE_DIR", Path.home() / ".cache" / "verwijshub"))
    kafka = LocalKafka(data_dir=data_dir, cache_dir=cache, port=_free_port(), controller_port=_free_port())
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's broker, shared by every test that uses the session-wide `hub`."""
    configured = os.environ.get("VERWIJSHUB_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    with new_broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker for one test module alone: for tests that start, stop or multiply services themselves,
    where the session-wide hub's consumers would take their messages."""
    with new_broker(tmp_path_factory.mktemp("private-kafka")) as bootstrap:
        yield bootstrap


@dataclass(frozen=True)
class RunningHub:
    bootstrap: str
    log_file: Path
    process: subprocess.Popen[bytes]


def start_hub(bootstrap: str, log_file: Path, *services: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`verwijshub up` (or `run SERVICE`) as a real process against `bootstrap`, with `env` as further
    settings; returns once it is ready."""
    env = {**os.environ, "VERWIJSHUB_KAFKA_BOOTSTRAP": bootstrap, "VERWIJSHUB_LOG_FILE": str(log_file),
           "VERWIJSHUB_DATA_DIR": str(log_file.parent), "VERWIJSHUB_METRICS_PORT": str(_free_port()), **(env or {})}
    args = ["run", *services] if services else ["up"]
    already = log_file.read_text().count('"services ready"') if log_file.exists() else 0
    process = subprocess.Popen([sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if log_file.exists() and log_file.read_text().count('"services ready"') > already:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"the hub exited with {process.returncode}; see {log_file}")
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the hub was not ready within 90s; see {log_file}")


def stop_hub(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def hub(kafka_bootstrap: str) -> Iterator[RunningHub]:
    """The whole hub, running as `verwijshub up` does, logging to test-artifacts/hub.log."""
    ARTIFACTS.mkdir(exist_ok=True)
    log_file = ARTIFACTS / "hub.log"
    log_file.unlink(missing_ok=True)
    process = start_hub(kafka_bootstrap, log_file)
    try:
        yield RunningHub(kafka_bootstrap, log_file, process)
    finally:
        stop_hub(process)
