"""The intake service: consumes each channel's referrals, publishes canonical ones, rejects the rest.

Order matters for the referrer: `received` is written before the normalised referral, so no later
status can overtake it on the referrer's status topic. Then the accepted-referral ledger is written
(`ledger.py`), so that the same referral sent again, also after a restart, has no second effect.
"""

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord
from faststream.kafka.message import KafkaMessage

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral
from schemas.registry import Registry
from schemas.status import ReferralStatus, StatusEvent
from services.infra import metrics, principals, topics
from services.infra.clock import Clock
from services.infra.consuming import dead_letter, handling
from services.infra.kafka import group_id, make_broker, outbound, publish
from services.infra.settings import Settings
from services.intake.adapters import PARSERS, read_referral
from services.intake.ledger import AcceptedLedger
from services.intake.outcome import ParseOutcome, Rejection
from services.intake.products import ProductTable

SERVICE = "intake"


class Intake:
    """Reads one inbound record: adapter, then publish the referral or the rejection."""

    def __init__(self, broker: KafkaBroker, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.broker, self.settings, self.registry, self.clock = broker, settings, registry, clock
        self.ledger = AcceptedLedger(settings.connection(principals.service(SERVICE)))
        self.products = ProductTable(settings.connection(principals.service(SERVICE)), registry)
        self.pseudonym_key = settings.youth_pseudonym_key()

    def parse(self, channel: Channel, raw: bytes) -> ParseOutcome:
        return read_referral(
            channel, raw, known_products=self.products.products, received_at=self.clock.now(),
            pseudonym_key=self.pseudonym_key,
            max_bytes=self.settings.max_message_bytes,
        )

    async def handle(self, channel: Channel, message: KafkaMessage) -> None:
        await self.ledger.ready.wait()  # know every referral accepted before, by any instance
        with handling(SERVICE, message) as log:
            outcome = self.parse(channel, message.body)
            if isinstance(outcome, Rejection) and any(e.code is ErrorCode.PRODUCT_UNKNOWN for e in outcome.errors) \
                    and await self.products.refresh():  # a registry published since: the product may be known now
                outcome = self.parse(channel, message.body)
            if isinstance(outcome, Rejection) and outcome.failure:  # an adapter bug: the record is parked
                log.error("adapter failed", channel=channel.value, error_type=outcome.failure)
            if isinstance(outcome, Referral) and outcome.referral_id in self.ledger:
                log.info("duplicate referral ignored", channel=channel.value, correlation_id=outcome.referral_id,
                         referrer_referral_id=outcome.referrer_referral_id)
            elif isinstance(outcome, Referral):
                await self.accept(outcome)
                record = message.raw_message
                await self.ledger.record(self.broker, outcome, f"{record.topic}/{record.partition}/{record.offset}",
                                         self.clock.now())
                metrics.REFERRALS_ACCEPTED.labels(channel.value).inc()
                log.info("referral accepted", channel=channel.value, correlation_id=outcome.referral_id,
                         referrer_referral_id=outcome.referrer_referral_id, pseudonym=outcome.youth.pseudonym)
            else:
                await self.reject(channel, message, outcome)
                for code in {e.code.value for e in outcome.errors}:
                    metrics.REFERRALS_REJECTED.labels(channel.value, code).inc()
                log.warning("referral rejected", channel=channel.value,
                            referrer_referral_id=outcome.referrer_referral_id,
                            codes=[e.code.value for e in outcome.errors])

    async def accept(self, referral: Referral) -> None:
        status = StatusEvent.of(referral.channel, referral.referrer_referral_id, referral.referral_id,
                                ReferralStatus.RECEIVED, self.clock.now())
        await publish(self.broker, outbound(topics.status(referral.channel), status, referral.referrer_referral_id,
                                            correlation_id=referral.referral_id, channel=referral.channel))
        await publish(self.broker, outbound(topics.NORMALISED, referral, referral.youth.pseudonym,
                                            correlation_id=referral.referral_id, channel=referral.channel))

    async def reject(self, channel: Channel, message: KafkaMessage, rejection: Rejection) -> None:
        await dead_letter(self.broker, message, rejection.errors, channel)
        if rejection.referrer_referral_id:
            status = StatusEvent.of(channel, rejection.referrer_referral_id, None, ReferralStatus.REJECTED,
                                    self.clock.now(), errors=rejection.errors)
            await publish(self.broker, outbound(topics.status(channel), status, rejection.referrer_referral_id,
                                                channel=channel))


class IntakeBroker(KafkaBroker):
    """The FastStream broker of intake, which also follows the accepted-referral ledger."""

    intake: Intake

    async def start(self) -> None:
        self.intake.ledger.start()
        await self.intake.products.refresh()
        await super().start()

    async def stop(self, *exc_info) -> None:
        await self.intake.ledger.stop()
        await self.intake.products.stop()
        await super().stop(*exc_info)


def create_intake(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE, IntakeBroker)
    intake = Intake(broker, settings, registry, clock)
    broker.intake = intake
    for channel in PARSERS:
        subscriber = broker.subscriber(
            topics.referrals(channel), group_id=group_id(SERVICE), auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK, max_partition_fetch_bytes=settings.max_message_bytes * 2,
            title=f"intake:{channel}", description=f"Referrals from the {channel} channel, in its native format.")
        subscriber(_channel_handler(intake, channel))
        broker.publisher(topics.status(channel), title=f"intake:status:{channel}", schema=StatusEvent,
                         description=f"`received` or `rejected` (with its errors) to the {channel} referrers.")
    # What intake writes, declared for the AsyncAPI document (the handlers publish through the broker).
    broker.publisher(topics.NORMALISED, title="intake:normalised", schema=Referral,
                     description="Canonical referrals, keyed by youth pseudonym.")
    broker.publisher(topics.DEAD_LETTERS, title="intake:dead-letters", schema=bytes,
                     description="Rejected records: raw bytes and key as received; headers `errors` (JSON list of "
                                 "code, location, message), `channel`, `origin-topic|partition|offset`, "
                                 "`origin-header-*`.")
    broker.publisher(topics.INTAKE_ACCEPTED, title="intake:accepted-ledger",
                     description="Internal, compacted: one record per accepted referral, keyed by hub referral id; "
                                 "read back at start to drop re-sent referrals.")
    return broker


def _channel_handler(intake: Intake, channel: Channel):
    async def on_referral(message: ConsumedRecord) -> None:
        await intake.handle(channel, message)

    on_referral.__name__ = f"on_{channel.value}_referral"
    return on_referral
