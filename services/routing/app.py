"""The routing service: decides each normalised referral and publishes the decision with its trace.

Around the pure policy it keeps a state rebuilt from Kafka (a follower without consumer group that
reads `registry.v1`, `indications.v1` and `routing.decisions.v1` from the start and then live), so that
a published registry takes effect without a restart, rule 2 sees the running indications, declines
re-route without the recipient, and a provider's stop re-routes each of its youths once: a youth
whose latest decision already names the WIJ team, or whose indication is marked, is not done again.
"""

import asyncio
import contextlib
from collections.abc import Callable
from datetime import date
from functools import cached_property

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback, FeedbackKind
from schemas.indications import Indication, YouthIndications
from schemas.referral import Referral
from schemas.registry import REGISTRY_KEY, Registry
from schemas.routing import RoutingAlert, RoutingDecision
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.consuming import RecordView, dead_letter, handling
from services.infra.kafka import group_id, make_broker, outbound, partitions_of, publish
from services.infra.logging import get_logger
from services.infra.registry_files import RegistryError
from services.infra.registry_topic import decode_registry
from services.infra.settings import Settings
from services.routing.policy import (
    PROVIDER_STOPPED,
    decide,
    redecide_after_decline,
    reroute_after_stop,
)
from services.routing.state import RoutingState, StopWork, merge_indication

SERVICE = "routing"
FEEDBACK_PATTERN = r"feedback\..*\.v1"
FEEDBACK_GROUP = group_id(f"{SERVICE}-feedback")
"""Routing reads feedback in a group of its own, so its referral consumer sees no rebalances from it."""
_PARTITIONER = DefaultPartitioner()
BATCH_MAX = 200
"""Referrals decided per batch at most; their deliveries are confirmed, then committed, together."""
SWEEP_EVERY_S = 30.0
"""How often provider stops are looked for besides each registry change (a stop date may arrive)."""


class Routing:
    def __init__(self, broker: KafkaBroker, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.broker, self.settings, self.clock = broker, settings, clock
        self.state = RoutingState(registry)
        self.ready = asyncio.Event()
        self.sweeping = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.state_partitions: list = []
        self.log = get_logger(service=SERVICE)
        self.owned_partitions: Callable[[], set[int] | None] = lambda: None
        """The `referrals.normalised.v1` partitions this instance consumes (None: unknown, own all)."""

    def owns(self, pseudonym: str) -> bool:
        """Whether this instance re-routes the youth after a stop: the one that consumes the youth's
        partition, so that several routing instances do not each re-route the same youth."""
        owned = self.owned_partitions()
        if owned is None:
            return True
        count = len(self.state_partitions) or self.settings.partitions
        return _PARTITIONER(pseudonym.encode(), list(range(count)), list(range(count))) in owned

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.follow(), name="routing-follow"),
                      asyncio.create_task(self.sweep_periodically(), name="routing-sweep")]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @cached_property
    def kafka(self) -> KafkaConnection:
        """Routing's own principal, for what it reads beside its FastStream subscribers (its state topics)."""
        return self.settings.connection(principals.service(SERVICE))

    # -- publishing --------------------------------------------------------------------------------
    async def publish_decision(self, decision: RoutingDecision, confirm: bool = True) -> asyncio.Future | None:
        """Publish a decision; with `confirm=False` return the delivery future instead of waiting for it,
        so a batch is sent in order and confirmed together."""
        referral = decision.referral
        delivery = await publish(self.broker, outbound(topics.DECISIONS, decision, referral.youth.pseudonym,
                                                       correlation_id=referral.referral_id, channel=referral.channel),
                                 confirm)
        self.state.apply_decision(decision)
        return delivery

    async def publish_indications(self, pseudonym: str, indications: tuple[Indication, ...]) -> None:
        value = YouthIndications(pseudonym=pseudonym, indications=list(indications))
        await publish(self.broker, outbound(topics.INDICATIONS, value, pseudonym))  # an empty list, not a tombstone
        self.state.apply_indications(pseudonym, value)

    # -- referrals and feedback --------------------------------------------------------------------
    async def route(self, referral: Referral) -> tuple[RoutingDecision, asyncio.Future | None]:
        """Decide and publish; returns the decision and its (unconfirmed) delivery."""
        await self.ready.wait()
        state = self.state
        decision = decide(referral, state.registry, self.clock.now(),
                          indications=state.indications_of(referral.youth.pseudonym), load=state.open_load())
        return decision, await self.publish_decision(decision, confirm=False)

    async def on_feedback(self, topic: str, key: bytes | None, feedback: Feedback) -> str:
        """Acts on what routing cares about; returns what it did, for the log."""
        await self.ready.wait()
        _, kind, source, _ = topic.split(".", 3)
        if feedback.kind is FeedbackKind.DECLINED:
            return await self.reroute_declined(source, feedback)
        if feedback.kind is FeedbackKind.CLOSED:
            self.state.close(feedback.referral_id)
            return "closed"
        if feedback.kind is FeedbackKind.INDICATION_STARTED:
            if kind != "provider" or key is None or not feedback.product or not feedback.indication_end:
                return "indication-started without provider, youth, product or end date: ignored"
            indication = Indication(pseudonym=key.decode(), product=feedback.product, provider_agb=source,
                                    start=feedback.at.date(), end=feedback.indication_end,
                                    referral_id=feedback.referral_id)
            await self.publish_indications(indication.pseudonym,
                                           merge_indication(self.state.indications_of(indication.pseudonym),
                                                            indication))
            return "indication recorded"
        return "nothing for routing"

    async def reroute_declined(self, source: str, feedback: Feedback) -> str:
        previous = self.state.decisions.get(feedback.referral_id)
        if previous is None or previous.recipient is None or previous.recipient.id != source:
            return "decline of a referral that is not with this recipient: ignored"
        excluded = self.state.declined.get(feedback.referral_id, frozenset()) | {source}
        decision = redecide_after_decline(
            previous, self.state.registry, self.clock.now(), feedback.reason, excluded,
            self.state.indications_of(previous.referral.youth.pseudonym), self.state.open_load())
        await self.publish_decision(decision)
        return f"re-routed to {decision.recipient.id if decision.recipient else None}"

    # -- provider stops ----------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Re-route the youths of every stopped provider that were not re-routed yet; returns how many."""
        async with self.sweeping:
            done = 0
            for work in self.state.stop_work(self.clock.now().date()):
                if not self.owns(work.pseudonym):
                    continue
                try:
                    await self.handle_stop(work)
                    done += 1
                except Exception as exc:  # one youth's failure must not keep the others waiting
                    self.log.error("provider-stop re-route failed", provider=work.provider.agb,
                                   pseudonym=work.pseudonym, error_type=type(exc).__name__)
            self.log.info("provider stops swept", rerouted=done, registry_version=self.state.registry.version)
            return done

    async def handle_stop(self, work: StopWork) -> None:
        """Alert first, then the decision, then the indication marks: a crash in between repeats at most
        the alert; the decision, which ends the open handover, is written once."""
        now, registry = self.clock.now(), self.state.registry
        decision = team = None
        if work.decision is not None:
            products = sorted({i.product for i in work.indications})
            what = ("the open handover" + (f" and the running indication(s) for {', '.join(products)}"
                                           if products else ""))
            decision = reroute_after_stop(work.decision.referral, work.provider, registry, now, what)
            team = decision.recipient.id if decision.recipient else None
            message = f"{work.provider.name} stopped: {what} re-routed to WIJ team {team} (warm handover)"
        else:
            message = (f"{work.provider.name} stopped: a youth with a running indication imported without "
                       "referral; the provider asks the client to report at WIJ, which takes the youth on")
        alert = RoutingAlert(kind=PROVIDER_STOPPED, at=now, pseudonym=work.pseudonym,
                             referral_id=work.decision.referral_id if work.decision else None,
                             provider=work.provider.agb, team=team, message=message)
        await publish(self.broker, outbound(topics.ALERTS, alert, work.pseudonym,
                                            correlation_id=alert.referral_id or ""))
        if decision is not None:
            await self.publish_decision(decision)
        if work.indications:
            today: date = now.date()
            marked = tuple(i.model_copy(update={"rerouted_on": today}) if i in work.indications else i
                           for i in self.state.indications_of(work.pseudonym))
            await self.publish_indications(work.pseudonym, marked)
        self.log.info("provider stop re-routed", provider=work.provider.agb, pseudonym=work.pseudonym,
                      correlation_id=alert.referral_id, team=team)

    async def sweep_periodically(self) -> None:
        await self.ready.wait()
        while True:
            await self.sweep()
            await asyncio.sleep(SWEEP_EVERY_S)

    # -- the state follower ------------------------------------------------------------------------
    async def follow(self) -> None:
        """Follow the state topics; should the consumer fail, log it and start over (the state is idempotent)."""
        while True:
            try:
                await self.follow_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("routing state follower failed: restarting", error_type=type(exc).__name__,
                               error=str(exc)[:200])
                await asyncio.sleep(1.0)

    async def follow_once(self) -> None:
        """Read registry, indications and decisions from the start, set `ready` at their end, then follow."""
        names = [topics.REGISTRY, topics.INDICATIONS, topics.DECISIONS]
        consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                    client_id="verwijshub-routing-state")
        await consumer.start()
        try:
            partitions = await partitions_of(self.kafka, names)
            self.state_partitions = [tp for tp in partitions if tp.topic == topics.DECISIONS]
            if not partitions:  # no topics yet (`up` and `registry publish` create them): the files rule
                self.mark_ready_if(set())
                await asyncio.sleep(5.0)
                return
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            behind = {tp for tp, end in ends.items() if end > 0}
            self.mark_ready_if(behind)
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                registry_changed = False
                for tp, records in batches.items():
                    for record in records:
                        registry_changed |= self.apply(record.topic, record.key, record.value)
                    if tp in behind and await consumer.position(tp) >= ends[tp]:
                        behind.discard(tp)
                was_ready = self.ready.is_set()
                self.mark_ready_if(behind)
                if registry_changed and was_ready:
                    await self.sweep()
        finally:
            await consumer.stop()

    def mark_ready_if(self, behind: set) -> None:
        if not behind and not self.ready.is_set():
            self.ready.set()
            self.log.info("routing state loaded", registry_version=self.state.registry.version,
                          youths_with_indications=len(self.state.indications),
                          decisions=len(self.state.decisions))

    def apply_indication_record(self, pseudonym: str, value: bytes | None) -> None:
        """A youth's list (what routing and the import write); a single `Indication`, should another
        writer publish one, is merged into the list rather than dropped."""
        if not value:
            self.state.apply_indications(pseudonym, None)
            return
        try:
            self.state.apply_indications(pseudonym, YouthIndications.model_validate_json(value))
        except ValidationError:
            single = Indication.model_validate_json(value)
            merged = merge_indication(self.state.indications_of(pseudonym), single)
            self.state.apply_indications(pseudonym, YouthIndications(pseudonym=pseudonym, indications=list(merged)))

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """One record into the state; never raises. Returns whether the registry in force changed."""
        try:
            if topic == topics.REGISTRY and key == REGISTRY_KEY and value is not None:
                try:
                    registry = decode_registry(value)
                except RegistryError as exc:
                    self.log.error("registry refused, the last good one stays in force", reason=str(exc),
                                   registry_version=self.state.registry.version)
                    return False
                changed = registry.version != self.state.registry.version
                self.state.registry = registry
                if changed:
                    self.log.info("registry in force", registry_version=registry.version)
                return changed
            if topic == topics.INDICATIONS and key is not None:
                self.apply_indication_record(key.decode(), value)
            elif topic == topics.DECISIONS and value is not None:
                self.state.apply_decision(RoutingDecision.model_validate_json(value))
        except (ValidationError, ValueError) as exc:
            self.log.error("state record unreadable: skipped", topic=topic, error_type=type(exc).__name__)
        return False


class RoutingBroker(KafkaBroker):
    """The FastStream broker of routing, which also runs the state follower and the stop sweep."""

    routing: Routing

    async def start(self) -> None:
        await super().start()
        await self.routing.start()

    async def stop(self, *exc_info) -> None:
        await self.routing.stop()
        await super().stop(*exc_info)


def create_routing(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE, RoutingBroker)
    routing = Routing(broker, settings, registry, clock)
    broker.routing = routing

    normalised = broker.subscriber(topics.NORMALISED, group_id=group_id(SERVICE), auto_offset_reset="earliest",
                                   ack_policy=AckPolicy.ACK, batch=True, max_records=BATCH_MAX,
                                   title="routing:normalised",
                                   description="Canonical referrals from intake, to be decided.")

    @normalised
    async def on_normalised_referrals(message: ConsumedRecord) -> None:
        """A batch: each record decided and published in order, then all deliveries confirmed before the
        batch's offsets are committed (one commit per batch instead of one per referral)."""
        deliveries = []
        for record in message.raw_message:
            delivery = await decide_record(RecordView(record))
            if delivery is not None:
                deliveries.append(delivery)
        await asyncio.gather(*deliveries)

    async def decide_record(view: RecordView) -> asyncio.Future | None:
        with handling(SERVICE, view) as log:
            try:
                referral = Referral.model_validate_json(view.body)
            except ValidationError:
                log.error("not a canonical referral: dead-lettered")
                await dead_letter(broker, view, [ReferralError(
                    code=ErrorCode.SCHEMA_INVALID, location="", message="Not a canonical Referral.")])
                return None
            try:
                decision, delivery = await routing.route(referral)
            except Exception as exc:  # a policy bug must not block the partition: park the record
                log.error("routing failed: dead-lettered", correlation_id=referral.referral_id,
                          error_type=type(exc).__name__)
                await dead_letter(broker, view, [ReferralError(
                    code=ErrorCode.UNPARSEABLE, location="", message="The hub could not route this referral.")])
                return None
            metrics.DECISIONS.labels(decision.rule, decision.recipient.kind.value if decision.recipient else
                                     "rejected").inc()
            for code in {e.code.value for e in decision.errors}:
                metrics.REFERRALS_REJECTED.labels(referral.channel.value, code).inc()
            log.info("referral decided", correlation_id=referral.referral_id, rule=decision.rule,
                     recipient=decision.recipient.id if decision.recipient else None, flags=decision.flags,
                     registry_version=decision.registry_version)
            return delivery

    def owned_partitions() -> set[int] | None:
        consumer = getattr(normalised, "consumer", None)
        if consumer is None:
            return None
        return {tp.partition for tp in consumer.assignment() if tp.topic == topics.NORMALISED}

    routing.owned_partitions = owned_partitions

    @broker.subscriber(pattern=FEEDBACK_PATTERN, group_id=FEEDBACK_GROUP, auto_offset_reset="earliest",
                       ack_policy=AckPolicy.ACK, title="routing:feedback",
                       description="Recipients' feedback: declines re-route, started indications are kept.")
    async def on_feedback(message: ConsumedRecord) -> None:
        with handling(SERVICE, message) as log:
            try:
                feedback = Feedback.model_validate_json(message.body)
            except ValidationError:
                log.error("not a feedback message: ignored by routing")
                return
            try:
                outcome = await routing.on_feedback(message.raw_message.topic, message.raw_message.key, feedback)
            except Exception as exc:
                log.error("feedback handling failed", correlation_id=feedback.referral_id,
                          error_type=type(exc).__name__)
                return
            log.info("feedback handled", correlation_id=feedback.referral_id, kind=feedback.kind.value,
                     outcome=outcome)

    return broker
