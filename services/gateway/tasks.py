"""The referral's state as a FHIR Task, from the status events on the five status topics.

The gateway follows `status.<channel>.v1` from the start (no consumer group, as intake's ledger follows its
topic) and keeps, per hub referral id, the channel and the latest status. Status events carry no BSN, name or
address, so neither does this book. A status written before the gateway started is found as soon as the
follower has read up to it.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.referral import Channel
from schemas.status import ReferralStatus, StatusEvent
from services.gateway.answers import REFERRAL_ID_SYSTEM
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of
from services.infra.logging import get_logger

STATUS_SYSTEM = "urn:verwijshub:referral-status"
NOT_A_STATE = frozenset({ReferralStatus.AMENDED, ReferralStatus.CHANGE_REFUSED})
"""Statuses about a later document of the referral, not about the referral's own state: the Task keeps its status."""


@dataclass(frozen=True)
class Progress:
    channel: Channel
    referrer_referral_id: str
    first: StatusEvent
    latest: StatusEvent


def task_resource(referral_id: str, progress: Progress) -> dict[str, Any]:
    """Task.status and businessStatus as the hub's status events give them (the HL7 BSeR way: the Task tracks
    the referral's fulfilment)."""
    latest = progress.latest
    task: dict[str, Any] = {
        "resourceType": "Task", "id": referral_id,
        "identifier": [{"system": REFERRAL_ID_SYSTEM, "value": referral_id},
                       {"system": f"urn:verwijshub:referrer-referral-id:{progress.channel.value}",
                        "value": progress.referrer_referral_id}],
        "status": latest.task_status, "intent": "order",
        "businessStatus": {"coding": [{"system": STATUS_SYSTEM, "code": latest.business_status}],
                           "text": latest.business_status},
        "authoredOn": progress.first.at.isoformat(), "lastModified": latest.at.isoformat(),
    }
    if latest.detail or latest.errors:
        task["statusReason"] = {"text": latest.detail or "; ".join(f"{e.code.value}: {e.message}"
                                                                   for e in latest.errors)}
    return task


class StatusBook:
    """Hub referral id -> its progress, followed from the status topics."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self.progress: dict[str, Progress] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def apply(self, value: bytes | None) -> None:
        try:
            event = StatusEvent.model_validate_json(value or b"")
        except ValidationError:
            return
        if not event.referral_id or event.status in NOT_A_STATE:
            return
        known = self.progress.get(event.referral_id)
        self.progress[event.referral_id] = Progress(event.channel, event.referrer_referral_id,
                                                    known.first if known else event, event)

    async def _follow(self) -> None:
        names = [topics.status(channel) for channel in Channel]
        while True:  # the broker may be away for a while: follow again from the start
            consumer = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False)
            try:
                await consumer.start()
                consumer.assign(await partitions_of(self.kafka, names))
                await consumer.seek_to_beginning()
                async for record in consumer:
                    self.apply(record.value)
            except (KafkaError, OSError) as exc:
                get_logger().warning("status follower interrupted", error_type=type(exc).__name__)
                await asyncio.sleep(2)
            finally:
                await consumer.stop()
