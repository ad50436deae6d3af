"""Every example under schemas/examples/<channel>/ against its `expected.json`: the documented codes are tested codes."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.referral import Channel, Referral
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.app import PARSERS
from services.intake.outcome import Rejection

EXAMPLES = REPO_ROOT / "schemas" / "examples"
PRODUCTS = frozenset(load_registry(REPO_ROOT / "deploy" / "registry").products)
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)


def _cases() -> list[tuple[Channel, Path, list[str]]]:
    cases = []
    for channel in Channel:
        expected = json.loads((EXAMPLES / channel.value / "expected.json").read_text())
        cases += [(channel, EXAMPLES / channel.value / name, codes) for name, codes in expected.items()]
    return cases


CASES = _cases()


def test_every_channel_documents_a_valid_and_at_least_three_invalid_examples():
    for channel in Channel:
        mine = [codes for c, _, codes in CASES if c is channel]
        assert sum(1 for codes in mine if not codes) >= 1, channel
        assert sum(1 for codes in mine if codes) >= 3, channel
        files = {p.name for p in (EXAMPLES / channel.value).iterdir()} - {"expected.json"}
        assert files == {p.name for c, p, _ in CASES if c is channel}, "every example file has its expectation"


@pytest.mark.parametrize(("channel", "path", "codes"), CASES, ids=[f"{c}/{p.name}" for c, p, _ in CASES])
def test_example_gives_its_documented_outcome(channel, path, codes):
    outcome = PARSERS[channel](path.read_bytes(), known_products=PRODUCTS, pseudonym_key="k", received_at=NOW)
    if not codes:
        assert isinstance(outcome, Referral), outcome
        assert outcome.channel is channel
        assert outcome.youth.bsn == "999911120"
        assert outcome.referral_date.isoformat() == "2026-03-12"
    else:
        assert isinstance(outcome, Rejection)
        assert sorted(e.code.value for e in outcome.errors) == sorted(codes)
        assert all(e.message and e.location is not None for e in outcome.errors)


def test_channels_page_lists_every_example_with_its_codes():
    page = (REPO_ROOT / "schemas" / "CHANNELS.md").read_text()
    for channel, path, codes in CASES:
        row = next((line for line in page.splitlines() if f"examples/{channel}/{path.name})" in line), None)
        assert row is not None, f"{channel}/{path.name} is not documented"
        assert all(f"`{code}`" in row for code in codes) and (codes or "accepted" in row)
