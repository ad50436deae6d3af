"""A transient failure inside a handler commits nothing (issue 11): intake loses its Write on
`referrals.normalised.v1` (the admin revokes the ACL) while it has referrals in hand, so every publish of theirs
fails. While that lasts its group's committed offset stays before them and its /readyz says not ready; once the
grant is back, each of them is processed exactly once. A broker of this module's own."""

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from aiokafka import AIOKafkaProducer

from schemas.referral import Channel
from services.access.kafka_admin import AccessAdmin
from services.access.matrix import Grant, Operation, Pattern, Resource
from services.infra import principals, topics
from services.infra.kafka import group_id
from tests.conftest import ARTIFACTS, TestKafka, _free_port, start_hub, stop_hub
from tests.kafka_client import committed_offsets, read_committed
from tests.referrals import channel_bytes

pytestmark = pytest.mark.e2e
WARM, HELD = 3, 6
"""Referrals intake handles before the cause (it has published to the topic before), and while it lasts."""
WAIT_S = 90.0
WATCH_S = 5.0
"""How long the test watches the committed offsets while the cause lasts."""
INPUT = topics.referrals(Channel.GP)


def ready(port: int) -> bool | None:
    """What the process's /readyz says: True (200), False (503), None (no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return False if exc.code == 503 else None
    except OSError:
        return None


def write_grants(kafka: TestKafka) -> set[Grant]:
    """The grants that let intake write referrals.normalised.v1."""
    principal, topic = principals.service("intake"), topics.NORMALISED
    return {g for g in AccessAdmin(kafka.admin).grants() if g.principal == principal
            and g.resource is Resource.TOPIC and g.operation is Operation.WRITE
            and (topic.startswith(g.name) if g.pattern is Pattern.PREFIXED else g.name in (topic, "*"))}


def change_grants(kafka: TestKafka, grants: set[Grant], revoke: bool) -> None:
    """Revoke (or restore) `grants`; returns once the broker enforces it. Each call has an admin client of its
    own, gone at its end (librdkafka's would log the module's broker going away)."""
    access = AccessAdmin(kafka.admin)
    if revoke:
        access.remove(grants)
    else:
        access.add(grants)
    access.settle(lambda: not write_grants(kafka) if revoke else write_grants(kafka) == grants)


async def until(check, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s:.0f}s: {what}")


async def publish(broker: TestKafka, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Send each referral on the GP channel's topic (as the admin, its only writer); where each landed: (partition,
    offset)."""
    producer = AIOKafkaProducer(**broker.admin.client_options(), acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        landed = {}
        for rid in ids:
            meta = await producer.send_and_wait(INPUT, channel_bytes(Channel.GP, rid), key=rid.encode())
            landed[rid] = (meta.partition, meta.offset)
        return landed
    finally:
        await producer.stop()


async def outcomes(broker: TestKafka, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per referrer id: (records on referrals.normalised.v1, `received` statuses), read_committed."""
    wanted = set(ids)
    found = {rid: [0, 0] for rid in ids}
    for record in await read_committed(broker.admin, [topics.NORMALISED]):
        rid = json.loads(record.value).get("referrer_referral_id")
        if rid in wanted:
            found[rid][0] += 1
    for record in await read_committed(broker.admin, [topics.status(Channel.GP)]):
        event = json.loads(record.value)
        if event["referrer_referral_id"] in wanted and event["status"] == "received":
            found[event["referrer_referral_id"]][1] += 1
    return {rid: (normalised, received) for rid, (normalised, received) in found.items()}


async def committed(broker: TestKafka) -> dict[int, int]:
    """Intake's committed offset per partition of the input topic (-1: none yet)."""
    offsets = await committed_offsets(broker.admin, group_id("intake"))
    return {tp.partition: offset for tp, offset in offsets.items() if tp.topic == INPUT}


def test_a_publish_that_fails_commits_nothing_and_the_referral_goes_through_once_the_cause_is_gone(
        private_kafka: TestKafka) -> None:
    directory = ARTIFACTS / "transient"
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / "intake.log"
    log_file.unlink(missing_ok=True)
    port = _free_port()
    grants = write_grants(private_kafka)
    assert grants, "intake may write referrals.normalised.v1"
    run = str(int(time.time()))
    warm = [f"TRANSIENT-{run}-warm-{i}" for i in range(WARM)]
    held = [f"TRANSIENT-{run}-held-{i}" for i in range(HELD)]
    seen_ready: list[bool | None] = []
    watched_ready: list[bool | None] = []
    seen_committed: list[dict[int, int]] = []
    intake = start_hub(private_kafka, log_file, "intake", env={"VERWIJSHUB_METRICS_PORT": str(port)})
    revoked = False
    try:
        asyncio.run(publish(private_kafka, warm))

        async def warm_done():
            return all(o == (1, 1) for o in (await outcomes(private_kafka, warm)).values())
        asyncio.run(until(warm_done, "the first referrals processed"))
        assert ready(port) is True

        revoked = True
        change_grants(private_kafka, grants, revoke=True)
        landed = asyncio.run(publish(private_kafka, held))
        first_held = {}
        for partition, offset in landed.values():
            first_held[partition] = min(offset, first_held.get(partition, offset))

        async def not_ready():
            seen_ready.append(ready(port))
            return seen_ready[-1] is False
        try:
            asyncio.run(until(not_ready, "/readyz says not ready while intake cannot publish", timeout_s=60))
        except TimeoutError:
            pass  # reported below, with what the committed offsets did meanwhile
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:  # the cause lasts: watch the commits
            seen_committed.append(asyncio.run(committed(private_kafka)))
            watched_ready.append(ready(port))
            time.sleep(0.5)
        during = asyncio.run(outcomes(private_kafka, held))

        change_grants(private_kafka, grants, revoke=False)
        revoked = False

        async def all_through():
            offsets = await committed(private_kafka)
            return (all(offsets.get(p, -1) > max(o for q, o in landed.values() if q == p) for p in first_held)
                    and all(n >= 1 and r >= 1 for n, r in (await outcomes(private_kafka, held)).values()))
        async def ready_again():
            return ready(port)
        try:
            asyncio.run(until(all_through, "every held referral processed and committed once the grant is back"))
            asyncio.run(until(ready_again, "/readyz ready again"))
        except TimeoutError as exc:
            print(f"\n{exc}")
        time.sleep(2)  # a duplicate would be published by now
        after = asyncio.run(outcomes(private_kafka, held))
        ready_after = ready(port)
    finally:
        if revoked:
            change_grants(private_kafka, grants, revoke=False)
        stop_hub(intake)

    passed = sorted({(p, c[p], first_held[p]) for c in seen_committed for p in first_held if c.get(p, -1) > first_held[p]})
    print(f"\nwhile intake could not publish: /readyz {sorted(set(map(str, seen_ready)))} then "
          f"{sorted(set(map(str, watched_ready)))}, committed offsets "
          f"{seen_committed[-1] if seen_committed else None} (first held record per partition: {first_held}), "
          f"read_committed (normalised, received) {sorted(set(during.values()))}; after: {sorted(set(after.values()))}")
    assert not passed, f"committed past an unprocessed record (partition, committed, first held offset): {passed}"
    assert False in seen_ready and set(watched_ready) == {False}, \
        f"/readyz said {set(seen_ready)}, then {set(watched_ready)} while intake could not publish"
    assert all(o == (0, 0) for o in during.values()), f"published while it could not: {during}"
    assert all(o == (1, 1) for o in after.values()), f"(normalised, received) per referral: {after}"
    assert ready_after is True
