"""`verwijshub report --month YYYY-MM`: the monthly monitoring report from the analytics store, as HTML and PDF."""

from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from services.analytics import store
from services.analytics.figures import Dataset, build
from services.analytics.render import print_pdf, report_html
from services.analytics.sink import store_path
from services.infra.registry_files import load_registry
from services.infra.settings import get_settings
from services.notifier.calendar import GoodFriday, LiberationDay, WorkingCalendar

console = Console(stderr=True)


def load(path: Path) -> Dataset:
    """The facts of the store as rows (the store of a year is a few thousand rows: the figures are built in
    Python, where the working-day calendar lives)."""
    with store.opened(path, read_only=True) as db:
        def rows(table: str) -> list[dict]:
            cursor = db.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        pending = db.execute("SELECT sum(log_end - log_start) FROM dead_letters_observed").fetchone()[0]
        return Dataset(rows("referrals"), rows("decisions"), rows("statuses"), rows("feedback"), rows("alerts"),
                       int(pending) if pending is not None else None)


def parse_month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError as exc:
        raise typer.BadParameter("give the month as YYYY-MM") from exc


def report(month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM.")],
           out: Annotated[Path, typer.Option("--out", help="Directory for the files.")] = Path("report"),
           formats: Annotated[str, typer.Option("--format", help="html, pdf or html,pdf.")] = "html,pdf") -> None:
    """The monthly monitoring report (referrals per route, the contact promise, re-referrals, rejections,
    indications, the GI stream) from the analytics store, with small numbers suppressed (docs/report.md)."""
    first = parse_month(month)
    wanted = {f.strip() for f in formats.split(",") if f.strip()}
    if not wanted <= {"html", "pdf"}:
        raise typer.BadParameter("formats: html, pdf")
    settings = get_settings()
    path = store_path(settings)
    if not path.exists():
        console.print(f"[red]no analytics store at {path}: run the hub (`up` or `run analytics`) first[/red]")
        raise typer.Exit(1)
    registry = load_registry(settings.registry_dir)
    calendar = WorkingCalendar(LiberationDay(settings.liberation_day), GoodFriday(settings.good_friday))
    out.mkdir(parents=True, exist_ok=True)
    html_file, pdf_file = out / f"report-{month}.html", out / f"report-{month}.pdf"
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("reading the store", total=4 if "pdf" in wanted else 3)
        data = load(path)
        progress.update(task, advance=1, description="computing the figures")
        sections = build(data, first, calendar, {team.id: team.name for team in registry.teams.values()})
        progress.update(task, advance=1, description="plotting and writing the HTML")
        html_file.write_text(report_html(sections, first, f"{len(data.referrals)} referrals in the store, "
                                         f"read {datetime.now():%Y-%m-%d %H:%M}"))
        progress.update(task, advance=1, description="printing the PDF")
        if "pdf" in wanted:
            print_pdf(html_file, pdf_file)
            progress.update(task, advance=1, description="done")
    for kind, file in (("html", html_file), ("pdf", pdf_file)):
        if kind in wanted:
            console.print(f"written: {file}")
    if "html" not in wanted:
        html_file.unlink()
