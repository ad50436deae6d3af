"""The notifier service: hands each decided referral to its one recipient and tells the referrer.

For a routed referral the referrer sees `routed`, then the handover is written to the recipient's own
topic, then `handed-over`; a referral rejected by routing gets `rejected` with the errors.
"""

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.routing import RoutingDecision
from schemas.status import ReferralStatus, StatusEvent
from services.infra import topics
from services.infra.clock import Clock
from services.infra.consuming import dead_letter, handling
from services.infra.kafka import encode, group_id, make_broker, message_headers
from services.infra.settings import Settings
from services.notifier.handover import handover_bundle

SERVICE = "notifier"
FHIR_JSON = "application/fhir+json"


class Notifier:
    def __init__(self, broker: KafkaBroker, clock: Clock) -> None:
        self.broker, self.clock = broker, clock

    async def tell_referrer(self, decision: RoutingDecision, status: ReferralStatus, detail: str | None = None) -> None:
        referral = decision.referral
        event = StatusEvent.of(referral.channel, referral.referrer_referral_id, referral.referral_id, status,
                               self.clock.now(), detail=detail, errors=decision.errors)
        await self.broker.publish(
            encode(event), topics.status(referral.channel), key=referral.referrer_referral_id.encode(),
            headers=message_headers("verwijshub.StatusEvent/1", referral.referral_id, referral.channel))

    async def hand_over(self, decision: RoutingDecision) -> None:
        if decision.recipient is None:
            await self.tell_referrer(decision, ReferralStatus.REJECTED)
            return
        recipient, referral = decision.recipient, decision.referral
        await self.tell_referrer(decision, ReferralStatus.ROUTED, f"to {recipient.name} ({recipient.kind.value})")
        bundle = handover_bundle(decision, self.clock.now())
        await self.broker.publish(
            bundle.model_dump_json(exclude_none=True).encode(), recipient.topic,
            key=referral.youth.pseudonym.encode(),
            headers=message_headers("verwijshub.Handover/1", referral.referral_id, referral.channel, FHIR_JSON))
        await self.tell_referrer(decision, ReferralStatus.HANDED_OVER, f"to {recipient.name}")


def create_notifier(settings: Settings, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE)
    notifier = Notifier(broker, clock)

    @broker.subscriber(topics.DECISIONS, group_id=group_id(SERVICE), auto_offset_reset="earliest",
                       ack_policy=AckPolicy.ACK, title="notifier:decisions",
                       description="Routing decisions, to be handed over and reported to the referrer.")
    async def on_decision(message: ConsumedRecord) -> None:
        with handling(SERVICE, message) as log:
            try:
                decision = RoutingDecision.model_validate_json(message.body)
            except ValidationError:
                log.error("not a routing decision: dead-lettered")
                await dead_letter(broker, message, [ReferralError(
                    code=ErrorCode.SCHEMA_INVALID, location="", message="Not a RoutingDecision.")])
                return
            await notifier.hand_over(decision)
            log.info("decision handed over", correlation_id=decision.referral_id,
                     recipient=decision.recipient.topic if decision.recipient else None)

    return broker
