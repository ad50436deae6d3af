"""Every outbound record fits, or is refused once (issue 19), on a real secured broker of this module's own.

The measured case: a specialist REF^I12 of ~700 KB whose NTE is a run of `"` (under the 1 MiB inbound limit, but
twice that once JSON-escaped) got `received` and then nothing, and stalled its partition. Now it is refused at the
field (TOO_LONG), over MLLP and through `verwijshub send`, as is a GP referral with 200,000 non-ASCII letters; every
valid referral after them, on every partition, is handed over, and nothing retries for ever. And the runtime: a
core whose output its topic cannot take has that input dead-lettered (OUTPUT_TOO_LARGE), whether the runtime sees it
before sending or the broker refuses it."""

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from aiokafka.partitioner import murmur2

from schemas.referral import Channel, hub_referral_id
from services.infra import topics
from services.infra.kafka import Outbound, outbound
from services.infra.processing import Processor, Runtime
from services.infra.provisioning import TopicSpec, provision_topics
from services.infra.pseudonym import youth_pseudonym
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka, _free_port, start_hub, stop_hub
from tests.gateway_clients import mllp_send
from tests.kafka_client import produce, read_topic
from tests.referrals import PLAIN_MLLP, channel_bytes, gp_bundle, random_bsn

pytestmark = pytest.mark.e2e
PARTITIONS = 6
SPECIALIST_AGB, GP_AGB = "01098765", "01012345"
NTE = "Angstklachten na ziekenhuisopname; kinderpsychiater adviseert begeleiding."


def partition_of(key: str) -> int:
    """The partition a key lands in (the Java and aiokafka default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


class Hub:
    def __init__(self, kafka: TestKafka, mllp_port: int, metrics_port: int, log_file: Path) -> None:
        self.kafka, self.mllp_port, self.metrics_port, self.log_file = kafka, mllp_port, metrics_port, log_file
        self.pseudonym_key = kafka.settings().youth_pseudonym_key()

    def records(self, topic: str, wanted, count: int, settle_s: float = 0.0) -> list[ConsumerRecord]:
        return asyncio.run(read_topic(self.kafka.admin, topic, wanted, count, timeout_s=120, settle_s=settle_s))

    def statuses(self, channel: Channel, referrer_referral_id: str, count: int, settle_s: float = 0.0) -> list[dict]:
        return [json.loads(r.value) for r in self.records(
            topics.status(channel), lambda r: r.key == referrer_referral_id.encode(), count, settle_s)]

    def send(self, channel: Channel, raw: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
        """`verwijshub send` as the referrer would run it."""
        file = tmp_path / f"{uuid.uuid4().hex}.msg"
        file.write_bytes(raw)
        return subprocess.run([sys.executable, "-m", "services.cli", "send", "--channel", channel.value, str(file)],
                              env={**os.environ, **self.kafka.env()}, capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=120)

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture(scope="module")
def hub(private_kafka: TestKafka):
    directory = ARTIFACTS / "large-records"
    directory.mkdir(parents=True, exist_ok=True)
    mllp_port, metrics_port, log_file = _free_port(), _free_port(), directory / "hub.log"
    log_file.unlink(missing_ok=True)
    process = start_hub(private_kafka, log_file, "intake", "routing", "notifier", "gateway",
                        env={"VERWIJSHUB_MLLP_PORT": str(mllp_port), "VERWIJSHUB_METRICS_PORT": str(metrics_port),
                             **PLAIN_MLLP})
    try:
        yield Hub(private_kafka, mllp_port, metrics_port, log_file)
    finally:
        stop_hub(process)


def quotes_specialist(referral_id: str) -> bytes:
    raw = channel_bytes("specialist", referral_id).decode()
    assert NTE in raw
    return raw.replace(NTE, '"' * 700_000).encode()


def test_the_big_ones_are_refused_too_long_and_every_valid_referral_after_them_is_handed_over(
        hub: Hub, tmp_path: Path) -> None:
    # 1. Over MLLP: the gateway's check is intake's adapter, so it answers AE at once and writes nothing.
    mllp_file = tmp_path / "quotes.hl7"
    mllp_file.write_bytes(quotes_specialist(f"UMCG-BIG-{uuid.uuid4().hex[:8]}"))
    assert 650_000 < mllp_file.stat().st_size < 1024 * 1024
    (ack,) = mllp_send(hub.mllp_port, mllp_file)
    assert ack.code == "AE"
    assert {(err[5].split("^")[0], err[7]) for err in ack.segment("ERR")} == {("TOO_LONG", "NTE-3")}

    # 2. Through `verwijshub send`, which writes what it is given: intake refuses it, the referrer is told.
    specialist_id, gp_id = f"UMCG-BIG-{uuid.uuid4().hex[:8]}", f"ZD-BIG-{uuid.uuid4().hex[:8]}"
    sent = hub.send(Channel.SPECIALIST, quotes_specialist(specialist_id), tmp_path)
    assert sent.returncode == 0, sent.stderr
    letters = json.dumps(gp_bundle(referral_id=gp_id, bsn=random_bsn(), note="ë" * 200_000),
                         ensure_ascii=False).encode()
    assert 400_000 < len(letters) < 1024 * 1024
    sent = hub.send(Channel.GP, letters, tmp_path)
    assert sent.returncode == 0, sent.stderr

    # 3. Then valid referrals on every partition: of the inbound topics (keyed by the referral id) and of
    # routing and notifier (keyed by the youth pseudonym), each partition number at least once.
    valid: list[tuple[Channel, str, str]] = []  # channel, referrer's id, hub id
    for channel, agb in ((Channel.SPECIALIST, SPECIALIST_AGB), (Channel.GP, GP_AGB)):
        for partition in range(PARTITIONS):
            referral_id = next(rid for rid in (f"VALID-{uuid.uuid4().hex[:10]}" for _ in range(1000))
                               if partition_of(rid) == partition)
            bsn = next(b for b in (random_bsn() for _ in range(1000))
                       if partition_of(youth_pseudonym(b, hub.pseudonym_key)) == (partition + 3) % PARTITIONS)
            asyncio.run(produce(hub.kafka.admin, topics.referrals(channel), channel_bytes(channel.value, referral_id,
                                                                                          bsn=bsn),
                                key=referral_id.encode(), headers=[("channel", channel.value.encode())]))
            valid.append((channel, referral_id, hub_referral_id(channel, agb, referral_id)))
    assert {partition_of(rid) for _, rid, _ in valid} == set(range(PARTITIONS))

    # The big ones: a final, coded answer: rejected, TOO_LONG at the field, dead-lettered.
    for channel, referral_id, location in ((Channel.SPECIALIST, specialist_id, "NTE-3"),
                                           (Channel.GP, gp_id, "ServiceRequest.note")):
        (status,) = hub.statuses(channel, referral_id, 1, settle_s=2.0)
        assert status["status"] == "rejected"
        assert [(e["code"], e["location"]) for e in status["errors"]] == [("TOO_LONG", location)]
        (letter,) = hub.records(topics.DEAD_LETTERS, lambda r, rid=referral_id: r.key == rid.encode(), 1)
        assert json.loads(dict(letter.headers)["errors"])[0]["code"] == "TOO_LONG"

    # Every valid one: handed over (the routing decisions spread over every youth partition).
    for channel, referral_id, hub_id in valid:
        statuses = hub.statuses(channel, referral_id, 3)
        assert [s["status"] for s in statuses][:3] == ["received", "routed", "handed-over"], (referral_id, statuses)
    decisions = hub.records(topics.DECISIONS, lambda r: json.loads(r.value)["referral_id"] in {
        hub_id for _, _, hub_id in valid}, len(valid))
    assert {r.partition for r in decisions} == set(range(PARTITIONS))

    # Nothing retried for ever: ready, and no transaction was aborted for a size.
    assert hub.ready() == 200
    log = hub.log_file.read_text(errors="replace")
    assert "MessageSizeTooLarge" not in log and "RecordListTooLarge" not in log and "too large" not in log
    aborted = [line for line in log.splitlines() if '"transaction aborted: retried"' in line]
    assert len(aborted) <= 2, aborted  # a start's rebalance may abort one; a record retried for ever, hundreds


class Oversized(Processor):
    """Echoes each input to `<run>.out`; `huge` gives 2 MiB (the runtime sees it before sending), `wide` 50 KB to
    `<run>.narrow`, a topic set to take 20 KB (only the broker knows: its refusal names it). A refused record's
    sender is told on `<run>.told`."""

    service = "size-test"

    def __init__(self, run: str) -> None:
        self.run = run

    async def handle(self, record: ConsumerRecord) -> list[Outbound]:
        value = record.value or b""
        if value == b"huge":
            return [outbound(f"{self.run}.out", b"h" * (2 * 1024 * 1024), record.key, schema="test/1")]
        if value == b"wide":
            return [outbound(f"{self.run}.narrow", b"w" * 50_000, record.key, schema="test/1")]
        return [outbound(f"{self.run}.out", value, record.key, schema="test/1")]

    def refused(self, record: ConsumerRecord, errors) -> list[Outbound]:
        return [outbound(f"{self.run}.told", json.dumps([e.code.value for e in errors]).encode(), record.key,
                         schema="test/1")]


async def test_a_cores_output_too_large_for_its_topic_is_dead_lettered_with_its_code_not_retried(
        hub: Hub) -> None:
    kafka, run = hub.kafka, f"size-{uuid.uuid4().hex[:8]}"
    provision_topics(kafka.admin, [TopicSpec(f"{run}.{name}", 3, 1, config) for name, config in (
        ("in", {}), ("out", {}), ("told", {}), ("narrow", {"max.message.bytes": "20000"}))])
    for value in (b"a1", b"huge", b"a2", b"wide", b"a3"):
        await produce(kafka.admin, f"{run}.in", value, key=b"youth-a")
    processor = Oversized(run)
    processor.inputs = rf"{run}\.in"
    runtime = Runtime(processor, kafka.settings(), kafka=kafka.admin)
    await runtime.start()
    try:
        outputs = await read_topic(kafka.admin, f"{run}.out", lambda r: True, 3, timeout_s=90, settle_s=1)
        healthy = runtime.healthy()
    finally:
        await runtime.stop()
    assert [r.value for r in outputs] == [b"a1", b"a2", b"a3"]  # the partition moved on, in order
    assert healthy
    letters = await read_topic(kafka.admin, topics.DEAD_LETTERS,
                               lambda r: dict(r.headers).get("origin-topic") == f"{run}.in".encode(), 2, timeout_s=30)
    assert {r.value: json.loads(dict(r.headers)["errors"])[0]["code"] for r in letters} == {
        b"huge": "OUTPUT_TOO_LARGE", b"wide": "OUTPUT_TOO_LARGE"}
    told = await read_topic(kafka.admin, f"{run}.told", lambda r: True, 2, timeout_s=30, settle_s=1)
    assert [json.loads(r.value) for r in told] == [["OUTPUT_TOO_LARGE"], ["OUTPUT_TOO_LARGE"]]
    narrow = await read_topic(kafka.admin, f"{run}.narrow", lambda r: True, 1, timeout_s=3)
    assert narrow == []  # the aborted transaction's record is not visible to read_committed
