"""FHIR R4 Subscriptions (Subscriptions Backport IG) at the recipient API, on a real secured broker under the real
`verwijshub up`: an HTTPS receiver in the test (its certificate from the hub's CA) subscribes for each provider,
gets the handshake, heartbeats and one id-only notification per new or changed Task, numbered consecutively; while
it is down the notifications are retried, and once it is back every event is delivered or found by $status and
polling: none lost, also across a restart of the hub. Another recipient's token finds no subscription of it."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from services.access.tokens import TokenStore
from services.infra import principals
from services.infra.settings import REPO_ROOT
from services.infra.tls import LocalCa
from services.recipients.subscriptions import HEARTBEAT_PERIOD, TOPIC
from tests.conftest import ARTIFACTS, TestKafka
from tests.gateway_clients import curl
from tests.recipient_hub import FOR_A_PROVIDER, Hub, Receiver, eventually, read_status, task_of

pytestmark = pytest.mark.e2e
PROVIDERS = [provider["agb"] for provider in json.loads((REPO_ROOT / "deploy" / "registry" / "providers.json")
                                                        .read_text())]
"""Routing hands the example referral to one of several providers (by load): each subscribes."""
BEATING = PROVIDERS[:2]
"""The providers whose subscriptions have a heartbeat (every one's would only load the machine)."""


@pytest.fixture(scope="module")
def hub(private_kafka: TestKafka) -> Iterator[Hub]:
    running = Hub.on_own_ports(private_kafka, ARTIFACTS / "recipient-subscriptions",
                               VERWIJSHUB_RECIPIENTS_HOOK_RETRY_MAX_S="2")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def receiver(hub: Hub) -> Iterator[Receiver]:
    running = Receiver(str(LocalCa(hub.kafka.secrets).gateway_pem("127.0.0.1")))
    running.up()
    try:
        yield running
    finally:
        running.down()


@pytest.fixture(scope="module")
def subscribed(hub: Hub, receiver: Receiver) -> dict[str, tuple[str, str]]:
    """Each provider's subscription: owner -> (its id, the provider's token)."""
    found = {}
    tokens = TokenStore(hub.kafka.secrets)
    for agb in PROVIDERS:
        owner = principals.provider(agb)
        token = hub.token(owner) if agb in BEATING else tokens.issue(owner)
        beat = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 3}] if agb in BEATING else []
        answer = hub.send("POST", "/Subscription", token, {
            "resourceType": "Subscription", "status": "requested", "reason": "new handovers", "criteria": TOPIC,
            "channel": {"type": "rest-hook", "endpoint": receiver.url(owner), "payload": "application/fhir+json",
                        "extension": beat}}, None)
        assert answer.status == 201, answer.body
        created = answer.json()
        assert created["status"] == "requested" and answer.headers["location"].endswith(created["id"])
        found[owner] = (created["id"], token)
    return found


def status_of(hub: Hub, subscription_id: str, token: str) -> dict[str, Any]:
    answer = hub.get(f"/Subscription/{subscription_id}/$status", token)
    assert answer.status == 200, answer.body
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["entry"][0]["resource"]["resourceType"] == "Parameters"
    return read_status(bundle["entry"][0]["resource"])


def numbers(receiver: Receiver, owner: str) -> list[tuple[int, str]]:
    return sorted({event for status in receiver.notifications(owner, "event-notification")
                   for event in status["events"]})


def referred_tasks(hub: Hub, count: int) -> dict[str, str]:
    """`count` referrals for a provider through the gateway: referral id -> its owner."""
    return {referral_id: principals.provider(recipient["id"]) for referral_id, recipient in
            (hub.refer(FOR_A_PROVIDER) for _ in range(count))}


def test_handshake_heartbeats_and_one_id_only_notification_per_new_or_changed_task(
        hub: Hub, receiver: Receiver, subscribed: dict[str, tuple[str, str]]) -> None:
    for owner, (subscription_id, token) in subscribed.items():
        (handshake, *_) = eventually(lambda owner=owner: receiver.notifications(owner, "handshake"), "a handshake")
        assert handshake["status"] == "requested" and handshake["topic"] == TOPIC
        assert handshake["subscription"]["reference"].endswith(f"/Subscription/{subscription_id}")
        eventually(lambda s=subscription_id, t=token: hub.get(f"/Subscription/{s}", t).json()["status"] == "active",
                   "the subscription active")
        if owner not in map(principals.provider, BEATING):
            continue
        beat = eventually(lambda owner=owner: receiver.notifications(owner, "heartbeat"), "a heartbeat")[0]
        assert beat["events-since-subscription-start"] == "0" and beat["status"] == "active"

    referrals = referred_tasks(hub, 3)
    tasks = {}
    for referral_id, owner in referrals.items():
        token = subscribed[owner][1]
        tasks[referral_id] = eventually(lambda: task_of(hub, token, owner, referral_id), "the Task")
    for owner in subscribed:
        mine = {task["id"] for referral_id, task in tasks.items() if referrals[referral_id] == owner}
        got = eventually(lambda owner=owner, mine=mine: len(numbers(receiver, owner)) >= len(mine) and
                         numbers(receiver, owner), "a notification per handover", timeout_s=120) if mine else []
        assert [number for number, _ in got] == list(range(1, len(mine) + 1)), "consecutive, from 1"
        assert {task_id for _, task_id in got} == mine, "one per new Task, each naming it"
        for status in receiver.notifications(owner, "event-notification"):
            assert status["entries"] == 1, "id-only: the status alone, its focus the Task"

    referral_id, task = next(iter(tasks.items()))
    owner, (_, token) = referrals[referral_id], subscribed[referrals[referral_id]]
    before = numbers(receiver, owner)
    assert hub.send("PUT", f"/Task/{task['id']}", token, {**task, "status": "accepted"}, 'W/"1"').status == 200
    changed = eventually(lambda: len(numbers(receiver, owner)) > len(before) and numbers(receiver, owner),
                         "a notification of the change")
    assert changed[-1] == (len(before) + 1, task["id"])

    other = next(o for o in subscribed if o != owner)
    subscription_id, other_token = subscribed[owner][0], subscribed[other][1]
    for path in (f"/Subscription/{subscription_id}", f"/Subscription/{subscription_id}/$status"):
        refused = hub.get(path, other_token)
        assert refused.status == 404 and refused.json()["resourceType"] == "OperationOutcome", path
    assert curl(f"{hub.api}/Subscription/{subscription_id}", hub.ca, other_token, method="DELETE").status == 404
    assert hub.get(f"/Subscription/{subscription_id}", token).status == 200, "another's DELETE removed nothing"
    assert hub.get(f"/Subscription/{subscription_id}", None).status == 401
    assert status_of(hub, subscription_id, token)["events-since-subscription-start"] == str(len(changed))


def test_while_the_hook_is_down_notifications_are_retried_and_afterwards_none_is_lost(
        hub: Hub, receiver: Receiver, subscribed: dict[str, tuple[str, str]]) -> None:
    since = {owner: len(numbers(receiver, owner)) for owner in subscribed}
    started = datetime.now(UTC).isoformat()
    receiver.down()
    referrals = referred_tasks(hub, 3)
    owners = set(referrals.values())
    for owner in owners:
        subscription_id, token = subscribed[owner]
        eventually(lambda s=subscription_id, t=token: status_of(hub, s, t)["status"] == "error",
                   "the subscription in error while its hook is down", timeout_s=120)
    receiver.up()
    for owner, (subscription_id, token) in subscribed.items():
        total = int(status_of(hub, subscription_id, token)["events-since-subscription-start"])
        got = eventually(lambda owner=owner, total=total: len(numbers(receiver, owner)) >= total and
                         [numbers(receiver, owner)], "every missed notification delivered", timeout_s=120)[0]
        assert [number for number, _ in got] == list(range(1, total + 1)), "none lost, none numbered twice"
        assert total - since[owner] == sum(1 for o in referrals.values() if o == owner)
        eventually(lambda s=subscription_id, t=token: status_of(hub, s, t)["status"] == "active", "active again")
        # what a receiver that missed them would poll: the same Tasks
        polled = {referral_id for referral_id, o in referrals.items() if o == owner
                  and task_of(hub, token, owner, referral_id, f"&_lastUpdated=gt{quote(started)}")}
        assert polled == {referral_id for referral_id, o in referrals.items() if o == owner}


def test_subscriptions_and_their_event_numbers_survive_a_restart_of_the_hub(
        hub: Hub, receiver: Receiver, subscribed: dict[str, tuple[str, str]]) -> None:
    counts = {owner: int(status_of(hub, s, t)["events-since-subscription-start"])
              for owner, (s, t) in subscribed.items()}
    hub.stop()
    hub.start()
    for owner, (subscription_id, token) in subscribed.items():
        assert hub.get(f"/Subscription/{subscription_id}", token).status == 200
        assert int(status_of(hub, subscription_id, token)["events-since-subscription-start"]) == counts[owner]
    ((referral_id, owner),) = referred_tasks(hub, 1).items()
    token = subscribed[owner][1]
    task = eventually(lambda: task_of(hub, token, owner, referral_id), "the Task after the restart")
    got = eventually(lambda: len(numbers(receiver, owner)) > counts[owner] and numbers(receiver, owner),
                     "its notification after the restart", timeout_s=120)
    assert got[-1] == (counts[owner] + 1, task["id"]) and len(got) == counts[owner] + 1

    subscription_id = subscribed[owner][0]
    assert curl(f"{hub.api}/Subscription/{subscription_id}", hub.ca, token, method="DELETE").status == 204
    assert hub.get(f"/Subscription/{subscription_id}", token).status == 404
