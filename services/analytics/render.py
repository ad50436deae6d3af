"""The report as one self-contained HTML file (tables, plots as base64 PNG), and as PDF by headless Chromium.

Every count goes through `suppression.suppress` before it is written or plotted: a plot shows only what the
tables show (a hidden bar is drawn empty and labelled).
"""

import base64
import html
import io
import shutil
import subprocess
import tempfile
from datetime import date
from pathlib import Path

from services.analytics.figures import Section, Table
from services.analytics.suppression import Suppressed, share, suppress_linked

STYLE = """body{font-family:sans-serif;margin:2em;color:#222;max-width:60em}h1{color:#0b4f6c}
h2{border-bottom:2px solid #0b4f6c;padding-top:.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:.2em .6em;text-align:right}th{background:#e8f1f5}td.l,th.l{text-align:left}
.note{color:#666;font-size:.9em}img{max-width:100%}@media print{h2,h3{break-after:avoid}table{break-inside:avoid}}"""


Shown = dict[int, Suppressed]
"""Each table of the report (by `id`) as suppressed, linked figures hidden together."""


def suppressed_all(sections: list[Section]) -> Shown:
    tables = [table for section in sections for table in section.tables]
    results = suppress_linked([(t.counts, t.row_totals, t.column_totals, t.links) for t in tables])
    return {id(table): result for table, result in zip(tables, results, strict=True)}


def td(value: str) -> str:
    return f"<td>{html.escape(value)}</td>"


def table_html(table: Table, shown: Suppressed) -> str:
    if not table.rows or not table.columns:
        return f"<h3>{html.escape(table.title)}</h3><p class=note>None in this month.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + ("<th>total</th>" if table.row_totals else "")
    body = []
    for i, row in enumerate(table.rows):
        total = td(shown.row_totals[i]) if shown.row_totals else ""
        body.append(f"<tr><th class=l>{html.escape(row)}</th>" + "".join(map(td, shown.cells[i])) + total + "</tr>")
    if shown.column_totals:
        body.append("<tr><th class=l>total</th>" + "".join(map(td, shown.column_totals))
                    + (td(shown.total) if shown.total is not None else "") + "</tr>")
    note = f"<p class=note>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3><table><tr><th class=l></th>{head}</tr>{''.join(body)}</table>"
            + note)


def _pyplot():
    """matplotlib, imported when a plot is drawn: it took a second of every `verwijshub` command's start."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def bar_plot(table: Table, cells: Suppressed, title: str) -> str:
    """The table's first row as bars, as shown: a hidden count is an empty bar labelled with its sign."""
    shown = cells.cells[0]
    figure, axes = _pyplot().subplots(figsize=(8, 2.8))
    values = [int(v) if v.isdigit() else 0 for v in shown]
    bars = axes.bar(range(len(values)), values, color="#0b4f6c")
    for bar, label in zip(bars, shown, strict=True):
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=8)
    axes.set_xticks(range(len(values)), table.columns, rotation=45, ha="right", fontsize=8)
    axes.set_title(title, fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def section_html(section: Section, shown: Shown) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    tables = {table.title: table for table in section.tables}
    if section.plot == "timeline":
        table = section.tables[-1]
        parts.append(bar_plot(table, shown[id(table)], "Referrals per month"))
    if section.plot == "contact" and section.tables[1].rows:
        table = section.tables[1]
        parts.append(bar_plot(table, shown[id(table)], "Working days from handover to first contact (within 5)"))
    for table in section.tables:
        parts.append(table_html(table, shown[id(table)]))
    for label, title, numerator, _ in section.shares:
        table = tables[title]
        if table.rows:
            cells = shown[id(table)]
            parts.append(f"<p><b>{html.escape(label)}:</b> "
                         f"{html.escape(share(cells.column_totals[numerator], cells.total))}</p>")
    return "\n".join(parts)


def report_html(sections: list[Section], month: date, generated: str) -> str:
    shown = suppressed_all(sections)
    body = "\n".join(section_html(section, shown) for section in sections)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Verwijshub monthly report "
            f"{month:%Y-%m}</title><style>{STYLE}</style></head><body><h1>Basis jeugdhulp: monthly report "
            f"{month:%Y-%m}</h1><p class=note>From the hub's analytics store ({html.escape(generated)}). Every count "
            f"from 1 to 4 is shown as &lt;5; a figure from which one could be derived is shown as x "
            f"(docs/report.md). Pseudonymised facts only: no BSN, name, birth date, address or free text."
            f"</p>{body}</body></html>")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def print_pdf(html_file: Path, pdf_file: Path) -> None:
    """Headless Chromium's print-to-PDF of the HTML file (a throwaway profile, no network chatter)."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (make tools)")
    with tempfile.TemporaryDirectory(prefix="verwijshub-chromium-") as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={pdf_file}",
                        html_file.resolve().as_uri()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
