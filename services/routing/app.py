"""The routing service on the processing runtime (services/infra/processing.py): wiring only.

Inputs, all keyed by youth pseudonym: normalised referrals, the recipients' feedback and `indications.v1`. Per
record: decode, fetch the youth's state (index.py, store.py), call the pure core (core.py), and return the
effects' records with the youth's new state on `routing.state.v1`, all in the transaction of the input's offset.
Every tick: the provider-stop sweep of the partition and its open load on `routing.load.v1`.
"""

import re
import time
from collections import Counter
from datetime import datetime

from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback
from schemas.indications import Indication, YouthIndications
from schemas.lifecycle import ReferralChange, RoutedChange
from schemas.referral import Referral
from schemas.registry import Registry, RegistrySnapshot
from schemas.routing import RecipientKind, RoutingAlert, RoutingDecision, RoutingLoad, YouthRouting
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.contract import Output
from services.infra.kafka import Outbound, Record
from services.infra.logging import get_logger
from services.infra.processing import Poison, Processor, Runtime, document_input
from services.infra.settings import Settings
from services.routing.core import (
    ROUTING_FEEDBACK,
    Alerted,
    Decided,
    Effect,
    Forwarded,
    IndicationsChanged,
    Position,
    Refused,
    Step,
    count_refusal,
    is_empty,
    merge_indication,
    on_change,
    on_feedback,
    on_indications,
    on_referral,
    on_stop,
    refusals_alert,
    stopped_providers,
)
from services.routing.index import PartitionIndex, YouthEntry
from services.routing.sides import SideInputs
from services.routing.store import STATE, StateStore

SERVICE = "routing"
FEEDBACK_TOPIC = re.compile(r"feedback\.(wij|provider)\.([^.]+)\.v1")
WRITTEN_BY = "written-by"
"""Header on routing's own `indications.v1` records: applied when written, so skipped when they come back."""
LOAD_EVERY_S = 5.0
"""A partition's open load goes to `routing.load.v1` when it changed, at most this often (a transaction each)."""
STOP_BATCH = 100
"""Youths re-routed per partition per tick at most, so one transaction stays small; the next tick goes on."""
DECISIONS = Output("decisions", topics.DECISIONS, RoutingDecision,
                   "Each decision with its trace, keyed by youth pseudonym (the audit trail).")
CHANGES = Output("changes", topics.DECISIONS, RoutedChange, (
    "A referral's amendment or cancellation, with the recipient holding it (or why it was refused: "
    "`AMENDMENT_REROUTES`, `REFERRAL_CLOSED`), keyed by youth pseudonym, header `schema: verwijshub.RoutedChange/1`."))
ALERTS = Output("alerts", topics.ALERTS, RoutingAlert,
                "`provider-stopped` and `feedback-refused` alerts, keyed by youth pseudonym.")
INDICATIONS = Output("indications-written", topics.INDICATIONS, YouthIndications,
                     "A youth's whole list, with header `written-by: routing`.")
LOAD = Output("load", topics.ROUTING_LOAD, RoutingLoad,
              "Internal, compacted: open handovers per provider of one routing partition.")


class Routing(Processor):
    service = SERVICE
    inputs = "|".join([re.escape(topics.NORMALISED), FEEDBACK_TOPIC.pattern, re.escape(topics.INDICATIONS)])
    state_topic = topics.ROUTING_STATE
    writes = (DECISIONS, CHANGES, ALERTS, INDICATIONS, STATE, LOAD)

    def __init__(self, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.clock = clock
        kafka = settings.connection(principals.service(SERVICE))
        self.sides = SideInputs(kafka, registry)
        self.store = StateStore(kafka, self._located)
        self.index: dict[int, PartitionIndex] = {}
        self.published: dict[int, tuple[dict[str, int], float]] = {}
        """partition -> the open load last published on `routing.load.v1`, and when (monotonic)."""
        self.swept: dict[int, str] = {}
        self.refusals: dict[str, dict[Position, datetime]] = {}
        """feedback topic -> its recent refusals (core.count_refusal): at most REFUSALS_KEPT per recipient, and only
        recipients of the registry have a feedback topic. Lost on a restart, which only delays an alert."""
        self.indication_max_days = settings.indication_max_days
        self.log = get_logger(service=SERVICE)

    @property
    def registry(self) -> Registry:
        return self.sides.registry

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self, kafka: KafkaConnection) -> None:
        await self.sides.start()

    async def stop(self) -> None:
        await self.store.stop()
        await self.sides.stop()

    async def load(self, partition: int, state: list[Record]) -> None:
        """The partition's youths from their latest state records: summaries and offsets, never the referrals."""
        index = PartitionIndex()
        for record in state:
            if record.key is None:
                continue
            try:
                youth = YouthRouting.model_validate_json(record.value) if record.value else None
            except ValidationError:
                self.log.error("routing state record unreadable: skipped", partition=partition, offset=record.offset)
                continue
            index.put(record.key.decode(), YouthEntry.of(youth, record.offset) if youth else None)
        self.index[partition] = index
        self.store.unloaded(partition)
        self.log.info("routing state loaded", partition=partition, youths=len(index),
                      open_referrals=sum(len(e.referrals) for e in index.youths.values()))

    def unload(self, partition: int) -> None:
        for held in (self.index, self.published, self.swept):
            held.pop(partition, None)
        self.store.unloaded(partition)

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        self.store.committed(partition, produced)

    def _located(self, partition: int, pseudonym: str, offset: int) -> None:
        if (index := self.index.get(partition)) is not None:
            index.located(pseudonym, offset)

    # -- the youth's state -----------------------------------------------------------------------------
    async def youth(self, partition: int, pseudonym: str) -> YouthRouting:
        """The youth's full state: written just now, read back by its offset, or none yet."""
        if (held := self.store.held(partition, pseudonym)) is not None:
            return held.state or YouthRouting(pseudonym=pseudonym)
        entry = self.index[partition].get(pseudonym)
        if entry is None:
            return YouthRouting(pseudonym=pseudonym)
        assert entry.offset is not None, "a state without offset is held by the store"
        return await self.store.read(partition, pseudonym, entry.offset)

    def knows(self, partition: int, pseudonym: str, referral_id: str) -> bool:
        """Whether the referral is open, without reading the youth's state."""
        if (held := self.store.held(partition, pseudonym)) is not None:
            return held.state is not None and referral_id in held.state.referrals
        entry = self.index[partition].get(pseudonym)
        return entry is not None and referral_id in entry.referrals

    def open_load(self) -> dict[str, int]:
        """Open handovers per provider: this instance's partitions live, the others' as last published."""
        total: Counter[str] = Counter()
        for partition, counts in self.sides.load.items():
            if partition not in self.index:
                total.update(counts)
        for index in self.index.values():
            total.update(index.load)
        return dict(total)

    def records(self, partition: int, before: YouthRouting, step: Step) -> list[Outbound]:
        """The step's effects and the youth's new state (a tombstone once empty); memory follows the step.
        Called last in `handle`/`tick` for a youth: nothing after it can fail for this youth."""
        if step.state is before:
            return [self.effect_record(e) for e in step.effects]
        pseudonym, index = before.pseudonym, self.index[partition]
        state = None if is_empty(step.state, self.clock.now().date()) else step.state
        out = [self.effect_record(e) for e in step.effects]
        if state is not None or index.get(pseudonym) is not None or self.store.held(partition, pseudonym):
            out.append(self.store.write(partition, pseudonym, state))
        index.put(pseudonym, YouthEntry.of(state, None) if state is not None else None)
        return out

    @staticmethod
    def effect_record(effect: Effect) -> Outbound:
        match effect:
            case Decided(decision):
                referral = decision.referral
                metrics.DECISIONS.labels(decision.rule, decision.recipient.kind.value if decision.recipient
                                         else "rejected").inc()
                return DECISIONS.record(decision, referral.youth.pseudonym, correlation_id=referral.referral_id,
                                        channel=referral.channel)
            case Forwarded(routed):
                change = routed.change
                return CHANGES.record(routed, change.pseudonym, correlation_id=change.referral_id,
                                      channel=change.channel)
            case Alerted(alert):
                return ALERTS.record(alert, alert.pseudonym, correlation_id=alert.referral_id or "")
            case IndicationsChanged(value):  # an empty list rather than a tombstone
                return INDICATIONS.record(value, value.pseudonym, extra_headers={WRITTEN_BY: SERVICE})
        raise AssertionError(effect)

    # -- inputs ----------------------------------------------------------------------------------------
    async def handle(self, record: Record) -> list[Outbound]:
        if record.topic == topics.NORMALISED:
            if dict(record.headers or ()).get("schema") == ReferralChange.SCHEMA.encode():
                return await self.on_change(record)
            return await self.on_referral(record)
        if record.topic == topics.INDICATIONS:
            return await self.on_indications(record)
        return await self.on_feedback(record)

    async def on_referral(self, record: Record) -> list[Outbound]:
        try:
            referral = Referral.model_validate_json(record.value or b"")
        except ValidationError:
            raise Poison([ReferralError(code=ErrorCode.SCHEMA_INVALID, location="",
                                        message="Not a canonical Referral.")]) from None
        before = await self.youth(record.partition, referral.youth.pseudonym)
        step = on_referral(before, referral, self.registry, self.clock.now(), self.open_load())
        (decided,) = step.effects
        decision: RoutingDecision = decided.decision
        for code in {e.code.value for e in decision.errors}:
            metrics.REFERRALS_REJECTED.labels(referral.channel.value, code).inc()
        self.log.info("referral decided", correlation_id=referral.referral_id, rule=decision.rule,
                      recipient=decision.recipient.id if decision.recipient else None, flags=decision.flags,
                      registry_version=decision.registry_version)
        return self.records(record.partition, before, step)

    async def on_change(self, record: Record) -> list[Outbound]:
        """A referral's amendment or cancellation (intake's `ReferralChange`): forwarded to its recipient by the core."""
        try:
            change = ReferralChange.model_validate_json(record.value or b"")
        except ValidationError:
            raise Poison([ReferralError(code=ErrorCode.SCHEMA_INVALID, location="",
                                        message="Not a ReferralChange.")]) from None
        before = await self.youth(record.partition, change.pseudonym) \
            if self.knows(record.partition, change.pseudonym, change.referral_id) \
            else YouthRouting(pseudonym=change.pseudonym)
        step = on_change(before, change, self.clock.now())
        self.log.info("referral change handled", correlation_id=change.referral_id, kind=change.kind.value,
                      outcome=step.outcome)
        return self.records(record.partition, before, step)

    async def on_feedback(self, record: Record) -> list[Outbound]:
        """Declines re-route, closures end the referral, started indications are kept, WIJ's `specialist-needed`
        decides again by rule 5; the rest is the notifier's.
        Feedback about a referral not with its writer is refused (`Refused`: nothing changes, an alert when its
        writer keeps trying) and, like unreadable feedback, dead-lettered by the notifier, which applies the same
        rule (`not_recipient`); an invalid indication, which only routing judges, routing dead-letters itself."""
        kind, source = FEEDBACK_TOPIC.fullmatch(record.topic).groups()
        recipient_kind = RecipientKind.WIJ_TEAM if kind == "wij" else RecipientKind.PROVIDER
        try:
            feedback = Feedback.model_validate_json(record.value or b"")
        except ValidationError:
            self.log.warning("not a feedback message: ignored by routing")
            return []
        pseudonym = record.key.decode(errors="replace") if record.key else None
        if pseudonym is None or feedback.kind not in ROUTING_FEEDBACK:
            self.log.info("feedback handled", correlation_id=feedback.referral_id, kind=feedback.kind.value,
                          outcome="nothing for routing")
            return []
        # a referral not open for this youth: the core refuses it from an empty state, without reading the stored one
        before = await self.youth(record.partition, pseudonym) \
            if self.knows(record.partition, pseudonym, feedback.referral_id) else YouthRouting(pseudonym=pseudonym)
        now = self.clock.now()
        step = on_feedback(before, recipient_kind, source, feedback, self.registry, now, self.open_load(),
                           self.indication_max_days)
        self.log.info("feedback handled", correlation_id=feedback.referral_id, kind=feedback.kind.value,
                      outcome=step.outcome)
        if step.effects and isinstance(refused := step.effects[0], Refused):
            alerts = self.refusal_records(record, recipient_kind, source, pseudonym, now)
            if refused.error.code is ErrorCode.NOT_RECIPIENT:
                return alerts  # the notifier, which reads every feedback kind, dead-letters it: one dead letter
            raise Poison([refused.error], also=alerts)
        return self.records(record.partition, before, step)

    def refusal_records(self, record: Record, kind: RecipientKind, source: str, pseudonym: str,
                        now: datetime) -> list[Outbound]:
        """The alert, when this refusal is one too many of its recipient's (core.count_refusal)."""
        self.refusals[record.topic], alert = count_refusal(self.refusals.get(record.topic, {}),
                                                           (record.topic, record.partition, record.offset), now)
        if not alert:
            return []
        self.log.warning("feedback refused repeatedly: alerted", recipient=f"{kind.value}:{source}")
        return [self.effect_record(Alerted(refusals_alert(kind, source, pseudonym, now)))]

    async def on_indications(self, record: Record) -> list[Outbound]:
        """A youth's list from another writer (the import); a single `Indication` is merged into the list."""
        if dict(record.headers or ()).get(WRITTEN_BY) == SERVICE.encode() or record.key is None:
            return []
        pseudonym = record.key.decode(errors="replace")
        before = await self.youth(record.partition, pseudonym)
        try:
            listed = YouthIndications.model_validate_json(record.value).indications if record.value else []
        except ValidationError:
            try:
                listed = list(merge_indication(tuple(before.indications), Indication.model_validate_json(record.value)))
            except ValidationError:
                self.log.error("indications record unreadable: skipped", pseudonym=pseudonym)
                return []
        return self.records(record.partition, before, Step(on_indications(before, listed), []))

    # -- time --------------------------------------------------------------------------------------------
    async def tick(self, partition: int) -> list[Outbound]:
        """The provider-stop sweep of the partition, then its open load when it changed."""
        index = self.index.get(partition)
        if index is None:
            return []
        now, registry = self.clock.now(), self.registry
        out: list[Outbound] = []
        candidates = index.stop_candidates(stopped_providers(registry, now.date()), now.date())[:STOP_BATCH]
        rerouted = 0
        for pseudonym in candidates:
            before = await self.youth(partition, pseudonym)
            step = on_stop(before, registry, now.date(), now)
            for effect in step.effects:
                if isinstance(effect, Alerted):
                    alert: RoutingAlert = effect.alert
                    rerouted += 1
                    self.log.info("provider stop re-routed", provider=alert.provider, pseudonym=pseudonym,
                                  correlation_id=alert.referral_id, team=alert.team)
            out += self.records(partition, before, step)
        if candidates or self.swept.get(partition) != registry.version:
            self.swept[partition] = registry.version
            self.log.info("provider stops swept", partition=partition, rerouted=rerouted,
                          registry_version=registry.version)
        counts, (published, when) = index.open_load(), self.published.get(partition, ({}, float("-inf")))
        if counts != published and time.monotonic() - when >= LOAD_EVERY_S:
            self.published[partition] = (counts, time.monotonic())
            out.append(LOAD.record(RoutingLoad(partition=partition, at=now, open=counts), str(partition)))
        return out

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """What routing reads and writes, for the AsyncAPI document."""
        document_input(broker, "routing:normalised", "Canonical referrals from intake, to be decided.",
                       topic=topics.NORMALISED, schema=Referral)
        document_input(broker, "routing:referral-changes", "Amendments and cancellations from intake (header `schema: "
                       "verwijshub.ReferralChange/1`), forwarded to the recipient holding the referral.",
                       topic=topics.NORMALISED, schema=ReferralChange)
        for kind, address in (("wij", topics.wij_feedback("{team}")), ("provider", topics.provider_feedback("{agb}"))):
            document_input(broker, f"routing:feedback-{kind}", "Recipients' feedback (every recipient's topic, by "
                           "pattern): declines re-route, closures end the referral, started indications are kept, "
                           "WIJ's `specialist-needed` decides again (rule 5).", topic=address, schema=Feedback)
        document_input(broker, "routing:indications", "Youths' indications written by others (the import).",
                       topic=topics.INDICATIONS, schema=YouthIndications)
        document_input(broker, "routing:registry", "The registry in force, followed from the start (no group).",
                       topic=topics.REGISTRY, schema=RegistrySnapshot)
        document_input(broker, "routing:load-followed", "The other routing partitions' open load, followed (no "
                       "group).", topic=topics.ROUTING_LOAD, schema=RoutingLoad)


def create_routing(settings: Settings, registry: Registry, clock: Clock) -> Runtime:
    return Runtime(Routing(settings, registry, clock), settings)
