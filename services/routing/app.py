"""The routing service: decides each normalised referral and publishes the decision with its trace."""

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as ConsumedRecord
from pydantic import ValidationError

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Referral
from schemas.registry import Registry
from services.infra import topics
from services.infra.clock import Clock
from services.infra.consuming import dead_letter, handling
from services.infra.kafka import encode, group_id, make_broker, message_headers
from services.infra.settings import Settings
from services.routing.policy import decide

SERVICE = "routing"


def create_routing(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE)

    @broker.subscriber(topics.NORMALISED, group_id=group_id(SERVICE), auto_offset_reset="earliest",
                       ack_policy=AckPolicy.ACK, title="routing:normalised",
                       description="Canonical referrals from intake, to be decided.")
    async def on_normalised_referral(message: ConsumedRecord) -> None:
        with handling(SERVICE, message) as log:
            try:
                referral = Referral.model_validate_json(message.body)
            except ValidationError:
                log.error("not a canonical referral: dead-lettered")
                await dead_letter(broker, message, [ReferralError(
                    code=ErrorCode.SCHEMA_INVALID, location="", message="Not a canonical Referral.")])
                return
            decision = decide(referral, registry, clock.now())
            await broker.publish(
                encode(decision), topics.DECISIONS, key=referral.youth.pseudonym.encode(),
                headers=message_headers("verwijshub.RoutingDecision/1", referral.referral_id, referral.channel))
            log.info("referral decided", correlation_id=referral.referral_id, rule=decision.rule,
                     recipient=decision.recipient.id if decision.recipient else None, flags=decision.flags)

    return broker
