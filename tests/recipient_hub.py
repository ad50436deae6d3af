"""The recipient API's end-to-end helpers, shared by its test modules: the whole hub under `verwijshub up` on a
broker of the module's own, spoken to with curl as a recipient would."""

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.referral import Channel
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
from tests.conftest import TestKafka, start_hub, stop_hub
from tests.gateway_clients import HttpAnswer, curl
from tests.kafka_client import read_topic
from tests.referrals import EXAMPLE_BSN, random_bsn, sender

EXAMPLES = REPO_ROOT / "schemas" / "examples" / "gp"
FOR_A_PROVIDER = EXAMPLES / "zorgdomein-r4-servicerequest-coverage.json"
FOR_A_TEAM = EXAMPLES / "zorgdomein-document-basis-jeugdhulp.json"
FHIR_JSON = "application/fhir+json"


@dataclass
class Hub:
    kafka: TestKafka
    gateway: str
    api: str
    ca: Path
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_hub(self.kafka, self.log, env=self.env)

    def stop(self) -> None:
        if self.process is not None:
            stop_hub(self.process)
            self.process = None

    def token(self, principal: str) -> str:
        """As an operator issues it: `verwijshub access token <principal>`."""
        run = subprocess.run([sys.executable, "-m", "services.cli", "access", "token", principal],
                             env={**os.environ, **self.kafka.env()}, capture_output=True, text=True, cwd=REPO_ROOT,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    def get(self, path: str, token: str | None) -> HttpAnswer:
        return curl(self.api + path, self.ca, token)

    def send(self, method: str, path: str, token: str, body: Any, if_match: str | None,
             content_type: str = FHIR_JSON) -> HttpAnswer:
        return curl(self.api + path, self.ca, token, json.dumps(body).encode(), content_type, method=method,
                    headers={"If-Match": if_match} if if_match else None)

    def refer(self, document: Path) -> tuple[str, dict]:
        """A ZorgDomein document of a youth and ZD number of its own, through the gateway: the hub referral id and
        the routing decision's recipient."""
        text = document.read_text()
        zd_number = json.loads(text)["entry"][0]["resource"]["identifier"]["value"]
        body = text.replace(zd_number, f"ZD{uuid.uuid4().int % 10**9:09d}").replace(EXAMPLE_BSN, random_bsn())
        answer = curl(self.gateway + "/fhir/Bundle", self.ca,
                      TokenStore(self.kafka.secrets).issue(principals.referrer(sender(Channel.GP).id)), body.encode())
        assert answer.status == 201, answer.body
        referral_id = answer.headers["location"].rsplit("/", 1)[1]
        (decision,) = asyncio.run(read_topic(self.kafka.admin, topics.DECISIONS,
                                             lambda r: json.loads(r.value)["referral_id"] == referral_id, 1))
        return referral_id, json.loads(decision.value)["recipient"]

    def statuses(self, referral_id: str, count: int, settle_s: float = 0.0) -> list[str]:
        records = asyncio.run(read_topic(self.kafka.admin, topics.status(Channel.GP),
                                         lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                         timeout_s=60, settle_s=settle_s))
        return [json.loads(r.value)["status"] for r in records]

    def feedback(self, topic: str, referral_id: str, count: int, settle_s: float = 0.0) -> list[dict]:
        records = asyncio.run(read_topic(self.kafka.admin, topic,
                                         lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                         timeout_s=60, settle_s=settle_s))
        return [json.loads(r.value) for r in records]


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:.0f}s: {what}")


def task_of(hub: Hub, token: str, owner: str, referral_id: str, query: str = "") -> dict | None:
    """The referral's Task in the recipient's poll, following `next` links."""
    url = f"/Task?owner={owner}&_count=2{query}"
    while url:
        answer = hub.get(url, token)
        assert answer.status == 200, answer.body
        page = answer.json()
        assert page["resourceType"] == "Bundle" and page["type"] == "searchset"
        for entry in page.get("entry", []):
            if entry["resource"]["groupIdentifier"]["value"] == referral_id:
                return entry["resource"]
        url = next((link["url"].split("/fhir", 1)[1] for link in page["link"] if link["relation"] == "next"), "")
    return None
