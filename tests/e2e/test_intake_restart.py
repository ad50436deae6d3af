"""Exactly-once effect on the real broker: the same referral sent again, across an intake restart."""

import asyncio
import json

import pytest

from schemas.referral import Channel
from services.infra import principals, topics
from services.infra.connection import KafkaConnection
from services.infra.provisioning import provision_hub_topics
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, start_hub, stop_hub
from tests.kafka_client import produce, read_topic
from tests.referrals import sender

pytestmark = pytest.mark.e2e
SPECIALIST = (REPO_ROOT / "schemas" / "examples" / "specialist" / "valid-product.hl7").read_bytes()
REFERRAL_ID = b"UMCG-REF-2026-0042"


async def _received(kafka: KafkaConnection, settle_s: float) -> tuple[list, list, list]:
    statuses = await read_topic(kafka, "status.specialist.v1", lambda r: r.key == REFERRAL_ID, 1, settle_s=settle_s)
    normalised = await read_topic(kafka, "referrals.normalised.v1",
                                  lambda r: json.loads(r.value)["referrer_referral_id"] == REFERRAL_ID.decode(), 1,
                                  settle_s=settle_s)
    ledger = await read_topic(kafka, "intake.accepted.v1", lambda r: True, 1, settle_s=settle_s)
    return statuses, normalised, ledger


def test_a_referral_sent_again_after_an_intake_restart_has_one_effect(private_kafka):
    ARTIFACTS.mkdir(exist_ok=True)
    log_file = ARTIFACTS / "intake-restart.log"
    log_file.unlink(missing_ok=True)
    settings = private_kafka.settings()
    referrer = private_kafka.connection(principals.referrer(sender("specialist").id))
    topic = topics.organisation_referrals(Channel.SPECIALIST, sender("specialist").id)
    provision_hub_topics(settings, load_registry(settings.registry_dir))

    intake = start_hub(private_kafka, log_file, "intake")
    try:
        asyncio.run(produce(referrer, topic, SPECIALIST, key=REFERRAL_ID))
        asyncio.run(produce(referrer, topic, SPECIALIST.replace(b"\r", b"\n"), key=REFERRAL_ID))
        statuses, normalised, ledger = asyncio.run(_received(private_kafka.admin, settle_s=0.5))
        assert len(normalised) == 1 and len(ledger) == 1
    finally:
        stop_hub(intake)

    intake = start_hub(private_kafka, log_file, "intake")  # a new process: only Kafka remembers
    try:
        asyncio.run(produce(referrer, topic, SPECIALIST, key=REFERRAL_ID))
        duplicates = 0
        for _ in range(300):  # wait until the new intake has handled it (it logs the duplicate)
            duplicates = log_file.read_text().count('"duplicate referral ignored"')
            if duplicates >= 2:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert duplicates == 2, "the second send and the send after the restart are both duplicates"
        statuses, normalised, ledger = asyncio.run(_received(private_kafka.admin, settle_s=1.0))
    finally:
        stop_hub(intake)
    assert [json.loads(s.value)["status"] for s in statuses] == ["received"]
    assert len(normalised) == 1
    assert [r.key for r in ledger] == [json.loads(normalised[0].value)["referral_id"].encode()]
    log = log_file.read_text()
    assert "999911120" not in log and "de Vries" not in log
