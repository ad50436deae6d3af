"""`verwijshub lag`: consumer lag per group, topic and partition with a status per group, and the recipients
(who reads its handovers, the oldest unread, contact clocks); `--serve` runs the lag exporter (Prometheus
metrics, the status page, health)."""

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from services.infra import metrics, principals
from services.infra.clock import Clock, FileClock, SystemClock
from services.infra.http import serve
from services.infra.provisioning import topic_config
from services.infra.settings import get_settings
from services.notifier.calendar import GoodFriday, LiberationDay, WorkingCalendar
from services.ops import deadletters as dead_letters_view
from services.ops import recipients as recipients_view
from services.ops.deadletters import latest_summary as dead_letter_summary
from services.ops.lag import GroupLag, LagMonitor, PartitionLag, export, format_age
from services.ops.page import dead_letters_since, last_hour_per_channel, latest_rejections, render
from services.ops.recipients import (
    AT_RISK_OF_LOSS,
    RecipientStatus,
    RecipientView,
    RecipientWatch,
    format_duration,
    format_retention,
    format_working_days,
)
from services.ops.rules import PartitionStatus

STATUS_STYLE = {"OK": "green", "WARN": "yellow", "ERR": "red", "STALL": "red", "STOP": "red", "REWIND": "red",
                "WAITING": "yellow", "LATE": "red"}
PAGE_EVERY_S = 10.0
SEVERITY = [PartitionStatus.OK, PartitionStatus.WARN, PartitionStatus.STALL, PartitionStatus.STOP, PartitionStatus.REWIND]
COLLAPSE_QUIET_TOPICS = 3
"""More caught-up topics than this in one group (the notifier reads every feedback topic) share one row."""


def table(groups: list[GroupLag], every_partition: bool = False) -> Table:
    """One row per group and topic (sums, the oldest lag, the worst partition), and below it the partitions
    that lag or are not OK (all of them with `every_partition`); caught-up topics of a group share one row."""
    view = Table(title=f"Consumer lag at {datetime.now(UTC).isoformat(timespec='seconds')}")
    for column in ("group", "status", "members", "topic", "partition", "committed", "log end", "lag", "lag in time",
                   "partition status"):
        view.add_column(column, justify="right" if column in ("members", "partition", "committed", "log end",
                                                                  "lag", "lag in time") else "left")
    for group in groups:
        first = [group.group, _styled(group.status.value), str(group.members)]
        if not group.partitions:
            view.add_row(*first, *["-"] * 7)
        by_topic: dict[str, list[PartitionLag]] = {}
        for row in group.partitions:
            by_topic.setdefault(row.topic, []).append(row)
        quiet = [t for t, rows in by_topic.items() if not any(r.lag or r.status is not PartitionStatus.OK for r in rows)]
        if not every_partition and len(quiet) > COLLAPSE_QUIET_TOPICS:
            view.add_row(*first, f"{len(quiet)} topics caught up", f"all {sum(len(by_topic[t]) for t in quiet)}",
                         str(sum(r.committed for t in quiet for r in by_topic[t])),
                         str(sum(r.log_end for t in quiet for r in by_topic[t])), "0", format_age(0.0), _styled("OK"))
            first = ["", "", ""]
            by_topic = {t: rows for t, rows in by_topic.items() if t not in quiet}
        for topic, rows in by_topic.items():
            worst = max((r.status for r in rows), key=SEVERITY.index)
            ages = [r.lag_seconds for r in rows if r.lag_seconds is not None]
            view.add_row(*first, topic, f"all {len(rows)}", str(sum(r.committed for r in rows)),
                         str(sum(r.log_end for r in rows)), str(sum(r.lag for r in rows)),
                         format_age(max(ages, default=None)), _styled(worst.value))
            first = ["", "", ""]
            for row in rows:
                if every_partition or row.lag or row.status is not PartitionStatus.OK:
                    view.add_row(*first, "", str(row.partition), str(row.committed), str(row.log_end), str(row.lag),
                                 format_age(row.lag_seconds), _styled(row.status.value))
    return view


def recipients_table(views: list[RecipientView], every_recipient: bool = False) -> Table:
    """The recipients that need attention (something unread, a clock at risk or breached), or all of them."""
    shown = [v for v in views if every_recipient or v.attention]
    late = sum(v.status is RecipientStatus.LATE for v in views)
    losing = sum(v.at_risk_of_loss for v in views)
    title = (f"Recipients: {late} LATE, {losing} {AT_RISK_OF_LOSS}, {len(shown)} of {len(views)} shown"
             if shown or every_recipient else f"Recipients: all {len(views)} OK")
    view = Table(title=title)
    for column in ("recipient", "status", "read by", "unread", "oldest unread", "in working days", "retention",
                   "clocks open", "at risk", "breached"):
        view.add_column(column, justify="left" if column in ("recipient", "status", "read by") else "right")
    for v in shown:
        status = _styled(v.status.value) + (f", [red]{AT_RISK_OF_LOSS}[/]" if v.at_risk_of_loss else "")
        view.add_row(v.principal, status,
                     ", ".join(v.groups) + (f" ({v.members} connected)" if v.groups else "") or "nobody",
                     str(v.unread), format_duration(v.oldest_unread_seconds),
                     format_working_days(v.oldest_unread_working_days), format_retention(v.retention_ms),
                     str(v.clocks.open), str(v.clocks.at_risk), str(v.clocks.breached))
    return view


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE[status]}]{status}[/]"


def as_json(groups: list[GroupLag], recipients: list[RecipientView] | None = None) -> str:
    return json.dumps({"at": datetime.now(UTC).isoformat(), "groups": [g.as_json() for g in groups],
                       "recipients": [r.as_json() for r in recipients or []]}, indent=2)


async def _sampled(monitor: LagMonitor, samples: int, interval: float) -> list[GroupLag]:
    groups: list[GroupLag] = []
    for index in range(samples):
        if index:
            await asyncio.sleep(interval)
        groups = await monitor.sample()
    return groups


async def _serve(monitor: LagMonitor, watch: RecipientWatch, host: str, port: int, interval: float,
                 pending_limit_s: float) -> None:
    latest: dict[str, object] = {"groups": [], "channels": {}, "rejections": [], "dead_letters": 0,
                                 "at": datetime.now(UTC), "recipients": [], "pending": None}
    page = lambda: (200, "text/html; charset=utf-8", render(
        latest["groups"], latest["channels"], latest["rejections"], latest["dead_letters"], latest["at"],
        latest["recipients"], latest["pending"]).encode())
    server = serve(host, port, {
        "/": page, "/status": page, "/metrics": metrics.metrics_response,
        "/status.json": lambda: (200, "application/json", as_json(latest["groups"], latest["recipients"]).encode()),
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
    })
    Console(stderr=True).print(f"lag exporter on http://{host}:{server.server_port}/ (metrics: /metrics)")
    page_read = 0.0
    loop = asyncio.get_running_loop()
    while True:
        latest["groups"] = groups = await monitor.sample()
        export(groups)
        latest["recipients"] = recipients = await watch.look(loop.time())
        recipients_view.export(recipients)
        if loop.time() - page_read > PAGE_EVERY_S:
            page_read = loop.time()
            latest["channels"] = await last_hour_per_channel(monitor.kafka)
            latest["rejections"] = await latest_rejections(monitor.kafka)
            latest["dead_letters"] = await dead_letters_since(monitor.kafka, 3600)
            latest["pending"] = await dead_letter_summary(monitor.kafka)
        latest["at"] = datetime.now(UTC)
        dead_letters_view.export(latest["pending"], latest["at"], pending_limit_s)
        await asyncio.sleep(interval)


def lag(
    all_groups: Annotated[bool, typer.Option("--all", help="All consumer groups, not only the hub's (verwijshub-*).")] = False,
    as_json_output: Annotated[bool, typer.Option("--json", help="JSON for machines instead of a table.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the table in place every interval, until Ctrl-C.")] = False,
    every_partition: Annotated[bool, typer.Option("--partitions", help="Every partition in the table, not only "
                                                  "those that lag or are not OK.")] = False,
    samples: Annotated[int, typer.Option(min=1, help="Samples in the sliding window the status is judged on.")] = 3,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between samples.")] = 1.0,
    serve_http: Annotated[bool, typer.Option("--serve", help="Run the lag exporter: Prometheus /metrics, the status "
                                             "page on /, /status.json and /healthz.")] = False,
    every_recipient: Annotated[bool, typer.Option(
        "--recipients", help="Every recipient in the table, not only those with something unread or a clock at "
        "risk or breached.")] = False,
    host: Annotated[str, typer.Option(help="Address the exporter listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the exporter.")] = 9309,
) -> None:
    """Consumer lag per group, topic and partition (committed offset, log end, lag, lag in time) with a status
    per group judged over a sliding window of samples (OK, WARN, ERR; partitions OK, WARN, STALL, STOP,
    REWIND: docs/lag-rules.md); and per WIJ team and provider whether it reads its handovers, its oldest
    unread one (LATE: older than a working day; AT RISK OF LOSS: older than half its topic's retention) and its
    contact clocks."""
    settings = get_settings()
    clock: Clock = FileClock(settings.clock_file) if settings.clock_file else SystemClock()
    calendar = WorkingCalendar(LiberationDay(settings.liberation_day), GoodFriday(settings.good_friday))

    async def main() -> None:
        monitor = LagMonitor(settings.connection(principals.OPERATIONS), window=samples, all_groups=all_groups)
        await monitor.start()
        recipients = RecipientWatch(monitor, settings.registry_dir, calendar, clock,
                                    lambda topic: topic_config(topic, settings)["retention.ms"])
        loop = asyncio.get_running_loop()
        try:
            if serve_http:
                await _serve(monitor, recipients, host, port, interval, settings.dlq_pending_alert_hours * 3600)
            elif watch:
                with Live(Group(table([])), refresh_per_second=4) as live:
                    while True:
                        groups, views = await monitor.sample(), await recipients.look(loop.time())
                        live.update(Group(table(groups, every_partition), recipients_table(views, every_recipient)))
                        await asyncio.sleep(interval)
            else:
                groups = await _sampled(monitor, samples, interval)
                views = await recipients.look(loop.time())
                if as_json_output:
                    print(as_json(groups, views))
                else:
                    console = Console()
                    console.print(table(groups, every_partition))
                    console.print(recipients_table(views, every_recipient))
        finally:
            await monitor.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
