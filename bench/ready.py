"""How long `verwijshub up` takes to be ready, and where the seconds go: from an empty data directory, then warm.

    PYTHONPATH=. .venv/bin/python -m bench.ready [--warm N]      (N warm starts after the first, default 3)

Runs the real `verwijshub up` as a process in a data directory and on ports of its own (its embedded Kafka included),
times it from the process's start to its "services ready" log line, and lists the steps the start logged as
`ready` (`services/infra/starting.py`) with the seconds each took; steps overlap where they run concurrently. The
first start formats and provisions the broker; the warm ones find it running with its data and stop only the hub.
`up` starts each service as a process of its own (services/supervisor.py): "the <service> process (pid N) ready"
is the supervisor's wait for one, from its spawn; the service's own "<service> started" begins after its
interpreter started and imported its modules, so the difference between the two is that start and those imports
(six processes at once on the machine's cores). There is no baseline to pair it with: this is a latency of a
start, not a throughput.
"""

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from services.hub import start_process, stop_process
from services.infra.local_kafka import LocalKafka
from services.infra.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_once(env: dict[str, str], log_file: Path) -> tuple[float, list[tuple[str, float]]]:
    """One `up` until ready: its wall seconds, and each step's (what, seconds) as this start logged them."""
    lines_before = len(log_file.read_text().splitlines()) if log_file.exists() else 0
    started = time.monotonic()
    process = start_process(["up"], env, log_file)
    took = time.monotonic() - started
    stop_process(process)
    steps = []
    for line in log_file.read_text().splitlines()[lines_before:]:
        entry = json.loads(line)
        if entry.get("event") == "ready":
            steps.append((entry["for"], entry["elapsed_s"]))
    return took, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=int, default=3, help="Warm starts after the first.")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="verwijshub-bench-ready-"))
    ports = {"VERWIJSHUB_KAFKA_PORT": free_port(), "VERWIJSHUB_KAFKA_CONTROLLER_PORT": free_port(),
             "VERWIJSHUB_METRICS_PORT": free_port(), "VERWIJSHUB_GATEWAY_PORT": free_port(),
             "VERWIJSHUB_MLLP_PORT": free_port(), "VERWIJSHUB_RECIPIENTS_PORT": free_port()}
    env = {**os.environ, "VERWIJSHUB_DATA_DIR": str(data), "VERWIJSHUB_LOG_FILE": str(data / "hub.log"),
           **{name: str(port) for name, port in ports.items()}}
    try:
        for run in range(1 + args.warm):
            took, steps = start_once(env, data / "hub.log")
            print(f"{'empty data directory' if run == 0 else f'warm start {run}'}: ready after {took:.1f} s")
            for what, seconds in steps:
                print(f"  {seconds:6.1f} s  {what}")
    finally:
        settings = Settings(_env_file=None, data_dir=data, kafka_port=ports["VERWIJSHUB_KAFKA_PORT"],
                            kafka_controller_port=ports["VERWIJSHUB_KAFKA_CONTROLLER_PORT"])
        LocalKafka.from_settings(settings).stop()
    print(f"(data and logs in {data})")


if __name__ == "__main__":
    main()
