"""What routing reads beside its inputs: the registry in force (`registry.v1`) and the other partitions' open
handovers per provider (`routing.load.v1`), both followed as services/infra/following.py follows a topic.

A published registry takes effect without a restart; a malformed one is refused and the last good one stays.
The load of partitions owned by another instance is as fresh as its last publication (at most about 5 s old).
"""

import asyncio
import contextlib

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.registry import Registry
from schemas.routing import RoutingLoad
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.following import follow
from services.infra.logging import get_logger
from services.infra.registry_topic import RegistryInForce
from services.infra.starting import waiting_for


class SideInputs:
    def __init__(self, kafka: KafkaConnection, registry: Registry) -> None:
        self.kafka = kafka
        self.in_force = RegistryInForce(registry, "routing")
        self.load: dict[int, dict[str, int]] = {}
        """Routing partition -> its open handovers per provider, as last published."""
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.log = get_logger(service="routing")

    async def start(self) -> None:
        """Follow both topics; returns once they are read to their end."""
        self._task = asyncio.create_task(follow(self.kafka, [topics.REGISTRY, topics.ROUTING_LOAD], self.apply,
                                                self.ready, "verwijshub-routing-side"), name="routing-side-inputs")
        await waiting_for(f"{topics.REGISTRY} and {topics.ROUTING_LOAD} read to their end", self.ready.wait())
        self.log.info("routing side inputs read", registry_version=self.registry.version,
                      load_partitions=sorted(self.load))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @property
    def registry(self) -> Registry:
        return self.in_force.registry

    def apply(self, record: ConsumerRecord) -> None:
        """One record; never raises."""
        topic, key, value = record.topic, record.key, record.value
        if topic == topics.REGISTRY:
            self.in_force.apply(record)
        elif topic == topics.ROUTING_LOAD and key is not None:
            try:
                partition = int(key.decode())
                self.load[partition] = RoutingLoad.model_validate_json(value).open if value else {}
            except (ValueError, ValidationError) as exc:
                self.log.error("load record unreadable: skipped", error_type=type(exc).__name__)
