"""The ACL matrix, the Strimzi export, client configurations and secrets, without a broker."""

import json
import stat
from datetime import date, timedelta
from pathlib import Path

import pytest

from schemas.referral import Channel
from services.access.commands import ConfigFormat, client_config_text, rotate_password
from services.access.kafka_admin import AccessError
from services.access.matrix import Operation, Resource, all_principals, allows, grants, who_may
from services.access.strimzi import grants_of, manifests
from services.infra import principals, topics
from services.infra.connection import KafkaConnection
from services.infra.registry_files import load_registry
from services.infra.secrets import CredentialStore, SecretsError, credential_file, principal_of, pseudonym_key
from services.infra.settings import REPO_ROOT, Settings
from services.infra.tls import LocalCa

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
TODAY = date(2026, 11, 24)
GRANTED = grants(REGISTRY, TODAY, timedelta(days=30))
PERSONAL_DATA = [topics.NORMALISED, topics.DEAD_LETTERS, topics.DECISIONS, topics.NOTIFIER_STATE,
                 *(topics.referrals(c) for c in Channel),
                 *(topics.organisation_referrals(o.channel, o.id) for o in REGISTRY.referrers.values()),
                 *(t for t in topics.all_topics(REGISTRY) if t.startswith(("handovers.", "feedback.")))]


def may(principal: str, topic: str, operation: Operation) -> bool:
    return allows(GRANTED, principal, Resource.TOPIC, topic, operation)


def test_a_provider_reads_only_its_own_handovers_and_writes_only_its_own_feedback() -> None:
    first, second = sorted(REGISTRY.providers)[:2]
    me = principals.provider(first)
    readable = {t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.READ)}
    writable = {t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.WRITE)}
    assert readable == {topics.provider_handovers(first)}
    assert writable == {topics.provider_feedback(first)}
    assert not may(me, topics.provider_handovers(second), Operation.DESCRIBE)


def test_a_referrer_organisation_writes_only_its_own_topic_and_reads_its_channels_status() -> None:
    assert {org.channel for org in REGISTRY.referrers.values()} == set(Channel)
    for org in REGISTRY.referrers.values():
        me = principals.referrer(org.id)
        assert {t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.READ)} == {topics.status(org.channel)}
        assert {t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.WRITE)} == {
            topics.organisation_referrals(org.channel, org.id)}


def test_only_the_admin_writes_a_channels_topic_and_the_gateway_writes_every_organisations_own() -> None:
    """The topic names who wrote a record (intake's sender check): a channel's topic has no writer but the admin (a
    super user, no grant), an organisation's own topic only that organisation and the gateway, which intake reads
    by prefix."""
    for channel in Channel:
        assert not [g for g in GRANTED if g.name == topics.referrals(channel) and g.operation is Operation.WRITE]
        assert may(principals.service("intake"), topics.referrals(channel), Operation.READ)
    for org in REGISTRY.referrers.values():
        own = topics.organisation_referrals(org.channel, org.id)
        assert {g.principal for g in GRANTED if g.name == own and g.operation is Operation.WRITE} == {
            principals.GATEWAY, principals.referrer(org.id)}
        assert may(principals.service("intake"), own, Operation.READ)
        assert not may(principals.GATEWAY, own, Operation.READ)
    assert who_may(topics.organisation_referrals(Channel.GP, "huisartsen-centrum"))["publish"] == [
        "referrer-<org>", principals.GATEWAY]


def test_operations_reads_no_topic_with_personal_data_but_describes_all() -> None:
    for topic in PERSONAL_DATA:
        assert not may(principals.OPERATIONS, topic, Operation.READ), topic
    assert all(may(principals.OPERATIONS, t, Operation.DESCRIBE) for t in topics.all_topics(REGISTRY))


def test_operations_describes_the_configuration_of_the_handover_topics_only() -> None:
    """Their retention, for AT RISK OF LOSS; no other topic's configuration, and only operations gets it."""
    every = topics.all_topics(REGISTRY)
    described = {t for t in every if may(principals.OPERATIONS, t, Operation.DESCRIBE_CONFIGS)}
    assert described == {t for t in every if t.startswith("handovers.")} and described
    assert {g.principal for g in GRANTED if g.operation is Operation.DESCRIBE_CONFIGS} == {principals.OPERATIONS}


def test_operations_reads_only_what_carries_no_personal_data() -> None:
    """The status topics, the registry (teams and providers, for the recipients view), the notifier's clock
    counts per recipient and the pending dead letters' counts; the notifier alone writes its clock counts, the
    admin alone (a super user) the dead letters' counts."""
    readable = {t for t in topics.all_topics(REGISTRY) if may(principals.OPERATIONS, t, Operation.READ)}
    assert readable == {*(topics.status(c) for c in Channel), topics.REGISTRY, topics.OPS_RECIPIENTS,
                        topics.OPS_DEAD_LETTERS}
    assert who_may(topics.OPS_DEAD_LETTERS) == {"publish": [], "subscribe": ["verwijshub-ops"]}
    assert not readable & set(PERSONAL_DATA)
    assert who_may(topics.OPS_RECIPIENTS) == {"publish": ["verwijshub-notifier"], "subscribe": ["verwijshub-ops"]}
    assert not may(principals.OPERATIONS, topics.REGISTRY, Operation.WRITE)


def test_analytics_reads_decisions_statuses_feedback_and_alerts_writes_nothing_and_only_describes_dead_letters() -> None:
    me = principals.ANALYTICS
    readable = {t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.READ)}
    assert readable == {topics.DECISIONS, topics.ALERTS, *(topics.status(c) for c in Channel),
                        *(t for t in topics.all_topics(REGISTRY) if t.startswith("feedback."))}
    assert not [t for t in topics.all_topics(REGISTRY) if may(me, t, Operation.WRITE)]
    assert may(me, topics.DEAD_LETTERS, Operation.DESCRIBE) and not may(me, topics.DEAD_LETTERS, Operation.READ)
    assert allows(GRANTED, me, Resource.GROUP, principals.service("analytics"), Operation.READ)
    assert principals.service("analytics") == me


def test_routing_never_reads_a_handover_and_intake_never_a_decision() -> None:
    handovers = [t for t in topics.all_topics(REGISTRY) if t.startswith("handovers.")]
    assert not any(may(principals.service("routing"), t, Operation.READ) for t in handovers)
    assert not may(principals.service("intake"), topics.DECISIONS, Operation.READ)


def test_group_prefixes_of_two_teams_never_overlap() -> None:
    assert allows(GRANTED, "wij-centrum", Resource.GROUP, "wij-centrum.epd", Operation.READ)
    assert not allows(GRANTED, "wij-centrum", Resource.GROUP, "wij-centrum-oost.epd", Operation.READ)
    assert not allows(GRANTED, "wij-centrum", Resource.GROUP, "verwijshub-notifier", Operation.READ)


def test_a_stopped_provider_loses_write_on_its_day_and_read_after_the_grace_period() -> None:
    agb = sorted(REGISTRY.providers)[0]
    stopped = REGISTRY.model_copy(update={"providers": {**REGISTRY.providers, agb: REGISTRY.providers[agb].model_copy(
        update={"stopped_on": TODAY})}})
    me = principals.provider(agb)
    on_the_day = grants(stopped, TODAY, timedelta(days=30))
    assert not allows(on_the_day, me, Resource.TOPIC, topics.provider_feedback(agb), Operation.WRITE)
    assert allows(on_the_day, me, Resource.TOPIC, topics.provider_handovers(agb), Operation.READ)
    later = grants(stopped, TODAY + timedelta(days=30), timedelta(days=30))
    assert not allows(later, me, Resource.TOPIC, topics.provider_handovers(agb), Operation.READ)
    assert not [g for g in later if g.principal == me]


def test_the_strimzi_users_grant_exactly_the_matrix_and_topics_are_replicated_three_times() -> None:
    files = manifests(all_principals(REGISTRY), GRANTED, topics.all_topics(REGISTRY), 6)
    users = [m for m in files.values() if m["kind"] == "KafkaUser"]
    assert {u["metadata"]["name"] for u in users} == {p.name for p in all_principals(REGISTRY)}
    assert set().union(*(grants_of(u) for u in users)) == set(GRANTED)
    admin = next(u for u in users if u["metadata"]["name"] == principals.ADMIN)
    assert "authorization" not in admin["spec"]
    compacted = files[f"topic-{topics.NOTIFIER_STATE}.yaml"]["spec"]
    assert compacted["replicas"] == 3 and compacted["config"] == {"min.insync.replicas": "2",
                                                                   "cleanup.policy": "compact"}


def test_the_asyncapi_access_names_who_may_publish_and_subscribe() -> None:
    assert who_may("handovers.wij.centrum.v1") == {"publish": ["verwijshub-notifier"],
                                                   "subscribe": ["verwijshub-recipients", "wij-<id>"]}
    assert who_may("feedback.provider.12345678.v1")["publish"] == ["provider-<agb>", "verwijshub-recipients"]
    assert who_may("referrals.dlq.v1")["subscribe"] == []
    asyncapi = json.loads((REPO_ROOT / "schemas" / "asyncapi.json").read_text())
    assert asyncapi["servers"]["development"]["protocol"] == "kafka-secure"
    assert all("x-access" in channel for channel in asyncapi["channels"].values())


def test_client_configs_carry_bootstrap_mechanism_user_password_and_ca() -> None:
    kafka = KafkaConnection("127.0.0.1:9092", username="wij-centrum", password="s3cret", ca_file=Path("/x/ca.pem"))
    librdkafka = client_config_text(kafka, ConfigFormat.LIBRDKAFKA)
    assert "security.protocol=sasl_ssl\n" in librdkafka and "sasl.mechanisms=SCRAM-SHA-512\n" in librdkafka
    assert "sasl.password=s3cret\n" in librdkafka and "ssl.ca.location=/x/ca.pem\n" in librdkafka
    java = client_config_text(kafka, ConfigFormat.JAVA)
    assert 'username="wij-centrum" password="s3cret";' in java and "ssl.truststore.type=PEM\n" in java
    assert "VERWIJSHUB_KAFKA_USERNAME=wij-centrum\n" in client_config_text(kafka, ConfigFormat.ENV)
    assert "s3cret" not in repr(kafka)


def test_secrets_are_generated_private_and_the_public_pseudonym_key_is_refused(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "secrets")
    first = store.ensure(["a", "b"])
    assert store.ensure(["a", "b"]) == first and first["a"] != first["b"] and len(first["a"]) >= 32
    store.store("a", "replaced")
    assert store.all() == {**first, "a": "replaced"}
    assert stat.S_IMODE(store.path("a").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path("a").parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    key = pseudonym_key(tmp_path / "secrets", None)
    assert len(bytes.fromhex(key)) == 32 and pseudonym_key(tmp_path / "secrets", None) == key
    assert stat.S_IMODE((tmp_path / "secrets" / "pseudonym.key").stat().st_mode) == 0o600
    with pytest.raises(SecretsError):
        pseudonym_key(tmp_path, "local-development-key-change-me")


def test_each_principal_has_a_credential_file_of_its_own_and_a_process_loads_only_its_own(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    passwords = CredentialStore(secrets_dir).ensure([principals.ADMIN, principals.GATEWAY, principals.OPERATIONS])
    files = sorted((secrets_dir / "credentials").iterdir())
    assert [f.name for f in files] == sorted(f"{p}.password" for p in passwords)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert [f.read_text() for f in files] == [passwords[principal_of(f)] for f in files]
    given = Settings(_env_file=None, kafka_bootstrap="127.0.0.1:1", secrets_dir=tmp_path / "elsewhere",
                     kafka_credential_file=credential_file(secrets_dir, principals.GATEWAY))
    gateway = given.connection(principals.GATEWAY)
    assert (gateway.username, gateway.password) == (principals.GATEWAY, passwords[principals.GATEWAY])
    assert given.connection(principals.ADMIN).password == passwords[principals.GATEWAY], "it is the gateway, always"
    own_dir = Settings(_env_file=None, kafka_bootstrap="127.0.0.1:1", secrets_dir=secrets_dir)
    assert own_dir.connection(principals.OPERATIONS).password == passwords[principals.OPERATIONS]
    (secrets_dir / "credentials" / f"{principals.OPERATIONS}.password").unlink()
    with pytest.raises(SecretsError, match="no credential file"):
        own_dir.connection(principals.OPERATIONS)


def test_an_earlier_data_directorys_credentials_json_becomes_one_file_per_principal(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "credentials.json").write_text(json.dumps({principals.ADMIN: "a" * 32, "wij-centrum": "c" * 32}))
    settings = Settings(_env_file=None, kafka_bootstrap="127.0.0.1:1", secrets_dir=secrets_dir)
    assert settings.connection("wij-centrum").password == "c" * 32
    assert not (secrets_dir / "credentials.json").exists()
    assert CredentialStore(secrets_dir).all() == {principals.ADMIN: "a" * 32, "wij-centrum": "c" * 32}
    assert stat.S_IMODE(credential_file(secrets_dir, principals.ADMIN).stat().st_mode) == 0o600


class FakeAdmin:
    """The broker side of a rotation: what the store held when each password was set, and refusals on request."""

    def __init__(self, store: CredentialStore, refuse: bool = False) -> None:
        self.store, self.refuse, self.calls = store, refuse, []

    def set_passwords(self, passwords: dict[str, str]) -> None:
        self.calls.append((dict(passwords), self.store.all()))
        if self.refuse:
            raise AccessError("provider-1: Cluster authorization failed")


def test_a_rotation_sets_the_broker_first_and_stores_only_what_the_broker_took(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "secrets")
    before = store.ensure(["provider-1", "wij-centrum"])
    admin = FakeAdmin(store)
    rotate_password(admin, store, "provider-1")
    [(sent, stored_then)] = admin.calls
    assert stored_then == before, "the store still held the old password while the broker was asked"
    assert set(sent) == {"provider-1"} and sent["provider-1"] != before["provider-1"]
    assert store.all() == {**before, "provider-1": sent["provider-1"]}
    assert stat.S_IMODE(store.path("provider-1").stat().st_mode) == 0o600


def test_a_refused_rotation_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "secrets")
    store.ensure(["provider-1"])
    content = store.path("provider-1").read_bytes()
    admin = FakeAdmin(store, refuse=True)
    with pytest.raises(AccessError, match="old password stays") as refused:
        rotate_password(admin, store, "provider-1")
    assert store.path("provider-1").read_bytes() == content
    [(sent, _)] = admin.calls
    assert sent["provider-1"] not in str(refused.value) and store.password("provider-1") not in str(refused.value)


def test_a_store_that_cannot_be_written_gives_the_broker_the_old_password_back(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "secrets")
    before = store.ensure(["provider-1"])
    admin = FakeAdmin(store)
    store.path("provider-1").with_name(store.path("provider-1").name + ".tmp").mkdir()  # the new file cannot be written beside the old
    with pytest.raises(AccessError, match="old password again"):
        rotate_password(admin, store, "provider-1")
    assert store.all() == before
    assert [sent for sent, _ in admin.calls][1] == before


def test_the_local_ca_keeps_private_keys_private(tmp_path: Path) -> None:
    ca = LocalCa(tmp_path / "secrets")
    pem = ca.ensure("127.0.0.1")
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600 and stat.S_IMODE(ca.ca_key.stat().st_mode) == 0o600
    assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----") and ca.ca_cert.read_text().count("CERTIFICATE") == 2
    assert ca.ca_key == tmp_path / "secrets" / "ca" / "ca.key", "apart from what the services are given"
    assert stat.S_IMODE(ca.ca_key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


def test_an_earlier_data_directorys_ca_key_moves_out_of_the_services_sight_and_still_signs(tmp_path: Path) -> None:
    ca = LocalCa(tmp_path / "secrets")
    ca.ensure("127.0.0.1")
    key = ca.ca_key.read_bytes()
    ca.ca_key.rename(tmp_path / "secrets" / "ca.key")  # where earlier versions kept it
    gateway = ca.issue_gateway_pem("127.0.0.1")
    assert gateway == ca.gateway_pem_path("127.0.0.1") and gateway.is_file()
    assert ca.ca_key.read_bytes() == key and not (tmp_path / "secrets" / "ca.key").exists()


def test_the_gateways_certificate_is_issued_only_by_a_ca_whose_key_is_here(tmp_path: Path) -> None:
    ours = LocalCa(tmp_path / "ours")
    ours.ensure("127.0.0.1")
    theirs = LocalCa(tmp_path / "theirs")
    theirs.directory.mkdir()
    theirs.ca_cert.write_bytes(ours.ca_cert.read_bytes())  # an external cluster's CA: its certificate alone
    assert theirs.issue_gateway_pem("127.0.0.1") is None
    assert sorted(p.name for p in theirs.directory.iterdir()) == ["ca.pem"]
