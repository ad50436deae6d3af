"""End to end: referrals/s from publish to `handed-over` over all five channels, against a raw aiokafka baseline.

    PYTHONPATH=. .venv/bin/python -m bench.e2e [--count 2000] [--rate 100] [--seconds 20] [--brokers 1|3]
                                               [--baselines-only]

On one (or a 3-node) secured local Kafka it starts intake, routing and notifier as three processes (so the
machine's cores are used), then
0. warms up: the same rounds as 1 and 2 below, untimed (a fresh broker's JVM compiles its code for the first
   thousands of transactions, using a core of this 2-core machine: what is measured first would pay for it);
1. throughput: publishes `count` valid referrals at once, spread over the channels as their referrers, and
   times the first send to the last `handed-over` status a referrer sees (read_committed);
2. the same payloads through a raw batched aiokafka passthrough of three hops (consume a batch, produce it,
   commit; like intake -> routing -> notifier, without the work) on the same broker, same run: the ratio;
3. latency: publishes at a fixed `rate` for `seconds` and reports p50/p99 from publish to `handed-over`; and
   the same paced payloads through the raw passthrough, and through a transactional one (each hop's batch and
   offsets in one transaction, read `read_committed`, as the hub commits, but one producer per hop, no state and
   no work): what Kafka transactions alone cost on this broker;
4. the resident memory of each service process;
and the CPU time per referral (per message) of the hub's processes and of the broker(s) in each round.
`--baselines-only` runs the passthroughs without starting the hub: the machine and broker with nothing beside.
Nothing here is asserted: it prints figures.
"""

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from schemas.referral import Channel
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.logging import configure_logging
from services.infra.processing import RETRY_BACKOFF_MS
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


async def collect(kafka: KafkaConnection, names: list[str], done: Callable[[ConsumerRecord], str | None],
                  wanted: set[str], timeout_s: float) -> dict[str, int]:
    """Read `names` from the start, as a referrer does (committed records only), until every id in `wanted` is seen
    (`done` maps a record to an id or None); returns id -> when it became visible here (epoch ms). Not the record's
    timestamp: a transaction's records carry the time they were sent, and are visible only once it commits."""
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, int] = {}
    try:
        partitions = [tp for name in names for tp in await partitions_of(kafka, name)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    found = done(record)
                    if found in wanted:
                        seen.setdefault(found, int(time.time() * 1000))
    finally:
        await consumer.stop()
    return seen


def handed_over(record: ConsumerRecord) -> str | None:
    event = json.loads(record.value)
    return event["referrer_referral_id"] if event.get("status") == "handed-over" else None


async def hub_round(broker: TestKafka, items: list[tuple[Channel, str, bytes]],
                    pace: float | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Referrals through the hub, published at once or `pace` seconds apart; id -> sent (s), id -> handed over
    (ms)."""
    watching = asyncio.create_task(collect(broker.admin, [topics.status(c) for c in Channel], handed_over,
                                           {referral_id for _, referral_id, _ in items}, 600))
    sent = await publish_all(broker, items, pace)
    return sent, await watching


async def passthrough(broker: TestKafka, items: list[tuple[Channel, str, bytes]], *, transactional: bool = False,
                      pace: float | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """The same payloads over three raw hops, each: getmany, send the batch, commit its offsets. Plainly (flush,
    then commit), or, `transactional`, as the hub commits: the batch's records and offsets in one transaction,
    read `read_committed` (but one producer per hop, no state, no work). Returns id -> sent (s), id -> seen at
    the end (ms)."""
    kafka = broker.admin
    run = uuid.uuid4().hex[:8]
    names = [f"bench.{run}.hop{i}" for i in range(HOPS + 1)]
    provision_topics(kafka, [TopicSpec(name, broker.settings().partitions, broker.settings().replication, {})
                             for name in names])

    async def hop(source: str, target: str) -> None:
        group = f"bench-{run}-{source}"
        reading = kafka.consumer_options() if transactional else kafka.client_options()
        consumer = AIOKafkaConsumer(source, **reading, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=broker.settings().fetch_wait_ms)
        producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING,
                                    **({"transactional_id": group, "retry_backoff_ms": RETRY_BACKOFF_MS}
                                       if transactional else {}))
        await consumer.start()
        await producer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
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

    hops = [asyncio.create_task(hop(names[i], names[i + 1])) for i in range(HOPS)]
    await asyncio.sleep(3)  # the three groups joined
    watching = asyncio.create_task(collect(kafka, [names[-1]], lambda r: r.key.decode(), {r for _, r, _ in items},
                                           600))
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING)
    sent = await publish({"": producer}, lambda channel: (producer, names[0]), items, pace)
    seen = await watching
    for task in hops:
        task.cancel()
    await asyncio.gather(*hops, return_exceptions=True)
    return sent, seen


def delays(sent: dict[str, float], seen: dict[str, int]) -> list[float]:
    """Seconds from each id's send to its sight at the end, sorted."""
    return sorted(seen[r] / 1000 - sent[r] for r in seen)


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


def per_second(sent: dict[str, float], seen: dict[str, int]) -> float:
    """Ids seen per second, from the first send to the last sight."""
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
        "hub paced": lambda broker: hub_round(broker, paced, 1 / args.rate),
        "raw paced": lambda broker: passthrough(broker, paced, pace=1 / args.rate),
        "txn paced": lambda broker: passthrough(broker, paced, transactional=True, pace=1 / args.rate),
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
            pids = {"hub": [process.pid for process in processes.values()],
                    "broker": [node.pid() for node in broker.local.nodes]}
            for name, round_ in rounds.items():
                meter = CpuMeter(pids)
                results[name] = asyncio.run(round_(broker))
                cpu[name] = {who: seconds / max(1, len(results[name][1])) * 1000
                             for who, seconds in meter.used().items()}
            memory = {name: rss_mib(process.pid) for name, process in processes.items()}
        finally:
            for process in processes.values():
                stop_hub(process)
    raw = per_second(*results["raw"])
    print(f"{args.count} referrals over {len(Channel)} channels, {args.brokers} secured local Kafka 4.1.1 "
          f"broker(s), {broker.settings().partitions} partitions, acks=all; " + (
              "no hub started" if args.baselines_only else "intake, routing, notifier as three processes"))
    if "hub" in results:
        hub = per_second(*results["hub"])
        print(f"  hub, publish -> handed-over        {hub:8.1f} referrals/s;  CPU per referral: hub's processes "
              f"{cpu['hub']['hub']:.2f} ms, broker {cpu['hub']['broker']:.2f} ms")
    print(f"  raw aiokafka, {HOPS} batched hops      {raw:8.1f} messages/s;   CPU per message: broker "
          f"{cpu['raw']['broker']:.2f} ms (the passthrough's own process not counted)")
    if "hub" in results:
        print(f"  ratio hub / passthrough           {hub / raw:8.3f}")
    print(f"  at {args.rate:g}/s for {args.seconds:g} s, publish -> last hop:")
    for name, label in (("hub paced", "hub (handed-over)"), ("raw paced", "raw passthrough"),
                        ("txn paced", "transactional passthrough")):
        if name not in results:
            continue
        taken = delays(*results[name])
        print(f"    {label:27s} p50 {percentile(taken, 50) * 1000:5.0f} ms, p99 {percentile(taken, 99) * 1000:5.0f} "
              f"ms ({len(taken)} of {len(paced)}); CPU per referral: broker {cpu[name]['broker']:.2f} ms"
              + (f", hub's processes {cpu[name]['hub']:.2f} ms" if name == "hub paced" else ""))
    if memory:
        print("  resident memory: " + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in memory.items()))
    print(f"  logs: {directory}")


if __name__ == "__main__":
    main()
