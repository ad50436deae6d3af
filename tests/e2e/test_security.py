"""The confidentiality boundary, enforced by Kafka itself, on a broker secured as by default.

Every principal kind is probed on every class of topic with a real third-party client (librdkafka, through
confluent-kafka): produce, consume, describe, join a group, create and delete a topic, alter ACLs. Each
outcome must be exactly what the matrix of services/access/matrix.py says. Then kcat and Kafka's own console
consumer with `verwijshub access client-config` output, clients that must not get in at all, the Strimzi
export against the broker's ACLs, a provider's stop, and a password rotation (the broker's SASL sessions are
short here, so that a live connection of the old password is cut off within the test)."""

import asyncio
import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from services.access.commands import sync_access
from services.access.kafka_admin import AccessAdmin
from services.access.matrix import Grant, Operation, Resource, allows, grants
from services.access.strimzi import grants_of
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.local_kafka import LocalKafka, resolve_classpath
from services.infra.registry_files import load_registry
from services.infra.secrets import CredentialStore
from services.infra.settings import REPO_ROOT
from services.infra.tls import LocalCa
from tests.conftest import ARTIFACTS, TestKafka, cache_dir, new_broker
from tests.system_tools import require

pytestmark = pytest.mark.e2e
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
PROVIDER_A, PROVIDER_B = sorted(REGISTRY.providers)[:2]
GP_A, GP_B = "huisartsen-centrum", "huisartsen-paddepoel"
PROBED = [principals.referrer(GP_A), principals.referrer(GP_B), principals.wij_team("centrum"),
          principals.wij_team("selwerd"), principals.provider(PROVIDER_A), principals.provider(PROVIDER_B),
          *(principals.service(name) for name in ("intake", "routing", "notifier")), principals.OPERATIONS,
          principals.ANALYTICS]
TOPICS = [topics.referrals("gp"), topics.referrals("gi"), topics.organisation_referrals("gp", GP_A),
          topics.organisation_referrals("gp", GP_B),
          topics.status("gp"), topics.status("gi"),
          topics.NORMALISED, topics.DEAD_LETTERS, topics.DECISIONS, topics.REGISTRY, topics.INDICATIONS,
          topics.ALERTS, topics.INTAKE_ACCEPTED, topics.NOTIFIER_STATE,
          topics.wij_handovers("centrum"), topics.wij_handovers("selwerd"), topics.wij_feedback("centrum"),
          topics.wij_feedback("selwerd"), topics.provider_handovers(PROVIDER_A), topics.provider_handovers(PROVIDER_B),
          topics.provider_feedback(PROVIDER_A), topics.provider_feedback(PROVIDER_B)]
PROBE = b"probe record"
WAIT_S = 15.0
ROTATED = principals.provider(sorted(REGISTRY.providers)[2])
"""The principal the rotation tests give new passwords: no other test here connects as it."""
SESSION_S = 5
"""The broker's `connections.max.reauth.ms` here, in seconds (the hub's default is an hour)."""


def matrix() -> list[Grant]:
    return grants(REGISTRY, SystemClock().now().date(), timedelta(days=30))


def denied(error) -> bool:
    return error is not None and "AUTHORIZATION_FAILED" in error.name()


@dataclass(frozen=True)
class ShortSessionKafka(LocalKafka):
    """A broker whose SASL sessions last a few seconds: librdkafka and Java clients re-authenticate that often,
    aiokafka's connections are closed and made anew."""

    max_reauth_ms: int = SESSION_S * 1000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKafka]:
    """The module's broker of its own with one record on partition 0 of every probed topic, so a read can
    succeed."""
    with new_broker(tmp_path_factory.mktemp("security-kafka"), kind=ShortSessionKafka) as private_kafka:
        producer, failed = Producer(private_kafka.admin.librdkafka()), []
        for topic in TOPICS:  # keyed: the compacted topics take no record without a key
            producer.produce(topic, PROBE, key=b"probe", partition=0,
                             on_delivery=lambda error, message: error and failed.append(error))
        assert producer.flush(30) == 0 and not failed, failed
        del producer  # gone before the broker, which it would otherwise try to reach again and again
        yield private_kafka


def written(kafka: KafkaConnection) -> dict[str, bool]:
    """topic -> whether a produce was acknowledged (False: refused for authorization)."""
    outcomes: dict[str, bool] = {}
    producer = Producer({**kafka.librdkafka(), "message.timeout.ms": 10000, "enable.idempotence": False})
    for topic in TOPICS:
        producer.produce(topic, b"ignored by probes", key=b"probe", partition=0,
                         on_delivery=lambda error, message, topic=topic: outcomes.__setitem__(topic, error))
    producer.flush(WAIT_S)
    assert set(outcomes) == set(TOPICS), "every produce got a definite answer"
    assert all(error is None or denied(error) for error in outcomes.values()), {
        t: e.name() for t, e in outcomes.items() if e is not None and not denied(e)}
    return {topic: error is None for topic, error in outcomes.items()}


def described(kafka: KafkaConnection) -> set[str]:
    return set(AdminClient(kafka.librdkafka()).list_topics(timeout=WAIT_S).topics)


def read(kafka: KafkaConnection, visible: set[str]) -> dict[str, bool]:
    """topic -> whether its first record could be fetched. A topic the principal may not even describe
    cannot be read (Read implies Describe): it is fetched too, and must yield nothing."""
    consumer = Consumer({**kafka.librdkafka(), "group.id": f"{kafka.username}.probe-read",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0) for topic in TOPICS])
    outcomes: dict[str, bool] = {}
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not visible <= set(outcomes):
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error() is None and message.value() == PROBE:
            outcomes[message.topic()] = True
        elif denied(message.error()) and message.topic():
            outcomes.setdefault(message.topic(), False)
    consumer.close()
    assert visible <= set(outcomes), f"no definite answer for {visible - set(outcomes)}"
    return {topic: outcomes.get(topic, False) for topic in TOPICS}


def joins(kafka: KafkaConnection, group: str, topic: str) -> bool:
    """Whether the principal may join `group` (consuming `topic`, which it may read)."""
    joined: list[bool] = []
    consumer = Consumer({**kafka.librdkafka(), "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic], on_assign=lambda *_: joined.append(True))
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not joined:
        message = consumer.poll(0.2)
        if message is not None and denied(message.error()):
            consumer.close()
            return False
    consumer.close()
    assert joined, f"no answer to joining {group}"
    return True


def administers(kafka: KafkaConnection) -> dict[str, bool]:
    """Create a topic, delete one, alter ACLs: what only the admin may do."""
    admin = AdminClient(kafka.librdkafka())

    def succeeded(futures: dict) -> bool:
        try:
            for future in futures.values():
                future.result(timeout=WAIT_S)
            return True
        except KafkaException as exc:
            assert "AUTHORIZATION_FAILED" in exc.args[0].name(), exc
            return False

    victim = f"probe-{kafka.username}"
    created = succeeded(admin.create_topics([NewTopic(victim, 1, 1)]))
    deleted = succeeded(admin.delete_topics([victim if created else topics.REGISTRY]))
    acl = AclBinding(ResourceType.TOPIC, topics.REGISTRY, ResourcePatternType.LITERAL, f"User:{kafka.username}",
                     "*", AclOperation.READ, AclPermissionType.ALLOW)
    altered = succeeded(admin.create_acls([acl]))
    if altered:
        succeeded(admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, topics.REGISTRY, ResourcePatternType.LITERAL,
                                                      f"User:{kafka.username}", "*", AclOperation.READ,
                                                      AclPermissionType.ALLOW)]))
    return {"create": created, "delete": deleted, "alter-acls": altered}


@pytest.mark.parametrize("principal", PROBED)
def test_every_principal_may_do_exactly_what_the_matrix_grants(broker: TestKafka, principal: str) -> None:
    kafka, granted = broker.connection(principal), matrix()
    visible = described(kafka) & set(TOPICS)
    assert visible == {t for t in TOPICS if allows(granted, principal, Resource.TOPIC, t, Operation.DESCRIBE)}
    assert written(kafka) == {t: allows(granted, principal, Resource.TOPIC, t, Operation.WRITE) for t in TOPICS}
    assert read(kafka, visible) == {t: allows(granted, principal, Resource.TOPIC, t, Operation.READ)
                                    for t in TOPICS}
    readable = next(t for t in TOPICS if allows(granted, principal, Resource.TOPIC, t, Operation.READ))
    for group in (f"{principal}.probe", principals.service("notifier"), f"{principals.wij_team('selwerd')}.x"):
        expected = allows(granted, principal, Resource.GROUP, group, Operation.READ)
        assert joins(kafka, group, readable) == expected, group
    assert administers(kafka) == {"create": False, "delete": False, "alter-acls": False}


def test_the_admin_is_a_super_user(broker: TestKafka) -> None:
    assert administers(broker.admin) == {"create": True, "delete": True, "alter-acls": True}


def test_a_provider_never_reads_another_providers_handovers_nor_writes_its_feedback(broker: TestKafka) -> None:
    """The boundary the contract is about, said plainly (the parametrised test above covers it too)."""
    kafka = broker.connection(principals.provider(PROVIDER_A))
    assert not read(kafka, described(kafka) & set(TOPICS))[topics.provider_handovers(PROVIDER_B)]
    assert not written(kafka)[topics.provider_feedback(PROVIDER_B)]


def test_clients_without_credentials_with_a_wrong_password_or_trusting_another_ca_cannot_connect(
        broker: TestKafka, tmp_path: Path) -> None:
    good = broker.connection(principals.wij_team("centrum"))
    other_ca = LocalCa(tmp_path / "other")
    other_ca.ensure("127.0.0.1")
    attempts = {
        "no credentials": {"bootstrap.servers": broker.bootstrap, "security.protocol": "plaintext"},
        "TLS but no SASL": {"bootstrap.servers": broker.bootstrap, "security.protocol": "ssl",
                            "ssl.ca.location": str(good.ca_file)},
        "wrong password": {**good.librdkafka(), "sasl.password": "not-" + (good.password or "")},
        "another CA": {**good.librdkafka(), "ssl.ca.location": str(other_ca.ca_cert)},
    }
    for name, config in attempts.items():
        with pytest.raises(KafkaException):
            AdminClient({**config, "socket.timeout.ms": 5000}).list_topics(timeout=8)
        assert name  # each attempt raised
    assert topics.wij_handovers("centrum") in AdminClient(good.librdkafka()).list_topics(timeout=8).topics


def access(broker: TestKafka, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`verwijshub access ...` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "services.cli", "access", *args],
                          env={**os.environ, **broker.env(), **(env or {})}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def client_config(broker: TestKafka, principal: str, form: str, path: Path) -> Path:
    """`verwijshub access client-config` as an operator runs it for a recipient."""
    run = access(broker, "client-config", principal, "--format", form)
    assert run.returncode == 0, run.stderr
    path.write_text(run.stdout)
    path.chmod(0o600)
    return path


def test_kcat_with_a_providers_client_config_reads_its_handovers_and_is_refused_anothers(
        broker: TestKafka, tmp_path: Path) -> None:
    require("kcat")
    kcat = str(REPO_ROOT / "deploy" / "kcat")  # Debian's kcat with a librdkafka that speaks SCRAM to Kafka 4
    config = client_config(broker, principals.provider(PROVIDER_A), "librdkafka", tmp_path / "provider.conf")
    own = subprocess.run([kcat, "-F", str(config), "-C", "-t", topics.provider_handovers(PROVIDER_A), "-p", "0",
                          "-o", "beginning", "-e", "-q"], capture_output=True, timeout=60)
    assert own.returncode == 0 and PROBE in own.stdout, own.stderr
    other = subprocess.run([kcat, "-F", str(config), "-C", "-t", topics.provider_handovers(PROVIDER_B), "-p", "0",
                            "-o", "beginning", "-e", "-q"], capture_output=True, timeout=60)
    assert other.returncode != 0 and b"authorization failed" in other.stderr.lower(), other.stderr
    assert PROBE not in other.stdout
    (ARTIFACTS / "security").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "security" / "kcat.txt").write_bytes(b"own:\n" + own.stdout + b"\nother:\n" + other.stderr)


def test_kafkas_console_consumer_with_the_java_config_reads_its_handovers_and_is_refused_anothers(
        broker: TestKafka, tmp_path: Path) -> None:
    config = client_config(broker, principals.provider(PROVIDER_A), "java", tmp_path / "provider.properties")
    group = f"{principals.provider(PROVIDER_A)}.console"

    def console(topic: str) -> subprocess.CompletedProcess:
        return subprocess.run(["java", "-cp", resolve_classpath(cache_dir()),
                               "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server",
                               broker.bootstrap, "--consumer.config", str(config), "--topic", topic, "--group", group,
                               "--from-beginning", "--max-messages", "1", "--timeout-ms", "20000"],
                              capture_output=True, text=True, timeout=120)

    own = console(topics.provider_handovers(PROVIDER_A))
    assert PROBE.decode() in own.stdout, own.stderr[-2000:]
    other = console(topics.provider_handovers(PROVIDER_B))
    assert PROBE.decode() not in other.stdout
    assert f"Not authorized to access topics: [{topics.provider_handovers(PROVIDER_B)}]" in other.stdout + other.stderr


def test_the_strimzi_export_grants_what_the_broker_grants_principal_by_principal(
        broker: TestKafka, tmp_path: Path) -> None:
    run = access(broker, "export", "--format", "strimzi", str(tmp_path))
    assert run.returncode == 0, run.stderr
    manifests = [yaml.safe_load(path.read_text()) for path in sorted(tmp_path.glob("*.yaml"))]
    users = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "KafkaUser"}
    exported_topics = {m["spec"]["topicName"] for m in manifests if m["kind"] == "KafkaTopic"}
    assert set(topics.all_topics(REGISTRY)) == exported_topics
    on_broker = AccessAdmin(broker.admin).grants()
    assert set(users) == {p for p in users} and principals.ADMIN in users
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert grants_of(user) == {g for g in on_broker if g.principal == name}, name
    assert {g.principal for g in on_broker} <= set(users)


def test_a_stopped_provider_loses_write_at_once_and_read_after_the_grace_period(
        broker: TestKafka, tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    shutil.copytree(REPO_ROOT / "deploy" / "registry", directory, ignore=shutil.ignore_patterns("scenarios"))
    providers = json.loads((directory / "providers.json").read_text())
    today = SystemClock().now().date().isoformat()
    for provider in providers:
        if provider["agb"] == PROVIDER_B:
            provider["stopped_on"] = today
    (directory / "providers.json").write_text(json.dumps(providers))
    stopped = load_registry(directory)
    kafka = broker.connection(principals.provider(PROVIDER_B))
    try:
        sync_access(broker.settings(), stopped)
        assert not written(kafka)[topics.provider_feedback(PROVIDER_B)]
        assert read(kafka, described(kafka) & set(TOPICS))[topics.provider_handovers(PROVIDER_B)]
        sync_access(broker.settings(access_read_grace_days=0), stopped)
        assert not read(kafka, described(kafka) & set(TOPICS))[topics.provider_handovers(PROVIDER_B)]
    finally:
        sync_access(broker.settings(), REGISTRY)
    assert written(kafka)[topics.provider_feedback(PROVIDER_B)]


def logs_in(kafka: KafkaConnection) -> bool:
    try:
        AdminClient({**kafka.librdkafka(), "socket.timeout.ms": 5000}).list_topics(timeout=8)
        return True
    except KafkaException:
        return False


def put(broker: TestKafka, topic: str, value: bytes) -> None:
    producer = Producer(broker.admin.librdkafka())
    producer.produce(topic, value, key=b"probe", partition=0)
    assert producer.flush(30) == 0


async def live_consumer(kafka: KafkaConnection, topic: str) -> AIOKafkaConsumer:
    """A consumer as the hub's services make them (aiokafka), reading `topic` from its start: connected once
    it returned the first record."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([AioTopicPartition(topic, 0)])
    await asyncio.wait_for(consumer.getone(), WAIT_S)
    return consumer


async def fetched(consumer: AIOKafkaConsumer, value: bytes, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        if any(record.value == value for records in batches.values() for record in records):
            return True
    return False


def test_a_rotation_cuts_a_live_consumer_off_and_only_the_new_password_logs_in(
        broker: TestKafka, caplog: pytest.LogCaptureFixture) -> None:
    old = broker.connection(ROTATED)
    other = broker.connection(principals.provider(PROVIDER_A))  # its sessions end as often; it must carry on
    own_topic, other_topic = topics.provider_handovers(ROTATED.removeprefix("provider-")), \
        topics.provider_handovers(PROVIDER_A)
    put(broker, own_topic, PROBE)
    caplog.set_level(logging.ERROR, logger="aiokafka")

    async def scenario() -> tuple[subprocess.CompletedProcess, bool, bool]:
        rotated, carrying_on = await live_consumer(old, own_topic), await live_consumer(other, other_topic)
        try:
            run = await asyncio.to_thread(access, broker, "rotate", ROTATED)
            deadline = time.monotonic() + 20 * SESSION_S
            while "SaslAuthenticationFailed" not in caplog.text and time.monotonic() < deadline:
                await rotated.getmany(timeout_ms=500)  # aiokafka logs, and never raises, the refused login
            marker = f"after the cut {time.time()}".encode()
            for topic in (own_topic, other_topic):
                put(broker, topic, marker)
            return run, await fetched(carrying_on, marker, 6 * SESSION_S), await fetched(rotated, marker, 2 * SESSION_S)
        finally:
            for consumer in (rotated, carrying_on):
                # aiokafka's stop re-raises the cancelled fetch that waits out its retry backoff
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer.stop()

    run, other_fetched, rotated_fetched = asyncio.run(scenario())
    new = broker.connection(ROTATED)
    assert run.returncode == 0, run.stderr
    assert new.password != old.password
    assert old.password not in run.stdout + run.stderr and new.password not in run.stdout + run.stderr
    assert "SaslAuthenticationFailed" in caplog.text, "the live consumer's next login was refused"
    assert other_fetched, "a consumer whose password did not change carries on past its sessions' ends"
    assert not rotated_fetched, "the consumer of the old password fetches nothing more"
    assert logs_in(new) and not logs_in(old)
    assert stat.S_IMODE(CredentialStore(broker.secrets).path(ROTATED).stat().st_mode) == 0o600


def test_a_refused_rotation_keeps_the_stored_password_and_it_keeps_working(broker: TestKafka) -> None:
    store = CredentialStore(broker.secrets)
    content, before = store.path(ROTATED).read_bytes(), broker.connection(ROTATED)
    operations = broker.connection(principals.OPERATIONS)  # reads the registry, may not alter a SCRAM user
    run = access(broker, "rotate", ROTATED, env={"VERWIJSHUB_KAFKA_USERNAME": operations.username or "",
                                                 "VERWIJSHUB_KAFKA_PASSWORD": operations.password or ""})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "password not rotated" in run.stderr and "keeps working" in run.stderr, run.stderr
    assert store.path(ROTATED).read_bytes() == content
    assert before.password not in run.stdout + run.stderr
    assert logs_in(before)
