"""Broker and hub fixtures for the end-to-end tests.

Every broker is secured as in production (SASL_SSL with SCRAM-SHA-512, the KRaft authorizer, ACLs from the
registry): VERWIJSHUB_KAFKA_BOOTSTRAP with VERWIJSHUB_SECRETS_DIR if set; else the local Apache Kafka (real
jars from Maven Central), started once per test session on free ports with a throwaway data directory.
Tests look as the admin unless they play a referrer or recipient, then they connect as that principal.
"""

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from filelock import FileLock

from services.access.commands import sync_access
from services.hub import start_process, stop_process
from services.infra import principals
from services.infra.connection import KafkaConnection
from services.infra.local_kafka import LocalKafka
from services.infra.registry_files import load_registry
from services.infra.secrets import PSEUDONYM_KEY_FILE, CredentialStore
from services.infra.settings import REPO_ROOT, Settings
from tests.referrals import BSNS_MADE

ARTIFACTS = REPO_ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TestKafka:
    """A secured broker as the tests see it: where it is, and the secrets directory (local CA, every
    principal's password, the pseudonym key) that `verwijshub access sync` filled for it."""

    __test__ = False  # a fixture's value, not a test class
    bootstrap: str
    secrets: Path
    brokers: int = 1
    local: LocalKafka | None = field(default=None, compare=False, repr=False)
    """The local cluster behind it when a test made one (`new_broker`): the fault tests kill and start its nodes."""

    def settings(self, **overrides: object) -> Settings:
        return Settings(**{"kafka_bootstrap": self.bootstrap, "secrets_dir": self.secrets,
                           "kafka_brokers": self.brokers, "_env_file": None, **overrides})

    def connection(self, principal: str = principals.ADMIN) -> KafkaConnection:
        return self.settings().connection(principal)

    @property
    def admin(self) -> KafkaConnection:
        return self.connection(principals.ADMIN)

    def env(self) -> dict[str, str]:
        """The settings a hub process needs to reach this broker (each service then picks its own principal)."""
        return {"VERWIJSHUB_KAFKA_BOOTSTRAP": self.bootstrap, "VERWIJSHUB_SECRETS_DIR": str(self.secrets),
                "VERWIJSHUB_KAFKA_BROKERS": str(self.brokers)}


def provision(kafka: TestKafka) -> TestKafka:
    """Every principal of the shipped registry with its password, ACLs and topics, as `up` makes them."""
    sync_access(kafka.settings(), load_registry(REPO_ROOT / "deploy" / "registry"))
    return kafka


def cache_dir() -> Path:
    """Where the Kafka jars are cached (as the hub's own setting has it)."""
    return Path(os.environ.get("VERWIJSHUB_CACHE_DIR", Path.home() / ".cache" / "verwijshub"))


SECRETS_SEEN: list[Path] = []
"""Every secrets directory of the run: the log scan at the end looks for their passwords and keys."""


def _local(data_dir: Path, brokers: int = 1, kind: type[LocalKafka] = LocalKafka) -> LocalKafka:
    ports = tuple(_free_port() for _ in range(2 * brokers))
    return kind(data_dir=data_dir, cache_dir=cache_dir(), brokers=brokers, ports=ports[:brokers],
                controller_ports=ports[brokers:])


_TEMPLATE_PLACE: list[Path] = []
"""Where a test run keeps its template: beside the workers' base temporary directories, so the run's workers share
one (xdist's recipe for a session fixture made once); a benchmark gets a temporary one."""


@pytest.fixture(scope="session", autouse=True)
def _template_place(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    _TEMPLATE_PLACE[:] = [(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "kafka-template"]


@functools.cache
def _provisioned_template() -> Path:
    """A single-node broker's directory (storage formatted, every principal, grant and topic provisioned, CA and
    passwords), made once per run and stopped cleanly: each new broker starts from a copy of it, so it pays only for
    its JVM's start, not for formatting (another JVM) and provisioning (about as long again). The first worker to
    need it makes it under a lock; the others wait for it rather than make three at once on two cores."""
    directory = (_TEMPLATE_PLACE[0] if _TEMPLATE_PLACE
                 else Path(tempfile.mkdtemp(prefix="verwijshub-template-")) / "kafka-template")
    made = directory.with_name(directory.name + ".made")
    with FileLock(directory.with_name(directory.name + ".lock")):
        template = _local(directory)
        SECRETS_SEEN.append(template.secrets)
        if not made.exists():
            shutil.rmtree(directory, ignore_errors=True)  # what a worker that failed making it left
            template.start()
            try:
                provision(TestKafka(template.bootstrap, template.secrets, 1, template))
            finally:
                template.stop()
            made.touch()
    return directory


@contextlib.contextmanager
def new_broker(data_dir: Path, brokers: int = 1, kind: type[LocalKafka] = LocalKafka) -> Iterator[TestKafka]:
    """A secured local Apache Kafka of its own (SASL_SSL, SCRAM, ACLs) of one node, or three (replication 3,
    `min.insync.replicas` 2), on free ports, every principal provisioned. A single node starts from a copy of the
    run's provisioned template (same CA and passwords, its own ports, data and logs); `kind` may change its
    configuration (e.g. a shorter retention)."""
    if brokers == 1:
        shutil.copytree(_provisioned_template(), data_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("kafka.log", "kafka.pid", "server.properties"))
    kafka = _local(data_dir, brokers, kind)
    SECRETS_SEEN.append(kafka.secrets)
    kafka.start(timeout_s=180.0)  # a CI run's copy was still loading its 624 logs after 90 s
    try:
        broker = TestKafka(kafka.bootstrap, kafka.secrets, brokers, kafka)
        yield broker if brokers == 1 else provision(broker)
    finally:
        for node in kafka.nodes:  # thrown away: a clean shutdown would only cost seconds
            kafka.kill_node(node)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKafka]:
    """The session's broker, shared by every test that uses the session-wide `hub`. An external cluster:
    VERWIJSHUB_KAFKA_BOOTSTRAP with VERWIJSHUB_SECRETS_DIR holding the admin's password and the CA."""
    configured = os.environ.get("VERWIJSHUB_KAFKA_BOOTSTRAP")
    if configured:
        yield provision(TestKafka(configured, Path(os.environ["VERWIJSHUB_SECRETS_DIR"])))
        return
    with new_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKafka]:
    """A broker for one test module alone: for tests that start, stop or multiply services themselves,
    where the session-wide hub's consumers would take their messages."""
    with new_broker(tmp_path_factory.mktemp("private-kafka")) as broker:
        yield broker


HEX_RUN = re.compile(r"[0-9a-f]{32,}")
"""Pseudonyms (64 hex digits), digests and dashless ids: left out of the BSN scan (one held 160338475, a BSN made
in the same run)."""


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_secret_and_no_bsn() -> Iterator[None]:
    """After the whole run: no log line of the hub, its tools or the brokers holds a principal's password,
    a pseudonym key or a BSN that any test made."""
    yield
    secrets: set[str] = set()
    logs = sorted(ARTIFACTS.rglob("*.log")) if ARTIFACTS.exists() else []
    for directory in SECRETS_SEEN:
        secrets |= set(CredentialStore(directory).all().values())
        key = directory / PSEUDONYM_KEY_FILE
        if key.is_file():
            secrets.add(key.read_text().strip())
        logs += sorted(log for log in directory.parent.rglob("*.log")  # not the brokers' data segments
                       if "data" not in log.relative_to(directory.parent).parts[:-1])
    leaks = []
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:  # another worker's test removed it meanwhile; that worker scans its own logs
            continue
        leaks += [f"{log}: a secret" for secret in secrets if secret and secret in text]
        digits = HEX_RUN.sub(" ", text)  # a pseudonym or digest may hold nine digits in a row by chance
        leaks += [f"{log}: BSN {bsn}" for bsn in set(re.findall(r"(?<!\d)\d{9}(?!\d)", digits)) & BSNS_MADE]
    assert not leaks, leaks


@dataclass(frozen=True)
class RunningHub:
    broker: TestKafka
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def kafka(self) -> KafkaConnection:
        """The admin's connection: tests look at every topic."""
        return self.broker.admin


def hub_env(kafka: TestKafka, log_file: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A hub process's environment: `kafka`, logging to `log_file`, ports of its own, and `env` on top."""
    return {**os.environ, **kafka.env(), "VERWIJSHUB_LOG_FILE": str(log_file),
            "VERWIJSHUB_DATA_DIR": str(log_file.parent), "VERWIJSHUB_METRICS_PORT": str(_free_port()),
            "VERWIJSHUB_GATEWAY_PORT": str(_free_port()), "VERWIJSHUB_MLLP_PORT": str(_free_port()),
            "VERWIJSHUB_RECIPIENTS_PORT": str(_free_port()), **(env or {})}


def start_hub(kafka: TestKafka, log_file: Path, *services: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`verwijshub up` (or `run SERVICE`) as a real process against `kafka`, with `env` as further
    settings; returns once it is ready."""
    return start_process(["run", *services] if services else ["up"], hub_env(kafka, log_file, env), log_file)


def stop_hub(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)


SESSION_HUB = "session-hub"
"""The unit of work of the modules that use the shared `hub`: one worker runs them one after another, so the run
starts that hub once, and no other worker keeps one idling (an idle hub costs the broker and itself about a fifth of
a core each: on two cores, three of them slowed every other test)."""
SESSION_HUB_MODULES = frozenset({"tests/e2e/test_gp_flow.py", "tests/e2e/test_intake_flow.py",
                                 "tests/e2e/test_referrer_orgs.py"})
"""Named, not found: xdist's controller schedules by node id and never sees a fixture; collection checks the list."""


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`make test`'s scheduling: a module is one unit of work (its broker and hub stay with it, as `--dist loadfile`
    has it), and SESSION_HUB_MODULES are one unit together. (xdist's `loadgroup` would do this with markers, but
    under pytest 9.2 it cannot rename a node id, so every test was its own unit: one module's fixture ran on two
    workers at once, writing the same files.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SESSION_HUB if module in SESSION_HUB_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module that uses the shared `hub` must be in SESSION_HUB_MODULES, or it would start a second one."""
    unlisted = {i.nodeid.split("::", 1)[0] for i in items if _uses_shared_hub(i)} - SESSION_HUB_MODULES
    if unlisted:
        raise pytest.UsageError(f"add {sorted(unlisted)} to SESSION_HUB_MODULES in tests/conftest.py")


def _uses_shared_hub(item: pytest.Item | None) -> bool:
    """Whether `item`'s `hub` is this file's (a module may define a hub of its own)."""
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get("hub", ())
    return bool(definitions) and definitions[-1].func.__module__ == __name__


_NEXT_ITEM: list[pytest.Item | None] = [None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _NEXT_ITEM[0] = nextitem  # read by `hub`'s teardown, which runs after this hook starts


@dataclass
class _SharedHub:
    running: RunningHub | None = None

    def start(self, kafka: TestKafka) -> RunningHub:
        if self.running is None:
            log_file = ARTIFACTS / f"hub-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}" / "hub.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.unlink(missing_ok=True)
            self.running = RunningHub(kafka, log_file, start_hub(kafka, log_file))
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            stop_hub(self.running.process)
            self.running = None


_SHARED_HUB = _SharedHub()


@pytest.fixture(scope="module")
def hub(kafka: TestKafka) -> Iterator[RunningHub]:
    """The whole hub, running as `verwijshub up` does on the session's broker, logging to
    test-artifacts/hub-<worker>/hub.log; shared by consecutive modules that use it (SESSION_HUB_MODULES, one unit of work)
    and stopped after the last of them."""
    try:
        yield _SHARED_HUB.start(kafka)
    finally:
        if not _uses_shared_hub(_NEXT_ITEM[0]):
            _SHARED_HUB.stop()
