"""`verwijshub check` as docs/design.md specifies it, for every channel: exit 0 with the Referral, exit 1 with the errors."""

import json
import subprocess
import sys

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


@pytest.mark.parametrize("name", ["stu3-message-basis-jeugdhulp.json", "zorgdomein-stu3-stylesheet.json",
                                  "zorgdomein-stu3-referralrequest-coverage.json"])
def test_check_accepts_a_gp_referral_in_fhir_stu3(name):
    result = CliRunner().invoke(app, ["check", "--channel", "gp", str(EXAMPLES / "gp" / name)])
    assert result.exit_code == 0, result.output
    referral = json.loads(result.stdout)
    assert (referral["fhir_version"], referral["youth"]["bsn"]) == ("3.0", "999911120")


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


NASTY = {"deep nesting": b"[" * 100_000, "a number of 5000 digits": b'{"a": ' + b"9" * 5000 + b"}",
         "a lone surrogate": b'{"a": "\\ud800"}', "invalid UTF-8": b"\xff\xfe\xfd", "a NUL byte": b"MSH|\x00",
         "HL7 repetitions": b"MSH|^~\\&|A|B|C|D|20260312||REF^I12|1|P|2.5\rPID|1||" + b"~" * 200_000}


@pytest.mark.parametrize("command", ["check", "route"])
@pytest.mark.parametrize("channel", list(Channel))
def test_check_and_route_refuse_pathological_input_without_a_traceback(command, channel):
    for name, raw in NASTY.items():
        result = CliRunner().invoke(app, [command, "--channel", channel.value, "-"], input=raw)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output)
        assert "Traceback" not in result.output
        output = json.loads(result.stdout)
        assert output["rejected"] is True and output["errors"][0]["code"], name


def test_check_as_a_process_prints_the_rejection_not_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000)
    result = subprocess.run([sys.executable, "-m", "services.cli", "check", "--channel", "gp", str(path)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [e["code"] for e in json.loads(result.stdout)["errors"]] == ["UNPARSEABLE"]
