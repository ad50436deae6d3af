"""Running services: each alone (`verwijshub run X`) or all three in one process (`verwijshub up`)."""

import asyncio
import signal
from collections.abc import Callable

from faststream.kafka import KafkaBroker

from schemas.registry import Registry
from services.infra import topics
from services.infra.clock import Clock, FileClock, SystemClock
from services.infra.kafka import ensure_topics
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.intake.app import create_intake
from services.notifier.app import create_notifier
from services.routing.app import create_routing

SERVICES: dict[str, Callable[[Settings, Registry, Clock], KafkaBroker]] = {
    "intake": create_intake,
    "routing": create_routing,
    "notifier": create_notifier,
}


async def create_topics(settings: Settings, registry: Registry) -> list[str]:
    return await ensure_topics(settings.bootstrap, topics.all_topics(registry), settings.partitions,
                               settings.replication_factor)


async def run_services(names: list[str], settings: Settings, registry: Registry,
                       on_ready: Callable[[], None] | None = None) -> None:
    """Start the named services on one event loop and run them until SIGINT or SIGTERM."""
    clock: Clock = FileClock(settings.clock_file) if settings.clock_file else SystemClock()
    brokers = [SERVICES[name](settings, registry, clock) for name in names]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    log = get_logger()
    try:
        for broker in brokers:
            await broker.start()
        log.info("services ready", services=names, bootstrap=settings.bootstrap)
        if on_ready:
            on_ready()
        await stopping.wait()
    finally:
        log.info("services stopping", services=names)
        for broker in brokers:
            await broker.stop()
