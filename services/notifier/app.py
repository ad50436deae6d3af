"""The notifier service: hands each decision to its one recipient, follows it up, and tells the referrer.

One consumer group reads decisions, recipients' feedback and running indications together. All three
are keyed by the youth pseudonym and have the same number of partitions, and the range assignor gives
an instance the same partition numbers of each, so one instance owns everything about a youth. Its
follow-up (open handovers, contact clocks, expiry reminders) lives on the compacted `notifier.state.v1`
in that same partition: loaded when the partition is assigned, dropped when revoked, written in the same
transaction as the effects and the input offsets (services/infra/processing.py). The runtime's tick publishes
what came due, for owned partitions only, so with N instances each notice is sent once; one that came due
while no notifier ran fires when the partition is next owned.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterable
from datetime import datetime

from faststream.kafka import KafkaBroker
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.feedback import Feedback
from schemas.indications import Indication, YouthIndications
from schemas.lifecycle import RoutedChange
from schemas.notices import RecipientClocks, RecipientNotice, YouthFollowUp
from schemas.registry import Registry, RegistrySnapshot
from schemas.routing import RecipientKind, RoutingAlert, RoutingDecision
from schemas.status import ReferralStatus, StatusEvent
from services.infra import metrics, topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.following import follow
from services.infra.contract import Output
from services.infra.kafka import Outbound, Record, encode
from services.infra.logging import get_logger
from services.infra.processing import Poison, Processor, Runtime, document_input
from services.infra.registry_topic import RegistryInForce
from services.infra.settings import Settings
from services.infra.starting import waiting_for
from services.notifier.calendar import GoodFriday, LiberationDay, WorkingCalendar
from services.notifier.followup import (
    Alert,
    Amend,
    Effect,
    FeedbackRefused,
    HandOver,
    Notify,
    YouthClocks,
    apply_change,
    apply_decision,
    apply_feedback,
    apply_indications,
    due_effects,
    is_empty,
    next_due,
    partition_clocks,
    youth_clocks,
)
from services.notifier.handover import AMENDMENT_SCHEMA, amendment_bytes, handover_bytes

SERVICE = "notifier"
FHIR_JSON = "application/fhir+json"
HANDOVER_SCHEMA = "verwijshub.Handover/1"
CLOCKS_EVERY_S = 15.0
"""How often each owned partition's contact clocks per recipient go to `ops.recipients.v1`."""
INPUT_PATTERN = r"(routing\.decisions|indications|feedback\.(wij|provider)\.[^.]+)\.v1$"
RECIPIENTS = {"wij": topics.wij_handovers("{team}"), "provider": topics.provider_handovers("{agb}")}
"""A recipient's own topic, by the kind part of its name: handovers and notices."""
HANDOVERS = {kind: Output(f"handovers-{kind}", address, Bundle, (
    "The FHIR R4 message Bundle of a handover (MessageHeader, Task, ServiceRequest, Patient; docs/fhir-bser.md), "
    "keyed by youth pseudonym; the only place the BSN goes."), schema=HANDOVER_SCHEMA, content_type=FHIR_JSON)
    for kind, address in RECIPIENTS.items()}
AMENDMENTS = {kind: Output(f"amendments-{kind}", address, Bundle, (
    "An amendment of a referral handed over: a FHIR R4 message Bundle (MessageHeader event I13, a Communication "
    "with the new document's text, basedOn the referral's Task by its hub referral id), header `schema: "
    "verwijshub.Amendment/1`, keyed by youth pseudonym."), schema=AMENDMENT_SCHEMA, content_type=FHIR_JSON)
    for kind, address in RECIPIENTS.items()}
NOTICES = {kind: Output(f"notices-{kind}", address, RecipientNotice, (
    "Notices beside the handovers (contact clock, expiry reminders, re-triage, handed over elsewhere, kept, "
    "cancelled), "
    "header `schema: verwijshub.Notice/1`; never the youth.")) for kind, address in RECIPIENTS.items()}
STATUS = Output("status", topics.status("{channel}"), StatusEvent, (
    "The referrer's statuses after intake's: routed, handed-over, accepted, declined, contact-made, sla-at-risk, "
    "sla-breached, rerouted, closed, amended, cancelled, change-refused, and routing's rejections; keyed by the referrer's referral id."))
ALERTS = Output("alerts", topics.ALERTS, RoutingAlert, "`sla-breached` alerts, keyed by youth pseudonym.")
STATE = Output("state", topics.NOTIFIER_STATE, YouthFollowUp, (
    "Internal, compacted: one youth's follow-up (open handovers, contact clocks, expiry reminders), in the "
    "partition of its decisions; an empty value once nothing is left to follow."))
CLOCKS = Output("recipient-clocks", topics.OPS_RECIPIENTS, RecipientClocks, (
    "For operations, compacted: the contact clocks per recipient of one notifier partition (counts only)."))


CLOCK_STATES = ("open", "at_risk", "breached")


def clock_totals(clocks: YouthClocks) -> tuple[int, int, int]:
    """How many of a youth's contact clocks run, have had their at-risk notice, have been breached."""
    return (sum(c[1] for c in clocks), sum(c[2] for c in clocks), sum(c[3] for c in clocks))


class FollowUps:
    """The follow-up of every youth in the partitions this instance owns, and when each is next due.

    Kept as the JSON it is stored as on Kafka and parsed when the youth's turn comes: about a tenth of
    the memory of the parsed models, which matters with 100,000 open clocks (bench/memory.py)."""

    def __init__(self) -> None:
        self.clocks: dict[str, YouthClocks] = {}
        """pseudonym -> its clocks per recipient, summed into the CONTACT_CLOCKS gauge and, per partition, into
        its clocks per recipient on `ops.recipients.v1`."""
        self.by_partition: dict[int, dict[str, bytes]] = {}
        self.due: dict[int, dict[str, datetime]] = {}
        """partition -> pseudonym -> next due moment, for the youths with something pending (a partition's tick
        looks at its own youths only)."""

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
        moment, due = next_due(state), self.due.setdefault(partition, {})
        if moment is None:
            due.pop(state.pseudonym, None)
        else:
            due[state.pseudonym] = moment
        self.count_clocks(state.pseudonym, youth_clocks(state))

    def count_clocks(self, pseudonym: str, clocks: YouthClocks) -> None:
        before = clock_totals(self.clocks.pop(pseudonym, ()))
        if clocks:
            self.clocks[pseudonym] = clocks
        for label, old, new in zip(CLOCK_STATES, before, clock_totals(clocks)):
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
            self.due.pop(partition, None)
            for pseudonym in self.by_partition.pop(partition, {}):
                self.count_clocks(pseudonym, ())


class Notifier(Processor):
    """Each input record and each due moment of a youth: the pure follow-up core, its effects as records, the
    youth's new follow-up as a record of `notifier.state.v1` in the same partition, all in one transaction."""

    service = SERVICE
    inputs = INPUT_PATTERN
    state_topic = topics.NOTIFIER_STATE
    writes = (*HANDOVERS.values(), *AMENDMENTS.values(), *NOTICES.values(), STATUS, ALERTS, STATE, CLOCKS)

    def __init__(self, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self.in_force = RegistryInForce(registry, SERVICE)
        """Teams for re-triage notices, the central entrance: `registry.v1` followed."""
        self.calendar = WorkingCalendar(LiberationDay(settings.liberation_day), GoodFriday(settings.good_friday))
        self.followups = FollowUps()
        self.clocks_published: dict[int, float] = {}
        """partition -> monotonic time its contact clocks were last published on `ops.recipients.v1`."""
        self.registry_task: asyncio.Task | None = None
        self.log = get_logger(service=SERVICE)

    # -- ownership -----------------------------------------------------------------------------------
    async def start(self, kafka: KafkaConnection) -> None:
        registry_read = asyncio.Event()
        self.registry_task = asyncio.create_task(follow(kafka, [topics.REGISTRY], self.in_force.apply, registry_read,
                                                        "verwijshub-notifier-registry"), name="notifier-registry")
        await waiting_for(f"{topics.REGISTRY} read to its end", registry_read.wait())

    async def stop(self) -> None:
        if self.registry_task is not None:
            self.registry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.registry_task

    @property
    def registry(self) -> Registry:
        return self.in_force.registry

    async def load(self, partition: int, state: list[Record]) -> None:
        self.followups.load(partition, [(r.key, r.value) for r in state])
        self.clocks_published[partition] = float("-inf")
        self.log.info("follow-up partition owned", partition=partition,
                      youths=len(self.followups.by_partition[partition]))

    def unload(self, partition: int) -> None:
        self.followups.drop([partition])
        self.clocks_published.pop(partition, None)

    # -- records -------------------------------------------------------------------------------------
    def team_of(self, decision: RoutingDecision) -> str | None:
        return self.registry.postcodes.get(decision.referral.youth.pc4)

    async def handle(self, record: Record) -> list[Outbound]:
        """One input record: its effects, then the youth's follow-up (with the offset seen, a second guard
        besides the transaction against a record applied twice)."""
        topic, partition, value = record.topic, record.partition, record.value or b""
        try:
            routed = None
            if topic == topics.DECISIONS and _schema(record) == RoutedChange.SCHEMA:
                routed = RoutedChange.model_validate_json(value)
                pseudonym = routed.change.pseudonym
            elif topic == topics.DECISIONS:
                decision = RoutingDecision.model_validate_json(value)
                pseudonym = decision.referral.youth.pseudonym
            elif record.key is None:
                raise FeedbackRefused(ReferralError(code=ErrorCode.SCHEMA_INVALID, location="key", message=(
                    "Feedback and indications must be keyed by the youth pseudonym of the handover.")))
            else:
                pseudonym = record.key.decode(errors="replace")
            before = self.followups.get(partition, pseudonym)
            position = f"{topic}:{partition}"
            if before.seen.get(position, -1) >= record.offset:
                return []
            now, correlation_id = self.clock.now(), ""
            if routed is not None:
                after, effects = apply_change(before, routed, now)
                correlation_id, outcome = routed.change.referral_id, f"change {routed.change.kind.value}"
            elif topic == topics.DECISIONS:
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
        except FeedbackRefused as refused:
            raise Poison([refused.error]) from None
        except ValidationError:
            raise Poison([ReferralError(code=ErrorCode.SCHEMA_INVALID, location="",
                                        message=f"Not a valid message for {topic}.")]) from None
        records = self.outputs(partition, before, after.model_copy(update={"seen": {**after.seen, position:
                                                                                  record.offset}}),
                               effects, pseudonym, correlation_id)
        self.log.info("record followed up", outcome=outcome, correlation_id=correlation_id or None)
        return records

    def refused(self, record: Record, errors: list[ReferralError]) -> list[Outbound]:
        """A decision the runtime dead-lettered (its handover too large, or the hub failed on it): the referrer is
        told `rejected`, as for routing's rejections; feedback and indications have no referrer to tell."""
        if record.topic != topics.DECISIONS:
            return []
        if _schema(record) == RoutedChange.SCHEMA:
            change = RoutedChange.model_validate_json(record.value or b"").change
            status = StatusEvent.of(change.channel, change.referrer_referral_id, change.referral_id,
                                    ReferralStatus.CHANGE_REFUSED, self.clock.now(), errors=errors)
            return [self.record(status, change.pseudonym, change.referral_id)]
        referral = RoutingDecision.model_validate_json(record.value or b"").referral
        status = StatusEvent.of(referral.channel, referral.referrer_referral_id, referral.referral_id,
                                ReferralStatus.REJECTED, self.clock.now(), errors=errors)
        return [self.record(status, referral.youth.pseudonym, referral.referral_id)]

    def outputs(self, partition: int, before: YouthFollowUp, after: YouthFollowUp, effects: list[Effect],
                pseudonym: str, correlation_id: str) -> list[Outbound]:
        """The effects' records and the youth's stored follow-up (when it changed); the follow-up in memory
        changes only once every record is built."""
        records = [self.record(effect, pseudonym, correlation_id) for effect in effects]
        value = b"" if is_empty(after) else encode(after)  # empty: nothing left to follow for this youth
        if after != before:
            records.append(STATE.record(value, after.pseudonym, partition=partition))
        self.followups.put(partition, after, value)
        return records

    def record(self, effect: Effect, pseudonym: str, correlation_id: str) -> Outbound:
        """The Kafka record of one effect (statuses keyed by the referrer's id, the rest by youth pseudonym)."""
        match effect:
            case StatusEvent():
                return STATUS.record(effect, effect.referrer_referral_id, topic=topics.status(effect.channel),
                                     correlation_id=effect.referral_id or "", channel=effect.channel)
            case HandOver(decision=decision):
                metrics.HANDOVERS.labels(decision.recipient.kind.value).inc()
                return HANDOVERS[recipient_kind(decision.recipient.topic)].record(
                    handover_bytes(decision, self.clock.now()), pseudonym, topic=decision.recipient.topic,
                    correlation_id=decision.referral_id, channel=decision.referral.channel)
            case Amend(routed=routed):
                return AMENDMENTS[recipient_kind(routed.recipient.topic)].record(
                    amendment_bytes(routed, self.clock.now()), pseudonym, topic=routed.recipient.topic,
                    correlation_id=routed.change.referral_id, channel=routed.change.channel)
            case Notify(topic=topic, notice=notice):
                return NOTICES[recipient_kind(topic)].record(notice, pseudonym, topic=topic,
                                                              correlation_id=notice.referral_id or correlation_id)
            case Alert(alert=alert):
                if alert.kind == "sla-breached":
                    metrics.SLA_BREACHES.inc()
                return ALERTS.record(alert, pseudonym, correlation_id=alert.referral_id or "")

    # -- time ----------------------------------------------------------------------------------------
    async def tick(self, partition: int) -> list[Outbound]:
        """What came due in the partition, and its contact clocks for operations every CLOCKS_EVERY_S."""
        now, records = self.clock.now(), []
        due = [pseudonym for pseudonym, moment in self.followups.due.get(partition, {}).items() if moment <= now]
        for pseudonym in due:
            before = self.followups.get(partition, pseudonym)
            after, effects = due_effects(before, now, self.registry.central_entrance().id)
            records += self.outputs(partition, before, after, effects, pseudonym, "")
        if due:
            self.log.info("due follow-ups published", partition=partition, youths=len(due))
        return records + self.recipient_clocks(partition)

    def recipient_clocks(self, partition: int) -> list[Outbound]:
        """The partition's contact clocks per recipient on `ops.recipients.v1` (counts only; operations may not
        read `notifier.state.v1`): when the partition was just loaded, then every CLOCKS_EVERY_S."""
        if time.monotonic() - self.clocks_published.get(partition, float("-inf")) < CLOCKS_EVERY_S:
            return []
        self.clocks_published[partition] = time.monotonic()
        youths = self.followups.by_partition.get(partition, {})
        clocks = self.followups.clocks
        key, value = partition_clocks(partition, [clocks[pseudonym] for pseudonym in youths if pseudonym in clocks],
                                      self.clock.now())
        return [CLOCKS.record(value, key)]

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """What the notifier reads (one group, by the pattern INPUT_PATTERN), all keyed by youth pseudonym."""
        document_input(broker, "notifier:decisions", "Routing decisions, handed over to their recipient.",
                       topic=topics.DECISIONS, schema=RoutingDecision)
        document_input(broker, "notifier:changes", "Amendments and cancellations routed to the recipient holding "
                       "the referral (header `schema: verwijshub.RoutedChange/1`).", topic=topics.DECISIONS,
                       schema=RoutedChange)
        for kind, address in (("wij", topics.wij_feedback("{team}")), ("provider", topics.provider_feedback("{agb}"))):
            document_input(broker, f"notifier:feedback-{kind}", "Recipients' feedback: the status lifecycle, "
                           "ownership checked (`NOT_RECIPIENT`).", topic=address, schema=Feedback)
        document_input(broker, "notifier:indications", "Running indications, for the expiry reminders.",
                       topic=topics.INDICATIONS, schema=YouthIndications)
        document_input(broker, "notifier:registry", "The registry in force (teams for re-triage notices), followed "
                       "from the start (no group).", topic=topics.REGISTRY, schema=RegistrySnapshot)


def _schema(record: Record) -> str:
    """The record's `schema` header ('' without one)."""
    return dict(record.headers or ()).get("schema", b"").decode(errors="replace")


_KIND = {"wij": RecipientKind.WIJ_TEAM, "provider": RecipientKind.PROVIDER}
"""The kind part of a feedback topic's name (`feedback.<kind>.<id>.v1`)."""


def recipient_kind(topic: str) -> str:
    """The kind part of a recipient's topic name (`handovers.<kind>.<id>.v1`)."""
    return topic.split(".")[1]


def _indications(value: bytes) -> list[Indication]:
    """A youth's list as routing and the import write it; a single Indication (another writer) as a list of one."""
    if not value:
        return []
    try:
        return YouthIndications.model_validate_json(value).indications
    except ValidationError:
        return [Indication.model_validate_json(value)]


def create_notifier(settings: Settings, registry: Registry, clock: Clock) -> Runtime:
    return Runtime(Notifier(settings, registry, clock), settings)
