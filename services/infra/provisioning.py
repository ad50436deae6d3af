"""Topics as the hub wants them: created when missing, and their configuration (cleanup policy, retention,
`min.insync.replicas`, `max.message.bytes`) set again on every `up` and `access sync`, so a changed setting reaches the topics
that already exist. Through confluent-kafka's AdminClient: aiokafka's AlterConfigs replaces a topic's whole
configuration and its CreateTopics reports refusals without raising.
"""

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

from schemas.registry import Registry
from services.infra import principals, topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import max_message_bytes
from services.infra.settings import Settings

TIMEOUT_S = 30.0
DAY_MS = 86_400_000


class ProvisioningError(RuntimeError):
    """A topic could not be created or configured (the message names it and the broker's reason)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def topic_config(name: str, settings: Settings) -> dict[str, str]:
    """The configuration the hub sets on a topic of its contract (retention by topic class, the largest record by
    who writes it: `services/infra/kafka.py`, `max_message_bytes`)."""
    days = settings.retention_days(topics.topic_class(name))
    return {"cleanup.policy": "compact" if days is None else "delete",
            "retention.ms": "-1" if days is None else str(int(days * DAY_MS)),
            "min.insync.replicas": str(min(2, settings.replication)),
            "max.message.bytes": str(max_message_bytes(name, settings))}


def hub_topics(settings: Settings, registry: Registry) -> list[TopicSpec]:
    return [TopicSpec(name, settings.partitions, settings.replication, topic_config(name, settings))
            for name in dict.fromkeys(topics.all_topics(registry))]


@dataclass(frozen=True)
class Provisioned:
    created: list[str]
    reconfigured: list[str]


def failures(futures: dict, tolerated: tuple[str, ...] = ()) -> list[str]:
    """Wait for every future of a confluent-kafka admin call; what failed (other than `tolerated` error names),
    one line each, naming the topic, user or binding."""
    failed = []
    for key, future in futures.items():
        try:
            future.result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            error = exc.args[0]
            if error.name() not in tolerated:
                failed.append(f"{getattr(key, 'name', key)}: {error.str()}")
    return failed


def _wait(futures: dict, what: str, tolerated: tuple[str, ...] = ()) -> None:
    if failed := failures(futures, tolerated):
        raise ProvisioningError(f"{what}: " + "; ".join(failed))


def provision_topics(kafka: KafkaConnection, specs: list[TopicSpec]) -> Provisioned:
    """Create the missing topics with their configuration; set the configuration of the existing ones where it
    differs. Idempotent, and safe when another process creates the same topic at the same moment."""
    admin = AdminClient({**kafka.librdkafka(), "client.id": "verwijshub-provisioning", "log_level": 3})
    existing = set(admin.list_topics(timeout=TIMEOUT_S).topics)
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        _wait(admin.create_topics([NewTopic(s.name, s.partitions, s.replication, config=s.config) for s in missing],
                                  operation_timeout=TIMEOUT_S), "topics not created", ("TOPIC_ALREADY_EXISTS",))
    present = [spec for spec in specs if spec.name in existing and spec.config]
    resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in present]
    described = admin.describe_configs(resources) if resources else {}
    stale = []
    for spec, resource in zip(present, resources, strict=True):
        try:
            entries = described[resource].result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise ProvisioningError(f"configuration of {spec.name} not read: {exc.args[0].str()}") from exc
        if any(entries[key].value != value for key, value in spec.config.items() if key in entries):
            stale.append(ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in spec.config.items()]))
    if stale:
        _wait(admin.incremental_alter_configs(stale), "topic configuration not set")
    return Provisioned([s.name for s in missing], [r.name for r in stale])


def provision_hub_topics(settings: Settings, registry: Registry) -> Provisioned:
    """Every topic of the hub and its recipients, as the admin (`up`, `access sync`, `registry publish`)."""
    return provision_topics(settings.connection(principals.ADMIN), hub_topics(settings, registry))
