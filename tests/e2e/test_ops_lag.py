"""Operations on a real broker of its own: `verwijshub lag` counts what routing has not consumed, agrees
with Kafka's own ConsumerGroupCommand, goes back to 0 and OK when routing returns, sees a stalled and a
stopped consumer; the services' metrics endpoints count what happened; the status page shows it; a WIJ team
that stops reading its handovers shows its oldest unread one ageing, LATE, AT RISK OF LOSS on a topic with a short
retention, and OK again when it reads. The tests share one intake and one routing with notifier (`hubs`), started
by the first test that needs them and left running: each test starts what it needs only if it is not running."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.referral import Channel
from services.access.commands import ConfigFormat, client_config_text
from services.infra import principals, topics
from services.infra.clock import FileClock
from services.infra.local_kafka import resolve_classpath
from services.infra.provisioning import DAY_MS, TopicSpec, provision_topics, topic_config
from services.infra.settings import REPO_ROOT
from services.ops.lag import LagMonitor
from services.ops.recipients import AT_RISK_OF_LOSS
from tests.conftest import ARTIFACTS, TestKafka, _free_port, start_hub, stop_hub
from tests.kafka_client import header, produce, read_topic
from tests.referrals import gp_bytes, random_bsn
from tests.system_tools import require

pytestmark = pytest.mark.e2e
ROUTING_GROUP = "verwijshub-routing"
NOTIFIER_GROUP = "verwijshub-notifier"
INVALID_BSN = "123456789"
N = 7


def lag_document(kafka: TestKafka, *args: str, env: dict[str, str] | None = None, samples: int = 3) -> dict:
    """`verwijshub lag --json` as an operator runs it (as the operations principal); `samples` 1 where only the
    recipients matter (they are judged on one look)."""
    result = subprocess.run([sys.executable, "-m", "services.cli", "lag", "--json", "--samples", str(samples),
                             "--interval", "0.3", *args], env={**os.environ, **kafka.env(), **(env or {})},
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def lag_json(kafka: TestKafka, *args: str) -> dict[str, dict]:
    """`verwijshub lag --json`'s groups by name."""
    return {group["group"]: group for group in lag_document(kafka, *args)["groups"]}


def kafka_tool(kafka: TestKafka, group: str, config: Path) -> dict[tuple[str, int], tuple[int, int, int]]:
    """Kafka's own view, as the operations principal: (topic, partition) -> (current offset, log end offset, lag)."""
    cache = Path(os.environ.get("VERWIJSHUB_CACHE_DIR", Path.home() / ".cache" / "verwijshub"))
    config.write_text(client_config_text(kafka.connection(principals.OPERATIONS), ConfigFormat.JAVA))
    out = subprocess.run(["java", "-cp", resolve_classpath(cache),
                          "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server",
                          kafka.bootstrap, "--command-config", str(config), "--describe", "--group", group],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == group and cells[3].isdigit():
            rows[(cells[1], int(cells[2]))] = (int(cells[3]), int(cells[4]), int(cells[5]))
    return rows


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def caught_up(kafka: TestKafka, *groups: str, timeout_s: float = 90.0) -> None:
    """Until each group has committed offsets and its lag is 0, looked at in-process every 0.2 s as `lag` looks
    (LagMonitor, as the operations principal): a wait for the event, not a sleep; the assertions on it go through
    `verwijshub lag` itself."""
    monitor = LagMonitor(kafka.connection(principals.OPERATIONS), groups=set(groups))
    await monitor.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = {g.group: g for g in await monitor.sample()}
            if all(g in found and found[g].partitions and found[g].lag == 0 for g in groups):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{groups} not caught up in {timeout_s:.0f} s")
    finally:
        await monitor.stop()


class Hubs:
    """The module's intake and routing with notifier, as two processes with known metrics ports."""

    def __init__(self, kafka: TestKafka, directory: Path) -> None:
        self.kafka, self.directory = kafka, directory
        self.intake_port, self.routing_port = _free_port(), _free_port()
        self.intake: subprocess.Popen[bytes] | None = None
        self.routing: subprocess.Popen[bytes] | None = None

    def start_intake(self) -> None:
        if self.intake is None or self.intake.poll() is not None:
            self.intake = start_hub(self.kafka, self.directory / "intake.log", "intake",
                                    env={"VERWIJSHUB_METRICS_PORT": str(self.intake_port)})

    def start_routing(self) -> None:
        if self.routing is None or self.routing.poll() is not None:
            self.routing = start_hub(self.kafka, self.directory / "routing.log", "routing", "notifier",
                                     env={"VERWIJSHUB_METRICS_PORT": str(self.routing_port)})

    def stop_routing(self) -> None:
        if self.routing is not None and self.routing.poll() is None:
            stop_hub(self.routing)

    def stop(self) -> None:
        for process in (self.intake, self.routing):
            if process is not None and process.poll() is None:
                stop_hub(process)


@pytest.fixture(scope="module")
def ops(private_kafka: TestKafka):
    directory = ARTIFACTS / "ops"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.log"):
        old.unlink()
    return private_kafka, directory


@pytest.fixture(scope="module")
def hubs(ops) -> Hubs:
    running = Hubs(*ops)
    yield running
    running.stop()


async def test_lag_of_a_stopped_routing_agrees_with_kafka_and_returns_to_ok(ops, hubs: Hubs) -> None:
    kafka, directory = ops
    gp = kafka.admin
    intake_port, routing_port = hubs.intake_port, hubs.routing_port
    hubs.start_intake()
    hubs.start_routing()
    await produce(gp, topics.referrals(Channel.GP), gp_bytes(referral_id="OPS-0", bsn=random_bsn()))
    await read_topic(kafka.admin, topics.DECISIONS, lambda r: True, 1)
    await caught_up(kafka, ROUTING_GROUP, NOTIFIER_GROUP)  # both have committed their first offsets
    status, routing_metrics = get(f"http://127.0.0.1:{routing_port}/metrics")
    ours = "\n".join(line for line in routing_metrics.splitlines() if line.startswith("verwijshub_"))
    assert status == 200 and metric(routing_metrics, "verwijshub_decisions_total", rule="basis-jeugdhulp",
                                    recipient_kind="wij-team") == 1, ours
    assert metric(routing_metrics, "verwijshub_handovers_total", recipient_kind="wij-team") == 1
    assert metric(routing_metrics, "verwijshub_contact_clocks", state="open") == 1
    hubs.stop_routing()

    for i in range(1, N + 1):
        await produce(gp, topics.referrals(Channel.GP), gp_bytes(referral_id=f"OPS-{i}", bsn=random_bsn()))
    await produce(gp, topics.referrals(Channel.GP), b"not a bundle")
    await read_topic(kafka.admin, topics.NORMALISED, lambda r: True, N + 1)
    groups = lag_json(kafka)
    routing_lag = groups[ROUTING_GROUP]
    # Lag counts offsets: the N referrals and the marker of each of intake's transactions that wrote them (one
    # per transaction; several referrals may share one), as Kafka's own tool counts them (compared below).
    assert N < routing_lag["lag"] <= 2 * N and routing_lag["members"] == 0
    assert routing_lag["status"] == "ERR"
    assert {p["status"] for p in routing_lag["partitions"] if p["lag"]} == {"STOP"}
    assert all(p["lag_seconds"] is not None and p["lag_seconds"] >= 0 for p in routing_lag["partitions"] if p["lag"])
    ours = {(p["topic"], p["partition"]): (p["committed"], p["log_end"], p["lag"])
            for p in routing_lag["partitions"]}
    assert kafka_tool(kafka, ROUTING_GROUP, directory / "ops.properties") == ours

    status, intake_metrics = get(f"http://127.0.0.1:{intake_port}/metrics")
    assert metric(intake_metrics, "verwijshub_referrals_accepted_total", channel="gp") == N + 1
    assert metric(intake_metrics, "verwijshub_referrals_rejected_total", channel="gp", code="UNPARSEABLE") == 1
    assert metric(intake_metrics, "verwijshub_handler_seconds_count", service="intake") == N + 2
    assert get(f"http://127.0.0.1:{intake_port}/healthz")[0] == 200
    assert get(f"http://127.0.0.1:{intake_port}/readyz")[0] == 200

    hubs.start_routing()
    await caught_up(kafka, ROUTING_GROUP)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        routing_lag = lag_json(kafka)[ROUTING_GROUP]
        if routing_lag["lag"] == 0 and routing_lag["status"] == "OK":
            break
        await asyncio.sleep(1)
    assert routing_lag["lag"] == 0 and routing_lag["status"] == "OK" and routing_lag["members"] >= 1


async def test_a_stalled_consumer_is_stall_then_stop_when_it_leaves(ops) -> None:
    kafka, _ = ops
    group = "verwijshub-stalled-test"
    consumer = AIOKafkaConsumer(topics.NORMALISED, **kafka.admin.client_options(), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=3000)
        await consumer.commit({tp: 0 for tp in consumer.assignment()})  # a member that never moves on
        stalled = await asyncio.to_thread(lag_json, kafka)
        partitions = stalled[group]["partitions"]
        assert stalled[group]["members"] == 1 and stalled[group]["status"] == "ERR"
        assert {p["status"] for p in partitions if p["lag"]} == {"STALL"}
        assert {p["status"] for p in partitions if not p["lag"]} <= {"OK"}
    finally:
        await consumer.stop()
    stopped = await asyncio.to_thread(lag_json, kafka)
    assert {p["status"] for p in stopped[group]["partitions"] if p["lag"]} == {"STOP"}


def test_the_status_page_in_a_browser_shows_groups_channels_and_dead_letters(ops, hubs: Hubs) -> None:
    """The lag exporter's page in headless Chromium, after the tests above and one more referral with an
    invalid BSN: the routing group, the GP channel's last hour (N + 1 received, 1 rejected), 2 dead letters
    (the unreadable one has no referral id, so no status), the rejection's code, never any content."""
    chromium = require("chromium")
    kafka, directory = ops
    hubs.start_intake()
    asyncio.run(produce(kafka.admin, topics.referrals(Channel.GP),
                        gp_bytes(referral_id="OPS-BAD", bsn=INVALID_BSN)))
    asyncio.run(read_topic(kafka.admin, topics.DEAD_LETTERS, lambda r: True, 2))
    port = _free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "services.cli", "lag", "--serve", "--port", str(port),
                                 "--interval", "0.5"], env={**os.environ, **kafka.env()},
                                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(directory / "exporter.log", "w"))
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if "BSN_INVALID" in get(url)[1]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--window-size=1280,1400"]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        subprocess.run([*browser, f"--screenshot={ARTIFACTS / 'status-page.png'}", url], capture_output=True,
                       timeout=120)
        assert "verwijshub-routing" in dom and "verwijshub-intake" in dom
        assert re.search(r"<td>gp</td><td>(\d+)</td><td>(\d+)</td></tr>", dom).groups() == (str(N + 1), "1")
        # 2 dead letters, each written in a transaction: its commit marker takes an offset of its own
        assert 2 <= int(re.search(r'id="dead-letters">(\d+)<', dom).group(1)) <= 4
        assert re.search(r"<td>gp</td><td>BSN_INVALID</td>", dom)
        assert "not a bundle" not in dom and INVALID_BSN not in dom  # no content ever shows
        assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000
        status, exported = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and metric(exported, "verwijshub_consumer_group_status", group=ROUTING_GROUP) == 0
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)


async def read_as_team(kafka: TestKafka, principal: str, group: str, topic: str) -> None:
    """A team's EPD: as the team's principal, its consumer group reads its handover topic to the end, commits, stops."""
    consumer = AIOKafkaConsumer(topic, **kafka.connection(principal).client_options(), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=500)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while [tp for tp in ends if await consumer.position(tp) < ends[tp]] and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=500)
        await consumer.commit()
    finally:
        await consumer.stop()


def test_a_team_that_stops_reading_ages_on_the_page_and_in_lag_and_recovers_when_it_reads(ops, hubs: Hubs) -> None:
    """WIJ Centrum's EPD reads its handovers and stops; a referral for its postcode is handed over and waits
    unread: WAITING with an oldest unread handover that ages (`lag --json`, the page). A week later (the
    exporter's and `lag`'s 'now' moved with VERWIJSHUB_CLOCK_FILE, as the notifier's tests move theirs; the
    record's own time is real) it is LATE: marked on the page in headless Chromium, in `lag --json` and in the
    metrics, with its open contact clocks from the notifier; not at risk of loss on a topic kept 90 days. With
    the topic's retention cut to 10 days on the broker, the week-old handover is past half of it: AT RISK OF LOSS
    on the page, in `lag --json` (the retention as the broker has it, which operations may describe) and in the
    metrics. When the EPD reads again it is OK and at risk of nothing."""
    chromium = require("chromium")
    kafka, directory = ops
    team, who = "centrum", principals.wij_team("centrum")
    topic, group = topics.wij_handovers(team), f"{who}.epd"
    moved = directory / "ops-now.txt"
    FileClock(moved).set(None)
    clock_env = {"VERWIJSHUB_CLOCK_FILE": str(moved)}

    def recipient(document: dict) -> dict:
        return next(r for r in document["recipients"] if r["principal"] == who)

    is_handover = lambda record: header(record, "schema") == "verwijshub.Handover/1"  # noqa: E731
    hubs.start_intake()
    hubs.start_routing()
    port = _free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "services.cli", "lag", "--serve", "--port", str(port),
                                 "--interval", "0.5"], env={**os.environ, **kafka.env(), **clock_env},
                                cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=open(directory / "exporter-recipients.log", "w"))
    url = f"http://127.0.0.1:{port}/"
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--window-size=1280,1800"]

    def page_row(wanted: str, losing: bool = False) -> str:
        """The team's row on the page once it shows `wanted` and, or not, AT RISK OF LOSS (polled over HTTP),
        then as Chromium renders it."""
        deadline, row = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            try:
                found = re.search(rf'<tr class="recipient-(\w+)" id="recipient-{who}">(.*?)</tr>', get(url)[1])
            except OSError:
                found = None
            if found and found.group(1) == wanted and (AT_RISK_OF_LOSS in found.group(2)) == losing:
                break
            time.sleep(0.5)
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        row = re.search(rf'<tr class="recipient-(\w+)" id="recipient-{who}">(.*?)</tr>', dom)
        assert row and row.group(1) == wanted, dom[-3000:]
        assert (AT_RISK_OF_LOSS in row.group(2)) == losing, row.group(2)
        return row.group(2)

    try:
        asyncio.run(read_as_team(kafka, who, group, topic))
        read = recipient(lag_document(kafka, env=clock_env, samples=1))
        assert read["status"] == "OK" and read["unread"] == 0 and read["groups"] == [group] and read["read"]
        assert page_row("OK")

        asyncio.run(produce(kafka.admin, topics.referrals(Channel.GP),
                            gp_bytes(referral_id="OPS-TEAM", bsn=random_bsn())))  # postcode 9712: WIJ Centrum
        asyncio.run(read_topic(kafka.admin, topic, lambda r: is_handover(r) and b"OPS-TEAM" in r.value, 1))
        first = recipient(lag_document(kafka, env=clock_env, samples=1))
        time.sleep(1)
        later = recipient(lag_document(kafka, env=clock_env, samples=1))
        assert first["status"] == "WAITING" and first["unread"] >= 1 and first["members"] == 0
        assert later["oldest_unread_seconds"] > first["oldest_unread_seconds"] > 0  # it ages
        assert later["oldest_unread_working_days"] <= 1 and later["clocks"]["open"] >= 1
        assert "WAITING" in page_row("WAITING")

        FileClock(moved).set(datetime.now(UTC) + timedelta(days=7))  # a week: at least 2 working days
        late_row = page_row("LATE")
        subprocess.run([*browser, f"--screenshot={ARTIFACTS / 'status-page-recipients.png'}", url],
                       capture_output=True, timeout=120)
        late = recipient(lag_document(kafka, env=clock_env, samples=1))
        assert late["status"] == "LATE" and late["oldest_unread_working_days"] > 1 and late["unread"] == first["unread"]
        assert late["retention_ms"] == 90 * DAY_MS and late["retention_from"] == "broker"
        assert late["at_risk_of_loss"] is False and first["at_risk_of_loss"] is False
        assert "nobody" not in late_row and group in late_row and " wd" in late_row
        status, exported = get(f"http://127.0.0.1:{port}/metrics")
        assert metric(exported, "verwijshub_recipient_oldest_unread_working_days", recipient=who) > 1
        assert metric(exported, "verwijshub_recipient_unread", recipient=who) == late["unread"]
        assert metric(exported, "verwijshub_recipient_contact_clocks", recipient=who, state="open") >= 1
        assert (ARTIFACTS / "status-page-recipients.png").stat().st_size > 10_000
        assert metric(exported, "verwijshub_recipient_at_risk_of_loss", recipient=who) == 0

        # a short retention: 10 days, so the week-old unread handover is past half of it
        provision_topics(kafka.admin, [TopicSpec(topic, 1, 1, {"retention.ms": str(10 * DAY_MS)})])
        losing_row = page_row("LATE", losing=True)
        losing = recipient(lag_document(kafka, env=clock_env, samples=1))
        assert losing["at_risk_of_loss"] is True and losing["status"] == "LATE"
        assert losing["retention_ms"] == 10 * DAY_MS and losing["retention_from"] == "broker"
        assert "10.0 d" in losing_row and losing["unread"] == late["unread"]
        status, exported = get(f"http://127.0.0.1:{port}/metrics")
        assert metric(exported, "verwijshub_recipient_at_risk_of_loss", recipient=who) == 1
        assert metric(exported, "verwijshub_recipient_retention_seconds", recipient=who) == 10 * 86_400

        asyncio.run(read_as_team(kafka, who, group, topic))
        assert page_row("OK")
        again = recipient(lag_document(kafka, env=clock_env, samples=1))
        assert again["status"] == "OK" and again["unread"] == 0 and again["oldest_unread_seconds"] is None
        assert again["at_risk_of_loss"] is False
        status, exported = get(f"http://127.0.0.1:{port}/metrics")
        assert metric(exported, "verwijshub_recipient_at_risk_of_loss", recipient=who) == 0
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
        provision_topics(kafka.admin, [TopicSpec(topic, 1, 1, topic_config(topic, kafka.settings()))])
