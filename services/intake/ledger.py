"""The accepted-referral ledger: what makes a re-sent referral have its effect once, across restarts.

Intake writes one record per accepted referral to the compacted topic `intake.accepted.v1`, keyed by
the hub referral id (deterministic: channel, referrer, referrer's referral id). Every intake instance
reads that topic from the start before it handles its first referral, and keeps following it, so a
referral accepted by another instance or before a restart is known as a duplicate. The record holds no
personal data: ids, channel, time and the origin offset only.

The record is written after the referral and its `received` status, and the inbound offset is
committed after that: a crash between the two writes re-delivers the inbound record and can emit the
referral twice (at-least-once within that window; a Kafka transaction spanning consume and produce
would close it). A duplicate that arrives later, or after a restart, is dropped.
"""

import asyncio
import contextlib
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from schemas.referral import AcceptedReferral, Referral
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import outbound, publish
from services.infra.logging import get_logger


class AcceptedLedger:
    """The hub referral ids intake has accepted, as read from (and written to) `intake.accepted.v1`."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self.accepted: set[str] = set()
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, referral_id: str) -> bool:
        return referral_id in self.accepted

    async def record(self, broker: KafkaBroker, referral: Referral, origin: str, at: datetime) -> None:
        self.accepted.add(referral.referral_id)
        accepted = AcceptedReferral(referral_id=referral.referral_id, channel=referral.channel,
                                    referrer_referral_id=referral.referrer_referral_id, accepted_at=at, origin=origin)
        await publish(broker, outbound(topics.INTAKE_ACCEPTED, accepted, referral.referral_id,
                                       correlation_id=referral.referral_id, channel=referral.channel))

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="intake-ledger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _partitions(self) -> list[TopicPartition]:
        """The ledger's partitions, asked of the cluster (the topic may have been created just now)."""
        admin = AIOKafkaAdminClient(**self.kafka.client_options(), client_id="verwijshub-intake-ledger")
        await admin.start()
        try:
            for _ in range(50):
                (description,) = await admin.describe_topics([topics.INTAKE_ACCEPTED])
                if description.get("partitions"):
                    return [TopicPartition(topics.INTAKE_ACCEPTED, p["partition"])
                            for p in sorted(description["partitions"], key=lambda p: p["partition"])]
                await asyncio.sleep(0.2)
            return []
        finally:
            await admin.close()

    async def _follow(self) -> None:
        """Read the ledger from the start, set `ready` at its end, then keep following it."""
        log = get_logger(service="intake")
        while True:  # a broker hiccup restarts the follow; `ready` stays set once loaded
            consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                        client_id="verwijshub-intake-ledger")
            try:
                await consumer.start()
                partitions = await self._partitions()
                if not partitions:
                    log.error("ledger topic missing: duplicates are not detected", topic=topics.INTAKE_ACCEPTED)
                    self.ready.set()
                    return
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                ends = await consumer.end_offsets(partitions)
                behind = {tp for tp, end in ends.items() if end > 0}
                while True:
                    if not behind and not self.ready.is_set():
                        self.ready.set()
                        log.info("accepted-referral ledger loaded", accepted=len(self.accepted))
                    batches = await consumer.getmany(timeout_ms=500)
                    for tp, records in batches.items():
                        self.accepted.update(r.key.decode(errors="replace") for r in records if r.key)
                        if tp in behind and await consumer.position(tp) >= ends[tp]:
                            behind.discard(tp)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; never take the service down
                log.error("ledger follow failed, retrying", error_type=type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
