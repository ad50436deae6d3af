"""Third-party clients of the referrer gateway for the end-to-end tests: curl for HTTPS, the `hl7` package's
`mllp_send` for plain MLLP and `openssl s_client` for MLLP over mutual TLS, run as subprocesses, as a referrer's integration engine would talk to the hub."""

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl(url: str, ca_file: Path, token: str | None = None, body: bytes | None = None,
         content_type: str = "application/fhir+json", method: str | None = None,
         headers: dict[str, str] | None = None) -> HttpAnswer:
    """One request with curl, verifying the gateway's (or the recipient API's) certificate against the local CA."""
    args = ["curl", "-sS", "--cacert", str(ca_file), "-D", "-", "--max-time", "30"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["-H", f"Content-Type: {content_type}", "--data-binary", "@-"]
    if method:
        args += ["-X", method]
    run = subprocess.run([*args, url], input=body, capture_output=True, timeout=60, check=True)
    head, _, payload = run.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # curl shows the interim answer to Expect: 100-continue first
        head, _, payload = payload.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return HttpAnswer(int(status_line.split()[1]), headers, payload)


@dataclass(frozen=True)
class Ack:
    segments: list[list[str]]

    def segment(self, name: str) -> list[list[str]]:
        return [fields for fields in self.segments if fields[0] == name]

    @property
    def code(self) -> str:
        return self.segment("MSA")[0][1]


def mllp_send(port: int, messages_file: Path) -> list[Ack]:
    """Every message of `messages_file` (HL7 text, one or more messages) over one MLLP connection with the hl7
    package's `mllp_send --loose`; the acknowledgements, one per message, in order."""
    run = subprocess.run([str(MLLP_SEND), "--loose", "-f", str(messages_file), "-p", str(port), "127.0.0.1"],
                         capture_output=True, timeout=60, check=True)
    return _acks(run.stdout)


def _acks(raw: bytes) -> list[Ack]:
    frames = [frame.strip(b"\x0b\r\n") for frame in raw.split(b"\x1c") if frame.strip(b"\x0b\r\n")]
    return [Ack([segment.split("|") for segment in frame.decode().split("\r") if segment]) for frame in frames]


def openssl_mllp(port: int, ca_file: Path, messages: list[bytes], pem: Path | None = None,
                 timeout_s: float = 30.0) -> list[Ack]:
    """MLLP over TLS with `openssl s_client` (OpenSSL's own client; `pem`: the client's key and certificate, None:
    none): each message framed and sent on one connection; the acknowledgements until one per message came or the
    hub closed the connection."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file), "-verify_return_error",
            "-quiet", "-ign_eof"]
    if pem:
        args += ["-cert", str(pem), "-key", str(pem)]
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdin and process.stdout
    received = b""
    try:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(b"".join(b"\x0b" + message + b"\x1c\x0d" for message in messages))
            process.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while received.count(b"\x1c\x0d") < len(messages) and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:  # the hub closed the connection
                    break
                received += chunk
    finally:
        process.kill()
        process.wait()
    return _acks(received)
