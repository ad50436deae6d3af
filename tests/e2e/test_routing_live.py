"""Routing on a real broker of its own: a registry update live, a malformed one refused, a decline
re-routed, feedback acted on only from the provider the referral is with (and an indication only within its
contract and the bound), and a provider's stop re-routing its youths once, also across a restart of routing."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.routing import RoutingAlert, RoutingDecision
from services.infra.pseudonym import youth_pseudonym
from services.infra.settings import REPO_ROOT
from services.routing.commands import import_indications, publish_registry
from services.routing.core import REFUSALS_PER_ALERT
from tests.conftest import ARTIFACTS, TestKafka, start_hub, stop_hub
from tests.hub_logs import log_events
from tests.kafka_client import produce, read_topic
from tests.referrals import random_bsn

pytestmark = pytest.mark.e2e
TODAY = datetime.now(UTC).date()
PSEUDONYM_KEY = "routing-live-test-key"
"""Routing takes pseudonyms as they come; the test makes them, and imports indications, with this key."""
STADSGEZIN = "98000022"
NOORDERLICHT, PLEEGZORG, OMMELAND = "98000011", "98000044", "98000055"


def registry_copy(tmp: Path, name: str, providers=None, postcodes=None) -> Path:
    directory = tmp / name
    shutil.copytree(REPO_ROOT / "deploy" / "registry", directory, ignore=shutil.ignore_patterns("scenarios"))
    if providers:
        items = json.loads((directory / "providers.json").read_text())
        for item in items:
            item.update(providers.get(item["agb"], {}))
        (directory / "providers.json").write_text(json.dumps(items))
    if postcodes:
        (directory / "postcodes.csv").write_text((directory / "postcodes.csv").read_text().replace(*postcodes))
    return directory


def referral(bsn: str, postcode: str = "9712 AB", product: str | None = None) -> Referral:
    rid = str(uuid.uuid4())
    return Referral(
        referral_id=rid, channel=Channel.GP,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=f"ZD-{rid}", referral_date=TODAY,
        youth=Youth(bsn=bsn, pseudonym=youth_pseudonym(bsn, PSEUDONYM_KEY),
                    birth_date=date(2014, 1, 1), postcode=postcode),
        product=product, received_at=datetime.now(UTC))


class Routing:
    """One routing process on the module's broker, and the plain-Kafka view a user has of it."""

    def __init__(self, broker: TestKafka, log_file: Path) -> None:
        self.broker, self.kafka, self.log_file = broker, broker.admin, log_file
        self.settings = broker.settings(pseudonym_key=PSEUDONYM_KEY)
        self.process = None

    def start(self) -> None:
        self.process = start_hub(self.broker, self.log_file, "routing")

    def stop(self) -> None:
        stop_hub(self.process)

    def log_lines(self, event: str) -> list[dict]:
        return [line for line in log_events(self.log_file) if line.get("event") == event]

    async def wait_for_log(self, event: str, count: int, **fields) -> None:
        for _ in range(600):
            if len([x for x in self.log_lines(event) if fields.items() <= x.items()]) >= count:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"routing never logged {event} {fields} {count} times")

    async def send(self, ref: Referral) -> RoutingDecision:
        await produce(self.kafka, "referrals.normalised.v1", ref.model_dump_json().encode(),
                      key=ref.youth.pseudonym.encode())
        (record,) = await self.decisions(ref.referral_id, 1)
        return RoutingDecision.model_validate_json(record.value)

    async def feedback(self, provider: str, pseudonym: str, feedback: Feedback) -> None:
        await produce(self.kafka, f"feedback.provider.{provider}.v1", feedback.model_dump_json().encode(),
                      key=pseudonym.encode())

    async def not_acted_on(self, referral_id: str) -> None:
        """Routing refused feedback about this referral as not its writer's (the notifier dead-letters it: its
        test shows that dead letter)."""
        await self.wait_for_log("feedback handled", 1, correlation_id=referral_id)
        outcomes = {x["outcome"] for x in self.log_lines("feedback handled") if x.get("correlation_id") == referral_id}
        assert len(outcomes) == 1 and outcomes.pop().endswith("of a referral not with this recipient: refused")

    async def refused(self, provider: str, pseudonym: str) -> list[tuple[str, str]]:
        """The codes and locations of the dead letter of the provider's feedback about this youth."""
        topic = f"feedback.provider.{provider}.v1".encode()
        (letter,) = await read_topic(self.kafka, "referrals.dlq.v1", lambda r: r.key == pseudonym.encode()
                                     and dict(r.headers).get("origin-topic") == topic, 1)
        return [(e["code"], e["location"]) for e in json.loads(dict(letter.headers)["errors"])]

    async def decisions(self, referral_id: str, count: int, settle_s: float = 0.0):
        return await read_topic(self.kafka, "routing.decisions.v1",
                                lambda r: json.loads(r.value)["referral_id"] == referral_id, count,
                                settle_s=settle_s)


@pytest.fixture(scope="module")
def routing(private_kafka, tmp_path_factory):
    ARTIFACTS.mkdir(exist_ok=True)
    log_file = ARTIFACTS / "routing-live.log"
    log_file.unlink(missing_ok=True)
    service = Routing(private_kafka, log_file)
    asyncio.run(publish_registry(service.settings, REPO_ROOT / "deploy" / "registry"))
    service.start()
    yield service
    service.stop()


async def test_registry_update_takes_effect_live_and_a_malformed_one_is_refused(routing, tmp_path):
    before = await routing.send(referral(random_bsn(), postcode="9747 AA"))
    assert (before.recipient.id, before.flags) == ("entree", ["central-entrance"])

    changed = await publish_registry(routing.settings, registry_copy(tmp_path, "r2", postcodes=("9747,", "9747,selwerd")))
    await routing.wait_for_log("registry in force", 1, registry_version=changed.version)
    after = await routing.send(referral(random_bsn(), postcode="9747 AA"))
    assert (after.recipient.id, after.flags, after.registry_version) == ("selwerd", [], changed.version)

    await produce(routing.kafka, "registry.v1", b'{"version": "x", "files": {"teams.json": "[]"}}',
                  key=b"registry")
    await routing.wait_for_log("registry refused, the last good one stays in force", 1)
    still = await routing.send(referral(random_bsn(), postcode="9747 AA"))
    assert (still.recipient.id, still.registry_version) == ("selwerd", changed.version)


async def test_an_unreadable_normalised_record_is_dead_lettered_and_the_next_one_decided(routing):
    await produce(routing.kafka, "referrals.normalised.v1", b"{not a referral", key=b"poison")
    after = await routing.send(referral(random_bsn()))
    assert after.recipient.id == "centrum"
    (parked,) = await read_topic(routing.kafka, "referrals.dlq.v1", lambda r: r.key == b"poison", 1)
    assert parked.value == b"{not a referral"
    assert json.loads(dict(parked.headers)["errors"].decode())[0]["code"] == "SCHEMA_INVALID"


async def test_declined_handover_is_rerouted_without_that_recipient(routing):
    first = await routing.send(referral(random_bsn(), product="54B01"))
    declined_by = first.recipient.id
    assert first.recipient.kind == "provider"
    await routing.feedback(declined_by, first.referral.youth.pseudonym, Feedback(
        referral_id=first.referral_id, kind=FeedbackKind.DECLINED, at=datetime.now(UTC), reason="no capacity"))
    records = await routing.decisions(first.referral_id, 2)
    again = RoutingDecision.model_validate_json(records[1].value)
    assert again.recipient.kind == "provider" and again.recipient.id != declined_by
    assert again.previous_recipient.id == declined_by
    assert again.trace[0].rule == "declined" and "no capacity" in again.trace[0].reason


async def test_indication_started_feedback_keeps_the_next_referral_with_that_provider(routing):
    bsn = random_bsn()
    first = await routing.send(referral(bsn, product="46A02"))
    provider = first.recipient.id  # a provider with 46A02 in its contract, handed the referral it speaks about
    started = Feedback(referral_id=first.referral_id, kind=FeedbackKind.INDICATION_STARTED, at=datetime.now(UTC),
                       product="46A02", indication_end=TODAY + timedelta(days=365))
    await routing.feedback(provider, first.referral.youth.pseudonym, started)
    records = await read_topic(routing.kafka, "indications.v1",
                               lambda r: r.key == first.referral.youth.pseudonym.encode(), 1)
    kept = json.loads(records[0].value)["indications"]
    assert [(i["product"], i["provider_agb"], i["referral_id"]) for i in kept] == [
        ("46A02", provider, first.referral_id)]
    assert bsn not in records[0].value.decode()
    await routing.wait_for_log("feedback handled", 1, correlation_id=first.referral_id,
                               outcome="indication recorded")
    second = await routing.send(referral(bsn, product="46A02"))
    assert (second.rule, second.recipient.id) == ("running-indication", provider)


def indication_started(referral_id: str, product: str, end: date) -> Feedback:
    return Feedback(referral_id=referral_id, kind=FeedbackKind.INDICATION_STARTED, at=datetime.now(UTC),
                    product=product, indication_end=end)


async def test_an_indication_for_a_youth_never_handed_to_the_provider_is_refused(routing):
    """Ommeland was never handed this youth: its indication is a dead letter, the next referral routed as before."""
    bsn = random_bsn()
    other = await routing.send(referral(random_bsn(), product="45A56"))
    pseudonym = youth_pseudonym(bsn, PSEUDONYM_KEY)
    await routing.feedback(OMMELAND, pseudonym, indication_started(other.referral_id, "45A56",
                                                                   TODAY + timedelta(days=30)))
    await routing.not_acted_on(other.referral_id)
    after = await routing.send(referral(bsn, product="45A56"))
    assert after.rule != "running-indication"
    assert not await read_topic(routing.kafka, "indications.v1", lambda r: r.key == pseudonym.encode(), 1,
                                timeout_s=1.0), "nothing kept for the youth"


@pytest.mark.parametrize(("product", "end", "location"), [
    ("43A03", TODAY + timedelta(days=30), "/product"),  # pleegzorg: in no contract of a provider with 46A02
    ("46A02", date(2099, 1, 1), "/indication_end"),  # beyond the longest indication the region issues
    ("46A02", TODAY - timedelta(days=1), "/indication_end"),  # before it starts
])
async def test_an_indication_outside_the_contract_or_the_bound_is_refused(routing, product, end, location):
    bsn = random_bsn()
    first = await routing.send(referral(bsn, product="46A02"))
    provider, pseudonym = first.recipient.id, first.referral.youth.pseudonym
    await routing.feedback(provider, pseudonym, indication_started(first.referral_id, product, end))
    assert await routing.refused(provider, pseudonym) == [("INDICATION_INVALID", location)]
    after = await routing.send(referral(bsn, product=product))
    assert after.rule != "running-indication", "routed as if the indication had not come"


@pytest.mark.parametrize("kind", [FeedbackKind.DECLINED, FeedbackKind.CLOSED])
async def test_a_decline_or_closure_from_a_provider_the_referral_is_not_with_is_refused(routing, kind):
    first = await routing.send(referral(random_bsn(), product="46A02"))
    pseudonym = first.referral.youth.pseudonym
    await routing.feedback(NOORDERLICHT, pseudonym, Feedback(referral_id=first.referral_id, kind=kind,
                                                             at=datetime.now(UTC), reason="no capacity"))
    await routing.not_acted_on(first.referral_id)
    assert len(await routing.decisions(first.referral_id, 1, settle_s=1.0)) == 1, "not re-routed"
    declined = Feedback(referral_id=first.referral_id, kind=FeedbackKind.DECLINED, at=datetime.now(UTC))
    await routing.feedback(first.recipient.id, pseudonym, declined)
    records = await routing.decisions(first.referral_id, 2)
    assert RoutingDecision.model_validate_json(records[1].value).previous_recipient.id == first.recipient.id, \
        "still open with its recipient: the refused feedback changed nothing"


async def test_a_provider_that_keeps_trying_raises_an_alert(routing):
    """One youth, so that the refusals are handled in order in one partition."""
    pseudonym = youth_pseudonym(random_bsn(), PSEUDONYM_KEY)
    sent = [str(uuid.uuid4()) for _ in range(REFUSALS_PER_ALERT)]
    for referral_id in sent:
        await routing.feedback(PLEEGZORG, pseudonym, indication_started(referral_id, "43A03",
                                                                        TODAY + timedelta(days=30)))
    (alert,) = await read_topic(routing.kafka, "alerts.v1",
                                lambda r: json.loads(r.value)["kind"] == "feedback-refused", 1, settle_s=1.0)
    assert (RoutingAlert.model_validate_json(alert.value).provider, alert.key.decode()) == (PLEEGZORG, pseudonym)
    refused = {x["correlation_id"] for x in routing.log_lines("feedback handled")
               if x["outcome"].endswith("not with this recipient: refused")}
    assert refused >= set(sent)


async def test_provider_stop_reroutes_each_youth_once_also_after_a_restart(routing, tmp_path):
    bsn_with_referral, bsn_imported = random_bsn(), random_bsn()
    key = routing.settings.youth_pseudonym_key()
    await import_indications(routing.settings, [
        Indication(pseudonym=youth_pseudonym(bsn, key), product="45A51", provider_agb=STADSGEZIN,
                   start=date(2026, 1, 1), end=date(2099, 12, 31)) for bsn in (bsn_with_referral, bsn_imported)])
    # the follower reads the import before the referral: wait for rule 2 to see it
    ref = referral(bsn_with_referral, postcode="9736 AB", product="45A51")
    kept = await routing.send(ref)
    while kept.rule != "running-indication":  # only if the import had not been read yet
        ref = referral(bsn_with_referral, postcode="9736 AB", product="45A51")
        kept = await routing.send(ref)
    assert kept.recipient.id == STADSGEZIN

    stopped = registry_copy(tmp_path, "r3", providers={STADSGEZIN: {"stopped_on": TODAY.isoformat()}})
    await publish_registry(routing.settings, stopped)
    records = await routing.decisions(ref.referral_id, 2)
    rerouted = RoutingDecision.model_validate_json(records[1].value)
    assert (rerouted.rule, rerouted.recipient.id, rerouted.previous_recipient.id) == (
        "provider-stopped", "oosterparkwijk", STADSGEZIN)
    assert "warm handover" in rerouted.trace[0].reason

    pseudonyms = {youth_pseudonym(b, key) for b in (bsn_with_referral, bsn_imported)}
    alerts = await read_topic(routing.kafka, "alerts.v1", lambda r: r.key.decode() in pseudonyms, 2)
    by_youth = {a.pseudonym: a for a in (RoutingAlert.model_validate_json(r.value) for r in alerts)}
    assert by_youth[youth_pseudonym(bsn_with_referral, key)].team == "oosterparkwijk"
    assert by_youth[youth_pseudonym(bsn_imported, key)].referral_id is None
    assert {a.provider for a in by_youth.values()} == {STADSGEZIN}

    routing.stop()
    sweeps = len(routing.log_lines("provider stops swept"))
    routing.start()
    await routing.wait_for_log("provider stops swept", sweeps + 1)
    assert all(x["rerouted"] == 0 for x in routing.log_lines("provider stops swept")[sweeps:])
    assert len(await routing.decisions(ref.referral_id, 2, settle_s=1.0)) == 2, "no second re-route"
    alerts = await read_topic(routing.kafka, "alerts.v1", lambda r: r.key.decode() in pseudonyms, 2,
                              settle_s=1.0)
    assert len(alerts) == 2, "one alert per youth"
    log = routing.log_file.read_text()
    for personal in (bsn_with_referral, bsn_imported, "no capacity", "9736 AB"):
        assert personal not in log, f"personal data in routing's log: {personal[:3]}..."
    assert all(bsn_with_referral not in r.value.decode() for r in alerts)


def test_whatif_from_the_topic_shows_the_decisions_a_new_registry_changes(routing, tmp_path):
    """Runs after the tests above: the topic holds their referrals, three of them in 9747 (no team)."""
    new = registry_copy(tmp_path, "r4", providers={STADSGEZIN: {"stopped_on": TODAY.isoformat()}},
                        postcodes=("9747,", "9747,selwerd"))
    env = {**os.environ, **routing.broker.env()}
    run = subprocess.run([sys.executable, "-m", "services.cli", "whatif", "--registry", str(new), "--from-topic",
                          "--json"], env=env, cwd=REPO_ROOT, capture_output=True, timeout=120, check=True)
    result = json.loads(run.stdout)
    assert result["referrals"] >= 7
    moves = [(c["before"]["recipient"]["id"], c["after"]["recipient"]["id"], c["after"]["rule"])
             for c in result["changed"]]
    assert moves == [("entree", "selwerd", "basis-jeugdhulp")] * 3


async def test_up_does_not_overwrite_a_registry_published_live(routing):
    from services.infra.registry_topic import latest_registry
    from services.routing.commands import publish_registry_unless_present

    live = await latest_registry(routing.kafka)
    assert live.providers[STADSGEZIN].stopped_on == TODAY, "the stop published by the test above is in force"
    assert not await publish_registry_unless_present(routing.settings, REPO_ROOT / "deploy" / "registry")
    assert (await latest_registry(routing.kafka)).version == live.version
