"""`verwijshub up` runs each service as its own OS process (services/supervisor.py): behind the hub's one port
`/readyz` and `/metrics` speak for them all; each process holds its own credential and no other secret (none the
admin's password, another service's or the CA's key, only intake the pseudonym key: neither in its environment nor
in its memory); a child that dies stops the hub with exit 1, naming it."""

import asyncio
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.referral import Channel
from services.infra import principals, topics
from services.infra.secrets import PSEUDONYM_KEY_FILE, CredentialStore
from services.infra.tls import LocalCa
from tests.conftest import ARTIFACTS, TestKafka, hub_env, start_hub, stop_hub
from tests.hub_logs import log_events
from tests.kafka_client import produce
from tests.referrals import gp_bundle, random_bsn, sender

pytestmark = pytest.mark.e2e
SERVICES = ("intake", "routing", "notifier", "gateway", "analytics", "recipients")


class Up:
    def __init__(self, kafka: TestKafka, directory: Path) -> None:
        self.kafka, self.log_file = kafka, directory / "hub.log"
        self.env = hub_env(kafka, self.log_file)
        self.port = int(self.env["VERWIJSHUB_METRICS_PORT"])
        self.process = start_hub(kafka, self.log_file, env=self.env)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def children(self) -> dict[str, int]:
        """Each service's process id, as `up` logged them when ready."""
        ready = [line for line in log_events(self.log_file) if line.get("event") == "services ready"]
        return ready[-1]["pids"]

    def log(self) -> list[dict]:
        return log_events(self.log_file)


@pytest.fixture(scope="module")
def up(private_kafka: TestKafka) -> Iterator[Up]:
    directory = ARTIFACTS / "processes"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hub.log").unlink(missing_ok=True)
    hub = Up(private_kafka, directory)
    try:
        yield hub
    finally:
        if hub.process.poll() is None:
            stop_hub(hub.process)


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def memory_holds(pid: int, needles: dict[str, bytes]) -> set[str]:
    """Which of `needles` are anywhere in the process's readable memory (as /proc/<pid>/mem gives it)."""
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(address, 16) for address in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError):  # a region that went away or cannot be read
                continue
            found |= {name for name, needle in needles.items() if needle in chunk}
    return found


def ca_key_body(secrets: Path) -> bytes:
    """A line of the CA key's PEM body: what a process that read the file would hold."""
    return LocalCa(secrets).ca_key.read_bytes().splitlines()[1]


def test_readyz_and_metrics_behind_one_port_speak_for_every_service_process(up: Up) -> None:
    pids = up.children()
    assert sorted(pids) == sorted(SERVICES) and len(set(pids.values())) == len(SERVICES)
    assert os.getpgid(pids["gateway"]) != os.getpgid(up.process.pid)  # signals reach it through `up` only
    assert up.get("/readyz") == (200, "ready\n")
    referral_id = f"ZD-PROC-{time.time_ns()}"
    asyncio.run(produce(up.kafka.connection(principals.referrer(sender("gp").id)),
                        topics.organisation_referrals(Channel.GP, sender("gp").id),
                        json.dumps(gp_bundle(referral_id=referral_id, bsn=random_bsn())).encode(),
                        key=referral_id.encode()))
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline:
        status, text = up.get("/metrics")
        assert status == 200
        if re.search(r'^verwijshub_handovers_total\{recipient_kind="wij-team"\} [1-9]', text, re.M):
            break
        time.sleep(1)
    assert re.search(r'^verwijshub_referrals_accepted_total\{channel="gp"\} 1\.0$', text, re.M)  # intake's
    assert re.search(r'^verwijshub_handovers_total\{recipient_kind="wij-team"\} 1\.0$', text, re.M)  # notifier's
    for service in SERVICES:  # each process's own, labelled; and the lag of each group, which `up` exports
        assert re.search(rf'^process_cpu_seconds_total\{{service="{service}"\}} ', text, re.M), service
    assert text.count("# TYPE verwijshub_handovers_total ") == 1  # one family, not one per process


def test_each_service_process_holds_its_own_credential_and_no_other_secret(up: Up) -> None:
    secrets = up.kafka.secrets
    store = CredentialStore(secrets)
    admin, key, ca_key = store.password(principals.ADMIN), (secrets / PSEUDONYM_KEY_FILE).read_text().strip(), \
        ca_key_body(secrets)
    pids = up.children()
    own = {"intake": principals.service("intake"), "routing": principals.service("routing"),
           "notifier": principals.service("notifier"), "gateway": principals.GATEWAY,
           "analytics": principals.ANALYTICS, "recipients": principals.RECIPIENTS}
    for service, pid in pids.items():
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == f"verwijshub {service}".encode(), \
            "named in ps as the service it runs"
        env = environ(pid)  # the forkserver's, which it was forked from: `up`'s environment less every credential
        assert not {"VERWIJSHUB_KAFKA_PASSWORD", "VERWIJSHUB_KAFKA_USERNAME", "VERWIJSHUB_PSEUDONYM_KEY",
                    "VERWIJSHUB_KAFKA_CLIENT_CONFIG", "VERWIJSHUB_KAFKA_CREDENTIAL_FILE"} & env.keys(), service
        assert not any(admin in value or key in value for value in env.values()), service
        others = {f"{other}'s password": store.password(principal).encode()
                  for other, principal in own.items() if other != service}
        held = memory_holds(pid, {"own password": store.password(own[service]).encode(), **others,
                                  "admin password": admin.encode(), "pseudonym key": key.encode(), "CA key": ca_key})
        # what the scan finds where it is (its own password; the key in intake) shows it can find it
        assert held == ({"own password", "pseudonym key"} if service == "intake" else {"own password"}), service
    for path in (store.path(principals.ADMIN), secrets / PSEUDONYM_KEY_FILE, LocalCa(secrets).ca_key):
        assert path.stat().st_mode & 0o077 == 0, path  # and no other user may read them


def test_a_service_process_that_dies_stops_up_with_exit_1_naming_it(up: Up) -> None:
    pids = up.children()
    os.kill(pids["routing"], signal.SIGKILL)
    assert up.process.wait(timeout=120) == 1
    exited = [line for line in up.log() if line["event"] == "service exited"]
    assert [(line["service"], line["returncode"]) for line in exited] == [("routing", -signal.SIGKILL)]
    for service, pid in pids.items():  # the others were stopped, none left running
        if service != "routing":
            assert any(line["event"] == "services stopping" and line["service"] == service for line in up.log())
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "the routing service exited" in up.log_file.with_suffix(".stderr.log").read_text()
