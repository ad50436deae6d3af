"""One referral, several documents, and cancellation on every channel (issue 21 parts 2 and 3), end to end.

A broker of the module's own (the test moves the hub's clock, which the session hub's consumers must not see), the
hub as real processes (intake, routing, notifier, the gateway), spoken to as referrers do: curl for HTTPS (FHIR and
JSON), the hl7 package's mllp_send for HL7 v2 (plain MLLP from this machine as UMCG). What the recipient reads is
read from its own topic, what the referrer hears from its status topic."""

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.referral import Channel
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.clock import FileClock
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka, _free_port, start_hub, stop_hub
from tests.gateway_clients import curl, mllp_send
from tests.kafka_client import read_topic
from tests.referrals import PLAIN_MLLP, channel_bytes, gp_bytes, random_bsn, sender

pytestmark = pytest.mark.e2e
EXAMPLES = REPO_ROOT / "schemas" / "examples"
EXAMPLE_ZD, EXAMPLE_BSN = "ZD123456789", "999911120"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # a Tuesday morning: handovers now are at risk from Monday 7th 9:00
AT_RISK, BREACHED = datetime(2026, 12, 7, 12, 0, tzinfo=UTC), datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
TEXTS = {"appointment-request": "moeder is telefonisch bereikbaar", "referral-letter": "Piekeren en slecht slapen",
         "supplement": "slaapdagboek bijgevoegd"}
FILES = {"appointment-request": "zorgdomein-appointment-request.json",
         "referral-letter": "zorgdomein-document-basis-jeugdhulp.json", "supplement": "zorgdomein-supplement.json"}


class Hub:
    def __init__(self, kafka: TestKafka, https_port: int, mllp_port: int, clock_file: Path) -> None:
        self.kafka, self.mllp_port, self.clock_file = kafka, mllp_port, clock_file
        self.base = f"https://127.0.0.1:{https_port}"
        self.ca = kafka.secrets / "ca.pem"
        self.tokens: dict[Channel, str] = {}

    def set_now(self, moment: datetime) -> None:
        FileClock(self.clock_file).set(moment)

    def token(self, channel: Channel) -> str:
        if channel not in self.tokens:
            self.tokens[channel] = TokenStore(self.kafka.secrets).issue(principals.referrer(sender(channel).id))
        return self.tokens[channel]

    def post(self, path: str, body: bytes, channel: Channel, content_type: str = "application/fhir+json",
             method: str | None = None):
        return curl(self.base + path, self.ca, self.token(channel), body, content_type, method)

    def statuses(self, channel: Channel, referral_id: str, count: int, settle_s: float = 0.0) -> list[dict]:
        records = asyncio.run(read_topic(self.kafka.admin, topics.status(channel),
                                         lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                         timeout_s=60, settle_s=settle_s))
        return [json.loads(r.value) for r in records]

    def by_referrer_id(self, channel: Channel, referrer_referral_id: str, count: int, settle_s: float = 0.0):
        records = asyncio.run(read_topic(self.kafka.admin, topics.status(channel),
                                         lambda r: r.key == referrer_referral_id.encode(), count, timeout_s=60,
                                         settle_s=settle_s))
        return [json.loads(r.value) for r in records]

    def recipient_topic(self, referral_id: str) -> str:
        [decision] = asyncio.run(read_topic(self.kafka.admin, topics.DECISIONS,
                                            lambda r: json.loads(r.value).get("referral_id") == referral_id, 1))
        return json.loads(decision.value)["recipient"]["topic"]

    def for_recipient(self, topic: str, referral_id: str, count: int, settle_s: float = 0.0) -> list[tuple[str, bytes]]:
        """(schema header, value) of every record about the referral on the recipient's topic."""
        def about(record) -> bool:
            return dict(record.headers).get("correlation-id") == referral_id.encode()
        records = asyncio.run(read_topic(self.kafka.admin, topic, about, count, timeout_s=60, settle_s=settle_s))
        return [(dict(r.headers)["schema"].decode(), r.value) for r in records]


@pytest.fixture(scope="module")
def hub(private_kafka: TestKafka):
    directory = ARTIFACTS / "lifecycle"
    directory.mkdir(parents=True, exist_ok=True)
    https_port, mllp_port = _free_port(), _free_port()
    running = Hub(private_kafka, https_port, mllp_port, directory / "now")
    running.set_now(T0)
    process = start_hub(private_kafka, directory / "lifecycle-hub.log", "intake", "routing", "notifier", "gateway",
                        env={"VERWIJSHUB_GATEWAY_PORT": str(https_port), "VERWIJSHUB_MLLP_PORT": str(mllp_port),
                             "VERWIJSHUB_CLOCK_FILE": str(directory / "now"),
                             "VERWIJSHUB_NOTIFIER_TICK_SECONDS": "0.5", **PLAIN_MLLP})
    try:
        yield running
    finally:
        stop_hub(process)


def zorgdomein(kind: str, zd_number: str, bsn: str) -> bytes:
    """An example ZorgDomein document of this test's own ZD number and youth."""
    return (EXAMPLES / "gp" / FILES[kind]).read_bytes().replace(EXAMPLE_ZD.encode(), zd_number.encode()) \
        .replace(EXAMPLE_BSN.encode(), bsn.encode())


def amendment_texts(records: list[tuple[str, bytes]]) -> list[str]:
    texts = []
    for schema, value in records:
        if schema == "verwijshub.Amendment/1":
            communication = json.loads(value)["entry"][1]["resource"]
            texts.append(communication["payload"][0]["contentString"])
    return texts


@pytest.mark.parametrize("order", [("appointment-request", "referral-letter", "supplement"),
                                   ("supplement", "referral-letter", "appointment-request")],
                         ids=["appointment-first", "reverse"])
def test_the_documents_of_one_zd_number_make_one_handover_and_each_text_reaches_the_recipient(hub: Hub, order):
    """ZorgDomein's documents of one ZD number through the gateway in either order, the second sent twice: one
    handover (the first document's), each later one delivered once as an amendment pointing at the same Task, the
    referrer told `amended` for each."""
    zd_number, bsn = f"ZD{uuid.uuid4().int % 10**9:09d}", random_bsn()
    answers = []
    for kind in (order[0], order[1], order[1], order[2]):
        answers.append(hub.post("/fhir/Bundle", zorgdomein(kind, zd_number, bsn), Channel.GP))
    assert [a.status for a in answers] == [201] * 4
    referral_id = answers[0].headers["location"].rsplit("/", 1)[1]
    assert {a.headers["location"] for a in answers} == {answers[0].headers["location"]}, "one referral"
    statuses = [e["status"] for e in hub.statuses(Channel.GP, referral_id, 5, settle_s=3.0)]
    assert statuses == ["received", "routed", "handed-over", "amended", "amended"]
    records = hub.for_recipient(hub.recipient_topic(referral_id), referral_id, 3, settle_s=2.0)
    handovers = [value for schema, value in records if schema == "verwijshub.Handover/1"]
    assert len(handovers) == 1 and TEXTS[order[0]].encode() in handovers[0] and bsn.encode() in handovers[0]
    texts = amendment_texts(records)
    assert len(texts) == 2 and [TEXTS[order[1]] in texts[0], TEXTS[order[2]] in texts[1]] == [True, True]
    for _, value in records[1:]:
        assert json.loads(value)["entry"][1]["resource"]["basedOn"][0]["identifier"]["value"] == referral_id
        assert bsn.encode() not in value, "an amendment names the referral, not the youth"


def test_an_amendment_that_would_change_the_routing_is_refused_and_the_referral_stands(hub: Hub) -> None:
    """A GP message re-sent with another product: the referrer hears `change-refused` (AMENDMENT_REROUTES), the
    recipient nothing more."""
    rid, bsn = f"ZD-{uuid.uuid4().hex[:8]}", random_bsn()
    first = hub.post("/fhir/$process-message", gp_bytes(referral_id=rid, bsn=bsn), Channel.GP)
    referral_id = first.headers["location"].rsplit("/", 1)[1]
    hub.statuses(Channel.GP, referral_id, 3)
    changed = hub.post("/fhir/$process-message", gp_bytes(referral_id=rid, bsn=bsn, product="45A51"), Channel.GP)
    assert changed.status == 202
    events = hub.statuses(Channel.GP, referral_id, 4, settle_s=2.0)
    assert [e["status"] for e in events] == ["received", "routed", "handed-over", "change-refused"]
    assert [e["code"] for e in events[-1]["errors"]] == ["AMENDMENT_REROUTES"]
    records = hub.for_recipient(hub.recipient_topic(referral_id), referral_id, 1, settle_s=1.0)
    assert [schema for schema, _ in records] == ["verwijshub.Handover/1"]


def test_a_cancellation_on_every_channel_closes_the_referral_and_its_clock_for_good(hub: Hub, tmp_path: Path) -> None:
    """A referral on each channel, handed over, then cancelled the channel's way: ZorgDomein's cancellation
    document, HL7 REF^I14 over MLLP, the JSON withdrawal, and a FHIR Task PUT and PATCH at the gateway. The referrer
    sees `cancelled`, the recipient a `cancelled` notice; with the hub's clock moved past the at-risk moment and the
    deadline, no at-risk or breach for any of them, while a referral left open gets both."""
    run = uuid.uuid4().hex[:8]
    referrals: dict[str, tuple[Channel, str]] = {}  # what -> (channel, hub referral id)

    zd_number = f"ZD{uuid.uuid4().int % 10**9:09d}"
    gp_bsn = random_bsn()
    sent = hub.post("/fhir/Bundle", zorgdomein("referral-letter", zd_number, gp_bsn), Channel.GP)
    referrals["zorgdomein"] = (Channel.GP, sent.headers["location"].rsplit("/", 1)[1])

    specialist_id = f"UMCG-{run}"
    message = tmp_path / "referral.hl7"
    message.write_bytes(channel_bytes("specialist", specialist_id))
    [ack] = mllp_send(hub.mllp_port, message)
    assert ack.segment("MSA")[0][1] == "AA"

    for channel, what in ((Channel.GI, "withdrawal"), (Channel.GGD, "task-put"), (Channel.COURT, "task-patch")):
        answer = hub.post(f"/referrals/{channel.value}", channel_bytes(channel.value, f"{channel.value}-{run}"),
                          channel, "application/json")
        assert answer.status == 202, answer.body
        referrals[what] = (channel, answer.json()["referral_id"])
    open_one = hub.post("/referrals/gi", channel_bytes("gi", f"gi-open-{run}"), Channel.GI, "application/json")
    open_id = open_one.json()["referral_id"]

    for channel, referral_id in referrals.values():
        assert [e["status"] for e in hub.statuses(channel, referral_id, 3)][-1] == "handed-over"
    specialist_events = hub.by_referrer_id(Channel.SPECIALIST, specialist_id, 3)
    referrals["ref-i14"] = (Channel.SPECIALIST, specialist_events[0]["referral_id"])
    hub.statuses(Channel.GI, open_id, 3)
    topics_of = {what: hub.recipient_topic(rid) for what, (_, rid) in referrals.items()}

    cancelled = hub.post("/fhir/Bundle", (EXAMPLES / "cancellations" / "gp-zorgdomein-cancellation.json").read_bytes()
                         .replace(EXAMPLE_ZD.encode(), zd_number.encode()), Channel.GP)
    assert cancelled.status == 201
    i14 = tmp_path / "cancel.hl7"
    i14.write_bytes((EXAMPLES / "cancellations" / "specialist-ref-i14.hl7").read_bytes()
                    .replace(b"UMCG-REF-2026-0042", specialist_id.encode()))
    [ack] = mllp_send(hub.mllp_port, i14)
    assert ack.segment("MSA")[0][1] == "AA"
    withdrawal = json.loads((EXAMPLES / "cancellations" / "gi-withdrawal.json").read_text())
    withdrawal["referral_id"] = f"gi-{run}"
    assert hub.post("/referrals/gi", json.dumps(withdrawal).encode(), Channel.GI, "application/json").status == 202
    put = hub.post(f"/fhir/Task/{referrals['task-put'][1]}", json.dumps(
        {"resourceType": "Task", "id": referrals["task-put"][1], "status": "cancelled", "intent": "order"}).encode(),
        Channel.GGD, method="PUT")
    assert put.status == 202, put.body
    patch = hub.post(f"/fhir/Task/{referrals['task-patch'][1]}",
                     b'[{"op": "replace", "path": "/status", "value": "cancelled"}]', Channel.COURT,
                     "application/json-patch+json", method="PATCH")
    assert patch.status == 202, patch.body

    for what, (channel, referral_id) in referrals.items():
        events = hub.statuses(channel, referral_id, 4)
        assert [e["status"] for e in events][-1] == "cancelled", what
        notices = [json.loads(value) for schema, value in hub.for_recipient(topics_of[what], referral_id, 2)
                   if schema == "verwijshub.Notice/1"]
        assert [n["kind"] for n in notices] == ["cancelled"], what
    task = curl(f"{hub.base}/fhir/Task/{referrals['task-put'][1]}", hub.ca, hub.token(Channel.GGD))
    assert task.json()["status"] == "cancelled"

    hub.set_now(AT_RISK)  # one working day left for the handovers made at T0
    assert [e["status"] for e in hub.statuses(Channel.GI, open_id, 4)][-1] == "sla-at-risk", "the open one"
    hub.set_now(BREACHED)
    assert [e["status"] for e in hub.statuses(Channel.GI, open_id, 5)][-1] == "sla-breached", "the open one"
    for what, (channel, referral_id) in referrals.items():
        later = [e["status"] for e in hub.statuses(channel, referral_id, 4, settle_s=1.0)]
        assert not {"sla-at-risk", "sla-breached"} & set(later), what


def test_a_cancellation_of_an_unknown_referral_is_answered_with_a_code(hub: Hub) -> None:
    """A withdrawal of a referral id the hub never received from that sender: REFERRAL_UNKNOWN on the status topic
    (the gateway cannot know it; intake's ledger does)."""
    withdrawal = json.loads((EXAMPLES / "cancellations" / "gi-withdrawal.json").read_text())
    withdrawal["referral_id"] = f"never-sent-{uuid.uuid4().hex[:8]}"
    assert hub.post("/referrals/gi", json.dumps(withdrawal).encode(), Channel.GI, "application/json").status == 202
    [event] = hub.by_referrer_id(Channel.GI, withdrawal["referral_id"], 1, settle_s=1.0)
    assert event["status"] == "rejected" and [e["code"] for e in event["errors"]] == ["REFERRAL_UNKNOWN"]
    unknown_task = hub.post(f"/fhir/Task/{uuid.uuid4()}", b'{"resourceType": "Task", "status": "cancelled"}',
                            Channel.GI, method="PUT")
    assert unknown_task.status == 404
