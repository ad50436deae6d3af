"""The gateway under load: requests/s and latency of `POST /fhir/$process-message`, and messages/s over one MLLP
connection.

    .venv/bin/python -m bench.gateway_load --requests 2000 --concurrency 16 --messages 1000

Starts a local Apache Kafka on free ports in a temporary directory (every principal provisioned, as the tests do)
and `verwijshub run gateway` as its own process, then, as a referrer would:
- HTTPS: `--requests` FHIR message Bundles, each with a referral id of its own, from `--concurrency` keep-alive
  connections (httpx, verifying the local CA); each answer is a 202 only after Kafka confirmed the write
  (acks=all), so the numbers include that round trip;
- MLLP: `--messages` REF^I12 messages on one connection, each waiting for its ACK (original mode allows one
  message in flight), as an HL7 engine sends them.
No intake runs: the numbers are the gateway's, logging at INFO as in production (one line per submission).
"""

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from services.access.tokens import TokenStore
from services.infra import principals
from services.infra.settings import REPO_ROOT
from tests.conftest import _free_port, new_broker, start_hub, stop_hub

EXAMPLES = REPO_ROOT / "schemas" / "examples"


def fhir_message(referral_id: str) -> bytes:
    bundle = json.loads((EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_text())
    bundle["entry"][1]["resource"]["identifier"][0]["value"] = referral_id
    return json.dumps(bundle).encode()


async def http_load(url: str, ca: Path, token: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    bodies = [fhir_message(f"LOAD-{uuid.uuid4().hex[:12]}") for _ in range(requests)]
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            answer = await client.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 202, answer.text

    async with httpx.AsyncClient(verify=str(ca), timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await client.post(url, content=fhir_message("WARM-UP"), headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def mllp_load(port: int, messages: int) -> float:
    text = (EXAMPLES / "specialist" / "valid-product.hl7").read_text()
    frames = [b"\x0b" + text.replace("UMCG-REF-2026-0042", f"LOAD-{i}").encode() + b"\x1c\x0d"
              for i in range(messages)]
    with socket.create_connection(("127.0.0.1", port)) as connection:
        started = time.perf_counter()
        for frame in frames:
            connection.sendall(frame)
            answer = b""
            while not answer.endswith(b"\x1c\x0d"):
                answer += connection.recv(65536)
            assert b"MSA|AA|" in answer, answer
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--messages", type=int, default=1000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, new_broker(Path(directory) / "kafka") as kafka:
        https_port, mllp_port = _free_port(), _free_port()
        process = start_hub(kafka, Path(directory) / "gateway.log", "gateway", env={
            "VERWIJSHUB_GATEWAY_PORT": str(https_port), "VERWIJSHUB_MLLP_PORT": str(mllp_port),
            "VERWIJSHUB_GATEWAY_RATE_PER_MINUTE": "1000000", "VERWIJSHUB_MLLP_RATE_PER_MINUTE": "1000000",
            "VERWIJSHUB_MLLP_TLS": "false", "VERWIJSHUB_MLLP_PLAIN_ALLOW": "127.0.0.1=umcg"})
        try:
            token = TokenStore(kafka.secrets).issue(principals.referrer("huisartsen-centrum"))
            seconds, latencies = asyncio.run(http_load(f"https://127.0.0.1:{https_port}/fhir/$process-message",
                                                       kafka.secrets / "ca.pem", token, options.requests,
                                                       options.concurrency))
            quantiles = statistics.quantiles(latencies, n=100)
            print(f"HTTPS POST /fhir/$process-message: {options.requests} requests, concurrency "
                  f"{options.concurrency}: {options.requests / seconds:.0f} requests/s, p50 {quantiles[49] * 1000:.1f} "
                  f"ms, p99 {quantiles[98] * 1000:.1f} ms")
            seconds = mllp_load(mllp_port, options.messages)
            print(f"MLLP, one connection: {options.messages} REF^I12 messages: {options.messages / seconds:.0f} "
                  f"messages/s ({seconds / options.messages * 1000:.1f} ms per message and its ACK)")
        finally:
            stop_hub(process)


if __name__ == "__main__":
    main()
