"""The registry as published on the compacted `registry.v1`: one record (key `registry`), the files' text."""

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.registry import REGISTRY_KEY, Registry, RegistrySnapshot
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import read_to_end
from services.infra.logging import get_logger
from services.infra.registry_files import RegistryError, registry_from_contents


def decode_registry(value: bytes) -> Registry:
    """A `registry.v1` record as a Registry; raises RegistryError for anything malformed."""
    try:
        snapshot = RegistrySnapshot.model_validate_json(value)
    except ValidationError as exc:
        raise RegistryError(f"not a registry snapshot ({exc.error_count()} errors)") from exc
    return registry_from_contents(snapshot.files)


async def latest_registry(kafka: KafkaConnection) -> Registry | None:
    """The last well-formed registry on `registry.v1`, or None when none was published."""
    latest = None
    for key, value in await read_to_end(kafka, topics.REGISTRY):
        if key == REGISTRY_KEY and value:
            try:
                latest = decode_registry(value)
            except RegistryError:
                continue
    return latest


class RegistryInForce:
    """The registry a service decides by: the files' until `registry.v1` holds a well-formed one; a malformed one
    is refused (logged) and the last good one stays. Fed by `services/infra/following.py`."""

    def __init__(self, registry: Registry, service: str) -> None:
        self.registry = registry
        self.log = get_logger(service=service)

    def apply(self, record: ConsumerRecord) -> None:
        """One record of `registry.v1` (others are ignored); never raises."""
        if record.topic != topics.REGISTRY or record.key != REGISTRY_KEY or not record.value:
            return
        try:
            registry = decode_registry(record.value)
        except RegistryError as exc:
            self.log.error("registry refused, the last good one stays in force", reason=str(exc),
                           registry_version=self.registry.version)
            return
        if registry.version != self.registry.version:
            self.log.info("registry in force", registry_version=registry.version)
        self.registry = registry
