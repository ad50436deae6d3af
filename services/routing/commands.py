"""Routing's commands: `registry publish`, `indications import`, `whatif`, and the indications file of `route`.

The parsing and comparing are pure functions; the typer commands around them only read, print and publish.
"""

import asyncio
import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.indications import Indication, YouthIndications
from schemas.lifecycle import ReferralChange
from schemas.referral import Referral
from schemas.registry import REGISTRY_KEY, Registry, RegistrySnapshot
from schemas.routing import RoutingDecision
from services.access.commands import sync_access
from services.dlq.commands import auto_retry, print_replays
from services.dlq.core import Outcome
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.contract import Output
from services.infra.kafka import produce, read_to_end
from services.infra.provisioning import provision_hub_topics
from services.infra.pseudonym import youth_pseudonym
from services.infra.registry_files import (
    RegistryError,
    load_registry,
    read_registry_dir,
)
from services.infra.registry_topic import latest_registry
from services.infra.settings import Settings, get_settings
from services.intake.validation import bsn_passes_elfproef
from services.routing.core import merge_indication
from services.routing.policy import decide

console = Console(stderr=True)
registry_app = typer.Typer(help="The registry routing decides by (teams, postcodes, providers, products, channels).",
                           no_args_is_help=True)
indications_app = typer.Typer(help="Running indications (compacted indications.v1).", no_args_is_help=True)
INDICATION_COLUMNS = ("bsn", "product", "provider_agb", "start", "end")


# -- pure parts ------------------------------------------------------------------------------------
class IndicationsFileError(ValueError):
    """The file has errors; `errors` lists them by line, without the BSN."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_indications_csv(text: str, pseudonym_key: str) -> list[Indication]:
    """CSV with the header `bsn,product,provider_agb,start,end`; keeps the pseudonym, never the BSN.
    Refuses the whole file when any line is wrong, so an import is all or nothing."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(c.strip().lower() for c in reader.fieldnames or ()) != INDICATION_COLUMNS:
        raise IndicationsFileError([f"line 1: the header must be {','.join(INDICATION_COLUMNS)}"])
    indications, errors = [], []
    for line, row in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        bsn = row["bsn"]
        if not bsn_passes_elfproef(bsn):
            errors.append(f"line {line}: the BSN is not 9 digits passing the 11-test")
            continue
        try:
            indication = Indication(pseudonym=youth_pseudonym(bsn, pseudonym_key), product=row["product"],
                                    provider_agb=row["provider_agb"], start=date.fromisoformat(row["start"]),
                                    end=date.fromisoformat(row["end"]))
        except (ValidationError, ValueError) as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors()) if isinstance(exc, ValidationError) \
                else "start/end (YYYY-MM-DD)"
            errors.append(f"line {line}: invalid {fields}")
            continue
        if indication.end < indication.start:
            errors.append(f"line {line}: the end date lies before the start date")
            continue
        indications.append(indication)
    if errors:
        raise IndicationsFileError(errors)
    return indications


def merge_into(current: dict[str, tuple[Indication, ...]], new: list[Indication]) -> dict[str, tuple[Indication, ...]]:
    """The youths whose list changes, with their whole new list."""
    changed: dict[str, tuple[Indication, ...]] = {}
    for indication in new:
        base = changed.get(indication.pseudonym, current.get(indication.pseudonym, ()))
        changed[indication.pseudonym] = merge_indication(base, indication)
    return changed


@dataclass(frozen=True)
class Change:
    referral: Referral
    before: RoutingDecision
    after: RoutingDecision


def describe(decision: RoutingDecision) -> str:
    target = decision.recipient.id if decision.recipient else "rejected"
    flags = f" [{', '.join(decision.flags)}]" if decision.flags else ""
    return f"{target} ({decision.rule}){flags}"


def what_if(referrals: list[Referral], current: Registry, new: Registry, now: datetime) -> list[Change]:
    """Each referral decided under both registries (on its own referral date); the ones that differ."""
    changes = []
    for referral in referrals:
        before, after = decide(referral, current, now), decide(referral, new, now)
        if (before.recipient, before.rule, before.flags) != (after.recipient, after.rule, after.flags):
            changes.append(Change(referral, before, after))
    return changes


def referrals_from_lines(lines: list[str]) -> list[Referral]:
    """JSON lines of canonical referrals, or of routing decisions (their referral is taken)."""
    referrals = []
    for text in lines:
        if text.strip():
            data = json.loads(text)
            referrals.append(Referral.model_validate(data.get("referral", data) if "trace" in data else data))
    return referrals


# -- Kafka -----------------------------------------------------------------------------------------
REGISTRY = Output("registry", topics.REGISTRY, RegistrySnapshot,
                  "`registry publish`: the registry files as reviewed, one record (key `registry`), compacted; "
                  "routing, the notifier, intake and the gateway follow it.")
IMPORTED = Output("indications-import", topics.INDICATIONS, YouthIndications,
                  "`indications import`: running indications at go-live, each youth's whole list keyed by its "
                  "pseudonym; compacted.")
WRITES = (REGISTRY, IMPORTED)
"""What these commands write (as the admin)."""


def _admin(settings: Settings) -> KafkaConnection:
    """These commands change or read the hub's own topics: only the admin principal may."""
    return settings.connection(principals.ADMIN)


async def publish_registry(settings: Settings, directory: Path) -> Registry:
    """Validate the files, create the topics of any new team or provider, then publish one snapshot."""
    registry = load_registry(directory)
    provision_hub_topics(settings, registry)
    snapshot = RegistrySnapshot(version=registry.version, files=read_registry_dir(directory),
                                published_at=SystemClock().now())
    await produce(_admin(settings), [REGISTRY.record(snapshot, REGISTRY_KEY)])
    return registry


async def publish_registry_unless_present(settings: Settings, directory: Path) -> bool:
    """For `up`: publish the files only when `registry.v1` holds no registry yet, so that a registry
    published live (a provider's stop) survives a restart of the hub. Returns whether it published."""
    if await latest_registry(_admin(settings)) is not None:
        return False
    await publish_registry(settings, directory)
    return True


async def import_indications(settings: Settings, indications: list[Indication]) -> int:
    current: dict[str, tuple[Indication, ...]] = {}
    for key, value in await read_to_end(_admin(settings), topics.INDICATIONS):
        if key is not None:
            current[key.decode()] = tuple(YouthIndications.model_validate_json(value).indications) if value else ()
    changed = merge_into(current, indications)
    await produce(_admin(settings), [
        IMPORTED.record(YouthIndications(pseudonym=pseudonym, indications=list(items)), pseudonym)
        for pseudonym, items in changed.items()])
    return len(changed)


def load_indications_file(path: Path, settings: Settings) -> list[Indication]:
    try:
        return parse_indications_csv(path.read_text(encoding="utf-8"), settings.youth_pseudonym_key())
    except IndicationsFileError as exc:
        for error in exc.errors:
            console.print(f"[red]{path}: {error}[/red]")
        raise typer.Exit(2) from exc


def _load(directory: Path) -> Registry:
    try:
        return load_registry(directory)
    except (RegistryError, OSError) as exc:
        console.print(f"[red]registry {directory} refused: {exc}[/red]")
        raise typer.Exit(2) from exc


# -- commands --------------------------------------------------------------------------------------
@registry_app.command("publish")
def registry_publish(directory: Annotated[Path | None, typer.Argument(
        help="Registry directory (default: VERWIJSHUB_REGISTRY_DIR, else deploy/registry).")] = None) -> None:
    """Validate the registry files and publish them to the compacted registry.v1; routing follows live.
    A malformed registry is refused (exit 2) and nothing is published."""
    settings = get_settings()
    directory = directory or settings.registry_dir
    _load(directory)
    registry = asyncio.run(publish_registry(settings, directory))
    if settings.secured:  # a new recipient gets its principal and ACLs, a stopped provider loses write
        sync_access(settings, registry)
    console.print(f"registry {registry.version} published to {topics.REGISTRY}: {len(registry.teams)} teams, "
                  f"{len(registry.providers)} providers, {len(registry.products)} products")
    if settings.dlq_auto_retries:  # a transient cause may have passed: a product the registry now knows
        retried = asyncio.run(auto_retry(settings))
        resubmitted = sum(r.marker.outcome is Outcome.RESUBMITTED for r in retried)
        console.print(f"dead letters of a transient cause retried: {len(retried)}, re-submitted: {resubmitted}")
        if retried:
            print_replays(retried, dry_run=False)


@indications_app.command("import")
def indications_import(file: Annotated[Path, typer.Argument(help="CSV: bsn,product,provider_agb,start,end")]) -> None:
    """Import the running indications that exist at go-live into indications.v1 (pseudonyms, not BSNs)."""
    settings = get_settings()
    indications = load_indications_file(file, settings)
    youths = asyncio.run(import_indications(settings, indications))
    console.print(f"{len(indications)} indications of {youths} youths published to {topics.INDICATIONS}")


def whatif(
    registry_dir: Annotated[Path, typer.Option("--registry", help="The new registry directory to compare with.")],
    from_topic: Annotated[bool, typer.Option("--from-topic", help="Re-decide referrals.normalised.v1.")] = False,
    from_file: Annotated[Path | None, typer.Option("--from-file", help="JSON lines of referrals or decisions.")]
    = None,
    current_dir: Annotated[Path | None, typer.Option("--current", help="Current registry directory (default: "
                                                     "registry.v1 with --from-topic, else the configured one).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON instead of a table.")] = False,
) -> None:
    """Re-decide past referrals under the current and a new registry and show the decisions that change."""
    settings = get_settings()
    if from_topic == (from_file is not None):
        console.print("[red]give exactly one of --from-topic and --from-file[/red]")
        raise typer.Exit(2)
    new = _load(registry_dir)
    current = _load(current_dir) if current_dir else None
    if from_topic:
        records = asyncio.run(read_to_end(_admin(settings), topics.NORMALISED))
        referrals = []
        for _, value in records:
            try:
                referrals.append(Referral.model_validate_json(value or b""))
            except ValidationError:
                if not _is_change(value):  # an amendment or cancellation (ReferralChange) decides nothing anew
                    console.print("skipped an unreadable record on the topic (routing dead-lettered it)")
        current = current or asyncio.run(latest_registry(_admin(settings)))
    else:
        referrals = referrals_from_lines(from_file.read_text(encoding="utf-8").splitlines())
    current = current or _load(settings.registry_dir)
    changes = what_if(referrals, current, new, SystemClock().now())
    if as_json:
        print(json.dumps({"current": current.version, "new": new.version, "referrals": len(referrals),
                          "changed": [{"referral_id": c.referral.referral_id,
                                       "referral_date": c.referral.referral_date.isoformat(),
                                       "product": c.referral.product,
                                       "before": c.before.model_dump(mode="json", exclude={"referral"}),
                                       "after": c.after.model_dump(mode="json", exclude={"referral"})}
                                      for c in changes]}, indent=2))
        return
    table = Table(title=f"what if: registry {current.version} -> {new.version}: {len(changes)} of "
                        f"{len(referrals)} decisions change")
    for column in ("referral", "date", "product", "before", "after", "why now"):
        table.add_column(column, overflow="fold")
    for c in changes:
        table.add_row(c.referral.referral_id[:12], c.referral.referral_date.isoformat(), c.referral.product or "-",
                      escape(describe(c.before)), escape(describe(c.after)),
                      escape(c.after.trace[-1].reason))
    Console(width=200).print(table)


def _is_change(value: bytes | None) -> bool:
    try:
        ReferralChange.model_validate_json(value or b"")
    except ValidationError:
        return False
    return True
