"""Retention is set when a topic is created and reconciled on the next `up`/`access sync` when a setting
changes, on the real (secured) broker."""

import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from services.infra import topics
from services.infra.provisioning import DAY_MS, provision_hub_topics
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from tests.conftest import TestKafka

pytestmark = pytest.mark.e2e
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")


def configs(kafka: TestKafka, name: str) -> dict[str, str]:
    resource, admin = ConfigResource(ResourceType.TOPIC, name), AdminClient(kafka.admin.librdkafka())
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {key: entry.value for key, entry in entries.items()}


def eventually(kafka: TestKafka, name: str, key: str, value: str) -> str:
    """The topic's config `key` once it reads `value` (a change reaches the broker through KRaft's metadata
    log a moment after the call returns), or what it reads after 10 s."""
    deadline = time.monotonic() + 10
    while (found := configs(kafka, name)[key]) != value and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_topics_carry_their_class_retention_and_a_changed_setting_reaches_existing_topics(kafka: TestKafka) -> None:
    assert configs(kafka, topics.wij_handovers("centrum"))["retention.ms"] == str(90 * DAY_MS)
    assert configs(kafka, topics.NOTIFIER_STATE)["cleanup.policy"] == "compact"
    assert configs(kafka, topics.DEAD_LETTERS)["retention.ms"] == str(90 * DAY_MS)
    try:
        changed = provision_hub_topics(kafka.settings(retention_alerts_days=120), REGISTRY)
        assert changed.created == [] and changed.reconfigured == [topics.ALERTS]
        assert eventually(kafka, topics.ALERTS, "retention.ms", str(120 * DAY_MS)) == str(120 * DAY_MS)
        assert provision_hub_topics(kafka.settings(retention_alerts_days=120), REGISTRY).reconfigured == []
    finally:
        provision_hub_topics(kafka.settings(), REGISTRY)
    assert eventually(kafka, topics.ALERTS, "retention.ms", str(90 * DAY_MS)) == str(90 * DAY_MS)
