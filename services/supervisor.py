"""`verwijshub up`'s services, each as its own OS process, under one supervisor.

`up` does the admin's part itself (the broker, topics, principals, ACLs, the registry), then starts every service of
`services.hub.SERVICES` as a process with only what that service needs (its own credential file, the pseudonym key
only for intake; never the admin's password, nor the CA key), which uses a core of its own. The processes are forked
from a forkserver (`multiprocessing`'s) that `up` starts first thing, with a clean environment, and that imports
every service's modules while `up` starts the broker and provisions it: six interpreters each importing the hub
(about 2 CPU-seconds apiece) were most of `up`'s time to ready on two cores. The forkserver is a fresh
interpreter, not a fork of `up`, so nothing `up` read (the admin's password, the CA key) is in its memory or its
children's; a child's own settings come with its start, over its own pipe. The supervisor:

- waits for each child to say it is ready (its start's steps log with deadlines of their own; this wait has one too);
- serves the hub's one `/metrics`, `/healthz` and `/readyz` on VERWIJSHUB_METRICS_PORT, as one process did before:
  `/metrics` is its own metrics (the consumer lag of every service's group, which it exports as the operations
  principal) merged with each child's, scraped when asked; `/readyz` is 200 once every child is started and says
  it is ready;
- passes SIGTERM and SIGINT on to every child (each stops cleanly, then the supervisor), SIGUSR1 too (stacks);
- when a child dies, stops the others and exits 1, naming it in the log ("service exited").

A child reports over its pipe (its metrics port, then `ready`) and stops when the pipe ends, so no child outlives a
supervisor killed outright (one whose stop hangs exits ORPHAN_GRACE_S later, services/hub.py). Children are in
process groups of their own: a Ctrl-C reaches the supervisor, which stops them in order, not every process at once.
"""

import asyncio
import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from multiprocessing.connection import Connection

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from setproctitle import setproctitle

from services.hub import SERVICES, dump_stacks_on_sigusr1, dump_tasks_on_sigusr1, export_own_lag, run_services
from services.infra.http import serve
from services.infra.logging import configure_logging, get_logger
from services.infra.registry_files import load_registry
from services.infra.secrets import credential_file
from services.infra.settings import Settings, get_settings
from services.infra.starting import StartTimeout, waiting_for

STOP_TIMEOUT_S = 20.0
"""How long a child may take to stop before it is killed: within the 30 s `stop_process` (and an operator's
`kill`, then `kill -9`, habits) give `up` itself."""
SCRAPE_TIMEOUT_S = 2.0
NOT_FOR_CHILDREN = frozenset({"VERWIJSHUB_KAFKA_USERNAME", "VERWIJSHUB_KAFKA_PASSWORD",
                              "VERWIJSHUB_KAFKA_CLIENT_CONFIG", "VERWIJSHUB_KAFKA_CREDENTIAL_FILE",
                              "VERWIJSHUB_PSEUDONYM_KEY"})
"""Settings a child never inherits from `up`: who `up` connects as (the admin), a client config (which may hold a
password) and the pseudonym key; `child_environment` gives back what one child needs."""
PROCESS_FAMILIES = ("process_", "python_")
"""Metrics every process has of itself (prometheus-client's default collectors): a child's are labelled with its
service, so they neither clash with the supervisor's nor with each other."""


FORKSERVER = multiprocessing.get_context("forkserver")


@contextlib.contextmanager
def _environment_without(names: frozenset[str]) -> Iterator[None]:
    kept = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(kept)


def start_forkserver() -> None:
    """Start the forkserver the services are forked from, before `up` reads any secret: its environment is `up`'s
    less NOT_FOR_CHILDREN, and it imports every service's modules (and the hub's) while `up` goes on."""
    modules = ["services.cli", *(spec.create.split(":")[0] for spec in SERVICES.values())]  # cli: `up`'s main
    FORKSERVER.set_forkserver_preload(modules)
    with _environment_without(NOT_FOR_CHILDREN):
        multiprocessing.forkserver.ensure_running()


def serve_as_child(name: str, env: dict[str, str], supervisor: Connection) -> None:
    """A service process's life, forked from the forkserver (its modules already imported): its own environment
    (child_environment's), its own process group, then the service until it is stopped or the pipe ends. Its
    name in `ps` and /proc is `verwijshub <service>` (else each would show as multiprocessing's forkserver)."""
    setproctitle(f"verwijshub {name}")
    os.setpgrp()
    os.environ.clear()
    os.environ.update(env)
    settings = get_settings()
    configure_logging(name, settings.log_level, settings.log_file)
    dump_stacks_on_sigusr1()
    try:
        asyncio.run(run_services([name], settings, load_registry(settings.registry_dir), supervisor=supervisor))
    except StartTimeout as exc:
        get_logger().error("service not started", service=name, error=str(exc))
        sys.exit(1)


class ServiceExited(RuntimeError):
    """A child of `up` ended while the hub ran (or before it was ready); the message names it."""


def child_environment(parent: Mapping[str, str], name: str, settings: Settings) -> dict[str, str]:
    """The environment of service `name`'s process: `up`'s, less every credential and key, plus this service's own
    credential file, the pseudonym key where it needs one, and the settings `up` resolved (its log file, the
    secrets directory, how to reach the broker), so the child finds what `up` found."""
    spec = SERVICES[name]
    env = {key: value for key, value in parent.items() if key not in NOT_FOR_CHILDREN}
    env.update({
        "VERWIJSHUB_KAFKA_CREDENTIAL_FILE": str(credential_file(settings.secrets, spec.principal)),
        "VERWIJSHUB_SECRETS_DIR": str(settings.secrets),
        "VERWIJSHUB_DATA_DIR": str(settings.data_dir),
        "VERWIJSHUB_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "VERWIJSHUB_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
    })
    if settings.log_file:
        env["VERWIJSHUB_LOG_FILE"] = str(settings.log_file)
    if settings.kafka_ca_file:
        env["VERWIJSHUB_KAFKA_CA_FILE"] = str(settings.kafka_ca_file)
    if settings.kafka_bootstrap:
        env["VERWIJSHUB_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if spec.pseudonym_key and settings.pseudonym_key:
        env["VERWIJSHUB_PSEUDONYM_KEY"] = settings.pseudonym_key.get_secret_value()
    return env


def merge_metrics(own: str, children: Iterable[tuple[str, str]]) -> list[Metric]:
    """One exposition from the supervisor's metrics text and each (service, text) of its children: families of the
    same name joined; samples alike in name and labels added (a counter or histogram counted in two processes; each
    gauge of the hub is set by one service only); a child's process metrics labelled `service`. The `_created`
    series (a time each process started counting, which adds up to nothing) are left out."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for service, text in [("", own), *children]:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):  # the text format's parser makes them families of their own
                continue
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                labels = dict(sample.labels)
                if service and family.name.startswith(PROCESS_FAMILIES):
                    labels["service"] = service
                key = (sample.name, tuple(sorted(labels.items())))
                before = samples.get(key)
                total = sample.value + (before.value if before else 0.0)
                samples[key] = Sample(sample.name, labels, total, sample.timestamp, sample.exemplar)
            merged.samples = list(samples.values())
    return list(families.values())


class _Merged:
    """A collector of metric families already gathered (prometheus-client renders them)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def scrape(port: int, path: str) -> tuple[int, bytes]:
    """A child's endpoint, as the supervisor's HTTP thread asks it: status and body (no answer: 503)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=SCRAPE_TIMEOUT_S) as response:
            return response.status, response.read()
    except OSError:  # HTTPError (a 503) is one too; a child not answering is not ready
        return 503, b""


@dataclass
class Child:
    name: str
    process: multiprocessing.process.BaseProcess
    pipe: Connection
    metrics_port: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self.read_report)
        loop.add_reader(self.process.sentinel, self.on_exit)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def read_report(self) -> None:
        """One report from the child: its metrics port, or that it is ready."""
        try:
            report = self.pipe.recv()
        except (EOFError, OSError):  # the child's end closed: it ended (on_exit says so)
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            return
        if "metrics_port" in report:
            self.metrics_port = report["metrics_port"]
        if report.get("ready"):
            self.ready.set()

    def on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self.process.sentinel)
        self.process.join()  # reads the exit code the forkserver sent
        self.ended.set()

    async def wait(self) -> int:
        await self.ended.wait()
        return self.process.exitcode

    async def started(self) -> None:
        """Once the child says it is ready; ServiceExited if it ends first."""
        ready, ended = asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        if not self.ready.is_set():
            raise ServiceExited(f"the {self.name} service (pid {self.pid}) exited with "
                                f"{self.returncode} before it was ready; see the hub's log")

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.ended.is_set() and self.metrics_port is not None \
            and scrape(self.metrics_port, "/readyz")[0] == 200

    def metrics(self) -> str:
        if self.metrics_port is None or self.ended.is_set():
            return ""
        status, body = scrape(self.metrics_port, "/metrics")
        return body.decode() if status == 200 else ""

    def signal(self, signum: int) -> None:
        if not self.ended.is_set() and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def close(self) -> None:
        """The pipe's end: a child that is still running (it was not stopped in time) ends with it."""
        with contextlib.suppress(ValueError):
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
        self.pipe.close()


class Supervisor:
    def __init__(self, names: list[str], settings: Settings) -> None:
        self.names, self.settings = names, settings
        self.children: list[Child] = []
        self.all_ready = False

    async def spawn(self, name: str) -> Child:
        ours, theirs = FORKSERVER.Pipe()
        process = FORKSERVER.Process(target=serve_as_child, name=name, daemon=False,
                                     args=(name, child_environment(os.environ, name, self.settings), theirs))
        await asyncio.to_thread(process.start)  # the first start waits for the forkserver's imports
        theirs.close()
        child = Child(name, process, ours)
        get_logger().info("service process started", service=name, pid=process.pid)
        return child

    def ready(self) -> bool:
        return self.all_ready and all(child.is_ready() for child in self.children)

    def metrics(self) -> tuple[int, str, bytes]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge_metrics(generate_latest(REGISTRY).decode(),
                                                ((child.name, child.metrics()) for child in self.children))))
        return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)

    def serve(self) -> ThreadingHTTPServer | None:
        """The hub's /metrics, /healthz, /readyz; a port in use is logged, not fatal (as `run_services` does)."""
        if not self.settings.metrics_port:
            return None
        try:
            return serve(self.settings.metrics_host, self.settings.metrics_port, {
                "/metrics": self.metrics,
                "/healthz": lambda: (200, "text/plain", b"ok\n"),
                "/readyz": lambda: (200, "text/plain", b"ready\n") if self.ready() else (503, "text/plain",
                                                                                        b"starting\n"),
            })
        except OSError as exc:
            get_logger().error("metrics endpoint not started", port=self.settings.metrics_port, error=str(exc))
            return None

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start every child, run until SIGTERM or SIGINT (then stop them all), or until a child dies
        (ServiceExited, after the others were stopped)."""
        log = get_logger()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        dump_tasks_on_sigusr1(loop, also=lambda: [child.signal(signal.SIGUSR1) for child in self.children])
        endpoint = self.serve()
        lag = asyncio.create_task(export_own_lag(self.settings, self.names))
        try:
            for name in self.names:  # spawned at once: their imports and starts run side by side
                self.children.append(await self.spawn(name))
            waits = [asyncio.ensure_future(waiting_for(f"the {child.name} process (pid {child.pid}) ready",
                                                       child.started())) for child in self.children]
            try:
                await asyncio.gather(*waits)
            finally:  # one child ended or timed out: the others' waits end here too
                for wait in waits:
                    wait.cancel()
            self.all_ready = True
            log.info("services ready", services=self.names, pids={c.name: c.pid for c in self.children},
                     bootstrap=self.settings.bootstrap,
                     metrics=f"http://{self.settings.metrics_host}:{endpoint.server_port}/metrics"
                     if endpoint else None)
            if on_ready:
                on_ready()
            ended = {asyncio.ensure_future(child.wait()): child for child in self.children}
            stop = asyncio.ensure_future(stopping.wait())
            done, _ = await asyncio.wait({stop, *ended}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stop, *ended):
                task.cancel()
            dead = [ended[task] for task in done if task in ended]
            if dead and not stopping.is_set():
                for child in dead:
                    log.error("service exited", service=child.name, pid=child.pid, returncode=child.returncode)
                raise ServiceExited(f"the {', '.join(c.name for c in dead)} service exited with "
                                    f"{dead[0].returncode}; the hub stopped")
        finally:
            self.all_ready = False
            log.info("services stopping", services=self.names)
            lag.cancel()
            await self.stop()
            if endpoint:
                endpoint.shutdown()

    async def stop(self) -> None:
        """SIGTERM to every child still running, SIGKILL to one not ended within STOP_TIMEOUT_S."""
        for child in self.children:
            child.signal(signal.SIGTERM)

        async def ended(child: Child) -> None:
            try:
                await asyncio.wait_for(child.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                get_logger().error("service not stopped in time, killed", service=child.name,
                                   pid=child.pid, timeout_s=STOP_TIMEOUT_S)
                child.signal(signal.SIGKILL)
                await child.wait()
            child.close()

        await asyncio.gather(*(ended(child) for child in self.children))
