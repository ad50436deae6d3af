"""Retention is set when a topic is created and reconciled on the next `up`/`access sync` when a setting
changes, on the real (secured) broker; and routing's state outlives the retention of the referrals and decisions
it came from, on a broker of its own whose retention is a few seconds."""

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from schemas.feedback import Feedback, FeedbackKind
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.routing import RoutingDecision
from services.infra import topics
from services.infra.kafka import partition_spans
from services.infra.local_kafka import LocalKafka
from services.infra.provisioning import DAY_MS, provision_hub_topics
from services.infra.pseudonym import youth_pseudonym
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.routing.commands import publish_registry
from tests.conftest import ARTIFACTS, TestKafka, new_broker, start_hub, stop_hub
from tests.hub_logs import log_events
from tests.kafka_client import produce, read_topic
from tests.referrals import random_bsn

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


# -- routing's state outlives the retention of what it was built from ------------------------------------------
AGE_S = 10
"""The retention of referrals and decisions in the test below (the broker's default too), in seconds."""
PSEUDONYM_KEY = "retention-test-key"
MARTINI, ACCARE = "98000033", "98000101"


class ShortRetentionKafka(LocalKafka):
    """A broker that deletes what retention allows every second (Kafka's default: every five minutes), with a
    default retention of a few seconds."""

    def properties(self, node) -> str:
        return super().properties(node) + (f"log.retention.check.interval.ms=1000\n"
                                           f"log.retention.ms={AGE_S * 1000}\n")


@pytest.fixture(scope="module")
def short_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKafka]:
    with new_broker(tmp_path_factory.mktemp("short-retention-kafka"), kind=ShortRetentionKafka) as broker:
        short = AGE_S / 86_400
        provision_hub_topics(broker.settings(retention_inbound_days=short, retention_decisions_days=short), REGISTRY)
        yield broker


def referral(bsn: str, rid: str, preferred: str) -> Referral:
    return Referral(
        referral_id=rid, channel=Channel.GP,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=f"ZD-{rid}", referral_date=date.today(),
        youth=Youth(bsn=bsn, pseudonym=youth_pseudonym(bsn, PSEUDONYM_KEY), birth_date=date(2014, 1, 1),
                    postcode="9712 AB"),
        product="54B01", preferred_provider=preferred, received_at=datetime.now(UTC))


async def decisions_of(kafka: TestKafka, referral_id: str, count: int, settle_s: float = 0.0,
                       timeout_s: float = 60.0) -> list[RoutingDecision]:
    records = await read_topic(kafka.admin, topics.DECISIONS, lambda r: json.loads(r.value)["referral_id"] ==
                               referral_id, count, timeout_s=timeout_s, settle_s=settle_s)
    return [RoutingDecision.model_validate_json(r.value) for r in records]


async def send(kafka: TestKafka, ref: Referral) -> RoutingDecision:
    await produce(kafka.admin, topics.NORMALISED, ref.model_dump_json().encode(), key=ref.youth.pseudonym.encode())
    (decision,) = await decisions_of(kafka, ref.referral_id, 1)
    return decision


async def feed_back(kafka: TestKafka, provider: str, ref: Referral, kind: FeedbackKind) -> None:
    feedback = Feedback(referral_id=ref.referral_id, kind=kind, at=datetime.now(UTC), reason="no capacity")
    await produce(kafka.admin, topics.provider_feedback(provider), feedback.model_dump_json().encode(),
                  key=ref.youth.pseudonym.encode())


async def aged_out(kafka: TestKafka, names: list[str], timeout_s: float = 120.0) -> None:
    """Until every record of the topics is gone by retention."""
    deadline = time.monotonic() + timeout_s
    while any(span.begin < span.end for span in (await partition_spans(kafka.admin, names)).values()):
        assert time.monotonic() < deadline, f"{names} not emptied by retention"
        await asyncio.sleep(1.0)


async def wait_for_log(log_file: Path, event: str, **fields) -> None:
    for _ in range(600):
        if any(x.get("event") == event and fields.items() <= x.items() for x in log_events(log_file)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"routing never logged {event} {fields}")


async def test_routing_reroutes_from_its_state_after_referrals_and_decisions_aged_out(short_kafka, tmp_path):
    """Open referrals outlive the retention of the referrals and decisions they came from: after both aged out
    and routing restarted, a decline and a provider stop still re-route, and a closed referral never is."""
    kafka, bsn, other_bsn = short_kafka, random_bsn(), random_bsn()
    env = {"VERWIJSHUB_RETENTION_INBOUND_DAYS": str(AGE_S / 86_400),
           "VERWIJSHUB_RETENTION_DECISIONS_DAYS": str(AGE_S / 86_400)}
    short = kafka.settings(retention_inbound_days=AGE_S / 86_400, retention_decisions_days=AGE_S / 86_400)
    await publish_registry(short, REPO_ROOT / "deploy" / "registry")  # which sets every topic's retention again
    ARTIFACTS.mkdir(exist_ok=True)
    log_file = ARTIFACTS / "routing-retention.log"
    log_file.unlink(missing_ok=True)
    to_stop, to_close, to_decline = (referral(b, str(uuid.uuid4()), agb) for b, agb in (
        (bsn, MARTINI), (bsn, MARTINI), (other_bsn, ACCARE)))

    process = start_hub(kafka, log_file, "routing", env=env)
    try:  # once it reads its inputs: a referral waiting longer than its retention would be gone
        await wait_for_log(log_file, "partitions owned", partitions=list(range(kafka.settings().partitions)))
        for ref, provider in ((to_stop, MARTINI), (to_close, MARTINI), (to_decline, ACCARE)):
            assert (await send(kafka, ref)).recipient.id == provider
        await feed_back(kafka, MARTINI, to_close, FeedbackKind.CLOSED)
        await wait_for_log(log_file, "feedback handled", correlation_id=to_close.referral_id, outcome="closed")
    finally:
        stop_hub(process)
    await aged_out(kafka, [topics.NORMALISED, topics.DECISIONS])

    process = start_hub(kafka, log_file, "routing", env=env)
    try:
        await feed_back(kafka, ACCARE, to_decline, FeedbackKind.DECLINED)
        again = (await decisions_of(kafka, to_decline.referral_id, 1))[0]
        assert (again.previous_recipient.id, again.trace[0].rule) == (ACCARE, "declined")
        assert again.recipient.id != ACCARE and again.referral == to_decline

        stopped = tmp_path / "registry"
        shutil.copytree(REPO_ROOT / "deploy" / "registry", stopped, ignore=shutil.ignore_patterns("scenarios"))
        providers = json.loads((stopped / "providers.json").read_text())
        for provider in providers:
            if provider["agb"] == MARTINI:
                provider["stopped_on"] = date.today().isoformat()
        (stopped / "providers.json").write_text(json.dumps(providers))
        await publish_registry(short, stopped)
        (rerouted,) = await decisions_of(kafka, to_stop.referral_id, 1, settle_s=2.0)
        assert (rerouted.rule, rerouted.previous_recipient.id, rerouted.referral) == (
            "provider-stopped", MARTINI, to_stop)
        assert await decisions_of(kafka, to_close.referral_id, 0, settle_s=3.0) == [], "closed: never re-routed"
    finally:
        stop_hub(process)
    log = log_file.read_text()
    assert bsn not in log and other_bsn not in log
