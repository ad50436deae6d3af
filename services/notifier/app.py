"""The notifier service: hands each decision to its one recipient, follows it up, and tells the referrer.

One consumer group reads decisions, recipients' feedback and running indications together. All three
are keyed by the youth pseudonym and have the same number of partitions, and the range assignor gives
an instance the same partition numbers of each, so one instance owns everything about a youth. Its
follow-up (open handovers, contact clocks, expiry reminders) lives on the compacted `notifier.state.v1`
in that same partition: loaded when the partition is assigned, dropped when revoked, written after each
change. A timer publishes what came due, for owned partitions only, so with N instances each notice is
sent once; one that came due while no notifier ran fires when the partition is next owned.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback
from schemas.indications import Indication, YouthIndications
from schemas.notices import YouthFollowUp
from schemas.registry import Registry
from schemas.routing import RecipientKind, RoutingDecision
from schemas.status import StatusEvent
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.consuming import RecordView, dead_letter, handling
from services.infra.kafka import Outbound, encode, group_id, make_broker, outbound, publish, read_records
from services.infra.logging import get_logger
from services.infra.registry_topic import latest_registry
from services.infra.settings import Settings
from services.notifier.calendar import GoodFriday, LiberationDay, WorkingCalendar
from services.notifier.followup import (
    Alert,
    Effect,
    FeedbackRefused,
    HandOver,
    Notify,
    apply_decision,
    apply_feedback,
    apply_indications,
    due_effects,
    is_empty,
    next_due,
    partition_clocks,
)
from services.notifier.handover import handover_bundle

SERVICE = "notifier"
FHIR_JSON = "application/fhir+json"
HANDOVER_SCHEMA = "verwijshub.Handover/1"
REGISTRY_EVERY_S = 30.0
"""How often the notifier reads `registry.v1` for a newly published registry."""
BATCH_MAX = 200
"""Records followed up per batch at most; one offset commit per batch."""
INPUT_PATTERN = r"(routing\.decisions|indications|feedback\.(wij|provider)\.[^.]+)\.v1$"


CLOCK_STATES = ("open", "at_risk", "breached")


def clock_states(state: YouthFollowUp) -> tuple[int, int, int]:
    """How many of the youth's contact clocks run, have had their at-risk notice, have been breached."""
    clocks = [h.clock for h in state.handovers.values() if h.clock is not None]
    return (sum(not c.breached_sent for c in clocks), sum(c.at_risk_sent and not c.breached_sent for c in clocks),
            sum(c.breached_sent for c in clocks))


class NotOwned(Exception):
    """A record of a partition this instance just gave up: not acknowledged, so its next owner handles it."""


class FollowUps:
    """The follow-up of every youth in the partitions this instance owns, and when each is next due.

    Kept as the JSON it is stored as on Kafka and parsed when the youth's turn comes: about a tenth of
    the memory of the parsed models, which matters with 100,000 open clocks (bench/notifier_memory.py)."""

    def __init__(self) -> None:
        self.clocks: dict[str, tuple[int, int, int]] = {}
        """pseudonym -> its clocks (open, at risk, breached), summed into the CONTACT_CLOCKS gauge."""
        self.by_partition: dict[int, dict[str, bytes]] = {}
        self.due: dict[str, tuple[int, datetime]] = {}
        """pseudonym -> (partition, next due moment), for the youths with something pending."""

    def owns(self, partition: int) -> bool:
        return partition in self.by_partition

    def get(self, partition: int, pseudonym: str) -> YouthFollowUp:
        stored = self.by_partition[partition].get(pseudonym)
        return YouthFollowUp.model_validate_json(stored) if stored else YouthFollowUp(pseudonym=pseudonym)

    def put(self, partition: int, state: YouthFollowUp, stored: bytes) -> None:
        youths = self.by_partition[partition]
        if stored:
            youths[state.pseudonym] = stored
        else:
            youths.pop(state.pseudonym, None)
        moment = next_due(state)
        if moment is None:
            self.due.pop(state.pseudonym, None)
        else:
            self.due[state.pseudonym] = (partition, moment)
        self.count_clocks(state.pseudonym, clock_states(state))

    def count_clocks(self, pseudonym: str, counts: tuple[int, int, int]) -> None:
        before = self.clocks.pop(pseudonym, (0, 0, 0))
        if any(counts):
            self.clocks[pseudonym] = counts
        for label, old, new in zip(CLOCK_STATES, before, counts):
            if new != old:
                metrics.CONTACT_CLOCKS.labels(label).inc(new - old)

    def load(self, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        self.by_partition[partition] = {}
        for key, value in records:
            if key is not None:
                state = YouthFollowUp.model_validate_json(value) if value else YouthFollowUp(pseudonym=key.decode())
                self.put(partition, state, value or b"")

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            for pseudonym in self.by_partition.pop(partition, {}):
                self.due.pop(pseudonym, None)
                self.count_clocks(pseudonym, (0, 0, 0))


class Notifier:
    def __init__(self, broker: KafkaBroker, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.broker, self.settings, self.registry, self.clock = broker, settings, registry, clock
        self.calendar = WorkingCalendar(LiberationDay(settings.liberation_day), GoodFriday(settings.good_friday))
        self.followups = FollowUps()
        self.lock = asyncio.Lock()
        """Held while a record or a due moment is handled, and while partitions change hands."""
        self.unsaved: list[asyncio.Future] = []
        self.timer: asyncio.Task | None = None
        self.log = get_logger(service=SERVICE)

    @cached_property
    def kafka(self) -> KafkaConnection:
        """The notifier's own principal, for reading its state topic on assignment."""
        return self.settings.connection(principals.service(SERVICE))

    # -- ownership -----------------------------------------------------------------------------------
    async def take(self, assigned: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == topics.DECISIONS}
        async with self.lock:
            self.followups.drop(set(self.followups.by_partition) - partitions)
            new = partitions - set(self.followups.by_partition)
            stored = await read_records(self.kafka, [topics.NOTIFIER_STATE], only=new) if new else []
            for partition in new:
                self.followups.load(partition, [(r.key, r.value) for r in stored if r.partition == partition])
        self.log.info("follow-up partitions owned", partitions=sorted(partitions),
                      youths=sum(map(len, self.followups.by_partition.values())))

    async def give_up(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:  # after the record or due moment in hand, so the next owner reads it all
            await self.confirm_saved()
            self.followups.drop({tp.partition for tp in revoked})

    # -- publishing ----------------------------------------------------------------------------------
    async def publish(self, effects: list[Effect], pseudonym: str, correlation_id: str) -> None:
        """Send the effects in order and wait for all of them together (one round trip, not one each);
        the producer is idempotent, so records of one partition land in the order sent."""
        deliveries = [await publish(self.broker, self.record(effect, pseudonym, correlation_id), confirm=False)
                      for effect in effects]
        await asyncio.gather(*deliveries)

    def record(self, effect: Effect, pseudonym: str, correlation_id: str) -> Outbound:
        """The Kafka record of one effect (statuses keyed by the referrer's id, the rest by youth pseudonym)."""
        match effect:
            case StatusEvent():
                return outbound(topics.status(effect.channel), effect, effect.referrer_referral_id,
                                correlation_id=effect.referral_id or "", channel=effect.channel)
            case HandOver(decision=decision):
                metrics.HANDOVERS.labels(decision.recipient.kind.value).inc()
                bundle = handover_bundle(decision, self.clock.now()).model_dump_json(exclude_none=True).encode()
                return outbound(decision.recipient.topic, bundle, pseudonym, schema=HANDOVER_SCHEMA,
                                content_type=FHIR_JSON, correlation_id=decision.referral_id,
                                channel=decision.referral.channel)
            case Notify(topic=topic, notice=notice):
                return outbound(topic, notice, pseudonym, correlation_id=notice.referral_id or correlation_id)
            case Alert(alert=alert):
                if alert.kind == "sla-breached":
                    metrics.SLA_BREACHES.inc()
                return outbound(topics.ALERTS, alert, pseudonym, correlation_id=alert.referral_id or "")

    async def save(self, partition: int, before: YouthFollowUp, after: YouthFollowUp) -> None:
        """Store the youth's follow-up; its delivery is confirmed with the others in `confirm_saved`."""
        value = b"" if is_empty(after) else encode(after)  # empty: nothing left to follow for this youth
        self.followups.put(partition, after, value)
        if after != before:
            self.unsaved.append(await publish(self.broker, outbound(
                topics.NOTIFIER_STATE, value, after.pseudonym, schema=YouthFollowUp.SCHEMA, partition=partition),
                confirm=False))

    async def confirm_saved(self) -> None:
        """Wait for every follow-up written so far: before offsets are committed and before a partition is
        given up, so its next owner reads them all."""
        unsaved, self.unsaved = self.unsaved, []
        await asyncio.gather(*unsaved)

    # -- records -------------------------------------------------------------------------------------
    def team_of(self, decision: RoutingDecision) -> str | None:
        return self.registry.postcodes.get(decision.referral.youth.pc4)

    async def on_record(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> str:
        """One input record: effects published, then the youth's follow-up stored (with the offset, so the same
        record delivered again after a rebalance does nothing). Raises FeedbackRefused, ValidationError or NotOwned."""
        if topic == topics.DECISIONS:
            decision = RoutingDecision.model_validate_json(value)
            pseudonym = decision.referral.youth.pseudonym
        elif key is None:
            raise FeedbackRefused(ReferralError(code=ErrorCode.SCHEMA_INVALID, location="key", message=(
                "Feedback and indications must be keyed by the youth pseudonym of the handover.")))
        else:
            pseudonym = key.decode(errors="replace")
        async with self.lock:
            if not self.followups.owns(partition):
                raise NotOwned(f"partition {partition} of {topic} is not owned by this instance")
            before = self.followups.get(partition, pseudonym)
            position = f"{topic}:{partition}"
            if before.seen.get(position, -1) >= offset:
                return "already applied"
            now, correlation_id = self.clock.now(), ""
            if topic == topics.DECISIONS:
                after, effects = apply_decision(before, decision, now, self.calendar, self.team_of(decision))
                correlation_id, outcome = decision.referral_id, f"decision {decision.rule}"
            elif topic == topics.INDICATIONS:
                after, effects = apply_indications(before, _indications(value), now.date()), []
                outcome = f"{len(after.watches)} indication(s) watched"
            else:
                feedback = Feedback.model_validate_json(value)
                _, kind, source, _ = topic.split(".", 3)
                after, effects = apply_feedback(before, _KIND[kind], source, feedback, now)
                correlation_id, outcome = feedback.referral_id, f"feedback {feedback.kind.value}"
            await self.publish(effects, pseudonym, correlation_id)
            await self.save(partition, before, after.model_copy(update={"seen": {**after.seen, position: offset}}))
            return outcome

    # -- time ----------------------------------------------------------------------------------------
    async def fire_due(self) -> int:
        """Publish what came due in the owned partitions; returns how many youths had something due."""
        now, fired = self.clock.now(), 0
        async with self.lock:
            due = [(pseudonym, partition) for pseudonym, (partition, moment) in self.followups.due.items()
                   if moment <= now]
            for pseudonym, partition in due:
                before = self.followups.get(partition, pseudonym)
                after, effects = due_effects(before, now, self.registry.central_entrance().id)
                await self.publish(effects, pseudonym, "")
                await self.save(partition, before, after)
                fired += 1
            await self.confirm_saved()
        if fired:
            self.log.info("due follow-ups published", youths=fired)
        return fired

    clocks_published: tuple[frozenset[int], float] = (frozenset(), float("-inf"))
    """The owned partitions and the monotonic time of the last `publish_recipient_clocks`."""

    async def publish_recipient_clocks(self, every_s: float = 15.0) -> None:
        """Every `every_s`, and at once when the owned partitions change: each owned partition's contact clocks
        per recipient on `ops.recipients.v1` (counts only; operations may not read `notifier.state.v1`)."""
        async with self.lock:
            owned = frozenset(self.followups.by_partition)
            if owned == self.clocks_published[0] and time.monotonic() - self.clocks_published[1] < every_s:
                return
            self.clocks_published = (owned, time.monotonic())  # a failure is tried again after every_s
            now, with_clocks = self.clock.now(), self.followups.clocks
            records = [partition_clocks(partition, [self.followups.get(partition, pseudonym) for pseudonym in youths
                                                    if pseudonym in with_clocks], now)
                       for partition, youths in self.followups.by_partition.items()]
        try:
            await asyncio.gather(*[await publish(self.broker, outbound(topics.OPS_RECIPIENTS, value, key), confirm=False)
                                   for key, value in records])
        except Exception as exc:  # operations' view only: the follow-up itself goes on
            self.log.warning("recipient clocks not published", error_type=type(exc).__name__)

    async def follow_registry(self) -> None:
        """The registry in force: the latest on `registry.v1` (teams for re-triage notices, the central entrance)."""
        latest = await latest_registry(self.kafka)
        if latest is not None and latest.version != self.registry.version:
            self.registry = latest
            self.log.info("registry in force", registry_version=latest.version)

    async def run_timer(self) -> None:
        registry_read = 0.0
        while True:
            try:
                if time.monotonic() - registry_read > REGISTRY_EVERY_S:
                    registry_read = time.monotonic()
                    await self.follow_registry()
                await self.fire_due()
                await self.publish_recipient_clocks()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed publish is tried again at the next tick (state not yet saved)
                self.log.error("due follow-ups failed", error_type=type(exc).__name__)
            await asyncio.sleep(self.settings.notifier_tick_seconds)


_KIND = {"wij": RecipientKind.WIJ_TEAM, "provider": RecipientKind.PROVIDER}
"""The kind part of a feedback topic's name (`feedback.<kind>.<id>.v1`)."""


def _indications(value: bytes) -> list[Indication]:
    """A youth's list as routing and the import write it; a single Indication (another writer) as a list of one."""
    if not value:
        return []
    try:
        return YouthIndications.model_validate_json(value).indications
    except ValidationError:
        return [Indication.model_validate_json(value)]


class OwnershipListener(ConsumerRebalanceListener):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.notifier.give_up(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.notifier.take(assigned)


class NotifierBroker(KafkaBroker):
    """The FastStream broker of the notifier, which also runs the timer of due follow-ups."""

    notifier: Notifier

    async def start(self) -> None:
        await super().start()
        self.notifier.timer = asyncio.create_task(self.notifier.run_timer(), name="notifier-timer")

    async def stop(self, *exc_info) -> None:
        if self.notifier.timer is not None:
            self.notifier.timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.notifier.timer
        await super().stop(*exc_info)


def create_notifier(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE, NotifierBroker)
    notifier = broker.notifier = Notifier(broker, settings, registry, clock)

    @broker.subscriber(pattern=INPUT_PATTERN, group_id=group_id(SERVICE), auto_offset_reset="earliest",
                       batch=True, max_records=BATCH_MAX, ack_policy=AckPolicy.NACK_ON_ERROR,
                       partition_assignment_strategy=(RangePartitionAssignor,),
                       listener=OwnershipListener(notifier), title="notifier:follow-up",
                       description="Routing decisions (handed over), recipients' feedback (the status lifecycle) "
                                   "and running indications (expiry reminders), all keyed by youth pseudonym.")
    async def on_input(message: ConsumedRecord) -> None:
        """A batch: each record followed up in order (its effects confirmed before its follow-up is written),
        then all follow-ups confirmed before the batch's offsets are committed."""
        for record in message.raw_message:
            await follow_up(RecordView(record))
        await notifier.confirm_saved()

    async def follow_up(view: RecordView) -> None:
        record = view.raw_message
        with handling(SERVICE, view) as log:
            try:
                outcome = await notifier.on_record(record.topic, record.partition, record.offset, record.key,
                                                   view.body)
            except FeedbackRefused as refused:
                log.warning("feedback refused: dead-lettered", code=refused.error.code.value)
                await dead_letter(broker, view, [refused.error])
                return
            except ValidationError:
                log.error("unreadable record: dead-lettered")
                await dead_letter(broker, view, [ReferralError(
                    code=ErrorCode.SCHEMA_INVALID, location="", message=f"Not a valid message for {record.topic}.")])
                return
            except NotOwned:  # the batch is not committed; the next owner reads it (a record done is skipped)
                log.info("record of a partition given up: left to its next owner")
                raise
            except Exception as exc:  # a bug must not block the partition: park the record
                log.error("follow-up failed: dead-lettered", error_type=type(exc).__name__)
                await dead_letter(broker, view, [ReferralError(
                    code=ErrorCode.UNPARSEABLE, location="", message="The hub could not process this record.")])
                return
            log.info("record followed up", outcome=outcome)

    return broker
