"""The intake service: consumes each channel's referrals, publishes canonical ones, rejects the rest.

Per inbound record, in one transaction with its offset (services/infra/processing.py): an accepted referral
gives its `received` status, the canonical referral and its ledger record (`ledger.py`: the same referral sent
again, also after a restart, has no second effect); a rejected one gives its dead letter and, when the referrer's
id is known, the `rejected` status. `received` comes before the normalised referral, so no later status can
overtake it on the referrer's status topic. A referral with a known id is a repeat or a conflict (`repeats.py`
decides): a repeat gives nothing, a conflict is rejected (`REFERRAL_ID_CONFLICT`) and alerted on `alerts.v1`. A
referral from a referrer organisation's own topic must name a referrer that organisation may send as (`senders.py`;
else `SENDER_NOT_ALLOWED`, alerted). A changed message of a referral from its own sender is an amendment, a
cancellation (`lifecycle.py`) closes it: either is a `ReferralChange` on `referrals.normalised.v1`, keyed by the
referral's youth pseudonym, with the ledger record updated; a change of a referral intake does not hold from that
sender is rejected (`REFERRAL_UNKNOWN`).
"""

import asyncio

from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode, ReferralError
from schemas.lifecycle import ChangeKind, ReferralChange
from schemas.referral import AcceptedReferral, Channel, Referral
from schemas.registry import Registry, RegistrySnapshot
from schemas.routing import RoutingAlert
from schemas.status import ReferralStatus, StatusEvent
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.consuming import dead_letter_record
from services.infra.contract import Output
from services.infra.kafka import Outbound, Record
from services.infra.logging import get_logger
from services.infra.processing import Processor, Runtime, document_input
from services.infra.settings import Settings
from services.infra.starting import StartTimeout, waiting_for
from services.intake.adapters import PARSERS
from services.intake.lifecycle import Cancellation, Outcome, document_kind, read_message
from services.intake.ledger import ACCEPTED, AcceptedLedger
from services.intake.outcome import Rejection
from services.intake.products import ProductTable
from services.intake.repeats import (
    Cancelled,
    Seen,
    cancellation_verdict,
    closed_rejection,
    conflict_alert,
    conflict_rejection,
    referral_digest,
    seen,
    unknown_rejection,
)
from services.intake.senders import cancellation_sender_rejection, sender_alert, sender_rejection

SERVICE = "intake"
STATUS = Output("status", topics.status("{channel}"), StatusEvent,
                "`received`, or `rejected` with its errors, to the channel's referrers; keyed by their referral id.")
NORMALISED = Output("normalised", topics.NORMALISED, Referral, "Canonical referrals, keyed by youth pseudonym.")
CHANGES = Output("changes", topics.NORMALISED, ReferralChange, (
    "Amendments and cancellations of referrals accepted before, keyed by the referral's youth pseudonym "
    "(so each follows its referral in its partition)."))
ALERTS = Output("alerts", topics.ALERTS, RoutingAlert, (
    "`referral-id-conflict` alerts (a referral id sent again with other content) and `sender-not-allowed` alerts, "
    "keyed by channel; no personal data."))


def organisation_of(topic: str) -> str:
    """The referrer organisation whose own topic this is; "" for the channel's own (the admin's)."""
    found = topics.inbound(topic)
    return (found[1] or "") if found else ""


def channel_of(topic: str) -> Channel:
    """The channel of an inbound topic (the runtime subscribes to nothing else)."""
    found = topics.inbound(topic)
    assert found is not None, topic
    return found[0]


class Intake(Processor):
    """Reads one inbound record: adapter, then the referral's records or the rejection's."""

    service = SERVICE
    inputs = r"referrals\.(" + "|".join(PARSERS) + r")(\.[a-z0-9-]+)?\.v1"
    """Each channel's topic (the admin's) and every referrer organisation's own (`referrals.<channel>.<id>.v1`)."""
    writes = (STATUS, NORMALISED, CHANGES, ACCEPTED, ALERTS)

    def __init__(self, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self.ledger = AcceptedLedger(settings.connection(principals.service(SERVICE)))
        self.products = ProductTable(settings.connection(principals.service(SERVICE)), registry)
        self.pseudonym_key = settings.youth_pseudonym_key()
        self.log = get_logger(service=SERVICE)

    async def start(self, kafka: KafkaConnection) -> None:
        """The product table and the ledger (every referral accepted before, by any instance), read at once."""
        await asyncio.gather(self.refresh_products(), self.ledger.start())

    async def refresh_products(self) -> None:
        try:
            await waiting_for(f"{topics.REGISTRY} read for intake's products", self.products.refresh())
        except StartTimeout:
            raise
        except Exception as exc:  # the registry files' table stands until registry.v1 can be read
            self.log.error("registry read failed", error_type=type(exc).__name__)

    async def stop(self) -> None:
        await self.ledger.stop()
        await self.products.stop()

    def unload(self, partition: int) -> None:
        self.ledger.aborted(partition)

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        self.ledger.committed(partition)

    def parse(self, channel: Channel, raw: bytes) -> Outcome:
        return read_message(channel, raw, known_products=self.products.products, received_at=self.clock.now(),
                             pseudonym_key=self.pseudonym_key, max_bytes=self.settings.max_message_bytes)

    async def handle(self, record: Record) -> list[Outbound]:
        channel, raw = channel_of(record.topic), record.value or b""
        outcome = self.parse(channel, raw)
        if isinstance(outcome, Rejection) and any(e.code is ErrorCode.PRODUCT_UNKNOWN for e in outcome.errors) \
                and await self.products.refresh():  # a registry published since: the product may be known now
            outcome = self.parse(channel, raw)
        if isinstance(outcome, Rejection) and outcome.failure:  # an adapter bug: the record is parked
            self.log.error("adapter failed", channel=channel.value, error_type=outcome.failure)
        if isinstance(outcome, Referral):
            refused = await self.check_sender(record, outcome)
            return refused if refused is not None else self.on_referral(record, outcome)
        if isinstance(outcome, Cancellation):
            return self.on_cancellation(record, outcome)
        return self.reject(record, channel, outcome)

    async def check_sender(self, record: Record, referral: Referral) -> list[Outbound] | None:
        """None when the organisation whose topic this is may send the referral; else its rejection and an alert.
        An organisation or sender the registry in force does not know may be in a registry published since."""
        rejection = sender_rejection(self.products.registry, record.topic, referral)
        if rejection is not None and await self.products.refresh():
            rejection = sender_rejection(self.products.registry, record.topic, referral)
        if rejection is None:
            return None
        organisation_id = (topics.inbound(record.topic) or (referral.channel, ""))[1] or ""
        self.log.warning("referral from a sender not allowed", channel=referral.channel.value,
                         organisation=organisation_id, referrer_referral_id=referral.referrer_referral_id)
        return [*self.reject(record, referral.channel, rejection),
                self.alert(sender_alert(referral.channel, organisation_id, self.clock.now()))]

    def on_referral(self, record: Record, referral: Referral) -> list[Outbound]:
        """A valid referral: new (accepted), a repeat (nothing), or a conflict (rejected, and an alert)."""
        channel, digest = referral.channel, referral_digest(referral)
        recorded = self.ledger.entry(referral.referral_id)
        match seen(recorded, digest, referral.youth.pseudonym, organisation_of(record.topic)):
            case Seen.REPEAT:
                self.log.info("duplicate referral ignored", channel=channel.value, correlation_id=referral.referral_id,
                              referrer_referral_id=referral.referrer_referral_id)
                return []
            case Seen.CONFLICT:
                self.log.warning("referral id bound to other content", channel=channel.value,
                                 correlation_id=referral.referral_id,
                                 referrer_referral_id=referral.referrer_referral_id)
                return [*self.reject(record, channel, conflict_rejection(referral)),
                        self.alert(conflict_alert(channel, self.clock.now()))]
            case Seen.CLOSED:
                return self.reject(record, channel, closed_rejection(referral))
            case Seen.AMENDMENT:
                assert recorded is not None
                self.log.info("referral amended", channel=channel.value, correlation_id=referral.referral_id,
                              referrer_referral_id=referral.referrer_referral_id)
                change = ReferralChange(kind=ChangeKind.AMENDMENT, referral_id=referral.referral_id, channel=channel,
                                        referrer_referral_id=referral.referrer_referral_id,
                                        pseudonym=referral.youth.pseudonym, at=self.clock.now(),
                                        document=document_kind(record.value or b""), referral=referral,
                                        text=referral.free_text)
                updated = recorded.model_copy(update={"digests": [*recorded.digests, digest]})
                return [self.change_record(change), self.ledger.accept(record.partition, updated)]
        metrics.REFERRALS_ACCEPTED.labels(channel.value).inc()
        self.log.info("referral accepted", channel=channel.value, correlation_id=referral.referral_id,
                      referrer_referral_id=referral.referrer_referral_id, pseudonym=referral.youth.pseudonym)
        return self.accept(record, referral, digest)

    def accept(self, record: Record, referral: Referral, digest: str) -> list[Outbound]:
        now = self.clock.now()
        status = StatusEvent.of(referral.channel, referral.referrer_referral_id, referral.referral_id,
                                ReferralStatus.RECEIVED, now)
        accepted = AcceptedReferral(referral_id=referral.referral_id, channel=referral.channel,
                                    referrer_referral_id=referral.referrer_referral_id, accepted_at=now,
                                    origin=f"{record.topic}/{record.partition}/{record.offset}", digest=digest,
                                    organisation=organisation_of(record.topic), pseudonym=referral.youth.pseudonym)
        return [STATUS.record(status, referral.referrer_referral_id, topic=topics.status(referral.channel),
                              correlation_id=referral.referral_id, channel=referral.channel),
                NORMALISED.record(referral, referral.youth.pseudonym, correlation_id=referral.referral_id,
                                  channel=referral.channel),
                self.ledger.accept(record.partition, accepted)]

    def on_cancellation(self, record: Record, cancellation: Cancellation) -> list[Outbound]:
        """A referrer's cancellation: of a referral its organisation sent, the change and the ledger record marked
        cancelled; once more, nothing; of any other, `REFERRAL_UNKNOWN` (or `SENDER_NOT_ALLOWED` when it names a
        referrer the organisation may not send as)."""
        channel = cancellation.channel
        refused = cancellation_sender_rejection(self.products.registry, record.topic, cancellation)
        if refused is not None:
            return self.reject(record, channel, refused)
        recorded = self.ledger.entry(cancellation.referral_id)
        match cancellation_verdict(recorded, organisation_of(record.topic)):
            case Cancelled.UNKNOWN:
                return self.reject(record, channel, unknown_rejection(channel, cancellation.referrer_referral_id,
                                                                      cancellation.location))
            case Cancelled.REPEAT:
                self.log.info("duplicate cancellation ignored", channel=channel.value,
                              correlation_id=cancellation.referral_id)
                return []
        assert recorded is not None and recorded.pseudonym is not None
        self.log.info("referral cancelled", channel=channel.value, correlation_id=cancellation.referral_id,
                      document=cancellation.document)
        change = ReferralChange(kind=ChangeKind.CANCELLATION, referral_id=recorded.referral_id, channel=channel,
                                referrer_referral_id=recorded.referrer_referral_id, pseudonym=recorded.pseudonym,
                                at=self.clock.now(), document=cancellation.document, reason=cancellation.reason)
        return [self.change_record(change),
                self.ledger.accept(record.partition, recorded.model_copy(update={"cancelled": True}))]

    @staticmethod
    def change_record(change: ReferralChange) -> Outbound:
        return CHANGES.record(change, change.pseudonym, correlation_id=change.referral_id, channel=change.channel)

    def reject(self, record: Record, channel: Channel, rejection: Rejection) -> list[Outbound]:
        for code in {e.code.value for e in rejection.errors}:
            metrics.REFERRALS_REJECTED.labels(channel.value, code).inc()
        self.log.warning("referral rejected", channel=channel.value,
                         referrer_referral_id=rejection.referrer_referral_id,
                         codes=[e.code.value for e in rejection.errors])
        return [dead_letter_record(record, rejection.errors, channel),
                *self.rejected(channel, rejection.referrer_referral_id, None, rejection.errors)]

    @staticmethod
    def alert(alert: RoutingAlert) -> Outbound:
        """An alert about no one youth, keyed by its channel."""
        return ALERTS.record(alert, alert.channel, channel=alert.channel or "")

    def refused(self, record: Record, errors: list[ReferralError]) -> list[Outbound]:
        """A referral the runtime dead-lettered (what intake would write too large, or the hub failed on it): the
        referrer is told `rejected`, as for a rejection."""
        channel = channel_of(record.topic)
        outcome = self.parse(channel, record.value or b"")
        referral_id = outcome.referral_id if isinstance(outcome, (Referral, Cancellation)) else None
        return self.rejected(channel, outcome.referrer_referral_id, referral_id, errors)

    def rejected(self, channel: Channel, referrer_referral_id: str | None, referral_id: str | None,
                 errors: list[ReferralError]) -> list[Outbound]:
        """The `rejected` status, when the referrer's id is known."""
        if not referrer_referral_id:
            return []
        status = StatusEvent.of(channel, referrer_referral_id, referral_id, ReferralStatus.REJECTED,
                                self.clock.now(), errors=errors)
        return [STATUS.record(status, referrer_referral_id, topic=topics.status(channel),
                              correlation_id=referral_id or "", channel=channel)]

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """What intake reads and writes, for the AsyncAPI document."""
        for channel in PARSERS:
            document_input(broker, f"intake:{channel}", f"Referrals from the {channel} channel, in its native format "
                           "(written by the admin only: replays, tests).", topic=topics.referrals(channel))
            document_input(broker, f"intake:{channel}:organisations", f"Referrals of each {channel} referrer "
                           "organisation on its own topic (its principal and the gateway write it), in the channel's "
                           "native format; the referrer a referral names must be one the organisation may send as.",
                           topic=topics.organisation_referrals(channel, "{organisation}"))
        document_input(broker, "intake:accepted-followed", "Its own ledger, read back at start and followed (no "
                       "group).", topic=topics.INTAKE_ACCEPTED, schema=AcceptedReferral)
        document_input(broker, "intake:registry", "The registry's product table, read at start and when a referral "
                       "names a product it does not know (no group).", topic=topics.REGISTRY, schema=RegistrySnapshot)


def create_intake(settings: Settings, registry: Registry, clock: Clock) -> Runtime:
    return Runtime(Intake(settings, registry, clock), settings)
