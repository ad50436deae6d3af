"""The referrer gateway on a real broker, spoken to by third-party clients only: curl for HTTPS (FHIR and JSON),
the hl7 package's mllp_send for HL7 v2 (plain MLLP, allowed from this machine as UMCG), schemathesis driven by the committed OpenAPI document. The hub runs as
real processes (intake, routing, notifier and the gateway), so an accepted referral is followed to its handover."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from schemas.referral import Channel, hub_referral_id
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka, _free_port, start_hub, stop_hub
from tests.gateway_clients import curl, mllp_send
from tests.kafka_client import read_topic
from tests.referrals import EXAMPLE_BSN, PLAIN_MLLP, random_bsn, sender

pytestmark = pytest.mark.e2e
EXAMPLES = REPO_ROOT / "schemas" / "examples"
ZORGDOMEIN_DOCUMENT = EXAMPLES / "gp" / "zorgdomein-document-basis-jeugdhulp.json"


class Gateway:
    def __init__(self, kafka: TestKafka, https_port: int, mllp_port: int) -> None:
        self.kafka, self.https_port, self.mllp_port = kafka, https_port, mllp_port
        self.base = f"https://127.0.0.1:{https_port}"
        self.ca = kafka.secrets / "ca.pem"
        self.tokens: dict[Channel, str] = {}

    def token(self, channel: Channel) -> str:
        """The token of the organisation that sends the channel's examples."""
        if channel not in self.tokens:
            self.tokens[channel] = TokenStore(self.kafka.secrets).issue(principals.referrer(sender(channel).id))
        return self.tokens[channel]

    def post(self, path: str, body: bytes, channel: Channel, content_type: str = "application/fhir+json"):
        return curl(self.base + path, self.ca, self.token(channel), body, content_type)

    def statuses(self, channel: Channel, referral_id: str, count: int, settle_s: float = 0.0) -> list[str]:
        return [event["status"] for event in self.status_events(channel, referral_id, count, settle_s)]

    def status_events(self, channel: Channel, referral_id: str, count: int, settle_s: float = 0.0) -> list[dict]:
        records = asyncio.run(read_topic(self.kafka.admin, topics.status(channel),
                                         lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                         timeout_s=60, settle_s=settle_s))
        return [json.loads(r.value) for r in records]


@pytest.fixture(scope="module")
def gateway(kafka: TestKafka):
    directory = ARTIFACTS / "gateway"
    directory.mkdir(parents=True, exist_ok=True)
    https_port, mllp_port = _free_port(), _free_port()
    token_cli = subprocess.run([sys.executable, "-m", "services.cli", "access", "token",
                                principals.referrer(sender(Channel.GP).id)],
                               env={**os.environ, **kafka.env()}, capture_output=True, text=True,
                               cwd=REPO_ROOT, timeout=60)
    assert token_cli.returncode == 0, token_cli.stderr
    process = start_hub(kafka, directory / "gateway-hub.log", "intake", "routing", "notifier", "gateway",
                        env={"VERWIJSHUB_GATEWAY_PORT": str(https_port), "VERWIJSHUB_MLLP_PORT": str(mllp_port),
                             **PLAIN_MLLP})
    running = Gateway(kafka, https_port, mllp_port)
    running.tokens[Channel.GP] = token_cli.stdout.strip()
    try:
        yield running
    finally:
        stop_hub(process)


def test_a_zorgdomein_document_is_accepted_handed_over_and_a_redelivery_has_one_effect(gateway: Gateway) -> None:
    document = ZORGDOMEIN_DOCUMENT.read_bytes()
    first = gateway.post("/fhir/Bundle", document, Channel.GP)
    again = gateway.post("/fhir/Bundle", document, Channel.GP)
    assert first.status == 201 and first.headers["content-type"].startswith("application/fhir+json")
    assert (again.status, again.body, again.headers["location"]) == (201, first.body, first.headers["location"])
    referral_id = first.headers["location"].rsplit("/", 1)[1]
    assert OperationOutcome.model_validate(first.json()).issue[0].severity == "information"
    statuses = gateway.statuses(Channel.GP, referral_id, 3, settle_s=3.0)
    assert statuses == ["received", "routed", "handed-over"]  # once, though delivered twice
    task = curl(gateway.base + first.headers["location"], gateway.ca, gateway.token(Channel.GP))
    assert task.status == 200
    assert (task.json()["status"], task.json()["businessStatus"]["coding"][0]["code"]) == ("requested", "handed-over")


@pytest.mark.parametrize(("stu3", "r4", "recipient_kind"), [
    ("zorgdomein-stu3-stylesheet.json", "zorgdomein-document-basis-jeugdhulp.json", "wij-team"),
    ("zorgdomein-stu3-referralrequest-coverage.json", "zorgdomein-r4-servicerequest-coverage.json", "provider"),
])
def test_a_zorgdomein_stu3_document_is_accepted_and_routed_as_its_r4_twin(gateway: Gateway, stu3: str, r4: str,
                                                                         recipient_kind: str) -> None:
    """ZorgDomein delivers STU3 (a stylesheet Binary with `content`, a Coverage with `grouping`, a ReferralRequest):
    201, and the referral goes where the same document in R4 goes. Each twin under a ZD number and youth of its own,
    so both are referrals of their own."""
    answers, routed = [], []
    for name in (stu3, r4):
        document = (EXAMPLES / "gp" / name).read_text()
        zd_number = json.loads(document)["entry"][0]["resource"]["identifier"]["value"]
        unique = f"ZD{uuid.uuid4().int % 10**9:09d}"
        answers.append(gateway.post("/fhir/Bundle", document.replace(zd_number, unique).replace(
            EXAMPLE_BSN, random_bsn()).encode(), Channel.GP, "application/fhir+json; charset=UTF-8"))  # ZorgDomein's
    assert [answer.status for answer in answers] == [201, 201], [answer.body for answer in answers]
    for answer in answers:
        events = gateway.status_events(Channel.GP, answer.headers["location"].rsplit("/", 1)[1], 3)
        assert [event["status"] for event in events] == ["received", "routed", "handed-over"]
        routed.append(events[1]["detail"])
    assert routed[0] == routed[1] and routed[0].endswith(f"({recipient_kind})"), routed


def test_curl_posts_a_fhir_message_valid_and_invalid(gateway: Gateway) -> None:
    valid = gateway.post("/fhir/$process-message", (EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_bytes(),
                         Channel.GP)
    assert valid.status == 202 and valid.headers["location"].startswith("/fhir/Task/")
    invalid = gateway.post("/fhir/$process-message", (EXAMPLES / "gp" / "invalid-bsn-and-agb.json").read_bytes(),
                           Channel.GP)
    assert invalid.status == 422 and invalid.headers["content-type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate(invalid.json())
    found = {(i.details.coding[0].code, i.expression[0]) for i in outcome.issue}
    assert found == {("BSN_INVALID", "Patient.identifier"), ("AGB_INVALID", "Practitioner.identifier")}
    unreadable = gateway.post("/fhir/$process-message", b'{"resourceType": "Bundle", "type": 7}', Channel.GP)
    assert unreadable.status == 400
    assert OperationOutcome.model_validate(unreadable.json()).issue[0].code == "structure"


@pytest.mark.parametrize(("channel", "valid", "invalid", "codes"), [
    (Channel.GI, "valid-ots.json", "invalid-bsn-and-product.json", {"BSN_INVALID", "PRODUCT_UNKNOWN"}),
    (Channel.GGD, "valid-school.json", "invalid-no-agb-or-big.json", {"AGB_INVALID"}),
    (Channel.COURT, "valid-divorce.json", "invalid-no-order-bad-postcode.json", {"SCHEMA_INVALID"}),
])
def test_curl_posts_each_json_channels_document(gateway: Gateway, channel: Channel, valid: str, invalid: str,
                                               codes: set[str]) -> None:
    accepted = gateway.post(f"/referrals/{channel}", (EXAMPLES / channel / valid).read_bytes(), channel,
                            "application/json")
    assert accepted.status == 202, accepted.body
    assert accepted.json()["status"] == "submitted" and accepted.headers["location"] == accepted.json()["location"]
    refused = gateway.post(f"/referrals/{channel}", (EXAMPLES / channel / invalid).read_bytes(), channel,
                           "application/json")
    assert refused.status in (400, 422) and refused.json()["rejected"] is True
    assert {e["code"] for e in refused.json()["errors"]} == codes
    assert all({"code", "location", "message"} <= set(e) for e in refused.json()["errors"])


def test_a_referrers_credentials_hold_only_for_its_own_channel_and_its_own_tasks(gateway: Gateway) -> None:
    gi_document = (EXAMPLES / "gi" / "valid-ots.json").read_bytes()
    assert curl(gateway.base + "/referrals/gi", gateway.ca, gateway.token(Channel.GP), gi_document,
                "application/json").status == 403
    gp_message = (EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_bytes()
    fhir = gateway.base + "/fhir/$process-message"
    assert curl(fhir, gateway.ca, gateway.token(Channel.GI), gp_message).status == 403
    assert curl(gateway.base + "/referrals/gi", gateway.ca, None, gi_document, "application/json").status == 401
    assert curl(gateway.base + "/referrals/gi", gateway.ca, "vwh_forged", gi_document, "application/json").status == 401
    sent = gateway.post("/fhir/Bundle", ZORGDOMEIN_DOCUMENT.read_bytes(), Channel.GP)
    gateway.statuses(Channel.GP, sent.headers["location"].rsplit("/", 1)[1], 1)
    assert curl(gateway.base + sent.headers["location"], gateway.ca, gateway.token(Channel.GP)).status == 200
    assert curl(gateway.base + sent.headers["location"], gateway.ca, gateway.token(Channel.GI)).status == 404


def test_a_body_over_the_limit_is_too_large(gateway: Gateway) -> None:
    answer = gateway.post("/referrals/gi", b" " * (1024 * 1024 + 1), Channel.GI, "application/json")
    assert answer.status == 413 and answer.json()["errors"][0]["code"] == "TOO_LARGE"


def _specialist_message(tmp_path: Path, name: str, example: str) -> tuple[Path, str]:
    """An example with a referral id of its own, so this test's handover is its own whatever else ran."""
    referral_id = f"UMCG-{uuid.uuid4().hex[:12]}"
    text = (EXAMPLES / "specialist" / example).read_text().replace("UMCG-REF-2026-0042", referral_id)
    path = tmp_path / name
    path.write_text(text)
    return path, referral_id


def test_mllp_send_gets_aa_ae_and_ar_and_the_accepted_referral_is_handed_over(gateway: Gateway, tmp_path: Path
                                                                             ) -> None:
    valid, referral_id = _specialist_message(tmp_path, "valid.hl7", "valid-product.hl7")
    (ack,) = mllp_send(gateway.mllp_port, valid)
    assert ack.code == "AA" and ack.segment("MSA")[0][2] == "MSG-0001"
    msh = ack.segment("MSH")[0]
    assert (msh[2], msh[3], msh[4], msh[5]) == ("VERWIJSHUB", "GRONINGEN", "HIS", "UMCG^01234567^AGB")
    hub_id = hub_referral_id(Channel.SPECIALIST, "01098765", referral_id)
    assert gateway.statuses(Channel.SPECIALIST, hub_id, 3)[-1] == "handed-over"

    invalid, _ = _specialist_message(tmp_path, "invalid.hl7", "invalid-bsn-and-agb.hl7")
    (ack,) = mllp_send(gateway.mllp_port, invalid)
    assert ack.code == "AE"
    errors = {(err[2], err[5].split("^")[0], err[7]) for err in ack.segment("ERR")}
    assert ("PID^1^3", "BSN_INVALID", "PID-3") in errors and ("PRD^1^7", "AGB_INVALID", "PRD-7") in errors

    (ack,) = mllp_send(gateway.mllp_port, EXAMPLES / "specialist" / "invalid-adt-message.hl7")
    assert ack.code == "AR"


def test_mllp_two_messages_on_one_connection_each_get_their_answer(gateway: Gateway, tmp_path: Path) -> None:
    first, _ = _specialist_message(tmp_path, "first.hl7", "valid-product.hl7")
    second, _ = _specialist_message(tmp_path, "second.hl7", "invalid-bsn-and-agb.hl7")
    both = tmp_path / "both.hl7"
    both.write_text(first.read_text().replace("MSG-0001", "MSG-A") + "\r"
                    + second.read_text().replace("MSG-0001", "MSG-B"))
    acks = mllp_send(gateway.mllp_port, both)
    assert [(a.code, a.segment("MSA")[0][2]) for a in acks] == [("AA", "MSG-A"), ("AE", "MSG-B")]


def test_schemathesis_finds_no_server_error_and_every_answer_conforms(gateway: Gateway) -> None:
    """Driven by the committed schemas/openapi.json; each channel's operations with that channel's token."""
    for channel, paths in [(Channel.GP, "^/fhir/"), (Channel.GI, "^/referrals/gi$"), (Channel.GGD, "^/referrals/ggd$"),
                           (Channel.COURT, "^/referrals/court$")]:
        run = subprocess.run([str(Path(sys.executable).parent / "schemathesis"), "run",
                              str(REPO_ROOT / "schemas" / "openapi.json"), "--url", gateway.base,
                              "--tls-verify", str(gateway.ca), "-H", f"Authorization: Bearer {gateway.token(channel)}",
                              "--include-path-regex", paths, "--max-examples", "5", "--phases", "examples,fuzzing",
                              "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                              "response_schema_conformance", "--no-color"],
                             capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        (ARTIFACTS / "gateway" / f"schemathesis-{channel}.txt").write_text(run.stdout + run.stderr)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "generated" in run.stdout and " 0 generated" not in run.stdout, run.stdout[-2000:]


def test_mllp_frames_split_over_reads_and_bytes_between_frames_lose_no_good_message(gateway: Gateway) -> None:
    """A raw socket, as a misbehaving engine would write: noise before a frame, a frame in two pieces, two frames
    in one write."""
    message = (EXAMPLES / "specialist" / "valid-product.hl7").read_bytes()
    frames = [b"\x0b" + message.replace(b"MSG-0001", f"MSG-{n}".encode()).replace(
        b"UMCG-REF-2026-0042", f"UMCG-{uuid.uuid4().hex[:12]}".encode()) + b"\x1c\x0d" for n in range(3)]
    with socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=30) as connection:
        connection.sendall(b"\r\nnoise" + frames[0][:40])
        time.sleep(0.3)
        connection.sendall(frames[0][40:] + b"\n" + frames[1] + frames[2])
        answers = b""
        while answers.count(b"\x1c\x0d") < 3:
            answers += connection.recv(65536)
    msa = [line for line in answers.decode().replace("\x0b", "").split("\r") if line.startswith("MSA")]
    assert msa == ["MSA|AA|MSG-0|", "MSA|AA|MSG-1|", "MSA|AA|MSG-2|"]
