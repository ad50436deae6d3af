"""The recipient API's Subscriptions core (services/recipients/subscriptions.py): which events a change of Tasks
gives, which notification is due, the backoff, and the Bundles of the Subscriptions Backport IG (R4)."""

from datetime import UTC, datetime, timedelta

from schemas.recipients import PayloadContent, RecipientTask, RecordRef, SubscriptionStatus
from services.recipients import subscriptions as core
from services.recipients.tasks import Refusal, RefusalCode

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BASE = "https://hub.example/fhir"
OWNER = "provider-12345678"


def task(task_id: str, version: int = 1, at: datetime = NOW) -> RecipientTask:
    return RecipientTask(id=task_id, bundle_id=f"b-{task_id}", referral_id=f"r-{task_id}", owner=OWNER,
                         version=version, handed_over_at=at, last_updated=at,
                         handover=RecordRef(topic="handovers.provider.12345678.v1", partition=0, offset=1))


def resource(**channel: object) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "handovers", "criteria": core.TOPIC,
            "channel": {"type": "rest-hook", "endpoint": "https://hook.example/notify",
                        "payload": "application/fhir+json", **channel}}


def subscribed(tasks: list[RecipientTask] | None = None, **channel: object):
    subscription = core.read_subscription(resource(**channel), OWNER, "s1", NOW, tasks or [])
    assert not isinstance(subscription, Refusal), subscription
    return subscription


def test_a_backport_subscription_is_read_with_id_only_by_default_and_its_extensions() -> None:
    plain = subscribed()
    assert plain.payload is PayloadContent.ID_ONLY and plain.heartbeat_s is None
    assert plain.status is SubscriptionStatus.REQUESTED and plain.events == 0
    full = subscribed(_payload={"extension": [{"url": core.PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                      extension=[{"url": core.HEARTBEAT_PERIOD, "valueUnsignedInt": 30},
                                 {"url": core.TIMEOUT, "valueUnsignedInt": 5}])
    assert full.payload is PayloadContent.FULL_RESOURCE and full.heartbeat_s == 30 and full.timeout_s == 5
    shown = core.subscription_resource(full)
    assert shown["criteria"] == core.TOPIC and shown["channel"]["_payload"]["extension"][0]["valueCode"] == \
        "full-resource"
    assert {"url": core.HEARTBEAT_PERIOD, "valueUnsignedInt": 30} in shown["channel"]["extension"]


def test_what_is_no_subscription_the_hub_serves_is_refused_with_its_code() -> None:
    wrong = [
        {"resourceType": "Task"},
        {**resource(), "criteria": "Task?owner=x"},
        {**resource(), "channel": {"type": "websocket", "endpoint": "https://hook.example"}},
        resource(endpoint="http://hook.example/notify"),
        resource(endpoint="https://"),
        resource(_payload={"extension": [{"url": core.PAYLOAD_CONTENT, "valueCode": "everything"}]}),
        resource(extension=[{"url": core.HEARTBEAT_PERIOD, "valueUnsignedInt": 0}]),
        resource(header=["no colon"]),
        {**resource(), "end": "2020-01-01T00:00:00+00:00"},
    ]
    for body in wrong:
        refusal = core.read_subscription(body, OWNER, "s1", NOW, [])
        assert isinstance(refusal, Refusal) and refusal.code is RefusalCode.SUBSCRIPTION_INVALID, body


def test_events_are_numbered_consecutively_per_new_or_changed_task_and_never_twice() -> None:
    subscription = subscribed([task("old")])  # what is there when it starts is no event
    assert core.observe(subscription, [task("old")]) == subscription
    later = NOW + timedelta(seconds=5)
    once = core.observe(subscription, [task("old", 2, later), task("new", 1, later + timedelta(seconds=1))])
    assert [(e.number, e.task_id) for e in once.pending] == [(1, "old"), (2, "new")] and once.events == 2
    assert core.observe(once, [task("old", 2, later), task("new", 1, later + timedelta(seconds=1))]) == once
    again = core.observe(once, [task("new", 2, later + timedelta(seconds=9))])
    assert [e.number for e in again.pending] == [1, 2, 3] and again.pending[-1].task_id == "new"


def test_seen_is_bounded_by_the_horizon_and_a_task_missing_for_a_moment_is_no_new_event() -> None:
    subscription = core.observe(subscribed(), [task("a", 2, NOW + timedelta(seconds=1))])
    far = NOW + core.GRACE + timedelta(minutes=1)
    moved = core.observe(subscription, [task("b", 2, far)])
    assert "a" not in moved.seen and "b" in moved.seen
    assert core.observe(moved, [task("a", 2, NOW + timedelta(seconds=1)), task("b", 2, far)]) == moved


def test_beyond_max_pending_the_oldest_events_are_given_up_and_counted() -> None:
    subscription = subscribed()
    many = [task(f"t{i:04d}", 2, NOW + timedelta(milliseconds=i + 1)) for i in range(core.MAX_PENDING + 7)]
    observed = core.observe(subscription, many)
    assert observed.events == core.MAX_PENDING + 7 and observed.dropped == 7
    assert observed.pending[0].number == 8 and len(observed.pending) == core.MAX_PENDING


def test_the_handshake_comes_first_then_each_event_in_order_then_heartbeats() -> None:
    subscription = subscribed(extension=[{"url": core.HEARTBEAT_PERIOD, "valueUnsignedInt": 10}])
    assert core.due(subscription, NOW) == core.Notification(core.Kind.HANDSHAKE)
    active = core.delivered(subscription, core.Notification(core.Kind.HANDSHAKE), NOW)
    assert active.status is SubscriptionStatus.ACTIVE and core.due(active, NOW) is None
    assert core.next_due(active) == NOW + timedelta(seconds=10)
    assert core.due(active, NOW + timedelta(seconds=10)) == core.Notification(core.Kind.HEARTBEAT)
    changed = core.observe(active, [task("a", 2, NOW + timedelta(seconds=1)), task("b", 2, NOW + timedelta(seconds=2))])
    first = core.due(changed, NOW + timedelta(seconds=3))
    assert first is not None and first.kind is core.Kind.EVENT and [e.number for e in first.events] == [1, 2]
    after = core.delivered(changed, first, NOW + timedelta(seconds=3))
    assert not after.pending and core.due(after, NOW + timedelta(seconds=4)) is None


def test_a_backlog_goes_out_oldest_first_at_most_so_many_events_a_notification() -> None:
    active = core.delivered(subscribed(), core.Notification(core.Kind.HANDSHAKE), NOW)
    count = core.EVENTS_PER_NOTIFICATION * 2 + 3
    backlog = core.observe(active, [task(f"t{i:03}", 2, NOW + timedelta(seconds=i)) for i in range(count)])
    sent: list[list[int]] = []
    while (notification := core.due(backlog, NOW + timedelta(hours=1))) is not None:
        sent.append([event.number for event in notification.events])
        backlog = core.delivered(backlog, notification, NOW + timedelta(hours=1))
    assert [len(numbers) for numbers in sent] == [core.EVENTS_PER_NOTIFICATION] * 2 + [3]
    assert [n for numbers in sent for n in numbers] == list(range(1, count + 1)), "in order, none twice"


def test_a_refusing_hook_puts_the_subscription_in_error_and_is_retried_with_exponential_backoff() -> None:
    subscription = subscribed()
    first = core.failed(subscription, NOW, "the hook answered HTTP 500", 1.0, 8.0)
    assert first.status is SubscriptionStatus.ERROR and first.next_attempt == NOW + timedelta(seconds=1)
    assert core.due(first, NOW) is None and core.due(first, NOW + timedelta(seconds=1)) is not None
    waits = [core.backoff(n, 1.0, 8.0).total_seconds() for n in range(1, 7)]
    assert waits == [1, 2, 4, 8, 8, 8]
    third = core.failed(core.failed(first, NOW, "x", 1.0, 8.0), NOW, "x", 1.0, 8.0)
    assert third.next_attempt == NOW + timedelta(seconds=4)
    back = core.delivered(third, core.Notification(core.Kind.HANDSHAKE), NOW)
    assert back.status is SubscriptionStatus.ACTIVE and back.attempts == 0 and back.error is None


def parameters(bundle: dict) -> dict:
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters" and status["meta"]["profile"] == [core.STATUS_PROFILE]
    return status


def test_an_event_notification_is_a_history_bundle_led_by_the_subscription_status() -> None:
    subscription = core.observe(core.delivered(subscribed(), core.Notification(core.Kind.HANDSHAKE), NOW),
                                [task("a", 2, NOW + timedelta(seconds=1))])
    notification = core.Notification(core.Kind.EVENT, tuple(subscription.pending))
    bundle = core.notification_bundle(subscription, notification, BASE, "n1", NOW)
    assert bundle["type"] == "history" and bundle["meta"]["profile"] == [core.NOTIFICATION_PROFILE]
    assert len(bundle["entry"]) == 1  # id-only: the focus names the Task
    status = parameters(bundle)
    by_name = {p["name"]: p for p in status["parameter"]}
    assert by_name["type"]["valueCode"] == "event-notification" and by_name["status"]["valueCode"] == "active"
    assert by_name["events-since-subscription-start"]["valueString"] == "1"
    assert by_name["subscription"]["valueReference"]["reference"] == f"{BASE}/Subscription/s1"
    parts = {p["name"]: p for p in by_name["notification-event"]["part"]}
    assert parts["event-number"]["valueString"] == "1"
    assert parts["focus"]["valueReference"]["reference"] == f"{BASE}/Task/a"


def test_full_resource_carries_the_task_and_the_handshake_and_status_have_their_types() -> None:
    subscription = core.observe(
        subscribed(_payload={"extension": [{"url": core.PAYLOAD_CONTENT, "valueCode": "full-resource"}]}),
        [task("a", 2, NOW + timedelta(seconds=1))])
    notification = core.Notification(core.Kind.EVENT, tuple(subscription.pending))
    bundle = core.notification_bundle(subscription, notification, BASE, "n1", NOW,
                                      {"a": {"resourceType": "Task", "id": "a"}})
    assert bundle["entry"][1]["resource"] == {"resourceType": "Task", "id": "a"}
    assert bundle["entry"][1]["fullUrl"] == f"{BASE}/Task/a"
    handshake = core.notification_bundle(subscribed(), core.Notification(core.Kind.HANDSHAKE), BASE, "h", NOW)
    assert {p["name"]: p.get("valueCode") for p in parameters(handshake)["parameter"]}["type"] == "handshake"
    status = core.status_bundle(subscription, BASE, NOW)
    assert status["type"] == "searchset" and status["entry"][0]["search"]["mode"] == "match"
    by_name = {p["name"]: p for p in parameters(status)["parameter"]}
    assert by_name["type"]["valueCode"] == "query-status"
    assert by_name["events-since-subscription-start"]["valueString"] == "1"


def test_a_subscription_past_its_end_is_ended() -> None:
    subscription = subscribed()
    ending = subscription.model_copy(update={"end": NOW + timedelta(hours=1)})
    assert not core.ended(ending, NOW) and core.ended(ending, NOW + timedelta(hours=1))
    assert core.due(ending.model_copy(update={"status": SubscriptionStatus.OFF}), NOW) is None
