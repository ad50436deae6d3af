"""The routing processor against an in-memory `routing.state.v1`: its records, what it keeps in memory (no BSN,
no name), and that a decline, a closure and a provider stop still work from the state topic alone after a load."""

from dataclasses import dataclass
from datetime import UTC, date, datetime

from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication, YouthIndications
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.routing import RoutingDecision, YouthRouting
from services.infra import topics
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.routing.app import WRITTEN_BY, Routing
from services.routing.core import REFUSALS_PER_ALERT

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, 9, tzinfo=UTC)
BSN, GIVEN, FAMILY = "999911120", "Sanne", "Jansen-Uniek"
NOORDERLICHT = "98000011"
PARTITION = 3


@dataclass
class Record:
    """Shaped like aiokafka's ConsumerRecord where the processor looks."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at


class Hub:
    """One routing processor and the topics it writes, with commits and read-backs done by hand."""

    def __init__(self) -> None:
        self.clock = FixedClock(NOW)
        self.state_log: list[Record] = []
        self.out: list = []
        self.routing = self.fresh()

    def fresh(self) -> Routing:
        routing = Routing(Settings(_env_file=None, kafka_security_protocol="PLAINTEXT"), REGISTRY, self.clock)

        async def read(partition: int, pseudonym: str, offset: int) -> YouthRouting:
            (record,) = [r for r in self.state_log if r.offset == offset]
            assert record.key == pseudonym.encode()
            return YouthRouting.model_validate_json(record.value)

        routing.store.read = read
        return routing

    async def restart(self) -> None:
        """A new process: memory from the state topic alone, compacted to the latest record per key."""
        latest = {r.key: r for r in self.state_log}
        self.routing = self.fresh()
        await self.routing.load(PARTITION, sorted(latest.values(), key=lambda r: r.offset))

    async def handle(self, topic: str, key: str, value: bytes, headers: tuple = ()) -> list:
        records = await self.routing.handle(Record(topic, PARTITION, 0, key.encode(), value, headers))
        return self.commit(records)

    async def tick(self) -> list:
        return self.commit(await self.routing.tick(PARTITION))

    def commit(self, records: list) -> list:
        """The transaction commits; the state records land at the next offsets, which the runtime reports."""
        produced = []
        for record in records:
            if record.topic == topics.ROUTING_STATE:
                assert record.partition == PARTITION
                self.state_log.append(Record(record.topic, PARTITION, len(self.state_log), record.key, record.value))
                produced.append((record, self.state_log[-1].offset))
        self.routing.committed(PARTITION, produced)
        self.out += records
        return records

    def decisions(self, records: list) -> list[RoutingDecision]:
        return [RoutingDecision.model_validate_json(r.value) for r in records if r.topic == topics.DECISIONS]


def referral(rid: str, product: str | None = None, pseudonym: str = "ab" * 32) -> Referral:
    return Referral(
        referral_id=rid, channel=Channel.GP,
        referrer=Referrer(type=ReferrerType.HUISARTS, identifier_system="agb", identifier="01012345"),
        referrer_referral_id=f"ext-{rid}", referral_date=NOW.date(),
        youth=Youth(bsn=BSN, pseudonym=pseudonym, birth_date=date(2012, 5, 17), postcode="9712 HB",
                    given_name=GIVEN, family_name=FAMILY),
        product=product, received_at=NOW)


def feedback(kind: FeedbackKind, rid: str) -> bytes:
    return Feedback(referral_id=rid, kind=kind, at=NOW, reason="no capacity").model_dump_json().encode()


async def started(hub: Hub) -> None:
    await hub.routing.load(PARTITION, [])


async def test_a_decision_and_the_youths_state_go_out_together_and_memory_holds_no_personal_data():
    hub = Hub()
    await started(hub)
    ref = referral("r-1", product="54B01")
    records = await hub.handle(topics.NORMALISED, ref.youth.pseudonym, ref.model_dump_json().encode())
    assert [r.topic for r in records] == [topics.DECISIONS, topics.ROUTING_STATE]
    (decision,) = hub.decisions(records)
    state = YouthRouting.model_validate_json(records[1].value)
    assert state.referrals["r-1"].decision == decision and records[1].key == ref.youth.pseudonym.encode()
    assert hub.routing.store.held(PARTITION, ref.youth.pseudonym) is None, "committed: only its offset is kept"
    assert hub.routing.index[PARTITION].get(ref.youth.pseudonym).offset == 0
    assert hub.routing.open_load() == {decision.recipient.id: 1}

    await hub.restart()
    kept = repr(vars(hub.routing.index[PARTITION])) + repr(vars(hub.routing.store))
    for personal in (BSN, GIVEN, FAMILY, "9712 HB"):
        assert personal not in kept
    assert hub.routing.open_load() == {decision.recipient.id: 1}
    tick = await hub.tick()
    assert [r.topic for r in tick] == [topics.ROUTING_LOAD], "the partition's load, once"
    assert await hub.tick() == []


async def test_after_a_restart_a_decline_reroutes_and_a_closed_referral_is_gone_for_good():
    hub = Hub()
    await started(hub)
    pseudonym = "ab" * 32
    first, second = referral("r-1", product="54B01"), referral("r-2", product="54B01")
    for ref in (first, second):
        await hub.handle(topics.NORMALISED, pseudonym, ref.model_dump_json().encode())
    with_first, with_second = (hub.routing.index[PARTITION].get(pseudonym).referrals[r].recipient
                               for r in ("r-1", "r-2"))

    await hub.restart()
    records = await hub.handle(topics.provider_feedback(with_first), pseudonym, feedback(FeedbackKind.DECLINED, "r-1"))
    (again,) = hub.decisions(records)
    assert again.referral == first and again.recipient.id != with_first and again.previous_recipient.id == with_first
    assert await hub.handle(topics.provider_feedback(with_second), pseudonym,
                            feedback(FeedbackKind.CLOSED, "r-2")) != []

    await hub.restart()
    state = YouthRouting.model_validate_json(hub.state_log[-1].value)
    assert set(state.referrals) == {"r-1"} and state.referrals["r-1"].declined == [with_first]
    refused = await hub.handle(topics.provider_feedback(with_second), pseudonym, feedback(FeedbackKind.DECLINED, "r-2"))
    assert refused == [], "closed: never re-routed; refused, the dead letter left to the notifier, no alert for one"
    hub.clock.at = datetime(2026, 4, 2, tzinfo=UTC)
    registry = REGISTRY.model_copy(update={"providers": {
        agb: p.model_copy(update={"stopped_on": date(2026, 4, 1)}) for agb, p in REGISTRY.providers.items()}})
    hub.routing.sides.in_force.registry = registry
    swept = hub.decisions(await hub.tick())
    assert [d.referral_id for d in swept if d.rule == "provider-stopped"] == (
        ["r-1"] if again.recipient.kind == "provider" else []), "only the open referral"


async def test_a_provider_stop_reroutes_from_the_state_topic_alone_and_once():
    hub = Hub()
    await started(hub)
    pseudonym = "cd" * 32
    imported = YouthIndications(pseudonym=pseudonym, indications=[Indication(
        pseudonym=pseudonym, product="45A51", provider_agb=NOORDERLICHT, start=date(2026, 1, 1),
        end=date(2099, 1, 1))])
    assert [r.topic for r in await hub.handle(topics.INDICATIONS, pseudonym, imported.model_dump_json().encode())] \
        == [topics.ROUTING_STATE]
    ref = referral("r-9", product="45A51", pseudonym=pseudonym)
    (kept,) = hub.decisions(await hub.handle(topics.NORMALISED, pseudonym, ref.model_dump_json().encode()))
    assert (kept.rule, kept.recipient.id) == ("running-indication", NOORDERLICHT)

    await hub.restart()
    hub.clock.at = datetime(2026, 4, 2, tzinfo=UTC)
    hub.routing.sides.in_force.registry = REGISTRY.model_copy(update={"providers": {
        **REGISTRY.providers, NOORDERLICHT: REGISTRY.providers[NOORDERLICHT].model_copy(
            update={"stopped_on": date(2026, 4, 1)})}})
    records = await hub.tick()
    assert [r.topic for r in records][:4] == [topics.ALERTS, topics.DECISIONS, topics.INDICATIONS,
                                              topics.ROUTING_STATE]
    (rerouted,) = hub.decisions(records)
    assert (rerouted.rule, rerouted.referral) == ("provider-stopped", ref)
    marks = next(r for r in records if r.topic == topics.INDICATIONS)
    assert dict(marks.headers)[WRITTEN_BY] == "routing"

    await hub.restart()
    assert not hub.decisions(await hub.tick()), "once, also after a restart"
    back = await hub.handle(topics.INDICATIONS, pseudonym, marks.value, headers=((WRITTEN_BY, b"routing"),))
    assert back == [], "routing's own write coming back is not applied again"


async def test_a_provider_that_keeps_sending_feedback_about_others_youths_gets_an_alert_and_nothing_else():
    hub = Hub()
    await started(hub)
    value = Feedback(referral_id="r-x", kind=FeedbackKind.INDICATION_STARTED, at=hub.clock.at, product="45A51",
                     indication_end=date(2099, 1, 1)).model_dump_json().encode()
    alerted = []
    for offset in range(REFUSALS_PER_ALERT):  # NOT_RECIPIENT: refused, the one dead letter the notifier's
        records = await hub.routing.handle(Record(topics.provider_feedback(NOORDERLICHT), PARTITION, offset,
                                                  f"{offset:064x}".encode(), value, ()))
        alerted.append([r.topic for r in records])
    assert alerted == [[]] * (REFUSALS_PER_ALERT - 1) + [[topics.ALERTS]]
    assert hub.routing.index[PARTITION].youths == {}, "no youth state made for feedback refused"
