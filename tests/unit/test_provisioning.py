"""Retention per topic class: every topic of the contract gets a chosen, documented configuration."""

from services.infra import topics
from services.infra.kafka import OUTBOUND_RECORD_BYTES, request_bytes
from services.infra.provisioning import DAY_MS, hub_topics, topic_config
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.infra.topics import TopicClass, topic_class

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")


def test_every_topic_has_a_class_and_compacted_ones_are_internal() -> None:
    classes = {name: topic_class(name) for name in topics.all_topics(REGISTRY)}
    assert classes[topics.referrals("gp")] is TopicClass.INBOUND and classes[topics.NORMALISED] is TopicClass.INBOUND
    assert classes[topics.wij_handovers("centrum")] is TopicClass.HANDOVERS
    assert classes[topics.provider_feedback("98000011")] is TopicClass.FEEDBACK
    assert classes[topics.status("gi")] is TopicClass.STATUS
    assert classes[topics.DEAD_LETTERS] is TopicClass.DEAD_LETTERS and classes[topics.ALERTS] is TopicClass.ALERTS
    assert classes[topics.DECISIONS] is TopicClass.DECISIONS
    assert {name for name, kind in classes.items() if kind is TopicClass.INTERNAL} == set(topics.COMPACTED)


def test_retention_comes_from_the_settings_of_the_topics_class() -> None:
    settings = Settings(retention_handovers_days=120, replication_factor=3, _env_file=None)
    handovers = topic_config(topics.wij_handovers("centrum"), settings)
    assert handovers == {"cleanup.policy": "delete", "retention.ms": str(120 * DAY_MS), "min.insync.replicas": "2",
                         "max.message.bytes": str(OUTBOUND_RECORD_BYTES)}
    assert topic_config(topics.NOTIFIER_STATE, settings)["cleanup.policy"] == "compact"
    assert topic_config(topics.DECISIONS, Settings(_env_file=None))["retention.ms"] == str(365 * DAY_MS)
    assert topic_config(topics.DECISIONS, Settings(_env_file=None))["min.insync.replicas"] == "1"


def test_a_recipient_offline_for_weeks_loses_nothing_by_default() -> None:
    specs = {spec.name: spec for spec in hub_topics(Settings(_env_file=None), REGISTRY)}
    for name, spec in specs.items():
        if topic_class(name) in (TopicClass.HANDOVERS, TopicClass.STATUS, TopicClass.DEAD_LETTERS):
            assert int(spec.config["retention.ms"]) >= 8 * 7 * DAY_MS, name


def test_each_topic_takes_the_largest_record_written_to_it_and_the_dead_letter_of_the_largest_read() -> None:
    """An inbound topic takes what the gateway and `send` accept (`MAX_MESSAGE_BYTES`) with its key and headers; the
    hub's own topics the 1 MiB its limited texts stay far under; the dead letters the largest record of any of them
    with the headers saying why; and a producer's request the largest of all."""
    settings = Settings(max_message_bytes=3 * 1024 * 1024, _env_file=None)
    sizes = {spec.name: int(spec.config["max.message.bytes"]) for spec in hub_topics(settings, REGISTRY)}
    assert sizes[topics.referrals("specialist")] >= 3 * 1024 * 1024 + 32 * 1024
    assert sizes[topics.NORMALISED] == sizes[topics.wij_handovers("centrum")] == OUTBOUND_RECORD_BYTES
    assert sizes[topics.DEAD_LETTERS] >= max(size for name, size in sizes.items() if name != topics.DEAD_LETTERS) \
        + 32 * 1024
    assert request_bytes(settings) == max(sizes.values())
    default = {spec.name: int(spec.config["max.message.bytes"]) for spec in hub_topics(Settings(_env_file=None),
                                                                                         REGISTRY)}
    assert default[topics.DEAD_LETTERS] > default[topics.referrals("gp")] > 1024 * 1024 == default[topics.DECISIONS]
