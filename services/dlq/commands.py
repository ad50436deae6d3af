"""`verwijshub dlq list|show|replay`: what is stuck, why, since when, and get it through after a fix.

They run as the admin principal, the only one that may read the dead-letter topic (raw personal data). `list`,
`show` and `replay` print ids, times, channels, origins, error codes with their locations and referral ids,
never the content; only `show --raw` prints the raw message, refused unless this process connects as the
admin, and each such look is written to the log as an audit line (who, which id, when; no content).
"""

import asyncio
import json
import sys
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.dlq import store
from services.dlq.core import (
    Outcome,
    State,
    check,
    due_for_auto_retry,
    parse_since,
    row,
    select,
)
from services.infra import principals
from services.infra.clock import Clock, FileClock, SystemClock
from services.infra.connection import KafkaConnection
from services.infra.logging import configure_logging, get_logger
from services.infra.settings import Settings, get_settings

console = Console(stderr=True)
dlq_app = typer.Typer(help="Dead letters (referrals.dlq.v1): list, inspect, re-process after a fix.",
                      no_args_is_help=True)

ChannelFilter = Annotated[str | None, typer.Option("--channel", "-c", help="Only this channel (gp, gi, ...).")]
CodeFilter = Annotated[str | None, typer.Option("--code", help="Only dead letters with this error code.")]
SinceFilter = Annotated[str | None, typer.Option("--since", help="Only since: 2h, 30m, 1d, or an ISO 8601 time.")]


def _clock(settings: Settings) -> Clock:
    return FileClock(settings.clock_file) if settings.clock_file else SystemClock()


def _admin(settings: Settings) -> KafkaConnection:
    configure_logging("dlq", settings.log_level, settings.log_file)
    return settings.connection(principals.ADMIN)


def _since(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        console.print(f"[red]--since {escape(text)}: give 2h, 30m, 1d or an ISO 8601 time[/red]")
        raise typer.Exit(2) from exc


@dlq_app.command("list")
def dlq_list(channel: ChannelFilter = None, code: CodeFilter = None, since: SinceFilter = None,
             state: Annotated[State, typer.Option("--state", help="pending, replayed or all.")] = State.ALL,
             as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False) -> None:
    """Each dead letter: id, time, channel, origin, error codes with locations, the referrer's referral id when
    readable, and its state (pending, or replayed with the outcome). Never content."""
    settings = get_settings()
    kafka, now = _admin(settings), _clock(settings).now()

    async def gather():
        letters, known = await store.dead_letters(kafka), await store.markers(kafka)
        await store.publish_summary(kafka, letters, known, now)  # operations' view of what is pending
        return letters, known, await store.registry_in_force(kafka, settings)

    letters, known, registry = asyncio.run(gather())
    chosen = select(letters, known, channel=channel, code=code, since=_since(since, now), state=state)
    key = settings.youth_pseudonym_key()
    rows = [row(d, known.get(d.id), check(d, registry, now, pseudonym_key=key,
                                          max_bytes=settings.max_message_bytes).referrer_referral_id)
            for d in chosen]
    if as_json:
        for r in rows:
            print(json.dumps(r.as_json()))
        return
    table = Table(title=f"dead letters: {len(rows)} shown, "
                        f"{len(select(letters, known, state=State.PENDING))} pending of {len(letters)}")
    for column in ("id", "time (UTC)", "channel", "origin", "errors", "referral id", "state", "outcome"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.id, r.at.isoformat(timespec="seconds"), r.channel, r.origin, escape(" ".join(r.errors)),
                      escape(r.referral_id or "-"), r.state.value,
                      escape(r.outcome + (f" [{r.attempts} attempts]" if r.attempts > 1 else "")))
    Console(width=220).print(table)


@dlq_app.command("show")
def dlq_show(dead_letter_id: Annotated[str, typer.Argument(metavar="ID", help="<partition>-<offset>, as listed.")],
             raw: Annotated[bool, typer.Option("--raw", help="Also print the raw message (admin only; "
                                               "audited).")] = False) -> None:
    """One dead letter in full detail, without content; with --raw the raw message and the errors' messages."""
    settings = get_settings()
    kafka, now = _admin(settings), _clock(settings).now()
    log = get_logger(command="dlq show")
    if raw and kafka.username != principals.ADMIN:
        log.warning("dead letter raw view refused", who=kafka.username, dead_letter_id=dead_letter_id,
                    at=now.isoformat())
        console.print(f"[red]--raw is for the admin principal {principals.ADMIN} only (this process connects as "
                      f"{escape(kafka.username or '-')})[/red]")
        raise typer.Exit(1)

    async def gather():
        letters, known = await store.dead_letters(kafka), await store.markers(kafka)
        return letters, known, await store.registry_in_force(kafka, settings)

    letters, known, registry = asyncio.run(gather())
    letter = next((d for d in letters if d.id == dead_letter_id), None)
    if letter is None:
        console.print(f"[red]no dead letter {escape(dead_letter_id)} (ids as `dlq list` shows them)[/red]")
        raise typer.Exit(1)
    now_check = check(letter, registry, now, pseudonym_key=settings.youth_pseudonym_key(),
                      max_bytes=settings.max_message_bytes)
    marker = known.get(letter.id)
    detail = {
        **row(letter, marker, now_check.referrer_referral_id).as_json(),
        "bytes": len(letter.raw), "transient": letter.transient, "replay_of": letter.replay_of,
        "errors": [{"code": e["code"], "location": e["location"], **({"message": e["message"]} if raw else {})}
                   for e in letter.errors],
        "origin_headers": sorted(letter.origin_headers) if not raw else letter.origin_headers,
        "now": {"accepted": now_check.accepted, "codes": now_check.codes, "routing": now_check.routing,
                "registry": registry.version},
        "marker": marker.model_dump(mode="json") if marker else None,
    }
    if raw:
        detail["key"] = letter.key.decode(errors="replace") if letter.key is not None else None
        log.warning("dead letter raw view", who=kafka.username, dead_letter_id=letter.id, at=now.isoformat())
    print(json.dumps(detail, indent=2))
    if raw:
        print("--- raw message ---")
        sys.stdout.flush()
        sys.stdout.buffer.write(letter.raw + b"\n")


@dlq_app.command("replay")
def dlq_replay(ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Dead letters by id "
                                                               "(any state); none: the filters choose.")] = None,
               channel: ChannelFilter = None, code: CodeFilter = None, since: SinceFilter = None,
               state: Annotated[State, typer.Option("--state", help="With filters: pending (default), replayed "
                                                    "or all.")] = State.PENDING,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="Check offline and print; write nothing.")]
               = False) -> None:
    """Re-submit dead letters on their origin topic (original key, header `replay-of`) after checking each
    offline with the adapter and the routing policy; those still rejected stay pending. Each replay leaves a
    marker on dlq.replays.v1; intake's ledger makes a second replay, or a referral sent again, have no effect."""
    settings = get_settings()
    kafka, now = _admin(settings), _clock(settings).now()
    if ids and (channel or code or since):
        console.print("[red]give ids or filters, not both[/red]")
        raise typer.Exit(2)

    async def run():
        letters, known = await store.dead_letters(kafka), await store.markers(kafka)
        chosen = select(letters, known, ids=ids, state=State.ALL) if ids else \
            select(letters, known, channel=channel, code=code, since=_since(since, now), state=state)
        missing = sorted(set(ids or ()) - {d.id for d in chosen})
        results = await store.replay(kafka, settings, chosen, known, at=now, dry_run=dry_run)
        if not dry_run:
            await store.publish_summary(kafka, letters, {**known, **{r.letter.id: r.marker for r in results}}, now)
        return missing, results

    missing, results = asyncio.run(run())
    for dead_letter_id in missing:
        console.print(f"[red]no dead letter {escape(dead_letter_id)}[/red]")
    print_replays(results, dry_run)
    get_logger(command="dlq replay").info(
        "dead letters replayed" if not dry_run else "dead letters checked (dry run)", who=kafka.username,
        dead_letter_ids=[r.letter.id for r in results], outcomes=[r.marker.outcome.value for r in results])
    if missing:
        raise typer.Exit(1)


def print_replays(results: list[store.Replayed], dry_run: bool) -> None:
    table = Table(title=("dry run, nothing written: " if dry_run else "") + f"{len(results)} dead letters")
    for column in ("id", "channel", "referral id", "now", "routing now", "done"):
        table.add_column(column, overflow="fold")
    for r in results:
        now = "accepted" if r.check.accepted else f"still rejected: {' '.join(r.check.codes)}"
        done = {Outcome.RESUBMITTED: f"re-submitted to {r.letter.origin_topic}",
                Outcome.ALREADY_ACCEPTED: "already accepted (sent again by the referrer): nothing re-submitted",
                Outcome.STILL_REJECTED: "not re-submitted (pending)"}[r.marker.outcome]
        table.add_row(r.letter.id, r.letter.channel, escape(r.check.referrer_referral_id or "-"), escape(now),
                      escape(r.check.routing or "-"), ("would be: " if dry_run else "") + done)
    Console(width=220).print(table)


async def auto_retry(settings: Settings, clock: Clock | None = None) -> list[store.Replayed]:
    """After a registry was published: replay the pending dead letters of a transient cause (PRODUCT_UNKNOWN)
    with fewer than VERWIJSHUB_DLQ_AUTO_RETRIES attempts so far."""
    kafka = settings.connection(principals.ADMIN)
    letters, known = await store.dead_letters(kafka), await store.markers(kafka)
    due = due_for_auto_retry(letters, known, settings.dlq_auto_retries)
    now = (clock or _clock(settings)).now()
    results = await store.replay(kafka, settings, due, known, at=now, dry_run=False, automatic=True)
    await store.publish_summary(kafka, letters, {**known, **{r.letter.id: r.marker for r in results}}, now)
    return results
