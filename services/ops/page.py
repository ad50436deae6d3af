"""The status page for people without Grafana: groups and their lag, the recipients (who reads its handovers,
the oldest unread, contact clocks; a recipient LATE or AT RISK OF LOSS is marked), the last hour per channel, the latest
rejections (error codes and time only, never content) and how many dead letters arrived. Read as the
operations principal, which may read no topic that carries personal data. Rendered by a pure function."""

import html
import json
import time
from datetime import UTC, datetime

from schemas.deadletters import DeadLetterSummary
from schemas.referral import Channel
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import partition_spans, read_records
from services.ops.deadletters import oldest_pending_seconds
from services.ops.lag import GroupLag, format_age
from services.ops.recipients import (
    AT_RISK_OF_LOSS,
    LATE_AFTER_WORKING_DAYS,
    LOSS_RISK_SHARE,
    RecipientStatus,
    RecipientView,
    format_duration,
    format_retention,
    format_working_days,
)

REFRESH_S = 5
STATUS_TOPICS = {topics.status(channel): channel.value for channel in Channel}
"""Each channel's status topic, in the channels' order, read with one consumer per look."""


async def last_hour_per_channel(kafka: KafkaConnection) -> dict[str, dict[str, int]]:
    """Per channel in the last hour: referrals received (accepted by intake) and `rejected` statuses sent (by
    intake or routing's rule 1), from the status topics, which carry no BSN, name, address or free text."""
    since = int((time.time() - 3600) * 1000)
    counts = {channel.value: {"received": 0, "rejected": 0} for channel in Channel}
    for record in await read_records(kafka, list(STATUS_TOPICS), since_ms=since):  # one consumer for all five
        try:
            status = json.loads(record.value)["status"]
        except (ValueError, KeyError, TypeError):
            continue
        if status in ("received", "rejected"):
            counts[STATUS_TOPICS[record.topic]][status] += 1
    return counts


async def dead_letters_since(kafka: KafkaConnection, seconds: float) -> int:
    """How many offsets the dead-letter topic grew by in the last `seconds`: dead letters carry the raw message,
    which operations may not read. The services write dead letters in transactions, and each transaction's commit
    marker takes an offset too, so this counts between the dead letters and twice as many."""
    spans = await partition_spans(kafka, [topics.DEAD_LETTERS], since_ms=int((time.time() - seconds) * 1000))
    return sum(span.end - span.since for span in spans.values())


async def latest_rejections(kafka: KafkaConnection, count: int = 10) -> list[dict[str, str]]:
    """The newest `rejected` statuses: when, which channel, the error codes (never content)."""
    letters = []
    for record in await read_records(kafka, list(STATUS_TOPICS), last=count):  # the last few of each partition
        try:
            event = json.loads(record.value)
            if event["status"] != "rejected":
                continue
            codes = sorted({e["code"] for e in event.get("errors") or ()})
        except (ValueError, KeyError, TypeError):
            continue
        letters.append({"at": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="seconds"),
                        "channel": STATUS_TOPICS[record.topic], "codes": ", ".join(codes)})
    return sorted(letters, key=lambda letter: letter["at"], reverse=True)[:count]


RECIPIENT_ORDER = [RecipientStatus.LATE, RecipientStatus.WAITING, RecipientStatus.OK]


def recipient_rows(recipients: list[RecipientView]) -> str:
    """AT RISK OF LOSS first, then LATE, then WAITING, then those with a clock breached or at risk, then the rest;
    by principal."""
    e = html.escape
    ordered = sorted(recipients, key=lambda r: (not r.at_risk_of_loss, RECIPIENT_ORDER.index(r.status),
                                                -r.clocks.breached, -r.clocks.at_risk, r.principal))
    loss = f'<br><strong class="loss-risk">{AT_RISK_OF_LOSS}</strong>'
    return "".join(
        f'<tr class="recipient-{e(r.status)}" id="recipient-{e(r.principal)}"><td>{e(r.principal)}</td>'
        f"<td>{e(r.name)}</td><td>{e(r.status)}{loss if r.at_risk_of_loss else ''}</td>"
        f"<td>{e(', '.join(r.groups)) or 'nobody'}{f' ({r.members} connected)' if r.groups else ''}</td>"
        f"<td>{r.unread}</td><td>{format_duration(r.oldest_unread_seconds)}</td>"
        f"<td>{format_working_days(r.oldest_unread_working_days)}</td>"
        f'<td title="from the {e(r.retention_from)}">{format_retention(r.retention_ms)}</td><td>{r.clocks.open}</td>'
        f"<td>{r.clocks.at_risk}</td><td>{r.clocks.breached}</td></tr>" for r in ordered)


def pending_rows(summary: DeadLetterSummary | None, at: datetime) -> str:
    """Per channel and code: pending dead letters and the age of the oldest (never an id or content)."""
    if summary is None:
        return '<tr><td colspan="4">no summary yet: an admin runs <code>verwijshub dlq list</code></td></tr>'
    return "".join(f"<tr><td>{html.escape(c.channel)}</td><td>{html.escape(c.code)}</td><td>{c.count}</td>"
                   f"<td>{format_duration(max(0.0, (at - c.oldest_at).total_seconds()))}</td></tr>"
                   for c in summary.counts) or '<tr><td colspan="4">none</td></tr>'


def render(groups: list[GroupLag], channels: dict[str, dict[str, int]], rejections: list[dict[str, str]],
           dead_letters_last_hour: int, at: datetime, recipients: list[RecipientView] | None = None,
           pending: DeadLetterSummary | None = None) -> str:
    e = html.escape
    recipients = recipients or []
    late = [r.principal for r in recipients if r.status is RecipientStatus.LATE]
    losing = [r.principal for r in recipients if r.at_risk_of_loss]
    group_rows = "".join(
        f'<tr class="status-{e(g.status)}"><td>{e(g.group)}</td><td>{e(g.status)}</td><td>{e(g.state)}</td>'
        f"<td>{g.members}</td><td>{g.lag}</td><td>{format_age(g.lag_seconds)}</td>"
        f"<td>{e(', '.join(sorted({p.status.value for p in g.partitions if p.status.value != 'OK'})) or 'OK')}</td>"
        f"</tr>" for g in groups)
    channel_rows = "".join(f"<tr><td>{e(name)}</td><td>{c['received']}</td><td>{c['rejected']}</td></tr>"
                           for name, c in channels.items())
    rejection_rows = "".join(f"<tr><td>{e(r['at'])}</td><td>{e(r['channel'])}</td><td>{e(r['codes'])}</td></tr>"
                             for r in rejections) or '<tr><td colspan="3">none</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>Verwijshub status</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}.status-OK td:nth-child(2){{background:#cfc}}
.status-WARN td:nth-child(2){{background:#ffc}}.status-ERR td:nth-child(2){{background:#fcc}}
.recipient-OK td:nth-child(3){{background:#cfc}}.recipient-WAITING td:nth-child(3){{background:#ffc}}
.recipient-LATE td{{background:#fcc;font-weight:bold}}.loss-risk{{color:#fff;background:#b00;padding:0 .3em}}
</style></head>
<body><h1>Verwijshub status</h1><p>As of <time id="at">{e(at.isoformat(timespec="seconds"))}</time>;
refreshes every {REFRESH_S} s. Statuses by the lag rules in docs/lag-rules.md.</p>
<h2>Consumer groups</h2><table id="groups"><tr><th>group</th><th>status</th><th>state</th><th>members</th>
<th>lag</th><th>lag in time</th><th>partitions not OK</th></tr>{group_rows}</table>
<h2>Recipients</h2><p id="recipients-late">{len(late)} of {len(recipients)} recipients LATE (an unread handover
older than {LATE_AFTER_WORKING_DAYS:g} working day){": " + e(", ".join(late)) if late else ""}.
Read means a consumer group of the recipient (<code>&lt;principal&gt;.&lt;name&gt;</code>) committed past it;
clocks as the notifiers last published them.</p>
<p id="recipients-at-risk-of-loss">{len(losing)} of {len(recipients)} recipients {AT_RISK_OF_LOSS} (an unread
handover older than {LOSS_RISK_SHARE:.0%} of its topic's retention: the broker deletes it at the retention, read or
not){": " + e(", ".join(losing)) if losing else ""}.</p>
<table id="recipients"><tr><th>recipient</th><th>name</th><th>status</th><th>read by</th><th>unread</th>
<th>oldest unread</th><th>in working days</th><th>retention</th><th>clocks open</th><th>at risk</th><th>breached</th>
</tr>
{recipient_rows(recipients)}</table>
<h2>Last hour per channel</h2><table id="channels"><tr><th>channel</th><th>received</th><th>rejected (status)</th>
</tr>
{channel_rows}</table>
<p>Dead-letter topic offsets in the last hour, all channels (dead letters and their transactions' commit markers: at most twice the dead letters): <strong id="dead-letters">{dead_letters_last_hour}</strong>
(counted from offsets; their content is not for operations).</p>
<h2>Pending dead letters</h2><p id="dead-letters-pending"><strong>{pending.pending if pending else "?"}</strong>
pending, the oldest waiting <strong>{format_duration(oldest_pending_seconds(pending, at)) if pending else "?"}</strong>;
counted {e(pending.at.isoformat(timespec="seconds")) if pending else "never"} by an admin's
<code>verwijshub dlq list</code>, <code>dlq replay</code> or <code>registry publish</code> (later arrivals are in the
count above). Replay them with <code>verwijshub dlq replay</code>.</p>
<table id="dead-letters-pending-table"><tr><th>channel</th><th>code</th><th>pending</th><th>oldest waiting</th></tr>
{pending_rows(pending, at)}</table>
<h2>Latest rejections</h2><table id="rejections"><tr><th>at</th><th>channel</th><th>error codes</th></tr>
{rejection_rows}</table></body></html>
"""
