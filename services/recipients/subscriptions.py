"""FHIR R4 Subscriptions (Subscriptions Backport IG) of the recipient API: which events a change of Tasks gives a
subscription, which notification is due, and the notification Bundles.

Pure functions over one `Subscription` (schemas/recipients.py), the model of services/recipients/tasks.py: the
delivery adapter (services/recipients/delivery.py) stores what these return and sends what they say is due.

Events are found by comparing the subscriber's committed Tasks with the versions already numbered (`seen`), never by
following each change as it happens: so a change committed while the hub was down, or between a Task's commit and
the subscription's, is numbered when the subscription next looks, and nothing is numbered twice. `seen` is kept
for Tasks changed since a horizon (the latest change seen minus GRACE) only, so it is bounded by recent work: a
Task's change is stamped at most a transaction's timeout before it commits, far less than GRACE.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from schemas.recipients import (
    PayloadContent,
    RecipientTask,
    SeenTask,
    Subscription,
    SubscriptionEvent,
    SubscriptionStatus,
)
from services.recipients.tasks import Refusal, RefusalCode

TOPIC = "http://verwijshub.nl/fhir/SubscriptionTopic/handover"
"""The one topic: a Task of the subscriber (a handover to it) new or changed."""
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
PAYLOAD_CONTENT = f"{BACKPORT}/StructureDefinition/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/StructureDefinition/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/StructureDefinition/backport-timeout"
FILTER_CRITERIA = f"{BACKPORT}/StructureDefinition/backport-filter-criteria"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription"
STATUS_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription-notification-r4"
FHIR_JSON = "application/fhir+json"

GRACE = timedelta(minutes=10)
MAX_PENDING = 200
"""Undelivered events kept per subscription; beyond, the oldest are given up (the receiver sees the gap in the
event numbers and finds the Tasks by polling `_lastUpdated`): memory bounded while a hook is down for days."""
EVENTS_PER_NOTIFICATION = 20
"""Pending events sent together, oldest first, in one event-notification (the IG's SubscriptionStatus lists each
`notification-event`): one per event, each a POST and two writes of the subscription, kept up with about 15 events
a second here, so a steady 20 handovers a second grew a backlog (p50 6 s to the hook; bench/recipients.py)."""
MIN_HEARTBEAT_S, MAX_TIMEOUT_S = 1, 60
MAX_HEADERS, MAX_TEXT = 5, 1024


class Kind(StrEnum):
    """The notification types of the backport IG that the hub sends (and `query-status` for $status)."""

    HANDSHAKE = "handshake"
    HEARTBEAT = "heartbeat"
    EVENT = "event-notification"
    QUERY_STATUS = "query-status"


@dataclass(frozen=True)
class Notification:
    kind: Kind
    events: tuple[SubscriptionEvent, ...] = ()


def _refused(message: str) -> Refusal:
    return Refusal(422, RefusalCode.SUBSCRIPTION_INVALID, message)


def _extension(element: Any, url: str) -> Any:
    for extension in (element.get("extension") if isinstance(element, dict) else None) or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return next((value for key, value in extension.items() if key.startswith("value")), None)
    return None


def read_subscription(resource: Any, owner: str, subscription_id: str, now: datetime,
                      tasks: list[RecipientTask]) -> Subscription | Refusal:
    """A POSTed backport Subscription, as the hub keeps it: topic `TOPIC`, channel rest-hook to an https endpoint,
    payload id-only (the default), empty or full-resource, an optional heartbeat period and timeout. Its events
    start now: the subscriber's Tasks as they are count as seen."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        return Refusal(400, RefusalCode.SUBSCRIPTION_INVALID, "The body must be a FHIR Subscription.")
    if resource.get("criteria") != TOPIC:
        return _refused(f"Subscription.criteria must be the topic {TOPIC}.")
    if _extension(resource.get("_criteria"), FILTER_CRITERIA) is not None:
        return _refused("No filter criteria: the topic is every Task of the subscriber already.")
    channel = resource.get("channel")
    if not isinstance(channel, dict) or channel.get("type") != "rest-hook":
        return _refused("Subscription.channel.type must be rest-hook.")
    endpoint = channel.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) and len(endpoint) <= MAX_TEXT else None
    try:
        valid = parts is not None and parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number
        valid = False
    if not valid:
        return _refused("Subscription.channel.endpoint must be an https URL.")
    payload = channel.get("payload", FHIR_JSON)
    if payload not in (FHIR_JSON, "application/json"):
        return _refused(f"Subscription.channel.payload must be {FHIR_JSON}.")
    content = _extension(channel.get("_payload"), PAYLOAD_CONTENT) or PayloadContent.ID_ONLY.value
    if content not in set(PayloadContent):
        return _refused(f"The payload content ({PAYLOAD_CONTENT}) must be one of {', '.join(PayloadContent)}.")
    heartbeat, timeout = _extension(channel, HEARTBEAT_PERIOD), _extension(channel, TIMEOUT)
    if heartbeat is not None and (type(heartbeat) is not int or not MIN_HEARTBEAT_S <= heartbeat <= 86_400):
        return _refused(f"The heartbeat period must be {MIN_HEARTBEAT_S} to 86400 seconds.")
    if timeout is not None and (type(timeout) is not int or not 1 <= timeout <= MAX_TIMEOUT_S):
        return _refused(f"The timeout must be 1 to {MAX_TIMEOUT_S} seconds.")
    headers = channel.get("header") or []
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS or not all(
            isinstance(h, str) and ":" in h and len(h) <= MAX_TEXT and h.isprintable() for h in headers):
        return _refused(f"Subscription.channel.header: at most {MAX_HEADERS} 'Name: value' strings.")
    reason, end = resource.get("reason", ""), resource.get("end")
    if not isinstance(reason, str) or len(reason) > MAX_TEXT:
        return _refused("Subscription.reason must be a short text.")
    try:
        ends = datetime.fromisoformat(end) if isinstance(end, str) else None
    except ValueError:
        ends = None
    if end is not None and (ends is None or ends.tzinfo is None):
        return _refused("Subscription.end must be an instant with a time zone.")
    if ends is not None and ends <= now:
        return _refused("Subscription.end lies in the past.")
    horizon = now - GRACE
    return Subscription(id=subscription_id, owner=owner, endpoint=endpoint, headers=headers,
                        payload=PayloadContent(content), heartbeat_s=heartbeat, timeout_s=timeout or 10,
                        reason=reason, end=ends, created_at=now, watermark=now,
                        seen={task.id: SeenTask(version=task.version, last_updated=task.last_updated)
                              for task in tasks if task.last_updated >= horizon})


def subscription_resource(subscription: Subscription) -> dict[str, Any]:
    """The Subscription as FHIR R4 JSON (backport profile), with its status as it is now."""
    channel: dict[str, Any] = {
        "type": "rest-hook", "endpoint": subscription.endpoint, "payload": FHIR_JSON,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": subscription.payload.value}]},
        "extension": [{"url": TIMEOUT, "valueUnsignedInt": subscription.timeout_s}]}
    if subscription.heartbeat_s is not None:
        channel["extension"].insert(0, {"url": HEARTBEAT_PERIOD, "valueUnsignedInt": subscription.heartbeat_s})
    if subscription.headers:
        channel["header"] = list(subscription.headers)
    resource: dict[str, Any] = {
        "resourceType": "Subscription", "id": subscription.id, "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": subscription.status.value, "reason": subscription.reason or "Handovers to this recipient",
        "criteria": TOPIC, "channel": channel}
    if subscription.end is not None:
        resource["end"] = subscription.end.isoformat()
    if subscription.error:
        resource["error"] = subscription.error
    return resource


# -- events -----------------------------------------------------------------------------------------------
def observe(subscription: Subscription, tasks: list[RecipientTask]) -> Subscription:
    """The subscriber's committed Tasks looked at: each new Task, and each Task at a version not numbered yet, is
    the next event (oldest change first); the oldest pending events given up beyond MAX_PENDING."""
    horizon = subscription.watermark - GRACE
    changed = sorted((task for task in tasks if task.last_updated >= horizon and (
        task.id not in subscription.seen or subscription.seen[task.id].version < task.version)),
        key=lambda task: (task.last_updated, task.id))
    if not changed:
        return subscription
    numbered = [SubscriptionEvent(number=subscription.events + i, task_id=task.id, at=task.last_updated)
                for i, task in enumerate(changed, start=1)]
    watermark = max(subscription.watermark, changed[-1].last_updated)
    seen = {**subscription.seen, **{task.id: SeenTask(version=task.version, last_updated=task.last_updated)
                                    for task in changed}}
    pending = [*subscription.pending, *numbered]
    over = max(0, len(pending) - MAX_PENDING)
    return subscription.model_copy(update={
        "events": subscription.events + len(numbered), "pending": pending[over:],
        "dropped": subscription.dropped + over, "watermark": watermark,
        "seen": {task_id: mark for task_id, mark in seen.items() if mark.last_updated >= watermark - GRACE}})


# -- delivery ---------------------------------------------------------------------------------------------
def backoff(attempts: int, first_s: float, longest_s: float) -> timedelta:
    """The wait after the `attempts`-th failure in a row: first_s, doubling, at most longest_s."""
    return timedelta(seconds=min(longest_s, first_s * 2 ** max(0, min(attempts - 1, 30))))


def due(subscription: Subscription, now: datetime) -> Notification | None:
    """The notification to send now, if any: the handshake until one succeeded; then the oldest pending events, up
    to EVENTS_PER_NOTIFICATION in one, in order; a heartbeat when nothing was sent for a heartbeat period. After a
    failure, nothing before its backoff has passed."""
    if subscription.status is SubscriptionStatus.OFF:
        return None
    if subscription.next_attempt is not None and now < subscription.next_attempt:
        return None
    if not subscription.handshaken:
        return Notification(Kind.HANDSHAKE)
    if subscription.pending:
        return Notification(Kind.EVENT, tuple(subscription.pending[:EVENTS_PER_NOTIFICATION]))
    if subscription.heartbeat_s is not None and \
            now >= (subscription.last_sent or subscription.created_at) + timedelta(seconds=subscription.heartbeat_s):
        return Notification(Kind.HEARTBEAT)
    return None


def next_due(subscription: Subscription) -> datetime | None:
    """When `due` may next have something without a change of Tasks (the adapter sleeps until then)."""
    if subscription.status is SubscriptionStatus.OFF:
        return None
    if subscription.next_attempt is not None:
        return subscription.next_attempt
    if not subscription.handshaken or subscription.pending:
        return subscription.created_at
    if subscription.heartbeat_s is not None:
        return (subscription.last_sent or subscription.created_at) + timedelta(seconds=subscription.heartbeat_s)
    return None


def delivered(subscription: Subscription, notification: Notification, now: datetime) -> Subscription:
    """The hook took it (2xx): active, its events off the pending list."""
    sent = {event.number for event in notification.events}
    return subscription.model_copy(update={
        "status": SubscriptionStatus.ACTIVE, "handshaken": True, "attempts": 0, "next_attempt": None,
        "last_sent": now, "error": None,
        "pending": [event for event in subscription.pending if event.number not in sent]})


def failed(subscription: Subscription, now: datetime, error: str, first_s: float, longest_s: float
           ) -> Subscription:
    """The hook refused it or was not reached: error, tried again after the backoff (nothing is given up)."""
    attempts = subscription.attempts + 1
    return subscription.model_copy(update={
        "status": SubscriptionStatus.ERROR, "attempts": attempts, "error": error[:200],
        "next_attempt": now + backoff(attempts, first_s, longest_s)})


def ended(subscription: Subscription, now: datetime) -> bool:
    return subscription.end is not None and now >= subscription.end


# -- the Bundles ------------------------------------------------------------------------------------------
def status_parameters(subscription: Subscription, kind: Kind, base: str, resource_id: str,
                      events: tuple[SubscriptionEvent, ...] = ()) -> dict[str, Any]:
    """The backport SubscriptionStatus of R4: a Parameters (profile backport-subscription-status-r4)."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{subscription.id}"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": subscription.status.value},
        {"name": "type", "valueCode": kind.value},
        {"name": "events-since-subscription-start", "valueString": str(subscription.events)}]
    for event in events:
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(event.number)},
                                       {"name": "timestamp", "valueInstant": event.at.isoformat()}]
        if subscription.payload is not PayloadContent.EMPTY:
            parts.append({"name": "focus", "valueReference": {"reference": f"{base}/Task/{event.task_id}"}})
        parameters.append({"name": "notification-event", "part": parts})
    if subscription.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": subscription.error}})
    return {"resourceType": "Parameters", "id": resource_id, "meta": {"profile": [STATUS_PROFILE]},
            "parameter": parameters}


def notification_bundle(subscription: Subscription, notification: Notification, base: str, bundle_id: str,
                        now: datetime, resources: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A notification Bundle (type history, profile backport-subscription-notification-r4): first the
    SubscriptionStatus, then, for full-resource, each event's Task as it is now (`resources` by Task id; a Task
    gone since is left out: its focus still names it)."""
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{bundle_id}",
        "resource": status_parameters(subscription, notification.kind, base, bundle_id, notification.events),
        "request": {"method": "GET", "url": f"{base}/Subscription/{subscription.id}/$status"},
        "response": {"status": "200"}}]
    if subscription.payload is PayloadContent.FULL_RESOURCE:
        for event in notification.events:
            if (task := (resources or {}).get(event.task_id)) is not None:
                entries.append({"fullUrl": f"{base}/Task/{event.task_id}", "resource": task,
                                "request": {"method": "PUT", "url": f"Task/{event.task_id}"},
                                "response": {"status": "200"}})
    return {"resourceType": "Bundle", "id": bundle_id, "meta": {"profile": [NOTIFICATION_PROFILE]},
            "type": "history", "timestamp": now.isoformat(), "entry": entries}


def status_bundle(subscription: Subscription, base: str, now: datetime) -> dict[str, Any]:
    """`GET /fhir/Subscription/{id}/$status`: a searchset Bundle (as the IG's $status operation returns) of one
    SubscriptionStatus of type query-status, with eventsSinceSubscriptionStart: the receiver compares it with the
    last event number it got, and polls the Tasks for what it missed."""
    return {"resourceType": "Bundle", "type": "searchset", "timestamp": now.isoformat(), "total": 1, "entry": [{
        "fullUrl": f"urn:uuid:{subscription.id}-status",
        "resource": status_parameters(subscription, Kind.QUERY_STATUS, base, f"{subscription.id}-status"),
        "search": {"mode": "match"}}]}
