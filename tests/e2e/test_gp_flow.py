"""The walking skeleton on a real Kafka: a GP referral in, the team's handover and three statuses out."""

import asyncio
import json
import uuid

import pytest
from fhir.resources.R4B.bundle import Bundle

from schemas.referral import Channel
from schemas.status import ReferralStatus, StatusEvent
from services.infra import principals, topics
from tests.kafka_client import header, produce, read_topic
from tests.referrals import gp_bundle, random_bsn, sender

pytestmark = pytest.mark.e2e
GP = principals.referrer(sender("gp").id)
"""The GP practice whose practitioner the example names: it writes its own topic and reads the gp statuses."""


@pytest.fixture(scope="module")
def gp_referral(hub):
    """One GP referral for a youth in postcode area 9712 (WIJ team `centrum`), sent once per module."""
    referral_id = f"ZD-{uuid.uuid4()}"
    bundle = gp_bundle(referral_id=referral_id, bsn=random_bsn(), postcode="9712 hb", birth_date="2011-02-28")
    asyncio.run(produce(hub.broker.connection(GP), topics.organisation_referrals(Channel.GP, sender("gp").id),
                        json.dumps(bundle).encode(), key=referral_id.encode()))
    return referral_id, bundle


def _resources(bundle: dict) -> dict:
    return {entry["resource"]["resourceType"]: entry["resource"] for entry in bundle["entry"]}


def _is_handover_for(referral_id: str):
    def wanted(record) -> bool:
        request = _resources(json.loads(record.value))["ServiceRequest"]
        return any(i["value"] == referral_id for i in request["identifier"])
    return wanted


async def test_handover_reaches_the_team_of_the_postcode(hub, gp_referral):
    referral_id, sent = gp_referral
    records = await read_topic(hub.broker.connection("wij-centrum"), "handovers.wij.centrum.v1", _is_handover_for(referral_id), 1,
                               settle_s=1.0)
    assert len(records) == 1, "exactly one handover for one referral"
    record = records[0]
    handover = Bundle.model_validate_json(record.value)  # a recipient's FHIR library accepts it
    assert handover.type == "message"
    assert [e.resource.get_resource_type() for e in handover.entry] == [
        "MessageHeader", "Task", "ServiceRequest", "Patient"]
    resources = _resources(json.loads(record.value))
    sent_patient = _resources(sent)["Patient"]
    task, patient = resources["Task"], resources["Patient"]
    assert task["status"] == "requested"
    assert task["owner"]["identifier"]["value"] == "centrum"
    assert task["focus"]["reference"] == handover.entry[2].fullUrl
    assert "basis-jeugdhulp" in task["note"][0]["text"]
    assert patient["identifier"] == sent_patient["identifier"]  # the recipient needs the BSN
    assert patient["birthDate"] == "2011-02-28"
    assert patient["address"][0]["postalCode"] == "9712 HB"
    assert header(record, "content-type") == "application/fhir+json"
    assert header(record, "correlation-id") == task["identifier"][0]["value"]
    assert record.key.decode() != sent_patient["identifier"][0]["value"]  # keyed by pseudonym, not BSN


async def test_referrer_sees_received_routed_handed_over_in_order(hub, gp_referral):
    referral_id, _ = gp_referral
    records = await read_topic(hub.broker.connection(GP), "status.gp.v1", lambda r: r.key == referral_id.encode(), 3,
                               settle_s=1.0)
    events = [StatusEvent.model_validate_json(r.value) for r in records]
    assert [e.status for e in events] == [ReferralStatus.RECEIVED, ReferralStatus.ROUTED,
                                          ReferralStatus.HANDED_OVER]
    assert {e.referrer_referral_id for e in events} == {referral_id}
    assert len({e.referral_id for e in events}) == 1
    assert events[1].detail == "to WIJ Centrum (wij-team)"


async def test_logs_of_the_run_hold_no_personal_data(hub, gp_referral):
    referral_id, sent = gp_referral
    await read_topic(hub.broker.connection(GP), "status.gp.v1", lambda r: r.key == referral_id.encode(), 3)
    log = hub.log_file.read_text()
    assert referral_id in log, "the run's own lines are in the log"
    patient = _resources(sent)["Patient"]
    request = _resources(sent)["ServiceRequest"]
    personal = [patient["identifier"][0]["value"], patient["name"][0]["family"], patient["name"][0]["given"][0],
                patient["birthDate"], "9712 HB", "9712 hb", patient["address"][0]["line"][0],
                request["reasonCode"][0]["text"], request["note"][0]["text"]]
    for value in personal:
        assert value not in log, f"personal data in the hub's log: {value[:3]}..."
