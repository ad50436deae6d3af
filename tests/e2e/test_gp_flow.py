"""The walking skeleton on a real Kafka: a GP referral in, the team's handover and three statuses out; and WIJ's
triage asking for specialist care, which moves the referral to an Open House provider."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.bundle import Bundle

from schemas.feedback import Feedback, FeedbackKind
from schemas.notices import NoticeKind
from schemas.referral import Channel
from schemas.routing import RoutingDecision
from schemas.status import ReferralStatus, StatusEvent
from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
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
        if header(record, "schema") != "verwijshub.Handover/1":  # a notice on the same topic
            return False
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


async def test_wijs_specialist_needed_moves_the_referral_to_an_open_house_provider_and_the_referrer_sees_rerouted(hub):
    """A basis jeugdhulp referral of March 2025 (the Open House still open) with WIJ Centrum; its triage asks for
    specialist family guidance (45A56): a provider gets the handover, the team a notice, the referrer `rerouted`."""
    referral_id = f"ZD-{uuid.uuid4()}"
    bundle = gp_bundle(referral_id=referral_id, bsn=random_bsn(), postcode="9712 HB", authored_on="2025-03-10")
    await produce(hub.broker.connection(GP), topics.organisation_referrals(Channel.GP, sender("gp").id), json.dumps(bundle).encode(),
                  key=referral_id.encode())
    centrum = hub.broker.connection(principals.wij_team("centrum"))
    (handover,) = await read_topic(centrum, topics.wij_handovers("centrum"), _is_handover_for(referral_id), 1)
    hub_id = header(handover, "correlation-id")
    asked = Feedback(referral_id=hub_id, kind=FeedbackKind.SPECIALIST_NEEDED, at=datetime.now(UTC), product="45A56")
    await produce(centrum, topics.wij_feedback("centrum"), asked.model_dump_json().encode(), key=handover.key)

    records = await read_topic(hub.broker.connection(GP), "status.gp.v1",
                               lambda r: r.key == referral_id.encode(), 5)
    events = [StatusEvent.model_validate_json(r.value) for r in records]
    assert [e.status for e in events] == [ReferralStatus.RECEIVED, ReferralStatus.ROUTED, ReferralStatus.HANDED_OVER,
                                          ReferralStatus.REROUTED, ReferralStatus.HANDED_OVER]
    (_, again) = [RoutingDecision.model_validate_json(r.value) for r in await read_topic(
        hub.kafka, topics.DECISIONS, lambda r: json.loads(r.value)["referral_id"] == hub_id, 2)]
    assert (again.rule, again.recipient.kind, again.flags) == ("specialist-asked", "provider", ["warm-handover"])
    assert again.trace[0].rule == "specialist-needed"
    assert events[3].detail == f"from WIJ Centrum to {again.recipient.name} (rule specialist-asked)"

    provider = hub.broker.connection(principals.provider(again.recipient.id))
    (moved,) = await read_topic(provider, again.recipient.topic, _is_handover_for(referral_id), 1)
    resources = _resources(json.loads(moved.value))
    assert resources["ServiceRequest"]["code"]["coding"][0]["code"] == "45A56"
    assert "WIJ Centrum" in resources["Task"]["note"][-1]["text"], "a warm handover naming the team"
    (notice,) = await read_topic(centrum, topics.wij_handovers("centrum"),
                                 lambda r: header(r, "schema") == "verwijshub.Notice/1"
                                 and json.loads(r.value)["referral_id"] == hub_id, 1)
    assert json.loads(notice.value)["kind"] == NoticeKind.HANDED_OVER_ELSEWHERE


async def test_an_stu3_message_is_routed_and_handed_over_as_its_r4_twin(hub, gp_referral):
    """The R4 referral above in FHIR STU3 (MessageHeader `event`, a ReferralRequest): the same team, the same
    handover, in R4."""
    r4_id, r4_sent = gp_referral
    referral_id = f"ZD-{uuid.uuid4()}"
    stu3 = json.loads((REPO_ROOT / "schemas" / "examples" / "gp" / "stu3-message-basis-jeugdhulp.json").read_text())
    resources = _resources(stu3)
    resources["ReferralRequest"]["identifier"][0]["value"] = referral_id
    resources["Patient"].update({key: _resources(r4_sent)["Patient"][key] for key in ("birthDate", "address")},
                                identifier=[{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": random_bsn()}])
    await produce(hub.broker.connection(GP), topics.organisation_referrals(Channel.GP, sender("gp").id), json.dumps(stu3).encode(),
                  key=referral_id.encode())
    team = hub.broker.connection("wij-centrum")
    stu3_handover, r4_handover = [
        (await read_topic(team, "handovers.wij.centrum.v1", _is_handover_for(wanted), 1))[0] for wanted in
        (referral_id, r4_id)]
    Bundle.model_validate_json(stu3_handover.value)
    handed, twin = _resources(json.loads(stu3_handover.value)), _resources(json.loads(r4_handover.value))
    assert list(handed) == list(twin) == ["MessageHeader", "Task", "ServiceRequest", "Patient"]
    assert (handed["Task"]["owner"], handed["Task"]["note"]) == (twin["Task"]["owner"], twin["Task"]["note"])
    assert handed["ServiceRequest"]["note"] == twin["ServiceRequest"]["note"]  # the reason and the note
    statuses = await read_topic(hub.broker.connection(GP), "status.gp.v1",
                                lambda r: r.key == referral_id.encode(), 3)
    assert [StatusEvent.model_validate_json(r.value).status for r in statuses] == [
        ReferralStatus.RECEIVED, ReferralStatus.ROUTED, ReferralStatus.HANDED_OVER]
