"""The notifier on a real broker of its own, with a clock the test moves: the status lifecycle, feedback
ownership, contact clocks and expiry reminders, each notice exactly once across a kill and restart of the
notifier and with two notifier instances and their rebalances.

Decisions and indications are published as routing would, so the notifier is tested alone."""

import asyncio
import json
import signal
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication, YouthIndications
from schemas.notices import NoticeKind
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.routing import RoutingDecision
from services.infra import topics
from services.infra.clock import FileClock
from services.infra.kafka import encode
from services.infra.local_kafka import LocalKafka
from services.infra.provisioning import provision_hub_topics
from services.infra.pseudonym import youth_pseudonym
from services.infra.registry_files import load_registry
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.routing.policy import decide
from tests.conftest import ARTIFACTS, TestKafka, new_broker, start_hub, stop_hub
from tests.hub_logs import log_events
from tests.kafka_client import header, produce, read_topic, records_on_topics
from tests.referrals import random_bsn

pytestmark = pytest.mark.e2e
T0 = datetime(2026, 3, 13, 15, tzinfo=AMSTERDAM)  # a Friday afternoon
AT_RISK = WorkingCalendar().add_working_days(T0, 4)
DUE = WorkingCalendar().add_working_days(T0, 5)
TICK_S = 0.2
SETTLE_S = 3.0
"""How long a test waits after what it expects, to catch a duplicate (15 ticks of the notifier)."""


class Notifiers:
    """Notifier processes on the module's broker, a clock file they all read, and a user's view of Kafka."""

    def __init__(self, broker: TestKafka, directory: Path) -> None:
        self.broker, self.kafka, self.directory = broker, broker.admin, directory
        self.clock_file = directory / "now"
        self.settings = broker.settings()
        self.registry = load_registry(self.settings.registry_dir)
        self.processes: list = []
        self.bsns: list[str] = []
        self.set_now(T0)

    def set_now(self, moment: datetime) -> None:
        FileClock(self.clock_file).set(moment)

    def start(self, name: str = "notifier"):
        process = start_hub(self.broker, self.directory / f"{name}.log", "notifier", env={
            "VERWIJSHUB_CLOCK_FILE": str(self.clock_file), "VERWIJSHUB_NOTIFIER_TICK_SECONDS": str(TICK_S)})
        self.processes.append(process)
        return process

    def kill(self, process) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.processes.remove(process)

    def stop(self, process) -> None:
        stop_hub(process)
        self.processes.remove(process)

    def owned(self, name: str) -> set[int]:
        """The partitions the named instance last said it owns (its log's ownership lines)."""
        lines = [line for line in log_events(self.directory / f"{name}.log")
                 if line.get("event") == "partitions owned"]
        return set(lines[-1]["partitions"]) if lines else set()

    async def until_owned(self, done, timeout_s: float) -> None:
        """Until the instances' ownership lines satisfy `done`, or `timeout_s` passed (the caller asserts): an
        instance logs what it owns only once it took every partition, which on a loaded machine can come late."""
        for _ in range(int(timeout_s / 0.2)):
            if done():
                return
            await asyncio.sleep(0.2)

    def decision(self, postcode: str = "9712 AB") -> RoutingDecision:
        rid, bsn = str(uuid.uuid4()), random_bsn()
        self.bsns.append(bsn)
        referral = Referral(
            referral_id=rid, channel=Channel.GP,
            referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
            referrer_referral_id=f"ZD-{rid}", referral_date=T0.date(),
            youth=Youth(bsn=bsn, pseudonym=youth_pseudonym(bsn, self.settings.youth_pseudonym_key()),
                        birth_date=date(2014, 1, 1), postcode=postcode),
            received_at=T0)
        return decide(referral, self.registry, T0)

    async def publish_decision(self, decision: RoutingDecision) -> None:
        await produce(self.kafka, topics.DECISIONS, encode(decision), key=decision.referral.youth.pseudonym.encode())

    async def feedback(self, topic: str, decision: RoutingDecision, kind: FeedbackKind, **extra) -> None:
        message = Feedback(referral_id=decision.referral_id, kind=kind, at=T0, **extra)
        await produce(self.kafka, topic, encode(message), key=decision.referral.youth.pseudonym.encode())

    async def statuses(self, decisions: list[RoutingDecision], count: int, settle_s: float = SETTLE_S,
                       timeout_s: float = 60.0) -> dict:
        """Statuses per hub referral id, in order, once `count` of them arrived (and `settle_s` passed)."""
        ids = {d.referral_id for d in decisions}
        records = await read_topic(self.kafka, topics.status(Channel.GP),
                                   lambda r: json.loads(r.value)["referral_id"] in ids, count,
                                   timeout_s=timeout_s, settle_s=settle_s)
        found: dict[str, list[str]] = {rid: [] for rid in ids}
        for record in records:
            event = json.loads(record.value)
            found[event["referral_id"]].append(event["status"])
        return found

    async def notices(self, topic: str, referral_ids: set[str] | None, count: int,
                      settle_s: float = SETTLE_S) -> list[dict]:
        records = await read_topic(self.kafka, topic, lambda r: header(r, "schema") == "verwijshub.Notice/1" and (
            referral_ids is None or json.loads(r.value)["referral_id"] in referral_ids), count, settle_s=settle_s)
        return [json.loads(r.value) for r in records]


@pytest.fixture(scope="module")
def notifiers(private_kafka: TestKafka, tmp_path_factory: pytest.TempPathFactory):
    directory = ARTIFACTS / "notifier"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.log"):
        old.unlink()
    hub = Notifiers(private_kafka, directory)
    provision_hub_topics(hub.settings, hub.registry)
    yield hub
    for process in list(hub.processes):
        hub.stop(process)


async def test_handover_on_its_team_topic_only_lifecycle_in_order_and_another_teams_feedback_refused(notifiers: Notifiers) -> None:
    notifiers.set_now(T0)
    process = notifiers.start()
    decision = notifiers.decision()
    team = decision.recipient
    await notifiers.publish_decision(decision)
    assert (await notifiers.statuses([decision], 2, settle_s=0))[decision.referral_id] == ["routed", "handed-over"]
    await notifiers.feedback(topics.wij_feedback("beijum"), decision, FeedbackKind.CLOSED)  # not beijum's referral
    await notifiers.feedback(topics.wij_feedback(team.id), decision, FeedbackKind.ACCEPTED)
    await notifiers.feedback(topics.wij_feedback(team.id), decision, FeedbackKind.CONTACT_MADE, contact_at=T0)
    await notifiers.feedback(topics.wij_feedback(team.id), decision, FeedbackKind.CLOSED)
    statuses = await notifiers.statuses([decision], 5)
    assert statuses[decision.referral_id] == ["routed", "handed-over", "accepted", "contact-made", "closed"]
    refused = await read_topic(notifiers.kafka, topics.DEAD_LETTERS,
                               lambda r: header(r, "origin-topic") == topics.wij_feedback("beijum"), 1)
    assert json.loads(header(refused[0], "errors"))[0]["code"] == "NOT_RECIPIENT"
    assert json.loads(refused[0].value)["referral_id"] == decision.referral_id  # the raw bytes, kept
    handovers = [record for record in await records_on_topics(notifiers.kafka, "handovers.")
                 if header(record, "correlation-id") == decision.referral_id]
    assert [(r.topic, header(r, "schema")) for r in handovers] == [(team.topic, "verwijshub.Handover/1")]
    notifiers.stop(process)


async def test_at_risk_and_breach_fire_once_at_their_virtual_times_across_a_kill(notifiers: Notifiers) -> None:
    notifiers.set_now(T0)
    process = notifiers.start()
    decision = notifiers.decision("9712 HB")
    team_topic = decision.recipient.topic
    await notifiers.publish_decision(decision)
    await notifiers.statuses([decision], 2, settle_s=0)
    notifiers.set_now(AT_RISK - timedelta(minutes=1))
    assert (await notifiers.statuses([decision], 2))[decision.referral_id] == [
        "routed", "handed-over"]  # a minute before one working day is left: nothing yet
    notifiers.kill(process)  # mid-clock, no goodbye
    notifiers.set_now(AT_RISK + timedelta(minutes=1))  # passes while the notifier is down
    process = notifiers.start()
    statuses = await notifiers.statuses([decision], 3)
    assert statuses[decision.referral_id] == ["routed", "handed-over", "sla-at-risk"]
    notifiers.kill(process)
    process = notifiers.start()  # a second restart must not send it again
    notifiers.set_now(DUE)
    statuses = await notifiers.statuses([decision], 4)
    assert statuses[decision.referral_id] == ["routed", "handed-over", "sla-at-risk", "sla-breached"]
    notices = await notifiers.notices(team_topic, {decision.referral_id}, 2)
    assert [n["kind"] for n in notices] == [NoticeKind.SLA_AT_RISK, NoticeKind.SLA_BREACHED]
    alerts = await read_topic(notifiers.kafka, topics.ALERTS,
                              lambda r: json.loads(r.value).get("referral_id") == decision.referral_id, 1,
                              settle_s=1.0)
    assert [json.loads(a.value)["kind"] for a in alerts] == ["sla-breached"]
    handovers = await read_topic(notifiers.kafka, team_topic,
                                 lambda r: header(r, "schema") == "verwijshub.Handover/1"
                                 and header(r, "correlation-id") == decision.referral_id, 1, settle_s=0.5)
    assert len(handovers) == 1
    notifiers.stop(process)


async def test_two_instances_send_each_notice_once_across_rebalances(notifiers: Notifiers) -> None:
    notifiers.set_now(T0)
    first = notifiers.start("notifier-a")
    decisions = [notifiers.decision("9712 HB") for _ in range(12)]  # twelve youths: spread over the partitions
    for decision in decisions:
        await notifiers.publish_decision(decision)
    await notifiers.statuses(decisions, 24, settle_s=0)
    second = notifiers.start("notifier-b")  # a rebalance: some partitions (and their clocks) move to b
    await notifiers.until_owned(lambda: bool(notifiers.owned("notifier-b"))
                                and len(notifiers.owned("notifier-a")) < notifiers.settings.partitions, timeout_s=20)
    assert notifiers.owned("notifier-a") and notifiers.owned("notifier-b")
    assert not notifiers.owned("notifier-a") & notifiers.owned("notifier-b")
    notifiers.set_now(AT_RISK)
    # every at-risk before the clock moves on (a deadline already passed fires the breach alone); on a loaded machine
    # the last of them came over a minute after the move
    statuses = await notifiers.statuses(decisions, 36, timeout_s=240)
    assert all(s == ["routed", "handed-over", "sla-at-risk"] for s in statuses.values()), statuses
    notifiers.stop(first)  # a rebalance the other way: b takes everything
    notifiers.set_now(DUE)
    statuses = await notifiers.statuses(decisions, 48, timeout_s=240)
    assert all(s == ["routed", "handed-over", "sla-at-risk", "sla-breached"] for s in statuses.values()), statuses
    notices = await notifiers.notices(decisions[0].recipient.topic, {d.referral_id for d in decisions}, 24)
    assert sorted(n["kind"] for n in notices) == [NoticeKind.SLA_AT_RISK] * 12 + [NoticeKind.SLA_BREACHED] * 12
    await notifiers.until_owned(lambda: len(notifiers.owned("notifier-b")) == notifiers.settings.partitions,
                                timeout_s=60)
    assert len(notifiers.owned("notifier-b")) == notifiers.settings.partitions
    notifiers.stop(second)


async def test_expiry_reminders_once_and_the_second_saved_by_an_evaluation(notifiers: Notifiers) -> None:
    notifiers.set_now(T0)
    process = notifiers.start()
    end = date(2026, 9, 30)
    youths = [youth_pseudonym(random_bsn(), "k") for _ in range(2)]
    for pseudonym in youths:
        value = YouthIndications(pseudonym=pseudonym, indications=[Indication(
            pseudonym=pseudonym, product="45A51", provider_agb="98000011", start=date(2025, 10, 1), end=end)])
        await produce(notifiers.kafka, topics.INDICATIONS, encode(value), key=pseudonym.encode())
    provider_topic = topics.provider_handovers("98000011")
    notifiers.set_now(datetime(2026, 6, 30, 0, 1, tzinfo=AMSTERDAM))  # 3 months before the end
    first = await notifiers.notices(provider_topic, None, 2)
    assert [n["kind"] for n in first] == [NoticeKind.EVALUATION_DUE] * 2
    central = await notifiers.notices(topics.wij_handovers("entree"), None, 2)
    assert [n["kind"] for n in central] == [NoticeKind.RETRIAGE_EXPECTED] * 2  # youths without a known team
    done = Feedback(referral_id="-", kind=FeedbackKind.EVALUATION_DONE, at=T0, product="45A51")
    await produce(notifiers.kafka, topics.provider_feedback("98000011"), encode(done), key=youths[0].encode())
    await asyncio.sleep(2)
    notifiers.kill(process)
    process = notifiers.start()
    notifiers.set_now(datetime(2026, 7, 31, 0, 1, tzinfo=AMSTERDAM))  # 2 months before the end
    notices = await notifiers.notices(provider_topic, None, 3)
    # sorted: under load the second youth's due notice can land in the same tick as the reminder, after it
    assert sorted(n["kind"] for n in notices) == [NoticeKind.EVALUATION_DUE] * 2 + [NoticeKind.EVALUATION_REMINDER]
    (reminder,) = [n for n in notices if n["kind"] == NoticeKind.EVALUATION_REMINDER]
    assert "45A51" in reminder["message"]
    notifiers.stop(process)


def test_the_notifier_logs_hold_no_bsn_postcode_or_birth_date(notifiers: Notifiers) -> None:
    logs = "\n".join(path.read_text() for path in notifiers.directory.glob("*.log"))
    assert notifiers.bsns and '"record followed up"' in logs
    assert not [bsn for bsn in notifiers.bsns if bsn in logs]
    assert "9712 AB" not in logs and "9712 HB" not in logs and "2014-01-01" not in logs


def test_a_clock_survives_a_restart_of_the_broker_and_then_of_the_notifier(tmp_path: Path) -> None:
    """The local Apache Kafka stopped and started on the same data: the clock's state is on Kafka."""
    with new_broker(tmp_path / "kafka") as broker:
        directory = ARTIFACTS / "notifier-broker-restart"
        directory.mkdir(parents=True, exist_ok=True)
        restart_the_broker_then_the_notifier(broker.local, Notifiers(broker, directory))


def restart_the_broker_then_the_notifier(kafka: LocalKafka, hub: "Notifiers") -> None:
    try:
        provision_hub_topics(hub.settings, hub.registry)
        process = hub.start("notifier-broker-restart")
        decision = hub.decision("9712 HB")
        asyncio.run(hub.publish_decision(decision))
        asyncio.run(hub.statuses([decision], 2, settle_s=0))
        kafka.stop()
        kafka.start()
        hub.set_now(AT_RISK)
        statuses = asyncio.run(hub.statuses([decision], 3))
        assert statuses[decision.referral_id] == ["routed", "handed-over", "sla-at-risk"]
        hub.kill(process)
        process = hub.start("notifier-broker-restart")
        hub.set_now(DUE)
        statuses = asyncio.run(hub.statuses([decision], 4))
        assert statuses[decision.referral_id] == ["routed", "handed-over", "sla-at-risk", "sla-breached"]
    finally:
        for process in list(hub.processes):
            hub.stop(process)
