"""Intake on the real broker, through the running hub: a poison pill blocks nothing, dead letters say why, a
referral id stays bound to its first content, and no status or dead-letter header quotes what a referrer
submitted."""

import asyncio
import json
import random
import uuid

import pytest

from schemas.referral import Channel, Referral
from schemas.status import ReferralStatus, StatusEvent
from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
from services.intake.validation import bsn_passes_elfproef
from services.notifier.app import HANDOVER_SCHEMA
from tests.kafka_client import header, produce, read_committed, read_topic
from tests.referrals import gp_bundle, random_bsn, sender

pytestmark = pytest.mark.e2e
GI_EXAMPLE = json.loads((REPO_ROOT / "schemas" / "examples" / "gi" / "valid-ots.json").read_text())
POISON = b"\x00\xff{not a referral" + uuid.uuid4().bytes


def gi_document(referral_id: str, **youth: str) -> bytes:
    document = json.loads(json.dumps(GI_EXAMPLE))
    document["referral_id"] = referral_id
    document["youth"].update({"bsn": random_bsn(), **youth})
    return json.dumps(document).encode()


@pytest.fixture(scope="module")
def sent(hub):
    """Good, poison, good, then one readable but invalid, all with one key: one partition, in this order."""
    run = uuid.uuid4().hex[:8]
    ids = {"first": f"JBN-{run}-1", "second": f"JBN-{run}-2", "invalid": f"JBN-{run}-3"}
    key = f"JBN-{run}".encode()
    invalid = gi_document(ids["invalid"], bsn="123456789", birth_date="2012-02-30")

    async def send() -> None:
        for value in (gi_document(ids["first"]), POISON, gi_document(ids["second"]), invalid):
            await produce(hub.kafka, "referrals.gi.v1", value, key=key, headers=[("trace", run.encode())])

    asyncio.run(send())
    return ids, run, invalid


async def test_both_good_referrals_around_a_poison_pill_are_received_and_normalised(hub, sent):
    """Intake's part of "nothing blocks": both pass the pill in the same partition and go on to routing."""
    ids, _, _ = sent
    wanted = {ids["first"].encode(), ids["second"].encode()}
    records = await read_topic(hub.kafka, "status.gi.v1",
                               lambda r: r.key in wanted and b'"received"' in r.value, 2)
    events = [StatusEvent.model_validate_json(r.value) for r in records]
    assert sorted(e.referrer_referral_id for e in events) == sorted([ids["first"], ids["second"]])
    normalised = await read_topic(
        hub.kafka, "referrals.normalised.v1",
        lambda r: json.loads(r.value)["referrer_referral_id"] in {ids["first"], ids["second"]}, 2)
    referrals = [Referral.model_validate_json(r.value) for r in normalised]
    assert {r.referral_id for r in referrals} == {e.referral_id for e in events}
    assert {r.referrer.identifier for r in referrals} == {"98000101"}


async def test_the_poison_pill_is_dead_lettered_with_its_origin_and_reason(hub, sent):
    _, run, _ = sent
    records = await read_topic(hub.kafka, "referrals.dlq.v1", lambda r: r.value == POISON, 1)
    assert len(records) == 1
    record = records[0]
    assert header(record, "origin-topic") == "referrals.gi.v1"
    assert header(record, "origin-partition").isdigit() and header(record, "origin-offset").isdigit()
    assert header(record, "origin-header-trace") == run
    assert header(record, "channel") == "gi"
    errors = json.loads(header(record, "errors"))
    assert [e["code"] for e in errors] == ["UNPARSEABLE"]
    assert record.key == f"JBN-{run}".encode()


async def test_an_invalid_referral_is_dead_lettered_and_rejected_to_the_referrer_with_all_errors(hub, sent):
    ids, _, invalid = sent
    dead = await read_topic(hub.kafka, "referrals.dlq.v1", lambda r: r.value == invalid, 1)
    assert len(dead) == 1 and sorted(e["code"] for e in json.loads(header(dead[0], "errors"))) == [
        "BSN_INVALID", "DATE_INVALID"]
    records = await read_topic(hub.kafka, "status.gi.v1", lambda r: r.key == ids["invalid"].encode(), 1,
                               settle_s=1.0)
    assert len(records) == 1, "one rejected status, no received"
    event = StatusEvent.model_validate_json(records[0].value)
    assert event.status is ReferralStatus.REJECTED and event.referral_id is None
    assert {(e.code.value, e.location) for e in event.errors} == {
        ("BSN_INVALID", "/youth/bsn"), ("DATE_INVALID", "/youth/birth_date")}
    assert b"123456789" not in records[0].value, "no BSN in a status event"


async def test_both_good_referrals_around_a_poison_pill_are_routed(hub, sent):
    """The whole way: routing decides both, whatever intake parked between them."""
    ids, _, _ = sent
    wanted = {ids["first"].encode(), ids["second"].encode()}
    records = await read_topic(hub.kafka, "status.gi.v1", lambda r: r.key in wanted and b'"routed"' in r.value, 2)
    assert sorted(StatusEvent.model_validate_json(r.value).referrer_referral_id for r in records) == sorted(
        [ids["first"], ids["second"]])


def _is_conflict_alert(record) -> bool:
    return json.loads(record.value)["kind"] == "referral-id-conflict"


def _handover_of(referral_id: str):
    def wanted(record) -> bool:
        if header(record, "schema") != HANDOVER_SCHEMA:  # a notice on the team's topic (another module's, too)
            return False
        request = next(e["resource"] for e in json.loads(record.value)["entry"]
                       if e["resource"]["resourceType"] == "ServiceRequest")
        return any(i["value"] == referral_id for i in request["identifier"])
    return wanted


async def test_a_referral_id_sent_again_with_other_content_is_rejected_and_alerted_and_the_first_stands(hub):
    """A GP referral, then its id with another youth and note (a squatter, or a changed re-send), then the first
    again, re-serialised: the second is rejected with REFERRAL_ID_CONFLICT (dead letter, `rejected` status quoting
    nothing of it) and alerted; the first is handed over once, with its own content; the repeat has no effect."""
    run = uuid.uuid4().hex[:8]
    referral_id, first_bsn, other_bsn = f"ZD-{run}-bound", random_bsn(), random_bsn()
    first = gp_bundle(referral_id=referral_id, bsn=first_bsn, postcode="9712 HB", note=f"Eerste verwijzing {run}")
    changed = gp_bundle(referral_id=referral_id, bsn=other_bsn, postcode="9712 HB", note=f"Andere inhoud {run}",
                        given_name=f"Noor{run}")
    first_bytes, changed_bytes = json.dumps(first).encode(), json.dumps(changed).encode()
    alerts_before = len([r for r in await read_committed(hub.kafka, ["alerts.v1"]) if _is_conflict_alert(r)])
    referrer = hub.broker.connection(principals.referrer(sender("gp").id))
    for value in (first_bytes, changed_bytes, json.dumps(first, indent=2).encode()):  # one key: in this order
        await produce(referrer, topics.organisation_referrals(Channel.GP, sender("gp").id), value,
                      key=referral_id.encode())

    records = await read_topic(referrer, "status.gp.v1", lambda r: r.key == referral_id.encode(), 4, settle_s=2.0)
    events = [StatusEvent.model_validate_json(r.value) for r in records]
    assert sorted(e.status.value for e in events) == ["handed-over", "received", "rejected", "routed"]
    [rejected] = [e for e in events if e.status is ReferralStatus.REJECTED]
    assert [e.code.value for e in rejected.errors] == ["REFERRAL_ID_CONFLICT"] and rejected.referral_id is None
    hub_id = next(e.referral_id for e in events if e.status is ReferralStatus.RECEIVED)
    submitted = [first_bsn, other_bsn, f"Andere inhoud {run}", f"Eerste verwijzing {run}", f"Noor{run}"]
    for record in records:
        assert not [v for v in submitted if v.encode() in record.value], "a status quotes a submitted value"

    dead = await read_topic(hub.kafka, "referrals.dlq.v1", lambda r: r.value == changed_bytes, 1, settle_s=0.5)
    assert len(dead) == 1 and [e["code"] for e in json.loads(header(dead[0], "errors"))] == ["REFERRAL_ID_CONFLICT"]
    assert not [v for v in submitted for _, raw in dead[0].headers if v.encode() in raw]

    handovers = await read_topic(hub.broker.connection("wij-centrum"), "handovers.wij.centrum.v1",
                                 _handover_of(referral_id), 1, settle_s=1.0)
    assert len(handovers) == 1, "the first referral is handed over once"
    assert first_bsn.encode() in handovers[0].value and f"Eerste verwijzing {run}".encode() in handovers[0].value
    assert other_bsn.encode() not in handovers[0].value and b"Andere inhoud" not in handovers[0].value
    normalised = await read_topic(hub.kafka, "referrals.normalised.v1",
                                  lambda r: json.loads(r.value)["referral_id"] == hub_id, 1, settle_s=0.5)
    assert len(normalised) == 1

    alerts = await read_topic(hub.kafka, "alerts.v1", _is_conflict_alert, alerts_before + 1, settle_s=1.0)
    assert len(alerts) == alerts_before + 1, "one alert for the one conflict"
    alert = json.loads(alerts[-1].value)
    assert (alert["channel"], alert.get("pseudonym"), alert.get("referral_id")) == ("gp", None, None)
    assert not [v for v in [*submitted, referral_id, hub_id] if v.encode() in alerts[-1].value]

    for _ in range(100):  # the repeat after the conflict: logged as a duplicate, nothing written
        repeats = [line for line in hub.log_file.read_text().splitlines()
                   if '"duplicate referral ignored"' in line and hub_id in line]
        if repeats:
            break
        await asyncio.sleep(0.1)
    assert len(repeats) == 1


def failing_bsn() -> str:
    """Nine random digits that fail the 11-test: a BSN the referrer mistyped, unique to this run."""
    while True:
        candidate = f"{random.randrange(10**8, 10**9)}"
        if not bsn_passes_elfproef(candidate):
            return candidate


async def test_no_status_record_or_dead_letter_header_quotes_a_malformed_date_bsn_or_postcode(hub):
    """Malformed birth dates, BSNs and postcodes through the running hub: rejected with codes and fixed texts, so
    operations and analytics (status topics, dead-letter headers, the gateway's Tasks) never read them back."""
    run = uuid.uuid4().hex[:8]
    malformed = [{"birth_date": "2013-02-29"}, {"birth_date": "2012-14-07"}, {"birth_date": "31-12-2012"},
                 {"bsn": failing_bsn()}, {"bsn": failing_bsn(), "birth_date": "2010-00-13"},
                 {"postcode": "XQ99 ZZ"}, {"postcode": "97123 QX"}]
    ids = [f"JBN-{run}-bad-{n}" for n in range(len(malformed))]
    for referral_id, youth in zip(ids, malformed):
        await produce(hub.kafka, "referrals.gi.v1", gi_document(referral_id, **youth), key=referral_id.encode())
    rejected = await read_topic(hub.kafka, "status.gi.v1",
                                lambda r: r.key.decode() in ids and b'"rejected"' in r.value, len(ids))
    assert len(rejected) == len(ids)
    values = {value for youth in malformed for value in youth.values()}
    statuses = [record for channel in Channel
                for record in await read_topic(hub.kafka, f"status.{channel.value}.v1", lambda r: True, 10**9,
                                               timeout_s=3.0)]
    letters = await read_topic(hub.kafka, "referrals.dlq.v1", lambda r: True, 10**9, timeout_s=3.0)
    assert {r.key.decode() for r in rejected} <= {r.key.decode() for r in statuses if r.key}
    assert sum(any(value.encode() in r.value for value in values) for r in letters) >= len(ids), \
        "the values are in the dead letters' raw bytes"
    for record in statuses:
        quoted = [value for value in values if value.encode() in record.value]
        assert not quoted, f"a status record quotes submitted values: {quoted}"
    for record in letters:
        for name, raw in record.headers or ():
            quoted = [value for value in values if value.encode() in raw]
            assert not quoted, f"dead-letter header {name} quotes submitted values: {quoted}"
