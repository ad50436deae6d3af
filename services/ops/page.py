"""The status page for people without Grafana: groups and their lag, the last hour per channel, the
latest dead letters (error code and time only, never content). Rendered by a pure function."""

import html
import json
import time
from datetime import UTC, datetime

from schemas.referral import Channel
from services.infra import topics
from services.infra.kafka import read_records
from services.ops.lag import GroupLag, format_age

REFRESH_S = 5


async def last_hour_per_channel(bootstrap: str) -> dict[str, dict[str, int]]:
    """Per channel in the last hour: referrals received (accepted by intake), `rejected` statuses sent (by
    intake or routing's rule 1), and messages dead-lettered (also those whose referral id was unreadable,
    which no status can answer)."""
    since = int((time.time() - 3600) * 1000)
    counts = {channel.value: {"received": 0, "rejected": 0, "dead_letters": 0} for channel in Channel}
    for channel in Channel:
        for record in await read_records(bootstrap, [topics.status(channel)], since_ms=since):
            try:
                status = json.loads(record.value)["status"]
            except (ValueError, KeyError, TypeError):
                continue
            if status in ("received", "rejected"):
                counts[channel.value][status] += 1
    origins = {topics.referrals(channel): channel.value for channel in Channel}
    for record in await read_records(bootstrap, [topics.DEAD_LETTERS], since_ms=since):
        origin = dict(record.headers or ()).get("origin-topic", b"").decode(errors="replace")
        if origin in origins:
            counts[origins[origin]]["dead_letters"] += 1
    return counts


async def latest_dead_letters(bootstrap: str, count: int = 10) -> list[dict[str, str]]:
    """The newest dead letters: when, where from, and the error codes (from the headers, never the body)."""
    letters = []
    for record in await read_records(bootstrap, [topics.DEAD_LETTERS], last=count):
        headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
        try:
            codes = sorted({e["code"] for e in json.loads(headers.get("errors", "[]"))})
        except (ValueError, KeyError, TypeError):
            codes = []
        letters.append({"at": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="seconds"),
                        "topic": headers.get("origin-topic", ""), "codes": ", ".join(codes)})
    return sorted(letters, key=lambda letter: letter["at"], reverse=True)[:count]


def render(groups: list[GroupLag], channels: dict[str, dict[str, int]], dead_letters: list[dict[str, str]],
           at: datetime) -> str:
    e = html.escape
    group_rows = "".join(
        f'<tr class="status-{e(g.status)}"><td>{e(g.group)}</td><td>{e(g.status)}</td><td>{e(g.state)}</td>'
        f"<td>{g.members}</td><td>{g.lag}</td><td>{format_age(g.lag_seconds)}</td>"
        f"<td>{e(', '.join(sorted({p.status.value for p in g.partitions if p.status.value != 'OK'})) or 'OK')}</td>"
        f"</tr>" for g in groups)
    channel_rows = "".join(f"<tr><td>{e(name)}</td><td>{c['received']}</td><td>{c['rejected']}</td>"
                           f"<td>{c['dead_letters']}</td></tr>" for name, c in channels.items())
    letter_rows = "".join(f"<tr><td>{e(d['at'])}</td><td>{e(d['topic'])}</td><td>{e(d['codes'])}</td></tr>"
                          for d in dead_letters) or '<tr><td colspan="3">none</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>Verwijshub status</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}.status-OK td:nth-child(2){{background:#cfc}}
.status-WARN td:nth-child(2){{background:#ffc}}.status-ERR td:nth-child(2){{background:#fcc}}</style></head>
<body><h1>Verwijshub status</h1><p>As of <time id="at">{e(at.isoformat(timespec="seconds"))}</time>;
refreshes every {REFRESH_S} s. Statuses by the lag rules in docs/lag-rules.md.</p>
<h2>Consumer groups</h2><table id="groups"><tr><th>group</th><th>status</th><th>state</th><th>members</th>
<th>lag</th><th>lag in time</th><th>partitions not OK</th></tr>{group_rows}</table>
<h2>Last hour per channel</h2><table id="channels"><tr><th>channel</th><th>received</th><th>rejected (status)</th>
<th>dead letters</th></tr>
{channel_rows}</table>
<h2>Latest dead letters</h2><table id="dead-letters"><tr><th>at</th><th>from topic</th><th>error codes</th></tr>
{letter_rows}</table></body></html>
"""
