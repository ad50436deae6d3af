"""`verwijshub check` as docs/design.md specifies it, for every channel: exit 0 with the Referral, exit 1 with the errors."""

import json

import pytest
from typer.testing import CliRunner

from schemas.referral import Channel
from services.cli import app
from services.infra.settings import REPO_ROOT

EXAMPLES = REPO_ROOT / "schemas" / "examples"


@pytest.mark.parametrize("channel", list(Channel))
def test_check_accepts_the_valid_example_from_a_file_and_from_stdin(channel):
    path = sorted((EXAMPLES / channel.value).glob("valid-*"))[0]
    for args, stdin in (([str(path)], None), (["-"], path.read_bytes())):
        result = CliRunner().invoke(app, ["check", "--channel", channel.value, *args], input=stdin)
        assert result.exit_code == 0, result.output
        referral = json.loads(result.stdout)
        assert referral["channel"] == channel.value and referral["youth"]["bsn"] == "999911120"


@pytest.mark.parametrize("channel", list(Channel))
def test_check_rejects_an_invalid_example_with_exit_1_and_the_documented_codes(channel):
    expected = json.loads((EXAMPLES / channel.value / "expected.json").read_text())
    name, codes = next((n, c) for n, c in expected.items() if c)
    result = CliRunner().invoke(app, ["check", "--channel", channel.value, str(EXAMPLES / channel.value / name)])
    assert result.exit_code == 1
    output = json.loads(result.stdout)
    assert output["rejected"] is True
    assert sorted(e["code"] for e in output["errors"]) == sorted(codes)
    assert all(set(e) == {"code", "location", "message"} for e in output["errors"])
