"""One submission, whatever interface brought it: checked with the channel's adapter and against the organisation
that authenticated it (token, certificate, address), then written unchanged to that organisation's own inbound topic
(`referrals.<channel>.<organisation>.v1`), and only then confirmed.

Why the raw message and not the canonical referral: intake stays the one place that normalises, deduplicates
(by hub referral id, through its ledger) and tells the referrer's status topic, exactly as for a referrer that
writes to Kafka itself. The gateway's check is the same adapter, sender check (services/access/senders.py) and
registry (`registry.v1`, followed live as intake does), so what it accepts intake accepts. A re-sent
referral is written again and answered the same (its hub referral id is a function of channel, referrer and
referral id); intake drops the second copy, so it has no second effect.
"""

import asyncio
import contextlib
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from prometheus_client import Counter, Histogram

from schemas.referral import Channel
from schemas.registry import ReferrerOrganisation, Registry
from services.access.senders import organisation_of
from services.infra import principals, topics
from services.infra.clock import Clock
from services.infra.following import follow
from services.infra.registry_topic import RegistryInForce
from services.infra.settings import Settings
from services.infra.starting import waiting_for
from services.intake.lifecycle import Outcome, read_message

SUBMISSIONS = Counter("verwijshub_gateway_submissions_total", "Referrals handed to the gateway, by interface "
                      "(http, mllp), channel and outcome (submitted; rejected: 4xx or AE; refused: AR for "
                      "another message type or version; unavailable: Kafka did not confirm).",
                      ["interface", "channel", "outcome"])
WRITE_SECONDS = Histogram("verwijshub_gateway_write_seconds", "Time until Kafka confirmed a gateway write "
                          "(acks=all).", buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


@dataclass(frozen=True)
class Unavailable:
    """Kafka did not confirm the write in time: nothing may be confirmed to the sender."""

    reason: str


class Submissions:
    def __init__(self, broker: KafkaBroker, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.broker, self.settings, self.clock = broker, settings, clock
        self.in_force = RegistryInForce(registry, "gateway")
        self._following: asyncio.Task[None] | None = None

    @property
    def registry(self) -> Registry:
        return self.in_force.registry

    async def start(self) -> None:
        """Follow `registry.v1` (a product or organisation published live counts at once); returns once what it
        held is read."""
        ready = asyncio.Event()
        self._following = asyncio.create_task(follow(
            self.settings.connection(principals.GATEWAY), [topics.REGISTRY], self.in_force.apply, ready,
            "verwijshub-gateway-registry"), name="gateway-registry")
        await waiting_for(f"{topics.REGISTRY} read for the gateway", ready.wait())

    async def stop(self) -> None:
        if self._following:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    def organisation(self, principal: str) -> ReferrerOrganisation | None:
        return organisation_of(self.registry, principal)

    def check(self, channel: Channel, raw: bytes) -> Outcome:
        """The adapter's verdict, without the pseudonym key: the gateway, the face exposed to referrers, never holds
        the key with which every BSN's pseudonym could be recomputed (intake computes the pseudonym). A cancellation
(services/intake/lifecycle.py) is checked as far as the message goes; whether the referral exists is intake's."""
        return read_message(channel, raw, known_products=frozenset(self.registry.products), pseudonym_key=None,
                             received_at=self.clock.now(), max_bytes=self.settings.max_message_bytes)

    async def write(self, organisation: ReferrerOrganisation, raw: bytes, key: str | None) -> Unavailable | None:
        """Write `raw` to the organisation's own topic, keyed as a referrer's own system keys it; None once Kafka
        confirmed it on all in-sync replicas. A write that timed out may still land later: intake then handles it
        once, and the sender, told 503 or AR, sends it again, which intake drops."""
        started = self.clock.now()
        try:
            written = self.broker.publish(raw, topics.organisation_referrals(organisation.channel, organisation.id),
                                          key=key.encode() if key else None,
                                          headers={"channel": organisation.channel.value})
            await asyncio.wait_for(written, self.settings.gateway_kafka_timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            return Unavailable(type(exc).__name__)
        WRITE_SECONDS.observe((self.clock.now() - started).total_seconds())
        return None
