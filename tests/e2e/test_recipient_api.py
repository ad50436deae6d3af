"""The recipient API on a real secured broker, under the real `verwijshub up`, spoken to by curl and by a third-party
FHIR client (fhirpy): a GP referral handed over to a provider shows in that provider's poll and nowhere else; the
provider reads the handover, accepts it, reports first contact and closes it with PUT and PATCH; each move is one
feedback record, the referrer's statuses move, a retry has no second effect and a stale If-Match gets 412; a WIJ
team's report of contact stops its contact clock."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, TestKafka
from tests.gateway_clients import HttpAnswer
from tests.kafka_client import read_topic
from tests.recipient_hub import FHIR_JSON, FOR_A_PROVIDER, FOR_A_TEAM, Hub, eventually, task_of

pytestmark = pytest.mark.e2e
BUSINESS = "urn:verwijshub:task-business-status"


@pytest.fixture(scope="module")
def hub(private_kafka: TestKafka) -> Iterator[Hub]:
    """The whole hub as `up` runs it, on a broker of this module's own: on the session's broker, a worker's session
    hub would run a second recipient API in the same consumer group, holding half of the handover partitions (and
    so half of the Tasks), and this module restarts its hub."""
    running = Hub.on_own_ports(private_kafka, ARTIFACTS / "recipient-api")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def code_of(answer: HttpAnswer) -> str:
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome" and answer.headers["content-type"].startswith(FHIR_JSON)
    return outcome["issue"][0]["details"]["coding"][0]["code"]


def test_a_provider_polls_reads_accepts_and_reports_contact_and_another_sees_none_of_it(hub: Hub) -> None:
    for _ in range(3):  # more handovers than one page, so the poll pages
        hub.refer(FOR_A_PROVIDER)
    referral_id, recipient = hub.refer(FOR_A_PROVIDER)
    assert recipient["kind"] == "provider"
    owner = principals.provider(recipient["id"])
    other = next(principals.provider(agb) for agb in ("98000011", "98000022") if agb != recipient["id"])
    token, other_token = hub.token(owner), hub.token(other)
    started = datetime.now(UTC).isoformat()

    task = eventually(lambda: task_of(hub, token, owner, referral_id, "&status=requested"), "the Task in the poll")
    assert task["status"] == "requested" and task["meta"]["versionId"] == "1"
    path = f"/Task/{task['id']}"
    assert task_of(hub, other_token, other, referral_id) is None, "another provider's poll does not show it"
    assert task_of(hub, other_token, owner, referral_id) is None, "nor when it asks for the owner's"
    for asked in (path, "/" + task["focus"]["reference"]):
        refused = hub.get(asked, other_token)
        assert refused.status == 404 and code_of(refused) == "NOT_FOUND", asked
    assert hub.get(path, None).status == 401

    bundle = hub.get("/" + task["focus"]["reference"], token)
    assert bundle.status == 200 and bundle.headers["cache-control"] == "no-store"
    message = bundle.json()["entry"][0]["resource"]
    assert message["type"] == "message" and task["id"] in {e["resource"]["id"] for e in message["entry"]}
    assert hub.get("/metadata", None).json()["resourceType"] == "CapabilityStatement"

    read = hub.get(path, token)
    assert read.headers["etag"] == 'W/"1"'
    accepted = hub.send("PUT", path, token, {**read.json(), "status": "accepted"}, 'W/"1"')
    assert accepted.status == 200 and accepted.headers["etag"] == 'W/"2"', accepted.body
    again = hub.send("PUT", path, token, {**read.json(), "status": "accepted"}, 'W/"1"')
    assert (again.status, again.headers["etag"]) == (200, 'W/"2"'), "the retry is answered, not applied again"
    stale = hub.send("PUT", path, token, {**read.json(), "status": "rejected", "statusReason": {"text": "full"}},
                     'W/"1"')
    assert stale.status == 412 and code_of(stale) == "VERSION_CONFLICT"
    missing = hub.send("PUT", path, token, {**accepted.json(), "status": "completed"}, None)
    assert missing.status == 428 and code_of(missing) == "IF_MATCH_REQUIRED"
    by_another = hub.send("PUT", path, other_token, {**accepted.json(), "status": "completed"}, 'W/"2"')
    assert by_another.status == 404 and code_of(by_another) == "NOT_FOUND"

    contact = [{"op": "replace", "path": "/status", "value": "in-progress"},
               {"op": "add", "path": "/businessStatus", "value": {"coding": [{"system": BUSINESS,
                                                                              "code": "contact-made"}]}},
               {"op": "add", "path": "/executionPeriod", "value": {"start": started}}]
    made = hub.send("PATCH", path, token, contact, 'W/"2"', "application/json-patch+json")
    assert made.status == 200 and made.json()["status"] == "in-progress", made.body
    assert hub.send("PATCH", path, token, contact, 'W/"2"', "application/json-patch+json").status == 200

    feedback = hub.feedback(topics.provider_feedback(recipient["id"]), referral_id, 2, settle_s=3.0)
    assert [f["kind"] for f in feedback] == ["accepted", "contact-made"], "one record per move, retries none"
    assert datetime.fromisoformat(feedback[1]["contact_at"]) == datetime.fromisoformat(started)
    assert hub.statuses(referral_id, 5) == ["received", "routed", "handed-over", "accepted", "contact-made"]
    polled = eventually(lambda: task_of(hub, token, owner, referral_id, f"&status=in-progress&_lastUpdated=gt"
                                                                         f"{quote(started)}"), "the moved Task")
    assert polled["meta"]["versionId"] == "3"


def test_an_ecds_own_fhir_client_polls_reads_and_moves_its_task_to_completed(hub: Hub) -> None:
    """A provider's record system speaking FHIR through a third-party client, fhirpy from PyPI (over requests, the
    hub's CA as `verify`): it polls, following the `next` links itself, reads the handover Bundle by the Task's
    focus, and PUTs the Task accepted, in progress (contact made), completed, each with the If-Match of the version
    it holds (fhirpy's `extra_headers`: the API refuses an update without one)."""
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import MultipleResourcesFound  # what fhirpy raises on 412

    referral_id, recipient = hub.refer(FOR_A_PROVIDER)
    owner = principals.provider(recipient["id"])
    token = hub.token(owner)

    def client(**headers: str) -> SyncFHIRClient:
        return SyncFHIRClient(hub.api, authorization=f"Bearer {token}", extra_headers=headers or None,
                              requests_config={"verify": str(hub.ca), "timeout": 30})

    def polled():
        found = client().resources("Task").search(owner=owner, status="requested").limit(2).fetch_all()
        return next((task for task in found if task["groupIdentifier"]["value"] == referral_id), None)

    def put(version: str, task: dict, **change: Any) -> dict:
        return client(**{"If-Match": f'W/"{version}"'}).resource("Task", **{**task, **change}).save().serialize()

    task = eventually(polled, "the Task in fhirpy's poll").serialize()
    assert task["meta"]["versionId"] == "1"
    bundle = client().reference(reference=task["focus"]["reference"]).to_resource().serialize()
    message = bundle["entry"][0]["resource"]
    assert message["type"] == "message" and task["id"] in {e["resource"]["id"] for e in message["entry"]}

    accepted = put("1", task, status="accepted")
    assert (accepted["status"], accepted["meta"]["versionId"]) == ("accepted", "2")
    assert put("1", task, status="accepted")["meta"]["versionId"] == "2", "the same update again: no second effect"
    with pytest.raises(MultipleResourcesFound, match="VERSION_CONFLICT"):
        put("1", task, status="rejected", statusReason={"text": "full"})
    contact_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    in_progress = put("2", accepted, status="in-progress", executionPeriod={"start": contact_at},
                      businessStatus={"coding": [{"system": BUSINESS, "code": "contact-made"}]})
    assert in_progress["meta"]["versionId"] == "3"
    completed = put("3", in_progress, status="completed")
    assert (completed["status"], completed["meta"]["versionId"]) == ("completed", "4")

    feedback = hub.feedback(topics.provider_feedback(recipient["id"]), referral_id, 3, settle_s=3.0)
    assert [f["kind"] for f in feedback] == ["accepted", "contact-made", "closed"], "one record per move"
    assert datetime.fromisoformat(feedback[1]["contact_at"]) == datetime.fromisoformat(contact_at)
    assert hub.statuses(referral_id, 6) == ["received", "routed", "handed-over", "accepted", "contact-made",
                                            "closed"], "the referrer sees each move; contact made stops its clock"


def open_clocks(hub: Hub, owner: str) -> int | None:
    """The team's open contact clocks, summed over the notifier partitions' latest counts (ops.recipients.v1)."""
    records = asyncio.run(read_topic(hub.kafka.admin, topics.OPS_RECIPIENTS, lambda r: True, 10**6, timeout_s=3))
    latest = {r.key: json.loads(r.value) for r in records if r.value}
    counts = [value["recipients"].get(owner, {}).get("open", 0) for value in latest.values()]
    return sum(counts) if latest else None


def test_a_wij_teams_contact_made_stops_its_contact_clock(hub: Hub) -> None:
    referral_id, recipient = hub.refer(FOR_A_TEAM)
    assert recipient["kind"] == "wij-team"
    owner = principals.wij_team(recipient["id"])
    token = hub.token(owner)
    eventually(lambda: open_clocks(hub, owner) == 1, "the team's contact clock running")
    task = eventually(lambda: task_of(hub, token, owner, referral_id), "the Task in the team's poll")
    moved = hub.send("PUT", f"/Task/{task['id']}", token, {
        **task, "status": "in-progress", "businessStatus": {"coding": [{"system": BUSINESS, "code": "contact-made"}]},
        "executionPeriod": {"start": datetime.now(UTC).isoformat()}}, 'W/"1"')
    assert moved.status == 200, moved.body
    assert hub.statuses(referral_id, 4) == ["received", "routed", "handed-over", "contact-made"]
    eventually(lambda: open_clocks(hub, owner) == 0, "the team's contact clock stopped", timeout_s=120)


def test_the_tasks_are_rebuilt_from_the_state_topic_when_the_hub_starts_again(hub: Hub) -> None:
    """Accepted, then `up` stopped and started: the Task is at its version, the accept sent again still has no
    second effect, and the next move goes through."""
    referral_id, recipient = hub.refer(FOR_A_PROVIDER)
    owner = principals.provider(recipient["id"])
    token = hub.token(owner)
    task = eventually(lambda: task_of(hub, token, owner, referral_id), "the Task in the poll")
    path = f"/Task/{task['id']}"
    assert hub.send("PUT", path, token, {**task, "status": "accepted"}, 'W/"1"').status == 200
    hub.stop()
    hub.start()
    read = eventually(lambda: (answer := hub.get(path, token)).status == 200 and answer, "the Task after the start")
    assert (read.json()["status"], read.headers["etag"]) == ("accepted", 'W/"2"')
    again = hub.send("PUT", path, token, {**task, "status": "accepted"}, 'W/"1"')
    assert (again.status, again.headers["etag"]) == (200, 'W/"2"')
    closed = hub.send("PUT", path, token, {**read.json(), "status": "completed"}, 'W/"2"')
    assert closed.status == 200 and closed.json()["status"] == "completed", closed.body
    feedback = hub.feedback(topics.provider_feedback(recipient["id"]), referral_id, 2, settle_s=3.0)
    assert [f["kind"] for f in feedback] == ["accepted", "closed"]
    assert hub.statuses(referral_id, 5) == ["received", "routed", "handed-over", "accepted", "closed"]


def test_schemathesis_finds_no_server_error_and_every_answer_conforms(hub: Hub) -> None:
    """Driven by the committed schemas/openapi-recipients.json, with a provider's token (its Tasks, if any, and
    every made-up id)."""
    token = hub.token(principals.provider("98000167"))
    run = subprocess.run([str(Path(sys.executable).parent / "schemathesis"), "run",
                          str(REPO_ROOT / "schemas" / "openapi-recipients.json"), "--url", hub.api.removesuffix("/fhir"),
                          "--tls-verify", str(hub.ca), "-H", f"Authorization: Bearer {token}",
                          "--max-examples", "5", "--phases", "examples,fuzzing",
                          "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                          "response_schema_conformance", "--no-color"],
                         capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    (ARTIFACTS / "recipient-api" / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " 0 generated" not in run.stdout, run.stdout[-2000:]
