"""The analytics sink and the monthly report on a real broker: a simulated month through the real hub (its clock
moved), the store idempotent, the report's counts equal to counts taken from the topics, no personal data in the
store or the report, and the HTML and PDF rendered (screenshots under test-artifacts/analytics/)."""

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path

import pytest

from services.analytics import store
from services.analytics.facts import INPUT_PATTERN, facts_of
from services.analytics.figures import build
from services.analytics.render import chromium, print_pdf, report_html
from services.analytics.report import load
from services.analytics.simulate import DECLINE_REASON, FAMILY, FREE_TEXT, GIVEN, Simulation
from services.analytics.sink import team_map, wait_until_stored
from services.infra.kafka import read_records
from services.infra.registry_files import load_registry
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from tests.conftest import ARTIFACTS, TestKafka, start_hub, stop_hub

pytestmark = pytest.mark.e2e
MONTH = date(2025, 3, 1)
OUT = ARTIFACTS / "analytics"


@pytest.fixture(scope="module")
def simulated(private_kafka: TestKafka):
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink() if old.is_file() else shutil.rmtree(old)
    clock, db = OUT / "clock", OUT / "analytics.duckdb"
    settings = private_kafka.settings(clock_file=clock, analytics_db=db)
    registry = load_registry(settings.registry_dir)
    simulation = Simulation(settings, registry, MONTH, 1, seed=14, per_year=400)
    simulation.set_clock(MONTH, 8)
    hub = start_hub(private_kafka, OUT / "hub.log", env={
        "VERWIJSHUB_CLOCK_FILE": str(clock), "VERWIJSHUB_NOTIFIER_TICK_SECONDS": "0.1",
        "VERWIJSHUB_ANALYTICS_DB": str(db)})
    try:
        totals = asyncio.run(simulation.run())
        assert asyncio.run(wait_until_stored(settings)) == 0
    finally:
        stop_hub(hub)
    return private_kafka, settings, registry, simulation, totals


def test_a_month_was_simulated_through_the_hub(simulated) -> None:
    _, _, _, simulation, totals = simulated
    assert totals.referrals >= 20 and totals.feedback >= 20 and totals.stops == 1
    assert simulation.world.handovers


def test_the_store_is_idempotent_reading_the_topics_again_gives_identical_tables(simulated, tmp_path: Path) -> None:
    kafka, settings, registry, *_ = simulated
    records = asyncio.run(_records(kafka))
    teams = team_map(registry)
    facts = [f for r in records for f in facts_of(r.topic, r.partition, r.offset, r.key, r.value, teams)]
    with store.opened(tmp_path / "once.duckdb") as once, store.opened(tmp_path / "twice.duckdb") as twice:
        store.write(once, facts, {})
        store.write(twice, facts, {})
        store.write(twice, list(reversed(facts)), {})  # again, and in another order
        again = store.dump(once)
        assert again == store.dump(twice)
    with store.opened(settings.analytics_db, read_only=True) as live:
        assert store.dump(live) == again  # what the running sink stored, batch by batch
        assert live.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(store.MIGRATIONS)
    assert again["referrals"] and again["decisions"] and again["statuses"] and again["feedback"]


def test_a_new_store_is_rebuilt_by_the_sink_from_the_topics_despite_its_groups_committed_offsets(simulated) -> None:
    kafka, settings, *_ = simulated
    rebuilt = OUT / "rebuilt.duckdb"
    with store.opened(settings.analytics_db, read_only=True) as live:
        wanted = store.dump(live)
    sink = start_hub(kafka, OUT / "sink-again.log", "analytics", env={"VERWIJSHUB_ANALYTICS_DB": str(rebuilt)})
    try:
        assert asyncio.run(wait_until_stored(settings.model_copy(update={"analytics_db": rebuilt}))) == 0
        deadline, again = time.monotonic() + 120, None
        while again != wanted and time.monotonic() < deadline:  # the event, not the count: the store as rebuilt
            time.sleep(1.0)
            if rebuilt.exists():
                with store.opened(rebuilt, read_only=True) as opened:
                    again = store.dump(opened)
    finally:
        stop_hub(sink)
    assert again == wanted


async def _records(kafka: TestKafka):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.admin.client_options())
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if re.match(INPUT_PATTERN, t))
    finally:
        await admin.close()
    return await read_records(kafka.admin, names)


def _local(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_reports_counts_equal_counts_from_the_topics(simulated) -> None:
    kafka, settings, registry, *_ = simulated
    records = [r for r in asyncio.run(_records(kafka)) if r.topic.startswith("status.")]
    chains: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: json.loads(r.value)["at"]):
        event = json.loads(record.value)
        chains[event["referrer_referral_id"]].append(event)
    calendar = WorkingCalendar()
    per_channel, per_route = Counter(), Counter()
    handovers = within = breaches = 0
    for chain in chains.values():
        first = chain[0]
        decided = next((e for e in chain if e["status"] == "routed" or (e["status"] == "rejected" and e["referral_id"]
                        and any(x["code"] in ("OUTSIDE_MUNICIPALITY", "AGE_OUT_OF_RANGE") for x in e["errors"])
                        and not any(x["status"] == "received" for x in chain[chain.index(e):]))), None)
        if decided and _local(first["at"]).astimezone(AMSTERDAM).date().replace(day=1) == MONTH:
            per_channel[first["channel"]] += 1
            per_route["rejected" if decided["status"] == "rejected" else
                      "WIJ team" if decided["detail"].endswith("(wij-team))") or "(wij-team)" in decided["detail"]
                      else "provider"] += 1
        for index, event in enumerate(chain):
            if event["status"] != "handed-over" or not event["detail"].startswith("to WIJ"):
                continue
            handed = _local(event["at"])
            if handed.astimezone(AMSTERDAM).date().replace(day=1) != MONTH:
                continue
            handovers += 1
            rest = chain[index + 1:]
            until = next((i for i, e in enumerate(rest) if e["status"] in ("rerouted", "declined")), len(rest))
            contact = next((e for e in rest[:until] if e["status"] == "contact-made"), None)
            due = calendar.add_working_days(handed, 5)
            within += contact is not None and _local(contact["at"]) <= due
            breaches += any(e["status"] == "sla-breached" for e in rest[:until])
    sections = build(load(settings.analytics_db), MONTH, calendar, {t.id: t.name for t in registry.teams.values()})
    tables = {t.title: t for s in sections for t in s.tables}
    channel_table = tables["Per channel"]
    assert dict(zip(channel_table.columns, channel_table.counts[0], strict=True)) == {
        c: per_channel[c] for c in channel_table.columns}
    route_table = tables["Per route, by the deciding rule"]
    assert {c: sum(row[j] for row in route_table.counts) for j, c in enumerate(route_table.columns)} == {
        c: per_route[c] for c in route_table.columns}
    contact_table = tables["Handovers per team and outcome"]
    column = {c: sum(row[j] for row in contact_table.counts) for j, c in enumerate(contact_table.columns)}
    assert sum(column.values()) == handovers > 0
    assert column["within 5 working days"] == within > 0
    assert column["breached"] == breaches


def test_no_bsn_name_birth_date_address_or_free_text_in_the_store_or_the_report(simulated) -> None:
    _, settings, registry, simulation, _ = simulated
    sections = build(load(settings.analytics_db), MONTH, WorkingCalendar(),
                     {t.id: t.name for t in registry.teams.values()})
    html_file = OUT / "report-2025-03.html"
    html_file.write_text(report_html(sections, MONTH, "test"))
    forbidden = {*simulation.bsns, *(y.birth_date.isoformat() for y in simulation.youths),
                 *(y.birth_date.strftime("%Y%m%d") for y in simulation.youths),
                 *(y.postcode for y in simulation.youths), *GIVEN, *FAMILY, FREE_TEXT, DECLINE_REASON,
                 "Oude Ebbingestraat", "ZD-", "SIM14-"}
    for path in (settings.analytics_db, html_file, OUT / "hub.log"):
        content = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_bytes().decode("latin-1"))
        if path.name == "hub.log":  # the hub's own log: the BSNs it was sent
            assert not [bsn for bsn in simulation.bsns if bsn in content]
            continue
        assert not [word for word in forbidden if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", content)], path


def test_the_rendered_report_hides_small_counts_and_no_line_gives_one_away(simulated) -> None:
    text = (OUT / "report-2025-03.html").read_text()
    cells = re.findall(r"<td>([^<]*)</td>", text)
    assert cells and not [c for c in cells if c in {"1", "2", "3", "4"}]
    assert "<td>&lt;5</td>" in text
    checked = 0
    for table in re.findall(r"<table>(.*?)</table>", text):
        rows = [re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
        header, body = rows[0], rows[1:]
        lines = [row[1:] for row in body] if header[-1] == "total" else []
        if body[-1][0] == "total":
            lines += [list(column) for column in zip(*(row[1:] for row in body), strict=True)]
        for line in lines:
            assert sum(value in ("&lt;5", "x") for value in line) != 1, (header, line)
            checked += 1
    assert checked


def test_the_html_renders_in_chromium_and_the_pdf_to_a_page_image(simulated) -> None:
    browser, pdftoppm = chromium(), shutil.which("pdftoppm")
    if not browser or not pdftoppm:
        pytest.skip("needs chromium and pdftoppm (make tools)")
    html_file, pdf_file = OUT / "report-2025-03.html", OUT / "report-2025-03.pdf"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={OUT / 'chromium-profile'}", "--window-size=1200,1600",
                    f"--screenshot={OUT / 'report-screenshot.png'}", html_file.resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    assert (OUT / "report-screenshot.png").stat().st_size > 10_000
    print_pdf(html_file, pdf_file)
    assert pdf_file.read_bytes().startswith(b"%PDF")
    subprocess.run([pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf_file), str(OUT / "report-page")],
                   check=True, timeout=60)
    pages = list(OUT.glob("report-page*.png"))
    assert pages and pages[0].stat().st_size > 5_000

