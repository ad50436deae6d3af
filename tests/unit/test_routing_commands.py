"""The indications file, and the what-if comparison, without a broker."""

import json
from datetime import date

import pytest

from services.infra.pseudonym import youth_pseudonym
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.routing.commands import (
    IndicationsFileError,
    merge_into,
    parse_indications_csv,
    referrals_from_lines,
    what_if,
)
from tests.unit.test_routing_rules import NOW, REGISTRY, referral

SCENARIOS = REPO_ROOT / "deploy" / "registry" / "scenarios"


def test_indications_csv_keeps_the_pseudonym_not_the_bsn():
    text = "bsn,product,provider_agb,start,end\n999911120,45A51,98000022,2025-06-01,2026-12-31\n"
    (indication,) = parse_indications_csv(text, "key")
    assert indication.pseudonym == youth_pseudonym("999911120", "key")
    assert (indication.product, indication.provider_agb, indication.end) == ("45A51", "98000022", date(2026, 12, 31))
    assert "999911120" not in indication.model_dump_json()


def test_a_bad_indications_file_is_refused_whole_with_line_numbers_and_no_bsn():
    text = ("bsn,product,provider_agb,start,end\n999911120,45A51,98000022,2025-06-01,2026-12-31\n"
            "123456789,45A51,98000022,2025-06-01,2026-12-31\n999911120,45A51,9800,2025-06-01,2026-12-31\n"
            "999911120,45A51,98000022,2026-06-01,2025-12-31\n")
    with pytest.raises(IndicationsFileError) as refused:
        parse_indications_csv(text, "key")
    assert refused.value.errors == ["line 3: the BSN is not 9 digits passing the 11-test",
                                    "line 4: invalid provider_agb", "line 5: the end date lies before the start date"]
    assert "123456789" not in str(refused.value)


def test_import_merges_with_what_the_youth_has():
    (first,) = parse_indications_csv("bsn,product,provider_agb,start,end\n999911120,45A51,98000022,2025-06-01,"
                                     "2026-12-31\n", "k")
    second = first.model_copy(update={"product": "45A04"})
    changed = merge_into({first.pseudonym: (first,)}, [second, first])
    assert changed == {first.pseudonym: (second, first)}


def test_whatif_shows_only_the_decisions_that_change():
    new = load_registry(SCENARIOS / "provider-stops-open-house-closes-early")
    refs = [referral(day="2025-03-01", product="45A56", specialist=True, rid="a"), referral(rid="b")]
    changes = what_if(refs, REGISTRY, new, NOW)
    assert [c.referral.referral_id for c in changes] == ["a"]
    assert changes[0].before.recipient.kind == "provider" and changes[0].after.recipient.id == "centrum"


def test_the_shipped_past_referrals_read():
    lines = (SCENARIOS / "past-referrals.jsonl").read_text().splitlines()
    assert len(referrals_from_lines(lines)) == len([line for line in lines if line.strip()]) >= 20


def test_route_command_keeps_a_running_indication_from_the_csv(tmp_path):
    from typer.testing import CliRunner

    from services.cli import app
    from tests.referrals import gp_bytes

    (tmp_path / "ref.json").write_bytes(gp_bytes(product="45A51"))
    (tmp_path / "ind.csv").write_text("bsn,product,provider_agb,start,end\n999911120,45A51,98000022,2025-06-01,"
                                      "2099-12-31\n")
    result = CliRunner().invoke(app, ["route", "--channel", "gp", str(tmp_path / "ref.json"),
                                      "--indications", str(tmp_path / "ind.csv")])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert (decision["rule"], decision["recipient"]["id"]) == ("running-indication", "98000022")
    assert [step["rule"] for step in decision["trace"]] == ["reject-unroutable", "running-indication"]


def test_registry_publish_refuses_a_malformed_registry_before_touching_kafka(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from services.cli import app

    shutil.copytree(REPO_ROOT / "deploy" / "registry", tmp_path / "bad", ignore=shutil.ignore_patterns("scenarios"))
    (tmp_path / "bad" / "providers.json").write_text('[{"agb": "123", "name": "x", "products": []}]')
    result = CliRunner().invoke(app, ["registry", "publish", str(tmp_path / "bad")],
                                env={"VERWIJSHUB_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 2
    assert "refused" in result.output and "agb" in result.output
