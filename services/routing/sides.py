"""What routing reads beside its inputs: the registry in force (`registry.v1`) and the other partitions' open
handovers per provider (`routing.load.v1`), both followed from their start, `read_committed`, without a group.

A published registry takes effect without a restart; a malformed one is refused and the last good one stays.
The load of partitions owned by another instance is as fresh as that instance's last tick (about a second).
"""

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from schemas.registry import REGISTRY_KEY, Registry
from schemas.routing import RoutingLoad
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of
from services.infra.logging import get_logger
from services.infra.registry_files import RegistryError
from services.infra.registry_topic import decode_registry


class SideInputs:
    def __init__(self, kafka: KafkaConnection, registry: Registry) -> None:
        self.kafka = kafka
        self.registry = registry
        """The registry files' until `registry.v1` says otherwise."""
        self.load: dict[int, dict[str, int]] = {}
        """Routing partition -> its open handovers per provider, as last published."""
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.log = get_logger(service="routing")

    async def start(self) -> None:
        """Follow both topics; returns once they are read to their end."""
        self._task = asyncio.create_task(self.follow(), name="routing-side-inputs")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def follow(self) -> None:
        while True:  # a broker hiccup restarts the follow (reading again from the start is idempotent)
            consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                        isolation_level="read_committed", client_id="verwijshub-routing-side")
            try:
                await consumer.start()
                partitions = await partitions_of(self.kafka, [topics.REGISTRY, topics.ROUTING_LOAD])
                if not partitions:  # no topics yet (`up` and `registry publish` create them): the files rule
                    self.ready.set()
                    await asyncio.sleep(5.0)
                    continue
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                ends = await consumer.end_offsets(partitions)
                behind = {tp for tp, end in ends.items() if end > 0}
                while True:
                    if not behind and not self.ready.is_set():
                        self.ready.set()
                        self.log.info("routing side inputs read", registry_version=self.registry.version,
                                      load_partitions=sorted(self.load))
                    batches = await consumer.getmany(timeout_ms=500)
                    for tp, records in batches.items():
                        for record in records:
                            self.apply(record.topic, record.key, record.value)
                        if tp in behind and await consumer.position(tp) >= ends[tp]:
                            behind.discard(tp)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("routing side inputs failed: restarting", error_type=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """One record; never raises."""
        if topic == topics.REGISTRY and key == REGISTRY_KEY and value:
            try:
                registry = decode_registry(value)
            except RegistryError as exc:
                self.log.error("registry refused, the last good one stays in force", reason=str(exc),
                               registry_version=self.registry.version)
                return
            if registry.version != self.registry.version:
                self.log.info("registry in force", registry_version=registry.version)
            self.registry = registry
        elif topic == topics.ROUTING_LOAD and key is not None:
            try:
                partition = int(key.decode())
                self.load[partition] = RoutingLoad.model_validate_json(value).open if value else {}
            except (ValueError, ValidationError) as exc:
                self.log.error("load record unreadable: skipped", error_type=type(exc).__name__)
