"""`verwijshub dlq` on a secured broker with intake, routing and notifier running: a GP referral for a product the
registry does not know is dead-lettered; after a registry that knows it is published, `dlq replay` (and,
separately, the automatic retry of `registry publish`) gets it through, once."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.status import StatusEvent
from services.infra import principals
from services.infra.kafka import log_offsets
from services.infra.settings import REPO_ROOT
from services.ops.deadletters import latest_summary
from tests.conftest import ARTIFACTS, TestKafka, start_hub, stop_hub
from tests.kafka_client import partitions_of, produce, read_topic
from tests.referrals import gp_bundle, random_bsn

pytestmark = pytest.mark.e2e
FAMILY_NAME, FREE_TEXT = "de Vries", "Slaapproblemen"
LOG = ARTIFACTS / "dlq" / "commands.log"


def registry_with(directory: Path, *products: str) -> Path:
    """The shipped registry plus basic products `products` (routed to the youth's WIJ team)."""
    shutil.copytree(REPO_ROOT / "deploy" / "registry", directory, ignore=shutil.ignore_patterns("scenarios"))
    table = json.loads((directory / "products.json").read_text())
    table += [{"code": code, "name": f"Test {code}", "bjh_from": "2023-01-01", "open_house_until": "2025-07-01"}
              for code in products]
    (directory / "products.json").write_text(json.dumps(table))
    return directory


def cli(kafka: TestKafka, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=180,
                            env={**os.environ, **kafka.env(), "VERWIJSHUB_LOG_FILE": str(LOG), **(env or {})})
    with (ARTIFACTS / "dlq" / "commands.out").open("a") as out:
        out.write(f"$ verwijshub {' '.join(args)}  (exit {result.returncode})\n{result.stdout}{result.stderr}\n")
    return result


def listed(kafka: TestKafka, *args: str) -> dict[str, dict]:
    result = cli(kafka, "dlq", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return {row["referrer_referral_id"]: row for row in map(json.loads, result.stdout.splitlines())}


def send_gp(kafka: TestKafka, product: str) -> tuple[str, str]:
    referral_id, bsn = f"ZD-{uuid.uuid4()}", random_bsn()
    bundle = gp_bundle(referral_id=referral_id, bsn=bsn, postcode="9712 hb", birth_date="2011-02-28", product=product)
    asyncio.run(produce(kafka.admin, "referrals.gp.v1", json.dumps(bundle).encode(),
                        key=referral_id.encode()))
    return referral_id, bsn


async def statuses(kafka: TestKafka, referral_id: str, count: int, settle_s: float = 0.0) -> list[str]:
    records = await read_topic(kafka.admin, "status.gp.v1", lambda r: r.key == referral_id.encode(), count,
                               settle_s=settle_s)
    return [StatusEvent.model_validate_json(r.value).status.value for r in records]


async def handovers(kafka: TestKafka, referral_id: str, count: int, settle_s: float = 0.0) -> int:
    records = await read_topic(kafka.connection("wij-centrum"), "handovers.wij.centrum.v1",
                               lambda r: referral_id.encode() in r.value, count, settle_s=settle_s)
    return len(records)


async def end_offsets(kafka: TestKafka) -> dict:
    """The end offset of every topic's partitions but the notifier's clock counts, which it writes every 15 s."""
    admin = AIOKafkaAdminClient(**kafka.admin.client_options())
    await admin.start()
    try:
        names = sorted(await admin.list_topics())
    finally:
        await admin.close()
    partitions = await partitions_of(kafka.admin, *(name for name in names
                                                     if not name.startswith("__") and name != "ops.recipients.v1"))
    consumer = AIOKafkaConsumer(**kafka.admin.consumer_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        return await log_offsets(consumer, partitions)
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def hub(private_kafka, tmp_path_factory):
    (ARTIFACTS / "dlq").mkdir(parents=True, exist_ok=True)
    for stale in (LOG, ARTIFACTS / "dlq" / "commands.out"):
        stale.unlink(missing_ok=True)
    assert cli(private_kafka, "registry", "publish").returncode == 0
    log_file = ARTIFACTS / "dlq" / "hub.log"
    log_file.unlink(missing_ok=True)
    process = start_hub(private_kafka, log_file, "intake", "routing", "notifier")
    try:
        yield private_kafka
    finally:
        stop_hub(process)


@pytest.fixture(scope="module")
def stuck(hub):
    """A GP referral for product 45Z91, unknown to the registry in force: dead-lettered, rejected."""
    referral_id, bsn = send_gp(hub, "45Z91")
    assert asyncio.run(statuses(hub, referral_id, 1)) == ["rejected"]
    return referral_id, bsn


def test_list_shows_the_dead_letter_pending_with_its_code_and_no_content(hub, stuck):
    referral_id, bsn = stuck
    rows = listed(hub)
    row = rows[referral_id]
    assert row["state"] == "pending" and row["channel"] == "gp"
    assert any(e.startswith("PRODUCT_UNKNOWN@") for e in row["errors"])
    assert row["origin"].startswith("referrals.gp.v1/")
    table = cli(hub, "dlq", "list", "--state", "pending")
    shown = cli(hub, "dlq", "show", row["id"])
    assert table.returncode == 0 and shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["errors"][0]["code"] == "PRODUCT_UNKNOWN"
    for output in (table.stdout + table.stderr, shown.stdout + shown.stderr, json.dumps(rows)):
        for secret in (bsn, FAMILY_NAME, FREE_TEXT, "2011-02-28"):
            assert secret not in output
    assert bsn not in LOG.read_text()
    summary = asyncio.run(latest_summary(hub.connection(principals.OPERATIONS)))  # what operations sees
    assert summary.pending == 1 and summary.oldest_pending_at is not None
    assert [(c.channel, c.code, c.count) for c in summary.counts] == [("gp", "PRODUCT_UNKNOWN", 1)]


def test_show_raw_is_refused_for_any_principal_but_the_admin_and_audited(hub, stuck):
    referral_id, bsn = stuck
    dead_letter_id = listed(hub)[referral_id]["id"]
    ops = hub.connection(principals.OPERATIONS)
    refused = cli(hub, "dlq", "show", dead_letter_id, "--raw",
                  env={"VERWIJSHUB_KAFKA_USERNAME": ops.username, "VERWIJSHUB_KAFKA_PASSWORD": ops.password})
    assert refused.returncode == 1 and bsn not in refused.stdout + refused.stderr
    assert "admin" in refused.stderr
    looked = cli(hub, "dlq", "show", dead_letter_id, "--raw")
    assert looked.returncode == 0 and bsn in looked.stdout  # the admin sees the message as received
    audit = [json.loads(line) for line in LOG.read_text().splitlines() if "dead letter raw view" in line]
    assert [(a["event"], a["who"], a["dead_letter_id"]) for a in audit] == [
        ("dead letter raw view refused", "verwijshub-ops", dead_letter_id),
        ("dead letter raw view", "verwijshub-admin", dead_letter_id)]
    assert bsn not in LOG.read_text()


def test_a_dry_run_checks_offline_and_writes_nothing(hub, stuck):
    referral_id, _ = stuck
    before = asyncio.run(end_offsets(hub))
    result = cli(hub, "dlq", "replay", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "still rejected: PRODUCT_UNKNOWN" in result.stdout and "would be" in result.stdout
    assert asyncio.run(end_offsets(hub)) == before
    assert listed(hub)[referral_id]["state"] == "pending"


def test_replay_after_a_registry_fix_routes_it_once(hub, stuck, tmp_path):
    referral_id, _ = stuck
    fixed = registry_with(tmp_path / "registry", "45Z91")
    assert cli(hub, "registry", "publish", str(fixed), env={"VERWIJSHUB_DLQ_AUTO_RETRIES": "0"}).returncode == 0
    dead_letter_id = listed(hub)[referral_id]["id"]
    replayed = cli(hub, "dlq", "replay", dead_letter_id)
    assert replayed.returncode == 0, replayed.stderr
    assert "re-submitted to referrals.gp.v1" in replayed.stdout
    assert asyncio.run(handovers(hub, referral_id, 1)) == 1
    assert asyncio.run(statuses(hub, referral_id, 4)) == ["rejected", "received", "routed", "handed-over"]
    row = listed(hub)[referral_id]
    assert row["state"] == "replayed" and row["outcome"].startswith("resubmitted")
    assert cli(hub, "dlq", "list").returncode == 0  # the table after the replay, in test-artifacts/dlq/commands.out
    assert asyncio.run(latest_summary(hub.connection(principals.OPERATIONS))).pending == 0

    again = cli(hub, "dlq", "replay", dead_letter_id)
    assert again.returncode == 0 and "already accepted" in again.stdout
    assert asyncio.run(handovers(hub, referral_id, 1, settle_s=3.0)) == 1
    assert asyncio.run(statuses(hub, referral_id, 4, settle_s=1.0)) == ["rejected", "received", "routed",
                                                                        "handed-over"]


def test_registry_publish_retries_a_transient_dead_letter_by_itself(hub, tmp_path):
    referral_id, _ = send_gp(hub, "45Z92")
    assert asyncio.run(statuses(hub, referral_id, 1)) == ["rejected"]
    fixed = registry_with(tmp_path / "registry", "45Z91", "45Z92")
    published = cli(hub, "registry", "publish", str(fixed))
    assert published.returncode == 0, published.stderr
    assert "re-submitted to referrals.gp.v1" in published.stdout
    assert asyncio.run(handovers(hub, referral_id, 1)) == 1
    assert asyncio.run(statuses(hub, referral_id, 4)) == ["rejected", "received", "routed", "handed-over"]
    row = listed(hub)[referral_id]
    assert row["state"] == "replayed" and "(auto)" in row["outcome"]
    assert asyncio.run(latest_summary(hub.connection(principals.OPERATIONS))).pending == 0
    assert cli(hub, "dlq", "list").returncode == 0
