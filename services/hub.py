"""Running services: one or more in one process (`verwijshub run X [Y]`), or all of them, each as its own OS process
under one supervisor (`verwijshub up`, services/supervisor.py)."""

import asyncio
import contextlib
import faulthandler
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path

from faststream.kafka import KafkaBroker

from schemas.registry import Registry
from services.infra import principals
from services.infra.clock import Clock, FileClock, SystemClock
from services.infra.kafka import group_id
from services.infra.logging import get_logger
from services.infra.metrics import serve_metrics
from services.infra.processing import Runtime
from services.infra.settings import REPO_ROOT, Settings
from services.infra.starting import waiting_for
from services.ops.lag import LagMonitor, export

LAG_EVERY_S = 15.0
ORPHAN_GRACE_S = 30.0


@dataclass(frozen=True)
class ServiceSpec:
    """A service `up` runs: its create function ("module:function", imported only by a process that runs it, so
    `verwijshub lag`, or `run intake`, loads neither FastAPI nor DuckDB), the principal it connects as (its process
    is given that credential file and no other) and whether it needs the pseudonym key (only intake computes
    pseudonyms; the gateway, exposed to referrers, must not hold it)."""

    create: str
    principal: str
    pseudonym_key: bool = False


SERVICES: dict[str, ServiceSpec] = {
    "intake": ServiceSpec("services.intake.app:create_intake", principals.service("intake"), pseudonym_key=True),
    "routing": ServiceSpec("services.routing.app:create_routing", principals.service("routing")),
    "notifier": ServiceSpec("services.notifier.app:create_notifier", principals.service("notifier")),
    "gateway": ServiceSpec("services.gateway.app:create_gateway", principals.GATEWAY),
    "analytics": ServiceSpec("services.analytics.sink:create_analytics", principals.ANALYTICS),
    "recipients": ServiceSpec("services.recipients.app:create_recipients", principals.RECIPIENTS),
}
"""Every service of the hub, the one list `up` starts (one line each): intake, routing, notifier and the recipient API
run on the transactional runtime (services/infra/processing.py; the recipient API also serves HTTPS); the gateway's and the analytics sink's FastStream brokers
also run the HTTPS and MLLP servers and the DuckDB store."""


def create_service(name: str, settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker | Runtime:
    module, function = SERVICES[name].create.split(":")
    return getattr(importlib.import_module(module), function)(settings, registry, clock)


def healthy(service: KafkaBroker | Runtime) -> bool:
    """A runtime is not ready while a partition waits to retry after a transient failure."""
    return service.healthy() if isinstance(service, Runtime) else True


async def run_services(names: list[str], settings: Settings, registry: Registry,
                       on_ready: Callable[[], None] | None = None, supervisor: Connection | None = None) -> None:
    """Start the named services on one event loop and run them until SIGINT or SIGTERM. With `supervisor` (a child
    of `up`, services/supervisor.py, and the pipe to it): the metrics endpoint on a free port, which, and then
    readiness, are told to the supervisor over the pipe; the pipe's end (the supervisor gone) stops the services
    too; the supervisor exports the consumer lag, so this process needs no operations credential."""
    clock: Clock = FileClock(settings.clock_file) if settings.clock_file else SystemClock()
    brokers = [create_service(name, settings, registry, clock) for name in names]
    stopping, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    dump_tasks_on_sigusr1(loop)
    log = get_logger()
    is_ready = lambda: ready.is_set() and all(map(healthy, brokers))  # noqa: E731
    if supervisor is not None:
        endpoint = start_metrics(settings.model_copy(update={"metrics_port": 0}), is_ready, free_port=True)
        supervisor.send({"metrics_port": endpoint.server_port if endpoint else None})
        watch_supervisor(supervisor, loop, stopping)
        lag = None
    else:
        endpoint = start_metrics(settings, is_ready)
        lag = asyncio.create_task(export_own_lag(settings, names))
    try:
        await asyncio.gather(*(waiting_for(f"{name} started", broker.start())  # the round trips overlap
                               for name, broker in zip(names, brokers, strict=True)))
        ready.set()
        log.info("service ready" if supervisor else "services ready", services=names, bootstrap=settings.bootstrap,
                 metrics=f"http://{settings.metrics_host}:{endpoint.server_port}/metrics" if endpoint else None)
        if supervisor is not None:
            supervisor.send({"ready": True})
        if on_ready:
            on_ready()
        await stopping.wait()
    finally:
        log.info("services stopping", services=names)
        if lag:
            lag.cancel()
        for broker in brokers:
            await broker.stop()
        if endpoint:
            endpoint.shutdown()


def watch_supervisor(supervisor: Connection, loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    """Stop when the pipe to the supervisor ends: only the supervisor holds its other end, so a supervisor that died
    (even by SIGKILL, which forwards nothing) leaves no service running on; one whose clean stop hangs (a broker
    gone too) ends ORPHAN_GRACE_S later all the same, as the supervisor that would have killed it is gone."""
    def wait_for_end() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                supervisor.recv()  # the supervisor sends nothing: this returns at the pipe's end
        loop.call_soon_threadsafe(stopping.set)
        time.sleep(ORPHAN_GRACE_S)  # a daemon thread: a clean stop ends the process before this
        get_logger().error("supervisor gone and the services not stopped in time: exiting",
                           grace_s=ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=wait_for_end, name="supervisor-pipe", daemon=True).start()


def start_metrics(settings: Settings, ready: Callable[[], bool], free_port: bool = False
                  ) -> ThreadingHTTPServer | None:
    """The process's /metrics, /healthz and /readyz; a port in use is logged, not fatal (the services matter more).
    `free_port`: on a port the system picks (a supervised child's); else none when the port is 0."""
    if not settings.metrics_port and not free_port:
        return None
    try:
        return serve_metrics(settings.metrics_host, settings.metrics_port, ready)
    except OSError as exc:
        get_logger().error("metrics endpoint not started", port=settings.metrics_port, error=str(exc))
        return None


async def export_own_lag(settings: Settings, names: list[str]) -> None:
    """The consumer lag of this process's groups into its metrics, every LAG_EVERY_S."""
    groups = {group_id(name) for name in names}
    monitor = LagMonitor(settings.connection(principals.OPERATIONS), groups=groups)
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            try:
                if monitor.admin is None:
                    await monitor.start()
                export(await monitor.sample())
            except Exception as exc:  # the broker may be away for a while: lag is looked at again later
                get_logger().warning("own consumer lag not read", error_type=type(exc).__name__)
            await asyncio.sleep(LAG_EVERY_S)
    await monitor.stop()


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` writes the stack of every thread of a hub process to its stderr: where it hangs (and,
    once `dump_tasks_on_sigusr1` ran in its loop, which coroutine waits)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def dump_tasks_on_sigusr1(loop: asyncio.AbstractEventLoop, also: Callable[[], None] | None = None) -> None:
    """SIGUSR1 also writes every asyncio task's stack to stderr, from the loop itself: a thread dump of an idle loop
    does not say which coroutine waits for what. `also`: run after that (the supervisor passes the signal on)."""
    faulthandler.unregister(signal.SIGUSR1)  # to chain to the loop's handler, registered after it
    loop.add_signal_handler(signal.SIGUSR1, lambda: (dump_tasks(), also and also()))
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)


def dump_tasks() -> None:
    """Each task of the running loop, by name, with the coroutine frames it waits in."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=sys.stderr)
    for task in sorted(tasks, key=lambda task: task.get_name()):
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def start_process(args: list[str], env: dict[str, str], log_file: Path, timeout_s: float = 600.0
                  ) -> subprocess.Popen[bytes]:
    """`verwijshub ARGS` (`up`, `run SERVICE...`) as a process with the environment `env`, logging to `log_file`
    (its stderr, e.g. a crash's traceback, beside it in `<log>.stderr.log`); returns once its log says the
    services are ready (tests, `simulate --start-hub`). The deadline is generous, for a loaded machine: the hub
    logs what it waits for and exits at its own deadline per step (VERWIJSHUB_START_TIMEOUT_S). Not ready in
    time: its threads' and tasks' stacks go to that stderr file before it is killed."""
    already = log_file.read_text().count('"services ready"') if log_file.exists() else 0
    stderr_file = log_file.with_suffix(".stderr.log")  # scanned with the logs by the tests
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with stderr_file.open("ab") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_file.exists() and log_file.read_text().count('"services ready"') > already:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"the hub exited with {process.returncode}; see {log_file} and {stderr_file}")
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR1)  # the stacks of where it hangs (dump_stacks_on_sigusr1, dump_tasks)
    time.sleep(1.0)
    process.kill()
    raise TimeoutError(f"the hub was not ready within {timeout_s:.0f}s; see {log_file} and the stacks in "
                       f"{stderr_file}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the services stop cleanly), then SIGKILL after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
