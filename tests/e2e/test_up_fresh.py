"""`verwijshub up` as a newcomer runs it: an empty data directory, a secured local Kafka made from nothing
(CA, admin credential, every principal and ACL), the services ready; a recipient's client configuration then
works with a third-party client (kcat) against it, and is refused another recipient's handovers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.infra.settings import REPO_ROOT
from tests.conftest import ARTIFACTS, SECRETS_SEEN, _free_port, cache_dir
from tests.referrals import gp_bytes, random_bsn
from tests.system_tools import require

pytestmark = pytest.mark.e2e


def cli(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO_ROOT, input=stdin,
                          capture_output=True, timeout=120)


def said() -> str:
    """The end of what `up` printed, read only for a failure's message."""
    return (ARTIFACTS / "up-fresh.out").read_text()[-3000:]


def test_up_from_an_empty_data_directory_is_secured_and_serves_a_recipient_over_kcat(tmp_path: Path) -> None:
    require("kcat")
    data = tmp_path / "data"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VERWIJSHUB_")},
           "VERWIJSHUB_DATA_DIR": str(data), "VERWIJSHUB_CACHE_DIR": str(cache_dir()),
           "VERWIJSHUB_KAFKA_PORT": str(_free_port()), "VERWIJSHUB_KAFKA_CONTROLLER_PORT": str(_free_port()),
           "VERWIJSHUB_METRICS_PORT": str(_free_port()), "VERWIJSHUB_RECIPIENTS_PORT": str(_free_port())}
    SECRETS_SEEN.append(data / "secrets")  # its passwords, key and logs join the scan at the end of the run
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "up-fresh.out").open("wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, cwd=REPO_ROOT, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # from nothing on a loaded machine: a CI run took over 180 s
        while not ((data / "hub.log").exists() and '"services ready"' in (data / "hub.log").read_text()):
            assert up.poll() is None, said()
            assert time.monotonic() < deadline, f"up was not ready in time; it said:\n{said()}"
            time.sleep(0.5)
        assert oct((data / "secrets").stat().st_mode & 0o777) == oct(0o700)
        referral_id = "ZD-UP-FRESH-1"
        sent = cli(env, "send", "--channel", "gp", "-", stdin=gp_bytes(referral_id=referral_id, bsn=random_bsn()))
        assert sent.returncode == 0, sent.stderr
        config = tmp_path / "centrum.conf"
        made = cli(env, "access", "client-config", "wij-centrum")
        assert made.returncode == 0, made.stderr
        config.write_bytes(made.stdout)
        kcat = [str(REPO_ROOT / "deploy" / "kcat"), "-F", str(config), "-C", "-o", "beginning", "-e", "-q"]
        handover = b""
        while referral_id.encode() not in handover and time.monotonic() < deadline:
            handover = subprocess.run([*kcat, "-t", "handovers.wij.centrum.v1"], capture_output=True,
                                      timeout=60).stdout
        assert referral_id.encode() in handover and json.loads(handover.splitlines()[-1])["type"] == "message"
        refused = subprocess.run([*kcat, "-t", "handovers.wij.selwerd.v1"], capture_output=True, timeout=60)
        assert refused.returncode != 0 and b"authorization failed" in refused.stderr.lower()
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        cli(env, "kafka", "stop")
