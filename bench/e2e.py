"""End to end: referrals/s from publish to `handed-over` over all five channels, against a raw aiokafka baseline.

    PYTHONPATH=. .venv/bin/python -m bench.e2e [--count 2000] [--rate 100] [--seconds 20] [--brokers 1|3]

On one (or a 3-node) secured local Kafka it starts intake, routing and notifier as three processes (so the
machine's cores are used), then
0. warms up: the same rounds as 1 and 2 below, untimed (a fresh broker's JVM compiles its code for the first
   thousands of transactions, using a core of this 2-core machine: what is measured first would pay for it);
1. throughput: publishes `count` valid referrals at once, spread over the channels as their referrers, and
   times the first inbound record to the last `handed-over` status (broker timestamps);
2. the same payloads through a raw batched aiokafka passthrough of three hops (consume a batch, produce it,
   commit; like intake -> routing -> notifier, without the work) on the same broker, same run: the ratio;
3. latency: publishes at a fixed `rate` for `seconds` and reports p50/p99 from publish to `handed-over`;
4. the resident memory of each service process;
and, for 1 and 2, the CPU time per referral (per message) of the hub's processes and of the broker(s).
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
from services.infra import principals, topics
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
    """Publish as each channel's referrer; returns referral id -> send time (s). `pace`: seconds between sends."""
    producers = {c: AIOKafkaProducer(**broker.connection(principals.referrer(c)).client_options(), acks="all",
                                     enable_idempotence=True, **SENDING) for c in Channel}
    for producer in producers.values():
        await producer.start()
    sent: dict[str, float] = {}
    try:
        started = time.monotonic()
        deliveries = []
        for i, (channel, referral_id, value) in enumerate(items):
            if pace:
                await asyncio.sleep(max(0.0, started + i * pace - time.monotonic()))
            sent[referral_id] = time.time()
            deliveries.append(await producers[channel].send(topics.referrals(channel), value,
                                                            key=referral_id.encode()))
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


async def hub_throughput(broker: TestKafka, items: list[tuple[Channel, str, bytes]]) -> tuple[float, int]:
    watching = asyncio.create_task(collect(broker.admin, [topics.status(c) for c in Channel], handed_over,
                                           {referral_id for _, referral_id, _ in items}, 600))
    sent = await publish_all(broker, items)
    first_sent = min(sent.values())
    seen = await watching
    return (max(seen.values()) / 1000 - first_sent) if seen else float("inf"), len(seen)


async def passthrough(broker: TestKafka, items: list[tuple[Channel, str, bytes]]) -> float:
    """The same payloads over three raw hops, each: getmany, send the batch, flush, commit."""
    kafka = broker.admin
    run = uuid.uuid4().hex[:8]
    names = [f"bench.{run}.hop{i}" for i in range(HOPS + 1)]
    provision_topics(kafka, [TopicSpec(name, 6, broker.settings().replication, {}) for name in names])

    async def hop(source: str, target: str) -> None:
        consumer = AIOKafkaConsumer(source, **kafka.client_options(), group_id=f"bench-{run}-{source}",
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING)
        await consumer.start()
        await producer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    for record in records:
                        await producer.send(target, record.value, key=record.key)
                await producer.flush()
                if batches:
                    await consumer.commit()
        finally:
            await producer.stop()
            await consumer.stop()

    hops = [asyncio.create_task(hop(names[i], names[i + 1])) for i in range(HOPS)]
    await asyncio.sleep(3)  # the three groups joined
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True, **SENDING)
    await producer.start()
    started = time.time()
    await asyncio.gather(*[await producer.send(names[0], value, key=referral_id.encode())
                           for _, referral_id, value in items])
    await producer.stop()
    seen = await collect(kafka, [names[-1]], lambda r: r.key.decode(), {r for _, r, _ in items}, 600)
    for task in hops:
        task.cancel()
    await asyncio.gather(*hops, return_exceptions=True)
    return max(seen.values()) / 1000 - started


async def latency(broker: TestKafka, rate: float, seconds: float, run: str) -> list[float]:
    items = referrals(int(rate * seconds), run)
    watching = asyncio.create_task(collect(broker.admin, [topics.status(c) for c in Channel], handed_over,
                                           {referral_id for _, referral_id, _ in items}, 300))
    sent = await publish_all(broker, items, pace=1 / rate)
    seen = await watching
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--brokers", type=int, default=1, choices=(1, 3))
    args = parser.parse_args()
    configure_logging("bench", "WARNING")
    directory = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    with new_broker(directory / "kafka", brokers=args.brokers) as broker:
        processes = {name: start_hub(broker, directory / f"{name}.log", name) for name in SERVICES}
        try:
            run = uuid.uuid4().hex[:8]
            warm = referrals(args.count, run + "-warm")
            asyncio.run(hub_throughput(broker, warm))
            asyncio.run(passthrough(broker, warm))
            items = referrals(args.count, run)
            brokers = [node.pid() for node in broker.local.nodes]
            pids = {"hub": [process.pid for process in processes.values()], "broker": brokers}
            meter = CpuMeter(pids)
            hub_s, done = asyncio.run(hub_throughput(broker, items))
            hub_cpu = meter.used()
            meter = CpuMeter(pids)
            raw_s = asyncio.run(passthrough(broker, items))
            raw_cpu = meter.used()
            meter = CpuMeter(pids)
            delays = asyncio.run(latency(broker, args.rate, args.seconds, run + "-lat"))
            latency_cpu = meter.used()
            memory = {name: rss_mib(process.pid) for name, process in processes.items()}
        finally:
            for process in processes.values():
                stop_hub(process)
    print(f"{args.count} referrals over {len(Channel)} channels, {args.brokers} secured local Kafka 4.1.1 "
          f"broker(s), {broker.settings().partitions} partitions, acks=all; intake, routing, notifier as three processes")
    print(f"  hub, publish -> handed-over        {done / hub_s:8.1f} referrals/s  ({done} in {hub_s:.2f} s)")
    print(f"  raw aiokafka, {HOPS} batched hops      {args.count / raw_s:8.1f} messages/s  ({raw_s:.2f} s)")
    print(f"  ratio hub / passthrough           {(done / hub_s) / (args.count / raw_s):8.3f}")
    print(f"  CPU per referral: hub's processes {hub_cpu['hub'] / done * 1000:.2f} ms, broker "
          f"{hub_cpu['broker'] / done * 1000:.2f} ms; per passthrough message: broker "
          f"{raw_cpu['broker'] / args.count * 1000:.2f} ms (the passthrough's own process not counted)")
    if delays:
        print(f"  at {args.rate:g}/s for {args.seconds:g} s: p50 {percentile(delays, 50) * 1000:.0f} ms, "
              f"p99 {percentile(delays, 99) * 1000:.0f} ms ({len(delays)} handed over); CPU per referral: hub's "
              f"processes {latency_cpu['hub'] / len(delays) * 1000:.2f} ms, broker "
              f"{latency_cpu['broker'] / len(delays) * 1000:.2f} ms")
    print("  resident memory: " + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in memory.items()))
    print(f"  logs: {directory}")


if __name__ == "__main__":
    main()
