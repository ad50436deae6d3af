"""Reading the registry from its files (`deploy/registry/` by default) into a validated `Registry`."""

import csv
import hashlib
import json
from pathlib import Path

from schemas.registry import ChannelJoin, Product, Provider, ReferrerOrganisation, Registry, WijTeam

REGISTRY_FILES = ("teams.json", "postcodes.csv", "providers.json", "products.json", "channels.json")
REFERRERS_FILE = "referrers.json"
"""The referrer organisations: optional, so a snapshot published before it existed (and a what-if scenario) still
reads; without it no organisation may send (each needs its own principal, topic and token)."""


class RegistryError(ValueError):
    """The registry files are missing or malformed; the message says which file and what."""


def registry_from_contents(contents: dict[str, str]) -> Registry:
    """Build a registry from the text of each file; pure, so a published registry is read the same way."""
    missing = [name for name in REGISTRY_FILES if name not in contents]
    if missing:
        raise RegistryError(f"registry files missing: {', '.join(missing)}")
    digest = hashlib.sha256()
    for name in (*REGISTRY_FILES, REFERRERS_FILE):
        if name in contents:  # an absent optional file leaves the version of the registries before it
            digest.update(name.encode() + b"\0" + contents[name].encode() + b"\0")
    try:
        teams = [WijTeam.model_validate(t) for t in json.loads(contents["teams.json"])]
        rows = list(csv.DictReader(contents["postcodes.csv"].splitlines()))
        postcodes = {row["pc4"].strip(): (row["team_id"].strip() or None) for row in rows}
        providers = [Provider.model_validate(p) for p in json.loads(contents["providers.json"])]
        products = [Product.model_validate(p) for p in json.loads(contents["products.json"])]
        channels = [ChannelJoin.model_validate(c) for c in json.loads(contents["channels.json"])]
        referrers = [ReferrerOrganisation.model_validate(r) for r in json.loads(contents.get(REFERRERS_FILE, "[]"))]
        registry = Registry(
            version=digest.hexdigest()[:12],
            teams={t.id: t for t in teams},
            postcodes=postcodes,
            providers={p.agb: p for p in providers},
            products={p.code: p for p in products},
            channels={c.channel: c for c in channels},
            referrers={r.id: r for r in referrers},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"registry malformed: {exc}") from exc
    unknown = sorted({t for t in postcodes.values() if t is not None} - registry.teams.keys())
    if unknown:
        raise RegistryError(f"postcodes.csv names teams not in teams.json: {', '.join(unknown)}")
    if len(registry.referrers) != len(referrers):
        raise RegistryError(f"{REFERRERS_FILE} names an organisation id twice")
    if sum(t.central_entrance for t in teams) != 1:
        raise RegistryError("teams.json must have exactly one team with central_entrance: true")
    return registry


def read_registry_dir(directory: Path) -> dict[str, str]:
    return {name: (directory / name).read_text(encoding="utf-8") for name in (*REGISTRY_FILES, REFERRERS_FILE)
            if (directory / name).is_file()}


def load_registry(directory: Path) -> Registry:
    return registry_from_contents(read_registry_dir(directory))
