"""The registry as published on the compacted `registry.v1`: one record (key `registry`), the files' text."""

from pydantic import ValidationError

from schemas.registry import REGISTRY_KEY, Registry, RegistrySnapshot
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import read_to_end
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
