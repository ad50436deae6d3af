"""Referrers bound to their organisation, on the session's broker and hub, with a gateway of this module's own
(mutual TLS MLLP by default, a connection cap of two, three MLLP messages per organisation a minute), spoken to by
third-party clients only: curl (HTTPS), kcat (Kafka, through deploy/kcat), openssl s_client (MLLP over TLS).

A GP practice's credential cannot send as another practice's GP, on HTTPS or Kafka; MLLP takes no connection
without a client certificate of the hub's CA, none with a revoked one, none past the cap, and answers a sender past
its rate with a code;
a product published to `registry.v1` is accepted by the running gateway."""

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from fhir.resources.R4B.operationoutcome import OperationOutcome

from schemas.referral import Channel
from schemas.registry import REGISTRY_KEY, RegistrySnapshot
from schemas.status import StatusEvent
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.kafka import encode, read_to_end
from services.infra.registry_files import registry_from_contents
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, RunningHub, TestKafka, _free_port, start_hub, stop_hub
from tests.gateway_clients import curl, openssl_mllp
from tests.kafka_client import header, produce, read_committed, read_topic
from tests.referrals import SPECIALIST_EXAMPLE_ID, gp_bytes, random_bsn
from tests.system_tools import require

pytestmark = pytest.mark.e2e
CENTRUM, PADDEPOEL = "huisartsen-centrum", "huisartsen-paddepoel"
CENTRUM_GP, PADDEPOEL_GP = "01012345", "01023456"
"""Two GP practices of the shipped registry and a practitioner each lists."""
SPECIALIST = (REPO_ROOT / "schemas" / "examples" / "specialist" / "valid-product.hl7").read_bytes()
CAP, RATE = 2, 3
DIRECTORY = ARTIFACTS / "referrer-orgs"


def cli(kafka: TestKafka, *args: str) -> subprocess.CompletedProcess[str]:
    """`verwijshub ARGS` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **kafka.env()},
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class Gateway:
    kafka: TestKafka
    https: str
    mllp_port: int
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.kafka.secrets / "ca.pem"

    def post(self, organisation: str, body: bytes):
        """POST a FHIR message with the organisation's token (issued once per module)."""
        if organisation not in self.tokens:
            self.tokens[organisation] = TokenStore(self.kafka.secrets).issue(principals.referrer(organisation))
        return curl(self.https + "/fhir/$process-message", self.ca, self.tokens[organisation], body)


@pytest.fixture(scope="module")
def gateway(hub: RunningHub) -> Iterator[Gateway]:
    """A gateway of its own beside the session hub (whose intake, routing and notifier take what it writes)."""
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    https_port, mllp_port = _free_port(), _free_port()
    log = DIRECTORY / "gateway.log"
    log.unlink(missing_ok=True)
    process = start_hub(hub.broker, log, "gateway", env={
        "VERWIJSHUB_GATEWAY_PORT": str(https_port), "VERWIJSHUB_MLLP_PORT": str(mllp_port),
        "VERWIJSHUB_MLLP_MAX_CONNECTIONS": str(CAP), "VERWIJSHUB_MLLP_RATE_PER_MINUTE": str(RATE)})
    try:
        yield Gateway(hub.broker, f"https://127.0.0.1:{https_port}", mllp_port, log)
    finally:
        stop_hub(process)


def statuses(kafka: TestKafka, referrer_referral_id: str, count: int, settle_s: float = 0.0) -> list[StatusEvent]:
    records = asyncio.run(read_topic(kafka.admin, topics.status(Channel.GP),
                                     lambda r: r.key == referrer_referral_id.encode(), count, settle_s=settle_s))
    return [StatusEvent.model_validate_json(r.value) for r in records]


def test_a_gp_practices_token_cannot_send_as_another_practices_gp_and_cannot_take_its_referral_id(
        gateway: Gateway) -> None:
    referral_id = f"ZD-{uuid.uuid4().hex[:12]}"
    posing = gateway.post(PADDEPOEL, gp_bytes(referral_id=referral_id, bsn=random_bsn(), practitioner_agb=CENTRUM_GP))
    assert posing.status == 422
    (issue,) = OperationOutcome.model_validate(posing.json()).issue
    assert (issue.details.coding[0].code, issue.expression) == ("SENDER_NOT_ALLOWED", ["Practitioner.identifier"])
    own = gateway.post(PADDEPOEL, gp_bytes(referral_id=f"{referral_id}-own", bsn=random_bsn(),
                                           practitioner_agb=PADDEPOEL_GP))
    assert own.status == 202
    genuine = gateway.post(CENTRUM, gp_bytes(referral_id=referral_id, bsn=random_bsn()))
    assert genuine.status == 202  # the id was not taken: the refused message was never written
    events = statuses(gateway.kafka, referral_id, 3, settle_s=1.0)
    assert [e.status.value for e in events] == ["received", "routed", "handed-over"]
    written = asyncio.run(read_to_end(gateway.kafka.admin, topics.organisation_referrals(Channel.GP, PADDEPOEL)))
    assert f"{referral_id}-own".encode() in {key for key, _ in written} and referral_id.encode() not in {
        key for key, _ in written}


def test_a_gp_practices_kafka_credential_cannot_send_as_another_practices_gp(gateway: Gateway,
                                                                           tmp_path: Path) -> None:
    require("kcat")
    kcat = str(REPO_ROOT / "deploy" / "kcat")
    config = tmp_path / "paddepoel.conf"
    made = cli(gateway.kafka, "access", "client-config", principals.referrer(PADDEPOEL))
    assert made.returncode == 0, made.stderr
    config.write_text(made.stdout)
    config.chmod(0o600)
    referral_id = f"ZD-{uuid.uuid4().hex[:12]}"
    message = tmp_path / "posing.json"
    message.write_bytes(gp_bytes(referral_id=referral_id, bsn=random_bsn(), practitioner_agb=CENTRUM_GP))
    alerts_before = _sender_alerts(gateway.kafka)

    def kcat_produce(topic: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([kcat, "-F", str(config), "-P", "-t", topic, "-k", referral_id, str(message)],
                              capture_output=True, timeout=60)

    for elsewhere in (topics.organisation_referrals(Channel.GP, CENTRUM), topics.referrals(Channel.GP)):
        refused = kcat_produce(elsewhere)  # another practice's topic, the channel's: the broker says no
        assert refused.returncode != 0 and b"authorization failed" in refused.stderr.lower(), refused.stderr
    own = kcat_produce(topics.organisation_referrals(Channel.GP, PADDEPOEL))
    assert own.returncode == 0, own.stderr
    (rejected,) = statuses(gateway.kafka, referral_id, 1, settle_s=1.0)
    assert rejected.status.value == "rejected" and [e.code.value for e in rejected.errors] == ["SENDER_NOT_ALLOWED"]
    letters = [r for r in asyncio.run(read_committed(gateway.kafka.admin, [topics.DEAD_LETTERS]))
               if r.key == referral_id.encode()]
    assert [header(r, "origin-topic") for r in letters] == [topics.organisation_referrals(Channel.GP, PADDEPOEL)]
    assert [e["code"] for e in json.loads(header(letters[0], "errors") or "[]")] == ["SENDER_NOT_ALLOWED"]
    assert _sender_alerts(gateway.kafka) == alerts_before + 1
    asyncio.run(produce(gateway.kafka.connection(principals.referrer(CENTRUM)),
                           topics.organisation_referrals(Channel.GP, CENTRUM),
                           gp_bytes(referral_id=referral_id, bsn=random_bsn()), key=referral_id.encode()))
    # its own is received (and goes on: routed and handed over may already follow it)
    assert [e.status.value for e in statuses(gateway.kafka, referral_id, 2)][:2] == ["rejected", "received"]


def _sender_alerts(kafka: TestKafka) -> int:
    return len([r for r in asyncio.run(read_committed(kafka.admin, [topics.ALERTS]))
                if json.loads(r.value).get("kind") == "sender-not-allowed"])


def _specialist(n: int, referral_id: str | None = None) -> bytes:
    """The specialist example with control id MSG-<n> and a referral id of its own (or `referral_id`)."""
    return SPECIALIST.replace(SPECIALIST_EXAMPLE_ID.encode(), (referral_id or f"UMCG-{uuid.uuid4().hex[:10]}").encode()
                              ).replace(b"MSG-0001", f"MSG-{n}".encode())


@pytest.fixture(scope="module")
def umcg_pem(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UMCG's MLLP client certificate, issued as an operator issues it."""
    pem = tmp_path_factory.mktemp("mllp") / "umcg.pem"
    issued = cli(gateway.kafka, "access", "certificate", principals.referrer("umcg"), "--out", str(pem))
    assert issued.returncode == 0, issued.stderr
    return pem


def test_mllp_without_a_client_certificate_is_refused_and_with_one_answered(gateway: Gateway, umcg_pem: Path
                                                                           ) -> None:
    assert openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(1)]) == []  # closed, nothing answered
    (ack,) = openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(2)], umcg_pem)
    assert ack.code == "AA" and ack.segment("MSA")[0][2] == "MSG-2"


def test_past_the_connection_cap_a_new_connection_is_refused(gateway: Gateway, umcg_pem: Path) -> None:
    """CAP connections held open (each answered once, so the gateway has taken them), then one more with openssl."""
    context = ssl.create_default_context(cafile=str(gateway.ca))
    context.load_cert_chain(umcg_pem)
    holding: list[ssl.SSLSocket] = []

    def hold(n: int) -> ssl.SSLSocket | None:
        """A connection the gateway answered (so it holds it), or None: refused (an earlier test's connection may
        not have been seen closing yet)."""
        connection = context.wrap_socket(socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=30),
                                         server_hostname="127.0.0.1")
        try:
            connection.sendall(b"\x0b" + _specialist(n) + b"\x1c\x0d")
            if b"MSA|AA|" in connection.recv(65536):
                return connection
        except (ssl.SSLError, ConnectionError):
            pass
        connection.close()
        return None

    try:
        deadline = time.monotonic() + 10
        while len(holding) < CAP and time.monotonic() < deadline:
            if (held := hold(10 + len(holding))) is not None:
                holding.append(held)
            else:
                time.sleep(0.1)
        assert len(holding) == CAP
        assert openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(20)], umcg_pem) == []
        assert '"reason": "connection cap"' in gateway.log.read_text()
    finally:
        for connection in holding:
            connection.close()


def test_a_revoked_mllp_certificate_is_refused_and_another_still_answered(gateway: Gateway, umcg_pem: Path,
                                                                          tmp_path: Path) -> None:
    """A second UMCG certificate revoked by its serial (`access revoke-certificate --serial`): once the gateway
    reloaded the CA's revocation list, openssl s_client with it gets no answer; UMCG's other certificate and
    Martini's are still answered (an answer of any code: the rate of three a minute may make it AR)."""
    pems = {name: tmp_path / f"{name}.pem" for name in ("umcg-2", "martini")}
    for name, organisation in (("umcg-2", "umcg"), ("martini", "martini")):
        issued = cli(gateway.kafka, "access", "certificate", principals.referrer(organisation), "--out",
                     str(pems[name]))
        assert issued.returncode == 0, issued.stderr
    serial = format(x509.load_pem_x509_certificates(pems["umcg-2"].read_bytes())[0].serial_number, "X")
    revoked = cli(gateway.kafka, "access", "revoke-certificate", principals.referrer("umcg"), "--serial", serial)
    assert revoked.returncode == 0 and serial in "".join(revoked.stderr.split()), revoked.stderr  # rich wraps it
    deadline, answers = time.monotonic() + 60, [None]
    while answers and time.monotonic() < deadline:  # the gateway looks for a new list every second
        answers = openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(40)], pems["umcg-2"], timeout_s=10)
    assert answers == []
    assert '"event": "mllp revocation list loaded"' in gateway.log.read_text()
    assert len(openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(41)], umcg_pem)) == 1
    assert len(openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(42)], pems["martini"])) == 1


def test_past_the_senders_rate_mllp_answers_ar_rate_limited_and_stores_nothing(gateway: Gateway, umcg_pem: Path
                                                                              ) -> None:
    ids = [f"UMCG-{uuid.uuid4().hex[:10]}" for _ in range(RATE + 1)]
    acks = openssl_mllp(gateway.mllp_port, gateway.ca, [_specialist(30 + n, rid) for n, rid in enumerate(ids)],
                        umcg_pem)
    codes = [ack.code for ack in acks]
    assert len(codes) == len(ids) and "AR" in codes, codes
    first_refused = codes.index("AR")
    assert set(codes[:first_refused]) <= {"AA"} and set(codes[first_refused:]) == {"AR"}, codes
    assert all(ack.segment("ERR")[0][5] == "RATE_LIMITED^^VERWIJSHUB" for ack in acks[first_refused:])
    written = {key for key, _ in asyncio.run(read_to_end(gateway.kafka.admin,
                                                          topics.organisation_referrals(Channel.SPECIALIST, "umcg")))}
    assert {rid.encode() for rid in ids[:first_refused]} <= written
    assert not {rid.encode() for rid in ids[first_refused:]} & written


@contextlib.contextmanager
def published_product(kafka: TestKafka, code: str) -> Iterator[None]:
    """The product `code` added to the registry in force and published to `registry.v1` as `registry publish` does; the
    registry before it published back afterwards, so the session hub goes on as it was."""
    records = asyncio.run(read_to_end(kafka.admin, topics.REGISTRY))
    before = RegistrySnapshot.model_validate_json(next(v for k, v in reversed(records) if k == REGISTRY_KEY and v))
    products = json.loads(before.files["products.json"]) + [{"code": code, "name": "Live gepubliceerd (test)"}]
    _publish(kafka, {**before.files, "products.json": json.dumps(products)})
    try:
        yield
    finally:
        _publish(kafka, before.files)


def _publish(kafka: TestKafka, files: dict[str, str]) -> None:
    snapshot = RegistrySnapshot(version=registry_from_contents(files).version, files=files,
                                published_at=SystemClock().now())
    asyncio.run(produce(kafka.admin, topics.REGISTRY, encode(snapshot), key=REGISTRY_KEY))


def test_a_product_published_to_the_registry_is_accepted_by_the_running_gateway(gateway: Gateway) -> None:
    referral_id, code = f"ZD-{uuid.uuid4().hex[:12]}", f"9{uuid.uuid4().int % 10_000:04d}"
    message = gp_bytes(referral_id=referral_id, bsn=random_bsn(), product=code)
    unknown = gateway.post(CENTRUM, message)
    assert unknown.status == 422 and "PRODUCT_UNKNOWN" in unknown.body.decode()
    with published_product(gateway.kafka, code):
        deadline, answer = time.monotonic() + 30, gateway.post(CENTRUM, message)
        while answer.status == 422 and time.monotonic() < deadline:  # until the gateway read the new registry
            assert "PRODUCT_UNKNOWN" in answer.body.decode()
            time.sleep(0.2)
            answer = gateway.post(CENTRUM, message)
        assert answer.status == 202, answer.body
        assert statuses(gateway.kafka, referral_id, 1)[0].status.value == "received"  # intake knows it too
    assert '"registry in force"' in gateway.log.read_text()
