"""Intake's product table: the registry in force on `registry.v1`, so a published product (and a referrer
organisation, for the sender check) is known without a restart.

Intake starts with the registry files it was given, reads `registry.v1` at start, and looks again whenever a
referral names a product it does not know: if `registry.v1` grew since its last look (one ListOffsets request),
it reads the latest registry. A dead letter replayed after `registry publish` was written after the registry,
so intake knows the product by the time it reads the replay (docs/design.md, "Dead letters").
"""

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer

from schemas.registry import Registry
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of
from services.infra.logging import get_logger
from services.infra.registry_topic import latest_registry


class ProductTable:
    def __init__(self, kafka: KafkaConnection, registry: Registry) -> None:
        self.kafka, self.registry = kafka, registry
        self._ends: dict | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list = []
        self._lock = asyncio.Lock()

    @property
    def products(self) -> frozenset[str]:
        return frozenset(self.registry.products)

    async def refresh(self) -> bool:
        """Read the latest registry when `registry.v1` grew since the last look; True when it did. A broker
        hiccup raises: the referral that asked is retried, not rejected for a product the hub might know."""
        async with self._lock:
            if self._consumer is None:
                self._consumer = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False,
                                                  client_id="verwijshub-intake-registry")
                await self._consumer.start()
            self._partitions = self._partitions or await partitions_of(self.kafka, [topics.REGISTRY])
            ends = await self._consumer.end_offsets(self._partitions) if self._partitions else {}
            if ends == self._ends:
                return False
            latest = await latest_registry(self.kafka)
            self._ends = ends
            if latest is not None and latest.version != self.registry.version:
                self.registry = latest
                get_logger(service="intake").info("product table from registry.v1", registry=latest.version,
                                                  products=len(latest.products))
                return True
            return False

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
