"""End to end: referrals/s from publish to `handed-over` over all five channels, against passthrough baselines.

    PYTHONPATH=. .venv/bin/python -m bench.e2e [--count 2000] [--rate 100] [--seconds 20] [--brokers 1|3]
                                               [--baselines-only]

On one (or a 3-node) secured local Kafka it starts intake, routing and notifier as three processes (so the
machine's cores are used), then
0. warms up: the same rounds as 1 and 2 below, untimed (a fresh broker's JVM compiles its code for the first
   thousands of transactions, using a core of this 2-core machine: what is measured first would pay for it);
1. throughput: publishes `count` valid referrals at once, spread over the channels as their referrers, and
   times the first send to the last `handed-over` status a referrer sees (read_committed);
2. the same payloads through a raw batched aiokafka passthrough of three hops (consume a batch, produce it,
   commit; like intake -> routing -> notifier, without the work) on the same broker, same run: the ratio; and
   through a transactional one of confluent-kafka's clients (librdkafka, KIP-447: each hop's batch and its
   offsets, with the consumer's group metadata, in one transaction of the hop's one producer, read
   `read_committed`; a thread per hop, as its calls block): the same transactions by a C client, so what they
   cost is Kafka's, not aiokafka's Python;
3. latency: publishes at a fixed `rate` for `seconds` and reports p50/p99 from publish to `handed-over`; and
   the same paced payloads through the raw passthrough, and through two transactional ones, aiokafka's (each
   hop's batch and offsets in one transaction, read `read_committed`, as the hub commits, but one producer per
   hop, no state and no work) and librdkafka's (as in 2): what Kafka transactions alone cost on this broker;
4. the resident memory of each service process;
and the CPU time per referral (per message) of the hub's processes and of the broker(s) in each round. Each
passthrough's last topic is read to its end once its hops stopped: whether every id arrived exactly once.
`--baselines-only` runs the passthroughs without starting the hub: the machine and broker with nothing beside.
Nothing here is asserted: it prints figures.
"""

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.producer import sender as aiokafka_sender
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from schemas.referral import Channel
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.logging import configure_logging
from services.infra.provisioning import TopicSpec, provision_topics
from services.infra.settings import REPO_ROOT
from tests.conftest import TestKafka, new_broker, start_hub, stop_hub
from tests.kafka_client import partitions_of
from tests.referrals import gp_bytes, random_bsn

SERVICES = ("intake", "routing", "notifier")
HOPS = 3
EXAMPLES = REPO_ROOT / "schemas" / "examples"
EXAMPLE_BSN, SPECIALIST_ID = "999911120", "UMCG-REF-2026-0042"


SENDING = {"linger_ms": 5, "max_batch_size": 1024 * 1024}
"""How the referrers' producers (and the passthrough's) batch: an idempotent aiokafka producer has one request in
flight per broker, so with the default 16 KiB batches the publishing, not the hub, would set the pace."""
RETRY_BACKOFF_MS = 5
"""A transactional passthrough's wait before its producer retries a request (aiokafka's default 100 ms), as the hub's
aiokafka runtime had it: a transaction's first AddPartitionsToTxn is answered CONCURRENT_TRANSACTIONS while the
broker still writes the previous one's markers (KAFKA-5477), a few milliseconds here; aiokafka waits a fixed 20 ms
for it (`BACKOFF_OVERRIDE`, a module constant, set to this too)."""
aiokafka_sender.BACKOFF_OVERRIDE = RETRY_BACKOFF_MS / 1000
BATCH_RECORDS, POLL_S = 500, 0.2
"""A passthrough hop's batch: at most this many records, waiting at most this long for the first."""


class Round(NamedTuple):
    """What a round saw: id -> sent (s), id -> seen at the end (ms) and, of a passthrough, how many ids its last topic
    holds other than exactly once (missing or repeated; read to its end once the hops stopped)."""
    sent: dict[str, float]
    seen: dict[str, int]
    not_once: int | None = None


def payload(channel: Channel, referral_id: str, bsn: str) -> bytes:
    """A valid referral of the channel's own format: its example with a new referral id and youth."""
    if channel is Channel.GP:
        return gp_bytes(referral_id=referral_id, bsn=bsn)
    if channel is Channel.SPECIALIST:
        text = (EXAMPLES / "specialist" / "valid-product.hl7").read_text()
        return text.replace(SPECIALIST_ID, referral_id).replace(EXAMPLE_BSN, bsn).encode()
    example = next((EXAMPLES / channel.value).glob("valid-*.json"))
    document = json.loads(example.read_text())
    document["referral_id"], document["youth"]["bsn"] = referral_id, bsn
    return json.dumps(document).encode()


def referrals(count: int, run: str) -> list[tuple[Channel, str, bytes]]:
    channels = list(Channel)
    made = []
    for i in range(count):
        channel = channels[i % len(channels)]
        referral_id = f"BENCH-{run}-{i}"
        made.append((channel, referral_id, payload(channel, referral_id, random_bsn())))
    return made


async def publish_all(broker: TestKafka, items: list[tuple[Channel, str, bytes]],
                      pace: float | None = None) -> dict[str, float]:
    """Publish on each channel's topic (as the admin, its only writer); returns referral id -> send time (s).
    `pace`: seconds between sends."""
    producers = {c: AIOKafkaProducer(**broker.admin.client_options(), acks="all",
                                     enable_idempotence=True, **SENDING) for c in Channel}
    return await publish(producers, lambda channel: (producers[channel], topics.referrals(channel)), items, pace)


async def publish(producers: dict, route: Callable[[Channel], tuple[AIOKafkaProducer, str]],
                  items: list[tuple[Channel, str, bytes]], pace: float | None) -> dict[str, float]:
    """Send each item with the producer and to the topic `route` gives its channel, keyed by its id, at once or
    `pace` seconds apart; returns id -> send time (s). Starts and stops `producers`."""
    for producer in producers.values():
        await producer.start()
    sent: dict[str, float] = {}
    try:
        started = time.monotonic()
        deliveries = []
        for i, (channel, referral_id, value) in enumerate(items):
            if pace:
                await asyncio.sleep(max(0.0, started + i * pace - time.monotonic()))
            producer, topic = route(channel)
            sent[referral_id] = time.time()
            deliveries.append(await producer.send(topic, value, key=referral_id.encode()))
        await asyncio.gather(*deliveries)
    finally:
        for producer in producers.values():
            await producer.stop()
    return sent


@asynccontextmanager
async def reading(kafka: KafkaConnection, names: list[str]) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of `names` from the start, as a referrer reads (committed records only)."""
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [tp for name in names for tp in await partitions_of(kafka, name)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def collect(kafka: KafkaConnection, names: list[str], done: Callable[[ConsumerRecord], str | None],
                  wanted: set[str], timeout_s: float) -> dict[str, int]:
    """Read `names` from the start until every id in `wanted` is seen (`done` maps a record to an id or None);
    returns id -> when it became visible here (epoch ms). Not the record's timestamp: a transaction's records carry
    the time they were sent, and are visible only once it commits."""
    seen: dict[str, int] = {}
    async with reading(kafka, names) as consumer:
        deadline = time.monotonic() + timeout_s
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    found = done(record)
                    if found in wanted:
                        seen.setdefault(found, int(time.time() * 1000))
    return seen


async def keys_in(kafka: KafkaConnection, name: str) -> Counter[bytes]:
    """How many committed records of each key `name` holds, read to its end (as it is when called)."""
    counted: Counter[bytes] = Counter()
    async with reading(kafka, [name]) as consumer:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                counted.update(record.key for record in records)
    return counted


def handed_over(record: ConsumerRecord) -> str | None:
    event = json.loads(record.value)
    return event["referrer_referral_id"] if event.get("status") == "handed-over" else None


async def hub_round(broker: TestKafka, items: list[tuple[Channel, str, bytes]], pace: float | None = None) -> Round:
    """Referrals through the hub, published at once or `pace` seconds apart; id -> sent (s), id -> handed over
    (ms)."""
    watching = asyncio.create_task(collect(broker.admin, [topics.status(c) for c in Channel], handed_over,
                                           {referral_id for _, referral_id, _ in items}, 600))
    sent = await publish_all(broker, items, pace)
    return Round(sent, await watching)


async def passthrough(broker: TestKafka, items: list[tuple[Channel, str, bytes]], *, transactional: bool = False,
                      librdkafka: bool = False, pace: float | None = None) -> Round:
    """The same payloads over three raw hops, each: getmany, send the batch, commit its offsets. Plainly (flush,
    then commit), or, `transactional`, as the hub commits: the batch's records and offsets in one transaction,
    read `read_committed` (but one producer per hop, no state, no work), or so with confluent-kafka's clients,
    `librdkafka`. Returns id -> sent (s), id -> seen at the end (ms), and how many ids are there other than once."""
    kafka = broker.admin
    run = uuid.uuid4().hex[:8]
    names = [f"bench.{run}.hop{i}" for i in range(HOPS + 1)]
    provision_topics(kafka, [TopicSpec(name, broker.settings().partitions, broker.settings().replication, {})
                             for name in names])
    stop = threading.Event()  # every hop's end, at a batch's boundary: no transaction left open

    async def hop(source: str, target: str, group: str) -> None:
        options = kafka.consumer_options() if transactional else kafka.client_options()
        consumer = AIOKafkaConsumer(source, **options, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=broker.settings().fetch_wait_ms)
        producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING,
                                    **({"transactional_id": group, "retry_backoff_ms": RETRY_BACKOFF_MS}
                                       if transactional else {}))
        await consumer.start()
        await producer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=int(POLL_S * 1000), max_records=BATCH_RECORDS)
                if not batches:
                    continue
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                if transactional:
                    await producer.begin_transaction()
                for records in batches.values():
                    for record in records:
                        await producer.send(target, record.value, key=record.key)
                if transactional:
                    await producer.send_offsets_to_transaction(offsets, group)
                    await producer.commit_transaction()
                else:
                    await producer.flush()
                    await consumer.commit(offsets)
        finally:
            await producer.stop()
            await consumer.stop()

    def librdkafka_hop(source: str, target: str, group: str) -> None:
        """The transactional hop with librdkafka's clients (KIP-447: the offsets go with the consumer's group
        metadata), configured as the aiokafka one; its calls block, so it runs in a thread of its own."""
        consumer = Consumer({**kafka.librdkafka(), "group.id": group, "isolation.level": "read_committed",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": broker.settings().fetch_wait_ms})
        producer = Producer({**kafka.librdkafka(), "transactional.id": group, "linger.ms": SENDING["linger_ms"],
                             "batch.size": SENDING["max_batch_size"], "retry.backoff.ms": RETRY_BACKOFF_MS})
        try:
            producer.init_transactions()
            consumer.subscribe([source])
            while not stop.is_set():
                first = consumer.poll(POLL_S)  # consume() would wait for a full batch (or POLL_S): getmany does not
                if first is None:
                    continue
                records = [first, *consumer.consume(BATCH_RECORDS - 1, timeout=0)]
                producer.begin_transaction()
                for record in records:
                    if record.error():
                        raise KafkaException(record.error())
                    producer.produce(target, record.value(), record.key())
                offsets = {(record.topic(), record.partition()): record.offset() + 1 for record in records}
                producer.send_offsets_to_transaction([TopicPartition(*tp, offset) for tp, offset in offsets.items()],
                                                     consumer.consumer_group_metadata())
                producer.commit_transaction()
        finally:
            consumer.close()

    hopping = partial(asyncio.to_thread, librdkafka_hop) if librdkafka else hop
    hops = [asyncio.create_task(hopping(names[i], names[i + 1], f"bench-{run}-{names[i]}")) for i in range(HOPS)]
    await asyncio.sleep(3)  # the three groups joined
    watching = asyncio.create_task(collect(kafka, [names[-1]], lambda r: r.key.decode(), {r for _, r, _ in items},
                                           600))
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING)
    sent = await publish({"": producer}, lambda channel: (producer, names[0]), items, pace)
    seen = await watching
    stop.set()
    await asyncio.gather(*hops)  # a hop's error, if any: its figures would mean nothing
    counted = await keys_in(kafka, names[-1])
    return Round(sent, seen, sum(counted[referral_id.encode()] != 1 for referral_id in sent))


def delays(round_: Round) -> list[float]:
    """Seconds from each id's send to its sight at the end, sorted."""
    return sorted(round_.seen[r] / 1000 - round_.sent[r] for r in round_.seen)


def arrived(round_: Round, of: int) -> str:
    """How many ids were seen at the end, and, of a passthrough, whether each is there exactly once."""
    once = ("" if round_.not_once is None else ", each once" if not round_.not_once
            else f", {round_.not_once} not exactly once")
    return f"{len(round_.seen)} of {of}{once}"


def cpu_s(pid: int) -> float:
    """The CPU time a process has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of named processes over a stretch of the run."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.start = self.now()

    def now(self) -> dict[str, float]:
        return {name: sum(cpu_s(pid) for pid in pids) for name, pids in self.pids.items()}

    def used(self) -> dict[str, float]:
        return {name: seconds - self.start[name] for name, seconds in self.now().items()}


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def per_second(round_: Round) -> float:
    """Ids seen per second, from the first send to the last sight."""
    sent, seen = round_.sent, round_.seen
    return len(seen) / (max(seen.values()) / 1000 - min(sent.values())) if seen else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--brokers", type=int, default=1, choices=(1, 3))
    parser.add_argument("--baselines-only", action="store_true",
                        help="only the passthroughs, no hub started: the machine and broker without the hub beside")
    args = parser.parse_args()
    configure_logging("bench", "WARNING")
    directory = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    run = uuid.uuid4().hex[:8]
    items, paced = referrals(args.count, run), referrals(int(args.rate * args.seconds), run + "-paced")
    rounds = {  # name -> a round over the broker, in this order
        "hub": lambda broker: hub_round(broker, items),
        "raw": lambda broker: passthrough(broker, items),
        "rdkafka": lambda broker: passthrough(broker, items, librdkafka=True),
        "hub paced": lambda broker: hub_round(broker, paced, 1 / args.rate),
        "raw paced": lambda broker: passthrough(broker, paced, pace=1 / args.rate),
        "txn paced": lambda broker: passthrough(broker, paced, transactional=True, pace=1 / args.rate),
        "rdkafka paced": lambda broker: passthrough(broker, paced, librdkafka=True, pace=1 / args.rate),
    }
    if args.baselines_only:
        rounds = {name: round_ for name, round_ in rounds.items() if not name.startswith("hub")}
    results, cpu = {}, {}
    with new_broker(directory / "kafka", brokers=args.brokers) as broker:
        processes = {} if args.baselines_only else {
            name: start_hub(broker, directory / f"{name}.log", name) for name in SERVICES}
        try:
            warm = referrals(args.count, run + "-warm")
            if processes:
                asyncio.run(hub_round(broker, warm))
            asyncio.run(passthrough(broker, warm))
            asyncio.run(passthrough(broker, warm, librdkafka=True))
            pids = {"hub": [process.pid for process in processes.values()],
                    "broker": [node.pid() for node in broker.local.nodes]}
            for name, round_ in rounds.items():
                meter = CpuMeter(pids)
                results[name] = asyncio.run(round_(broker))
                cpu[name] = {who: seconds / max(1, len(results[name].seen)) * 1000
                             for who, seconds in meter.used().items()}
            memory = {name: rss_mib(process.pid) for name, process in processes.items()}
        finally:
            for process in processes.values():
                stop_hub(process)
    baselines = {"raw": f"raw aiokafka, {HOPS} batched hops", "rdkafka": f"librdkafka transactional, {HOPS} hops"}
    rates = {name: per_second(results[name]) for name in baselines}
    print(f"{args.count} referrals over {len(Channel)} channels, {args.brokers} secured local Kafka 4.1.1 "
          f"broker(s), {broker.settings().partitions} partitions, acks=all; " + (
              "no hub started" if args.baselines_only else "intake, routing, notifier as three processes"))
    if "hub" in results:
        hub = per_second(results["hub"])
        print(f"  hub, publish -> handed-over        {hub:8.1f} referrals/s;  CPU per referral: hub's processes "
              f"{cpu['hub']['hub']:.2f} ms, broker {cpu['hub']['broker']:.2f} ms")
    for name, label in baselines.items():
        print(f"  {label:34s} {rates[name]:8.1f} messages/s;   CPU per message: broker {cpu[name]['broker']:.2f} ms "
              f"(the passthrough's own process not counted; {arrived(results[name], len(items))})")
    if "hub" in results:
        for name, label in (("raw", "raw passthrough"), ("rdkafka", "librdkafka passthrough")):
            print(f"  {'ratio hub / ' + label:34s} {hub / rates[name]:8.3f}")
    print(f"  at {args.rate:g}/s for {args.seconds:g} s, publish -> last hop:")
    for name, label in (("hub paced", "hub (handed-over)"), ("raw paced", "raw passthrough"),
                        ("txn paced", "transactional, aiokafka"), ("rdkafka paced", "transactional, librdkafka")):
        if name not in results:
            continue
        taken = delays(results[name])
        print(f"    {label:27s} p50 {percentile(taken, 50) * 1000:5.0f} ms, p99 {percentile(taken, 99) * 1000:5.0f} "
              f"ms ({arrived(results[name], len(paced))}); CPU per referral: broker {cpu[name]['broker']:.2f} ms"
              + (f", hub's processes {cpu[name]['hub']:.2f} ms" if name == "hub paced" else ""))
    if memory:
        print("  resident memory: " + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in memory.items()))
    print(f"  logs: {directory}")


if __name__ == "__main__":
    main()
