"""Exactly-once under faults (issue 11): on a 3-broker cluster (replication 3, `min.insync.replicas` 2), 2,000
referrals over all five channels, published through the run, while one broker is killed -9 and restarted, and
each service, run as two instances, is killed -9 twice (once per instance) and started again (its partitions
move to the other instance and back). Recipients and referrers, reading `read_committed`, then see every
handover and every status exactly once.

Faults fire at points of progress, not of time: fault k fires once a number of referrals was handed over, and
the publisher keeps a window of referrals in flight ahead of it, so each fault hits the hub mid-flow. The test
prints its timeline and its counts; it asserts only counts."""

import asyncio
import json
import logging
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.referral import Channel
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import group_id, log_offsets, read_records, wait_until_ready
from tests.conftest import ARTIFACTS, TestKafka, new_broker, start_hub
from tests.kafka_client import committed_offsets, header, partitions_of, read_committed
from tests.referrals import channel_bytes

pytestmark = pytest.mark.e2e
COUNT = 2000
SERVICES = ("intake", "routing", "notifier")
INSTANCES = 2
EXPECTED = ("received", "routed", "handed-over")
"""Every status a valid referral's referrer gets on its way to a recipient (intake: received; notifier: routed,
handed-over), each exactly once."""
HANDOVER_SCHEMA = "verwijshub.Handover/1"
WINDOW = 200
"""Referrals the publisher may have published beyond the point where the next fault fires: work in flight."""
GAP = 100
"""At least this many handovers between the end of one fault and the next."""
CHUNK = 20
BROKER_DOWN_PROGRESS = 100
"""Handovers the hub must make with one broker dead before that broker is started again."""
STALL_S = 60.0
"""How long a wait for progress may see none before it gives up (the test then reports what it has)."""
PLAN = (150, "intake", 0), (400, "routing", 0), (650, "notifier", 0), (850, "broker", 1), \
       (1100, "intake", 1), (1300, "routing", 1), (1500, "notifier", 1)
"""(handovers seen, what is killed -9 and started again): each service's instance 0 and 1, and broker node 2."""


def referral_ids(run: str) -> dict[str, Channel]:
    channels = list(Channel)
    return {f"FAULTS-{run}-{i}": channels[i % len(channels)] for i in range(COUNT)}


@dataclass
class Progress:
    """What the test has seen so far, as a referrer's system following its status topic would."""

    wanted: set[str]
    handed_over: set[str] = field(default_factory=set)
    published: int = 0
    landed: dict[str, str] = field(default_factory=dict)
    """Where each referral was published: topic[partition]@offset."""
    cap: int = 0
    """The publisher publishes no referral beyond this count."""
    started: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        line = (f"{time.monotonic() - self.started:6.1f}s  handed over {len(self.handed_over):4d}, "
                f"published {self.published:4d}: {what}")
        self.timeline.append(line)
        print(line, flush=True)

    async def until(self, done: Callable[[], bool], what: str, stall_s: float = STALL_S) -> bool:
        """Wait until `done()`; give up (noted, False) once no referral was handed over for `stall_s`."""
        last, since = len(self.handed_over), time.monotonic()
        while not done():
            if len(self.handed_over) != last:
                last, since = len(self.handed_over), time.monotonic()
            elif time.monotonic() - since > stall_s:
                self.note(f"no progress for {stall_s:.0f}s while waiting for {what}")
                return False
            await asyncio.sleep(0.05)
        return True


class Hub:
    """Two processes of each service (`verwijshub run SERVICE`) on the cluster, each with a log of its own."""

    def __init__(self, broker: TestKafka, directory: Path) -> None:
        self.broker, self.directory = broker, directory
        self.processes: dict[tuple[str, int], subprocess.Popen[bytes]] = {}

    def log(self, service: str, instance: int) -> Path:
        return self.directory / f"{service}-{instance}.log"

    def start(self, service: str, instance: int) -> None:
        self.processes[service, instance] = start_hub(self.broker, self.log(service, instance), service)

    def kill(self, service: str, instance: int) -> None:
        process = self.processes.pop((service, instance))
        process.send_signal(signal.SIGKILL)
        process.wait()

    def kill_all(self) -> None:
        for key in list(self.processes):
            self.kill(*key)


async def follow_statuses(kafka: KafkaConnection, progress: Progress) -> None:
    """Follow every status topic from the start, read_committed, counting the referrals handed over."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = await partitions_of(kafka, *(topics.status(channel) for channel in Channel))
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError:  # a broker away: the consumer reconnects
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    if event["status"] == "handed-over" and event["referrer_referral_id"] in progress.wanted:
                        progress.handed_over.add(event["referrer_referral_id"])
    finally:
        await consumer.stop()


async def publish(broker: TestKafka, items: dict[str, Channel], progress: Progress) -> None:
    """Publish every referral on its channel's topic (as the admin, its only writer), in chunks, never beyond
    `progress.cap`."""
    producers = {c: AIOKafkaProducer(**broker.admin.client_options(), acks="all",
                                     enable_idempotence=True, linger_ms=5) for c in Channel}
    for producer in producers.values():
        await producer.start()
    try:
        pending = list(items.items())
        while pending:
            await progress.until(lambda: progress.published < progress.cap, "room to publish", stall_s=3600)
            chunk = pending[:min(CHUNK, progress.cap - progress.published)]
            del pending[:len(chunk)]
            deliveries = [await producers[channel].send(topics.referrals(channel), channel_bytes(channel, rid),
                                                        key=rid.encode()) for rid, channel in chunk]
            for (rid, _), meta in zip(chunk, await asyncio.gather(*deliveries), strict=True):
                progress.landed[rid] = f"{meta.topic}[{meta.partition}]@{meta.offset}"
            progress.published += len(chunk)
    finally:
        for producer in producers.values():
            await producer.stop()


async def faults(broker: TestKafka, hub: Hub, progress: Progress, restarts: list[asyncio.Task]) -> None:
    """The plan: fault k fires at its count of handovers (or GAP handovers after fault k-1), with up to WINDOW
    referrals published beyond that point. What was killed starts again meanwhile (`restarts`): a process takes
    seconds to be ready and a broker to rejoin, while the others go on and the next fault may already come."""
    local = broker.local
    assert local is not None

    async def restart(target: str, instance: int) -> None:
        await asyncio.to_thread(hub.start, target, instance)
        progress.note(f"{target}-{instance} ready again")

    async def rejoin(node_id: int) -> None:
        await wait_until_ready(broker.admin, timeout_s=120, brokers=broker.brokers)
        progress.note(f"broker node {node_id} back in the cluster")

    points = [at for at, _, _ in PLAN[1:]] + [COUNT]
    for (at, target, instance), next_at in zip(PLAN, points, strict=True):
        fire = max(at, len(progress.handed_over) + GAP)
        progress.cap = min(COUNT, fire + WINDOW)
        await progress.until(lambda: len(progress.handed_over) >= fire, f"{fire} handovers")
        progress.cap = min(COUNT, max(progress.cap, next_at + WINDOW))
        if target == "broker":
            node = local.nodes[instance]
            local.kill_node(node)
            progress.note(f"broker node {node.node_id} killed -9")
            down_at = len(progress.handed_over)
            await progress.until(lambda: len(progress.handed_over) >= down_at + BROKER_DOWN_PROGRESS,
                                 f"{BROKER_DOWN_PROGRESS} handovers with a broker down")
            local.start_node(node)
            progress.note(f"broker node {node.node_id} started again")
            restarts.append(asyncio.create_task(rejoin(node.node_id)))
        else:
            hub.kill(target, instance)
            progress.note(f"{target}-{instance} killed -9, starting again")
            restarts.append(asyncio.create_task(restart(target, instance)))
    progress.cap = COUNT
    await asyncio.gather(*restarts)
    progress.note("every fault done, everything killed is back")


async def handover_topics(kafka: KafkaConnection) -> list[str]:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        return sorted(name for name in await admin.list_topics() if name.startswith("handovers."))
    finally:
        await admin.close()


def where(record: ConsumerRecord) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


@dataclass
class Tally:
    """Per referral (the referrer's id): where each of its statuses and its handovers were read."""

    statuses: dict[str, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    handovers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unmatched_handovers: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)

    def seen(self, kind: str, wanted: set[str]) -> dict[str, list[str]]:
        """Per referral, where its handover (`kind` "handover") or its status `kind` was read."""
        return {rid: list(self.handovers[rid] if kind == "handover" else self.statuses[rid][kind]) for rid in wanted}

    def unexpected(self, wanted: set[str]) -> dict[str, list[str]]:
        """Statuses a referral of this run should never get (rejected, rerouted, ...): per status, the ids."""
        found: dict[str, list[str]] = defaultdict(list)
        for rid in sorted(wanted):
            for status, places in self.statuses[rid].items():
                if status not in EXPECTED and places:
                    found[status].append(rid)
        return dict(found)


async def tally(kafka: KafkaConnection, wanted: set[str]) -> Tally:
    result = Tally()
    hub_ids: dict[str, str] = {}
    for record in await read_committed(kafka, [topics.status(channel) for channel in Channel]):
        event = json.loads(record.value)
        if event["referrer_referral_id"] in wanted:
            result.statuses[event["referrer_referral_id"]][event["status"]].append(where(record))
            if event.get("referral_id"):
                hub_ids[event["referral_id"]] = event["referrer_referral_id"]
    for record in await read_committed(kafka, await handover_topics(kafka)):
        if header(record, "schema") != HANDOVER_SCHEMA:
            continue  # a notice to the recipient
        rid = hub_ids.get(header(record, "correlation-id") or "")
        if rid is None:
            result.unmatched_handovers.append(where(record))
        else:
            result.handovers[rid].append(where(record))
    return result


async def records_after(kafka: KafkaConnection, tp: TopicPartition, offset: int) -> int:
    """How many committed records partition `tp` holds from `offset` on."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, offset)
        count = 0
        while await consumer.position(tp) < end:
            count += len((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))
        return count
    finally:
        await consumer.stop()


async def diagnose(kafka: KafkaConnection, progress: Progress, suspects: list[str]) -> list[str]:
    """For the lead when counts are off: partitions whose last stable offset lags their end (a transaction left
    open), each hub group's uncommitted input, and for some lost or duplicated referrals where they landed and
    what of them is on the topics when aborted records are read too (read_uncommitted)."""
    lines = []
    families = [topics.status(c) for c in Channel] + await handover_topics(kafka) + [
        topics.NORMALISED, topics.DECISIONS, topics.INTAKE_ACCEPTED, topics.NOTIFIER_STATE]
    partitions = await partitions_of(kafka, *families)
    committed_view = AIOKafkaConsumer(**kafka.client_options(), isolation_level="read_committed")
    everything = AIOKafkaConsumer(**kafka.client_options())
    await committed_view.start()
    await everything.start()
    try:
        stable, ends = await log_offsets(committed_view, partitions), await log_offsets(everything, partitions)
        inputs = await partitions_of(kafka, *(topics.referrals(c) for c in Channel)) + [
            tp for tp in partitions if tp.topic in (topics.NORMALISED, topics.DECISIONS)]
        input_ends = await log_offsets(everything, inputs)
    finally:
        await committed_view.stop()
        await everything.stop()
    lines += [f"open transaction: {tp.topic}[{tp.partition}] last stable offset {stable[tp]} < end {ends[tp]}"
              for tp in partitions if stable[tp] < ends[tp]]
    for service in SERVICES:
        try:
            offsets = await committed_offsets(kafka, group_id(service))
        except KafkaError as exc:
            lines.append(f"{group_id(service)}: no committed offsets ({type(exc).__name__})")
            continue
        for tp, offset in sorted(offsets.items()):
            if tp in input_ends and offset < input_ends[tp]:  # a transaction's marker takes an offset too
                if waiting := await records_after(kafka, tp, offset):
                    lines.append(f"{group_id(service)} committed {tp.topic}[{tp.partition}] at {offset}: "
                                 f"{waiting} committed record(s) after it not consumed")
    wanted = set(suspects)
    hub_ids, statuses, normalised, decisions = {}, defaultdict(list), defaultdict(list), defaultdict(list)
    for record in await read_records(kafka, [topics.status(c) for c in Channel] + [topics.NORMALISED,
                                                                                    topics.DECISIONS]):
        value = json.loads(record.value)
        rid = value.get("referrer_referral_id") or (value.get("referral") or {}).get("referrer_referral_id")
        if rid not in wanted:
            continue
        if record.topic == topics.NORMALISED:
            hub_ids[value["referral_id"]] = rid
            normalised[rid].append(where(record))
        elif record.topic == topics.DECISIONS:
            decisions[rid].append(where(record))
        else:
            statuses[rid].append(f"{value['status']} {where(record)}")
    handovers = defaultdict(list)
    for record in await read_records(kafka, await handover_topics(kafka)):
        rid = hub_ids.get(header(record, "correlation-id"))
        if rid and header(record, "schema") == HANDOVER_SCHEMA:
            handovers[rid].append(where(record))
    stages = defaultdict(list)
    for rid in suspects:
        stage = ("never handled by intake" if not normalised[rid] and not statuses[rid] else
                 "never decided by routing" if not decisions[rid] else
                 "never handed over by the notifier" if not handovers[rid] else "more than once")
        stages[stage].append(rid)
        lines.append(f"{rid} ({progress.landed.get(rid)}), read_uncommitted: statuses {statuses[rid]}, "
                     f"normalised {normalised[rid]}, decisions {decisions[rid]}, handovers {handovers[rid]}")
    lines[:0] = [f"{stage}: {len(ids)}, from {sorted(progress.landed.get(rid, '?') for rid in ids)[:20]}"
                 for stage, ids in stages.items()]
    return lines


async def run(broker: TestKafka, hub: Hub, run_id: str) -> tuple[Progress, Tally]:
    items = referral_ids(run_id)
    progress = Progress(set(items))
    progress.note("hub started: two instances of each service")
    follower = asyncio.create_task(follow_statuses(broker.admin, progress))
    publisher = asyncio.create_task(publish(broker, items, progress))
    restarts: list[asyncio.Task] = []
    try:
        await faults(broker, hub, progress, restarts)
        await progress.until(lambda: publisher.done() and progress.wanted <= progress.handed_over,
                             f"all {COUNT} handed over")
        progress.note("the wait for the end states is over")
        if publisher.done():
            publisher.result()  # a failed publish is the harness's fault: say so
    finally:
        for task in (follower, publisher):
            task.cancel()
        await asyncio.gather(follower, publisher, return_exceptions=True)
        await asyncio.gather(*restarts, return_exceptions=True)  # each within start_process's bound: then killed
    found = await tally(broker.admin, progress.wanted)
    suspects = sorted({rid for kind in (*EXPECTED, "handover") for rid, places in found.seen(kind, progress.wanted)
                       .items() if len(places) != 1})
    if suspects or found.unmatched_handovers:
        try:
            found.diagnosis = await diagnose(broker.admin, progress, suspects)
        except Exception as exc:  # the counts matter more than their diagnosis
            found.diagnosis = [f"no diagnosis: {type(exc).__name__}: {exc}"]
    return progress, found


@pytest.fixture
def quiet_aiokafka():
    """The test's own clients log every refused connection to the killed broker: not worth a report's page."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_every_handover_and_status_exactly_once_under_broker_and_service_kills(tmp_path: Path,
                                                                               quiet_aiokafka: None) -> None:
    directory = ARTIFACTS / "faults"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.log"):
        old.unlink()
    started = time.monotonic()
    with new_broker(tmp_path / "kafka", brokers=3) as broker:
        print(f"\ncluster of {broker.brokers} up and provisioned in {time.monotonic() - started:.0f}s", flush=True)
        hub = Hub(broker, directory)
        try:
            async def start_all() -> None:
                await asyncio.gather(*(asyncio.to_thread(hub.start, service, instance)
                                       for service in SERVICES for instance in range(INSTANCES)))
            asyncio.run(start_all())
            progress, found = asyncio.run(run(broker, hub, uuid.uuid4().hex[:8]))
        finally:
            hub.kill_all()
    print(f"{COUNT} referrals over {len(Channel)} channels, {len(PLAN)} faults, "
          f"{time.monotonic() - started:.0f}s in all; read_committed, per referral:")
    problems = {}
    for kind in (*EXPECTED, "handover"):
        seen = found.seen(kind, progress.wanted)
        lost = sorted(rid for rid, places in seen.items() if not places)
        duplicated = sorted(rid for rid, places in seen.items() if len(places) > 1)
        once = sum(1 for places in seen.values() if len(places) == 1)
        print(f"  {kind:12s} exactly once {once:5d}, lost {len(lost):4d}, duplicated {len(duplicated):4d}")
        if lost:
            print(f"    lost, e.g.: {lost[:10]}")
        for rid in duplicated[:10]:
            print(f"    duplicated: {rid} at {seen[rid]}")
        if lost or duplicated:
            problems[kind] = (len(lost), len(duplicated))
    unexpected = found.unexpected(progress.wanted)
    for status, ids in unexpected.items():
        print(f"  unexpected status {status}: {len(ids)} referrals, e.g. {ids[:10]}")
    print(f"  handovers of no referral of this run: {len(found.unmatched_handovers)} {found.unmatched_handovers[:10]}")
    if found.diagnosis:
        print("diagnosis:\n  " + "\n  ".join(found.diagnosis[:60]))
    assert not problems and not unexpected and not found.unmatched_handovers, \
        f"(lost, duplicated) per kind: {problems}; unexpected statuses: {list(unexpected)}"
