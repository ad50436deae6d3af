"""The gateway while Kafka is away: HTTP answers 503 with Retry-After, MLLP answers AR, and once Kafka is back
every referral that was confirmed is on its topic and a resend is taken once. A broker of this test's own,
stopped and started on the same data."""

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from schemas.referral import Channel
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.kafka import read_to_end
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka, _free_port, new_broker, start_hub, stop_hub
from tests.gateway_clients import curl, mllp_send
from tests.kafka_client import read_topic
from tests.referrals import PLAIN_MLLP, sender

pytestmark = pytest.mark.e2e
EXAMPLES = REPO_ROOT / "schemas" / "examples"


def _gp_message(referral_id: str) -> bytes:
    return (EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_bytes().replace(b"ZD-2026-000123",
                                                                                  referral_id.encode())


def _hl7_file(tmp_path: Path, referral_id: str) -> Path:
    path = tmp_path / f"{referral_id}.hl7"
    path.write_text((EXAMPLES / "specialist" / "valid-product.hl7").read_text().replace("UMCG-REF-2026-0042",
                                                                                         referral_id))
    return path


def _until(attempt, deadline_s: float = 90.0):
    """`attempt()` again every quarter second until it returns something true; that value."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = attempt()
        if result:
            return result
        time.sleep(0.25)
    raise TimeoutError("no success in time")


def test_with_kafka_stopped_the_gateway_refuses_and_after_it_nothing_confirmed_is_missing(tmp_path: Path) -> None:
    with new_broker(tmp_path / "kafka") as broker:
        refused_while_stopped_and_nothing_confirmed_missing(broker, tmp_path)


def refused_while_stopped_and_nothing_confirmed_missing(broker: TestKafka, tmp_path: Path) -> None:
    kafka = broker.local
    directory = ARTIFACTS / "gateway-outage"
    directory.mkdir(parents=True, exist_ok=True)
    https_port, mllp_port = _free_port(), _free_port()
    process = start_hub(broker, directory / "gateway-outage.log", "intake", "gateway", env={
        "VERWIJSHUB_GATEWAY_PORT": str(https_port), "VERWIJSHUB_MLLP_PORT": str(mllp_port),
        "VERWIJSHUB_GATEWAY_KAFKA_TIMEOUT_S": "2", **PLAIN_MLLP})
    url, ca = f"https://127.0.0.1:{https_port}/fhir/$process-message", broker.secrets / "ca.pem"
    token = TokenStore(broker.secrets).issue(principals.referrer(sender(Channel.GP).id))
    confirmed_gp, confirmed_hl7 = [], []
    try:
        before = f"ZD-{uuid.uuid4().hex[:10]}"
        assert curl(url, ca, token, _gp_message(before)).status == 202
        confirmed_gp.append(before)

        kafka.stop()
        down_gp, down_hl7 = f"ZD-{uuid.uuid4().hex[:10]}", f"UMCG-{uuid.uuid4().hex[:10]}"
        refused = curl(url, ca, token, _gp_message(down_gp))
        assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"].startswith("application/fhir+json")
        (ack,) = mllp_send(mllp_port, _hl7_file(tmp_path, down_hl7))
        assert ack.code == "AR"

        kafka.start()
        # the referrers send again, as their engines do after a 503 or an AR, until they are confirmed
        _until(lambda: curl(url, ca, token, _gp_message(down_gp)).status == 202)
        confirmed_gp.append(down_gp)
        _until(lambda: mllp_send(mllp_port, _hl7_file(tmp_path, down_hl7))[0].code == "AA")
        confirmed_hl7.append(down_hl7)

        gp_topic = topics.organisation_referrals(Channel.GP, sender(Channel.GP).id)
        hl7_topic = topics.organisation_referrals(Channel.SPECIALIST, sender(Channel.SPECIALIST).id)
        on_gp = {key.decode() for key, _ in asyncio.run(read_to_end(broker.admin, gp_topic))}
        on_hl7 = {key.decode() for key, _ in asyncio.run(read_to_end(broker.admin, hl7_topic))}
        assert set(confirmed_gp) <= on_gp and set(confirmed_hl7) <= on_hl7
        received = asyncio.run(read_topic(broker.admin, topics.status(Channel.GP),
                                          lambda r: json.loads(r.value)["referrer_referral_id"] == down_gp, 1,
                                          settle_s=3.0))
        assert [json.loads(r.value)["status"] for r in received] == ["received"]  # taken once
    finally:
        stop_hub(process)
