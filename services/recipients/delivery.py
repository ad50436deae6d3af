"""The recipient API's Subscriptions, kept and delivered: the adapter around services/recipients/subscriptions.py.

Each Subscription is a record on the compacted `recipients.subscriptions.v1` (key: its id), read back whole when
the service starts, so a subscription, its event counter and what it still has to deliver survive a restart. Each
has one asyncio task that looks at the subscriber's committed Tasks (woken when a transaction of them commits, and
every second), stores what the core numbered BEFORE it sends (an event number once sent is never another Task's),
posts what is due to the rest-hook over HTTPS (httpx, verifying the hook's certificate against
VERWIJSHUB_RECIPIENTS_HOOK_CA_FILE, else the system's and the hub's own CA), and stores the outcome. A hook that
is down is tried again with exponential backoff, the events kept (up to the core's MAX_PENDING); a notification
delivered but not yet stored as delivered when the hub stops is sent again after it starts: at least once, and the
event number tells a receiver it has one already.

One instance serves the recipient API (as for the Task updates, which it decides in the partitions it owns):
a second one would number the same subscription's events as well.
"""

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from schemas.recipients import RecipientTask, Subscription, SubscriptionStatus
from services.infra import topics
from services.infra.clock import Clock
from services.infra.connection import KafkaConnection
from services.infra.contract import Output
from services.infra.kafka import encode, read_records
from services.infra.logging import get_logger
from services.recipients import subscriptions as core

SUBSCRIPTIONS = Output("subscriptions", topics.RECIPIENTS_SUBSCRIPTIONS, Subscription, (
    "Internal, compacted: one recipient's FHIR Subscription at the recipient API and where its delivery stands "
    "(event counter, events not yet delivered), keyed by subscription id; an empty value once it is deleted."))
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise: ours says what matters
LOOK_EVERY_S = 1.0
"""The longest a subscription sleeps: a heartbeat or a retry is never later than this (a FileClock may jump)."""


def hook_context(ca_file: Path | None, local_ca: Path) -> ssl.SSLContext:
    """The TLS context the hooks are verified with: the configured CA file only, else the system's trust store
    and the hub's own CA (a recipient may have its hook's certificate from either)."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    context = ssl.create_default_context()
    if local_ca.is_file():
        context.load_verify_locations(cafile=str(local_ca))
    return context


class Deliveries:
    def __init__(self, kafka: KafkaConnection, clock: Clock, context: ssl.SSLContext, base: str,
                 tasks_of: Callable[[str], list[RecipientTask]],
                 resource_of: Callable[[str, str], dict[str, Any] | None],
                 retry_first_s: float = 1.0, retry_longest_s: float = 300.0) -> None:
        self.kafka, self.clock, self.base = kafka, clock, base
        self.tasks_of, self.resource_of = tasks_of, resource_of
        """The subscriber's committed Tasks; one Task as FHIR JSON (for full-resource)."""
        self.retry = (retry_first_s, retry_longest_s)
        self.context = context
        self.subscriptions: dict[str, Subscription] = {}
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.wakes: dict[str, asyncio.Event] = {}
        self.producer: AIOKafkaProducer | None = None
        self.client: httpx.AsyncClient | None = None
        self.log = get_logger(service="recipients")

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Read every subscription back, then deliver each (after the Tasks are loaded: the runtime started)."""
        latest: dict[str, bytes] = {}
        for record in await read_records(self.kafka, [topics.RECIPIENTS_SUBSCRIPTIONS]):
            if record.key is not None:
                latest[record.key.decode()] = record.value or b""
        self.producer = AIOKafkaProducer(**self.kafka.client_options(), client_id="verwijshub-recipients-subscriptions",
                                         acks="all", enable_idempotence=True)
        await self.producer.start()
        self.client = httpx.AsyncClient(verify=self.context, follow_redirects=False)
        for subscription_id, value in latest.items():
            if value:
                self.subscriptions[subscription_id] = Subscription.model_validate_json(value)
                self._run(subscription_id)
        self.log.info("subscriptions loaded", subscriptions=len(self.subscriptions))

    async def stop(self) -> None:
        for subscription_id in list(self.loops):
            await self._halt(subscription_id)
        if self.client is not None:
            await self.client.aclose()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), 10)

    # -- what the API asks ----------------------------------------------------------------------------------
    def of(self, owner: str, subscription_id: str) -> Subscription | None:
        """The subscription, if it is `owner`'s."""
        found = self.subscriptions.get(subscription_id)
        return found if found is not None and found.owner == owner else None

    async def create(self, subscription: Subscription) -> None:
        """Stored, then delivered (its handshake first). A broker away raises: the API answers 503."""
        await self._store(subscription)
        self._run(subscription.id)

    async def delete(self, owner: str, subscription_id: str) -> bool:
        if self.of(owner, subscription_id) is None:
            return False
        await self._halt(subscription_id)  # nothing of it is written after the tombstone
        await self._send(subscription_id, b"")
        self.subscriptions.pop(subscription_id, None)
        self.log.info("subscription deleted", principal=owner, subscription=subscription_id)
        return True

    def changed(self, owners: set[str]) -> None:
        """Tasks of `owners` committed: their subscriptions look now."""
        for subscription_id, subscription in self.subscriptions.items():
            if subscription.owner in owners and subscription_id in self.wakes:
                self.wakes[subscription_id].set()

    # -- each subscription's loop ----------------------------------------------------------------------------
    def _run(self, subscription_id: str) -> None:
        self.wakes[subscription_id] = asyncio.Event()
        self.loops[subscription_id] = asyncio.create_task(self._deliver(subscription_id),
                                                          name=f"subscription-{subscription_id}")

    async def _halt(self, subscription_id: str) -> None:
        loop = self.loops.pop(subscription_id, None)
        self.wakes.pop(subscription_id, None)
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop

    async def _deliver(self, subscription_id: str) -> None:
        wake = self.wakes[subscription_id]
        while True:
            try:
                await self._step(subscription_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away (not stored: nothing sent), a bug: looked at again soon
                self.log.warning("subscription not delivered: tried again", subscription=subscription_id,
                                 error_type=type(exc).__name__)
                await asyncio.sleep(LOOK_EVERY_S)
                continue
            subscription = self.subscriptions.get(subscription_id)
            if subscription is None or subscription.status is SubscriptionStatus.OFF:
                return
            now, when = self.clock.now(), core.next_due(subscription)
            wait = LOOK_EVERY_S if when is None else min(LOOK_EVERY_S, (when - now).total_seconds())
            if wait > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)

    async def _step(self, subscription_id: str) -> None:
        """Number what changed (stored), then send what is due (its outcome stored)."""
        subscription, now = self.subscriptions[subscription_id], self.clock.now()
        if core.ended(subscription, now):
            await self._store(subscription.model_copy(update={"status": SubscriptionStatus.OFF}))
            self.log.info("subscription ended", subscription=subscription_id)
            return
        observed = core.observe(subscription, self.tasks_of(subscription.owner))
        if observed != subscription:
            await self._store(observed)
            subscription = observed
        notification = core.due(subscription, now)
        if notification is None:
            return
        error = await self._post(subscription, notification, now)
        after = core.delivered(subscription, notification, self.clock.now()) if error is None else \
            core.failed(subscription, self.clock.now(), error, *self.retry)
        log = self.log.info if error is None else self.log.warning
        log("notification delivered" if error is None else "notification not delivered: retried",
            principal=subscription.owner, subscription=subscription_id, kind=notification.kind.value,
            events=[event.number for event in notification.events], error=error, attempt=after.attempts or None)
        await self._store(after)

    async def _post(self, subscription: Subscription, notification: core.Notification, now: Any) -> str | None:
        """None when the hook took it (2xx); else why not, in words that carry nothing of the child."""
        assert self.client is not None
        resources = {}
        if subscription.payload is core.PayloadContent.FULL_RESOURCE:
            for event in notification.events:
                if (resource := self.resource_of(subscription.owner, event.task_id)) is not None:
                    resources[event.task_id] = resource
        body = core.notification_bundle(subscription, notification, self.base, str(uuid.uuid4()), now, resources)
        headers = {"Content-Type": core.FHIR_JSON}
        for header in subscription.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        try:
            answer = await self.client.post(subscription.endpoint, content=json.dumps(body).encode(),
                                            headers=headers, timeout=subscription.timeout_s)
        except (httpx.HTTPError, ssl.SSLError, OSError, ValueError) as exc:
            return f"the hook was not reached ({type(exc).__name__})"
        if 200 <= answer.status_code < 300:
            return None
        return f"the hook answered HTTP {answer.status_code}"

    # -- the topic -------------------------------------------------------------------------------------------
    async def _store(self, subscription: Subscription) -> None:
        await self._send(subscription.id, encode(subscription))
        self.subscriptions[subscription.id] = subscription

    async def _send(self, subscription_id: str, value: bytes) -> None:
        assert self.producer is not None
        record = SUBSCRIPTIONS.record(value, subscription_id)
        await self.producer.send_and_wait(record.topic, record.value, key=record.key, headers=[
            (name, text.encode()) for name, text in record.headers.items()])
