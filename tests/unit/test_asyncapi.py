"""The AsyncAPI document: every topic of the hub in it with its message, valid by the AsyncAPI project's own parser
(`@asyncapi/parser`, installed by `make asyncapi-parser` from tests/asyncapi/package-lock.json)."""

import copy
import json
import subprocess
from pathlib import Path

import pytest

from services.infra import topics
from services.infra.contract import Output, address_pattern
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.notifier.app import HANDOVERS
from tests.system_tools import require, require_installed

DOCUMENT = json.loads((REPO_ROOT / "schemas" / "asyncapi.json").read_text())
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
VALIDATOR = REPO_ROOT / "tests" / "asyncapi" / "validate.mjs"


def validate(path: Path) -> tuple[int, list[dict]]:
    """The parser's exit code and its diagnostics of the document at `path`."""
    node = require("node")
    require_installed(VALIDATOR.parent / "node_modules" / "@asyncapi" / "parser", "the AsyncAPI parser",
                      "`make asyncapi-parser` (npm ci in tests/asyncapi)")
    run = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=60)
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_the_document_parses_without_errors():
    code, diagnostics = validate(REPO_ROOT / "schemas" / "asyncapi.json")
    assert code == 0 and not [d for d in diagnostics if d["severity"] == 0], diagnostics


def test_the_parser_reports_an_error_in_a_broken_document(tmp_path):
    """So the check above can fail: a channel naming a message the document does not hold."""
    broken = copy.deepcopy(DOCUMENT)
    broken["components"]["messages"].pop("notifier:handovers-wij:Message")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    code, diagnostics = validate(tmp_path / "broken.json")
    assert code == 1 and {d["code"] for d in diagnostics if d["severity"] == 0} == {"invalid-ref"}


def channels_of(topic: str) -> list[str]:
    """The channels of a topic: its own address, or a family's (`{parameter}` standing for one name segment);
    a subscription's regex does not count, since a recipient's developer looks a topic up by its name."""
    return [title for title, channel in DOCUMENT["channels"].items() if address_pattern(channel["address"]).fullmatch(topic)]


def payload_of(title: str) -> dict:
    (reference,) = DOCUMENT["channels"][title]["messages"].values()
    return DOCUMENT["components"]["messages"][reference["$ref"].rsplit("/", 1)[1]]["payload"]


@pytest.mark.parametrize("topic", topics.all_topics(REGISTRY))
def test_every_topic_of_the_hub_has_a_channel_with_its_message(topic):
    found = channels_of(topic)
    assert found, f"{topic} is in no channel of schemas/asyncapi.json"
    assert all(payload_of(title) for title in found)


def test_a_recipients_topic_carries_the_fhir_handover_and_the_notices_with_their_headers():
    topic = topics.wij_handovers("centrum")
    assert sorted(channels_of(topic)) == ["notifier:amendments-wij", "notifier:handovers-wij", "notifier:notices-wij",
                                          "recipients:handovers-wij"]
    assert payload_of("notifier:handovers-wij") == {"$ref": "#/components/schemas/Bundle"}
    assert payload_of("notifier:notices-wij") == {"$ref": "#/components/schemas/RecipientNotice"}
    (reference,) = DOCUMENT["channels"]["notifier:handovers-wij"]["messages"].values()
    message = DOCUMENT["components"]["messages"][reference["$ref"].rsplit("/", 1)[1]]
    assert message["contentType"] == "application/fhir+json"
    assert message["headers"]["properties"]["schema"]["examples"] == ["verwijshub.Handover/1"]
    assert DOCUMENT["channels"]["notifier:handovers-wij"]["parameters"] == {
        "team": {"description": "A WIJ team's id (`deploy/registry/teams.json`)."}}
    assert DOCUMENT["channels"]["notifier:handovers-wij"]["x-access"] == {
        "publish": ["verwijshub-notifier"], "subscribe": ["verwijshub-recipients", "wij-<id>"]}, \
        "the team of its name alone reads it, and the recipient API that serves it"


def test_state_topics_are_tagged_internal_and_no_other():
    tagged = {channel["address"] for channel in DOCUMENT["channels"].values() if channel.get("tags")}
    assert tagged == set(topics.INTERNAL)


def test_an_output_writes_only_its_own_topics_and_message():
    handovers = HANDOVERS["wij"]
    record = handovers.record(b"{}", b"p", topic=topics.wij_handovers("centrum"), correlation_id="r")
    assert record.headers["schema"] == "verwijshub.Handover/1"
    assert record.headers["content-type"] == "application/fhir+json"
    with pytest.raises(AssertionError):
        handovers.record(b"{}", b"p", topic=topics.provider_handovers("98000011"))
    with pytest.raises(AssertionError):
        Output("x", topics.ALERTS, bytes, "raw", schema="x/1").record("not bytes", b"k")


def outputs_in(*modules) -> set[Output]:
    found = set()
    for module in modules:
        for value in vars(module).values():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else [value]
            found |= {v for v in values if isinstance(v, Output)}
    return found


def test_every_output_a_module_defines_is_in_the_writes_the_document_is_made_of():
    """An output built but left out of `writes` would be written without being in the contract."""
    from services.dlq import store as dlq_store
    from services.intake import app as intake_app, ledger
    from services.notifier import app as notifier_app
    from services.routing import app as routing_app, commands, store

    assert outputs_in(intake_app, ledger) == set(intake_app.Intake.writes)
    assert outputs_in(routing_app, store) == set(routing_app.Routing.writes)
    assert outputs_in(notifier_app) == set(notifier_app.Notifier.writes)
    assert outputs_in(commands) == set(commands.WRITES) and outputs_in(dlq_store) == set(dlq_store.WRITES)
