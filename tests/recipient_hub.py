"""The recipient API's end-to-end helpers, shared by its test modules: the whole hub under `verwijshub up` on a
broker of the module's own, spoken to with curl as a recipient would."""

import asyncio
import json
import os
import ssl
import threading
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from schemas.referral import Channel
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.settings import REPO_ROOT
from tests.conftest import TestKafka, _free_port, start_hub, stop_hub
from tests.gateway_clients import HttpAnswer, curl
from tests.kafka_client import read_topic
from tests.referrals import EXAMPLE_BSN, random_bsn, sender

EXAMPLES = REPO_ROOT / "schemas" / "examples" / "gp"
FOR_A_PROVIDER = EXAMPLES / "zorgdomein-r4-servicerequest-coverage.json"
FOR_A_TEAM = EXAMPLES / "zorgdomein-document-basis-jeugdhulp.json"
FHIR_JSON = "application/fhir+json"


def topic_records(*args: Any, **options: Any) -> list:
    """`read_topic` in a thread of its own, so that it also serves a test whose thread holds an event loop
    (Playwright's sync API does)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(read_topic(*args, **options))).result()


@dataclass
class Hub:
    kafka: TestKafka
    gateway: str
    api: str
    ca: Path
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_own_ports(cls, kafka: TestKafka, directory: Path, **env: str) -> "Hub":
        """A hub (not started) logging to `directory`/hub.log, with its gateway and recipient API on free ports
        and `env` as further settings."""
        directory.mkdir(parents=True, exist_ok=True)
        gateway_port, api_port = _free_port(), _free_port()
        return cls(kafka, f"https://127.0.0.1:{gateway_port}", f"https://127.0.0.1:{api_port}/fhir",
                   kafka.secrets / "ca.pem", directory / "hub.log",
                   {"VERWIJSHUB_GATEWAY_PORT": str(gateway_port), "VERWIJSHUB_RECIPIENTS_PORT": str(api_port), **env})

    @property
    def inbox(self) -> str:
        return self.api.removesuffix("/fhir") + "/inbox/"

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

    def refer(self, document: Path, bsn: str | None = None) -> tuple[str, dict]:
        """A ZorgDomein document of a ZD number of its own and a youth of its own (`bsn`, or a random one), through
        the gateway: the hub referral id and the routing decision's recipient."""
        text = document.read_text()
        zd_number = json.loads(text)["entry"][0]["resource"]["identifier"]["value"]
        body = text.replace(zd_number, f"ZD{uuid.uuid4().int % 10**9:09d}").replace(EXAMPLE_BSN, bsn or random_bsn())
        answer = curl(self.gateway + "/fhir/Bundle", self.ca,
                      TokenStore(self.kafka.secrets).issue(principals.referrer(sender(Channel.GP).id)), body.encode())
        assert answer.status == 201, answer.body
        referral_id = answer.headers["location"].rsplit("/", 1)[1]
        (decision,) = topic_records(self.kafka.admin, topics.DECISIONS,
                                    lambda r: json.loads(r.value)["referral_id"] == referral_id, 1)
        return referral_id, json.loads(decision.value)["recipient"]

    def statuses(self, referral_id: str, count: int, settle_s: float = 0.0) -> list[str]:
        records = topic_records(self.kafka.admin, topics.status(Channel.GP),
                                lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                timeout_s=60, settle_s=settle_s)
        return [json.loads(r.value)["status"] for r in records]

    def feedback(self, topic: str, referral_id: str, count: int, settle_s: float = 0.0) -> list[dict]:
        records = topic_records(self.kafka.admin, topic,
                                lambda r: json.loads(r.value).get("referral_id") == referral_id, count,
                                timeout_s=60, settle_s=settle_s)
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


class Receiver:
    """A recipient's rest-hook: HTTPS on 127.0.0.1 with a certificate from the hub's CA; keeps every notification
    by the path it came to, with the time it arrived. `down()` closes the port (connection refused), `up()` opens it again."""

    def __init__(self, pem: str) -> None:
        self.port = _free_port()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem)
        self.lock = threading.Lock()
        self.got: list[tuple[str, dict[str, Any], float]] = []
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.got.append((self.path, json.loads(body), time.time()))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, owner: str) -> str:
        return f"https://127.0.0.1:{self.port}/hook/{owner}"

    def notifications(self, owner: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The status Parameters of each notification to `owner`'s hook, as {name: value} with the events."""
        with self.lock:
            bundles = [bundle for path, bundle, _ in self.got if path == f"/hook/{owner}"]
        found = []
        for bundle in bundles:
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
            status = read_status(bundle["entry"][0]["resource"])
            if kind is None or status["type"] == kind:
                found.append({**status, "entries": len(bundle["entry"])})
        return found


def read_status(parameters: dict[str, Any]) -> dict[str, Any]:
    """A backport SubscriptionStatus (Parameters) as {name: value}, its notification-events as (number, focus)."""
    assert parameters["resourceType"] == "Parameters"
    status: dict[str, Any] = {"events": []}
    for parameter in parameters["parameter"]:
        if parameter["name"] == "notification-event":
            parts = {part["name"]: part for part in parameter["part"]}
            status["events"].append((int(parts["event-number"]["valueString"]),
                                     parts["focus"]["valueReference"]["reference"].rsplit("/", 1)[1]))
        else:
            status[parameter["name"]] = next(v for k, v in parameter.items() if k.startswith("value"))
    return status
