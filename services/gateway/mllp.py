"""The MLLP listener: HL7 v2 REF^I12 from hospital systems, answered in original-mode acknowledgement.

Framing: a message is `0x0B` + message + `0x1C 0x0D`. A frame may arrive over several reads and several frames
in one read; bytes outside a frame (a stray newline, a keep-alive, garbage) are dropped without touching the
frames around them. Messages of one connection are answered one by one, in order.

The answer per message:
- **AA** once the message is on `referrals.specialist.v1` (acks=all);
- **AE** with one ERR per error when the specialist adapter refuses it. The message is still written to
  `referrals.specialist.v1`, so intake dead-letters it and tells the status topic exactly as it does for a
  referrer writing to Kafka: one path for every rejection, and the gateway needs no write right on the
  dead-letter topic;
- **AR** for a message that is no REF^I12 (or no HL7 at all), a version other than 2.x, whenever Kafka does
  not confirm the write in time (the sender keeps it and sends it again), and with `RATE_LIMITED` for a message
  past the organisation's rate (`VERWIJSHUB_MLLP_RATE_PER_MINUTE`; not written: the sender sends it again later).

Who sends: by default every connection is mutual TLS, and the client certificate's organisation (O, issued by
`verwijshub access certificate`) is the referrer organisation of the registry it speaks for; plain MLLP
(`VERWIJSHUB_MLLP_TLS=false`) is taken only from the addresses of `VERWIJSHUB_MLLP_PLAIN_ALLOW`, each bound to an
organisation. A connection of no specialist organisation, or one past `VERWIJSHUB_MLLP_MAX_CONNECTIONS`, is closed
at once, before a byte is read. A referral naming a referrer its organisation may not send as is answered AE
`SENDER_NOT_ALLOWED` and written to the organisation's topic like any AE, where intake refuses it the same way.
A certificate revoked with `verwijshub access revoke-certificate` is refused at the handshake once the listener
has reloaded the CA's revocation list (it looks for a change every CRL_RELOAD_S), and a connection open with it
is closed then.
"""

import asyncio
import contextlib
import ipaddress
import ssl
import uuid
from pathlib import Path

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Channel, Referral
from services.intake.lifecycle import Cancellation
from schemas.registry import ReferrerOrganisation
from services.access.senders import cancellation_sender_errors, sender_errors
from services.gateway.answers import AckCode, acknowledgement, header_fields
from services.gateway.limits import RateLimit
from services.gateway.submission import SUBMISSIONS, Submissions
from services.infra.clock import Clock
from services.infra.logging import get_logger
from services.infra.tls import certificate_organisation, certificate_serial, load_crl

START, END = b"\x0b", b"\x1c\x0d"
CRL_RELOAD_S = 1.0
UNSUPPORTED = {ErrorCode.CHANNEL_MISMATCH, ErrorCode.UNPARSEABLE}
AllowList = list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]
RATE_LIMITED = ReferralError(code=ErrorCode.RATE_LIMITED, location="", message="More messages than the hub takes "
                             "from this organisation per minute; this one was not stored: send it again later.")


def plain_allow_list(setting: str) -> AllowList:
    """`network=organisation` pairs, comma-separated (VERWIJSHUB_MLLP_PLAIN_ALLOW); ValueError when malformed."""
    allowed: AllowList = []
    for item in filter(None, (part.strip() for part in setting.split(","))):
        network, equals, organisation = item.partition("=")
        if not equals or not organisation.strip():
            raise ValueError("VERWIJSHUB_MLLP_PLAIN_ALLOW takes network=organisation pairs, comma-separated")
        allowed.append((ipaddress.ip_network(network.strip(), strict=False), organisation.strip()))
    return allowed


def allowed_organisation(allowed: AllowList, address: str) -> str | None:
    """The organisation a plain connection from `address` speaks for, or None (refused)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return next((organisation for network, organisation in allowed if ip in network), None)


class Deframer:
    """Bytes in, complete MLLP frames out; bytes outside a frame are dropped (counted in `dropped`)."""

    def __init__(self, max_frame: int) -> None:
        self.buffer = bytearray()
        self.max_frame = max_frame
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(START)
            if start < 0:
                self.dropped += len(self.buffer)
                self.buffer.clear()
                return frames
            if start:
                self.dropped += start
                del self.buffer[:start]
            end = self.buffer.find(END)
            if end < 0:
                if len(self.buffer) > self.max_frame + 1:  # never a referral: drop it, look for the next frame
                    self.dropped += len(self.buffer)
                    self.buffer.clear()
                return frames
            frame = bytes(self.buffer[1:end])
            del self.buffer[:end + len(END)]
            restart = frame.rfind(START)  # a frame left unterminated before this one began: keep the last
            frames.append(frame[restart + 1:] if restart >= 0 else frame)


class MllpListener:
    def __init__(self, submissions: Submissions, clock: Clock, read_timeout_s: float, idle_timeout_s: float = 300.0
                 ) -> None:
        settings = submissions.settings
        self.submissions, self.clock = submissions, clock
        self.read_timeout_s, self.idle_timeout_s = read_timeout_s, idle_timeout_s
        self.max_connections, self.limit = settings.mllp_max_connections, RateLimit(settings.mllp_rate_per_minute)
        self.plain_allowed = plain_allow_list(settings.mllp_plain_allow)
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task] = set()
        self.serials: dict[asyncio.Task, int] = {}
        self.watching: asyncio.Task | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None, crl: Path | None = None) -> int:
        """Listen (`tls`: mutual TLS; `crl`: the revocation list it follows, loaded into `tls` before the first
        connection and again whenever it changes)."""
        seen = self.reload_crl(tls, crl, None) if tls is not None and crl is not None else None
        self.server = await asyncio.start_server(self._connection, host, port, ssl=tls)
        if tls is not None and crl is not None:
            self.watching = asyncio.create_task(self.follow_crl(tls, crl, seen), name="mllp revocation list")
        return self.server.sockets[0].getsockname()[1]

    async def follow_crl(self, tls: ssl.SSLContext, crl: Path, seen: tuple[int, int] | None) -> None:
        while True:
            await asyncio.sleep(CRL_RELOAD_S)
            seen = self.reload_crl(tls, crl, seen)

    def reload_crl(self, tls: ssl.SSLContext, crl: Path, seen: tuple[int, int] | None) -> tuple[int, int] | None:
        """Load the revocation list into `tls` if it was replaced since `seen` (a new file each time: `access
        revoke-certificate`, provisioning) and close the connections open with a certificate it revokes; returns
        the version now loaded."""
        try:
            found = crl.stat()
            version = (found.st_ino, found.st_mtime_ns)
            if version == seen:
                return seen
            revoked = load_crl(tls, crl)
        except FileNotFoundError:
            return seen
        except (OSError, ssl.SSLError, ValueError) as exc:  # not a CRL: the one loaded before holds
            get_logger().error("mllp revocation list not loaded", error_type=type(exc).__name__)
            return seen
        cut = [task for task, serial in self.serials.items() if serial in revoked]
        for task in cut:
            task.cancel()
        get_logger().info("mllp revocation list loaded", revoked=len(revoked), connections_closed=len(cut))
        return version

    async def stop(self) -> None:
        if self.watching:
            self.watching.cancel()
        if self.server:
            self.server.close()
            for task in list(self.connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def organisation(self, writer: asyncio.StreamWriter) -> ReferrerOrganisation | None:
        """The specialist organisation a connection speaks for: its certificate's, or its address's (plain)."""
        if writer.get_extra_info("ssl_object") is not None:
            organisation_id = certificate_organisation(writer.get_extra_info("peercert"))
        else:
            organisation_id = allowed_organisation(self.plain_allowed, (writer.get_extra_info("peername") or [""])[0])
        found = self.submissions.registry.referrers.get(organisation_id or "")
        return found if found is not None and found.channel is Channel.SPECIALIST else None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        organisation = self.organisation(writer)
        if organisation is None or len(self.connections) >= self.max_connections:
            get_logger().warning("mllp connection refused", reason="no specialist organisation" if organisation
                                 is None else "connection cap", open_connections=len(self.connections))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        if task:
            self.connections.add(task)
            if (serial := certificate_serial(writer.get_extra_info("peercert"))) is not None:
                self.serials[task] = serial
        deframer = Deframer(2 * self.submissions.settings.max_message_bytes)  # a little too large: AE TOO_LARGE
        try:
            while True:
                pending = bool(deframer.buffer)
                timeout = self.read_timeout_s if pending else self.idle_timeout_s
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                for frame in deframer.feed(data):
                    writer.write(START + (await self.answer(frame, organisation)).encode() + END)
                    await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: its certificate was revoked, or the listener stops
        finally:
            if task:
                self.connections.discard(task)
                self.serials.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, frame: bytes, organisation: ReferrerOrganisation) -> str:
        """The acknowledgement of one framed message from `organisation` (never raises: a sender always gets an
        answer)."""
        text = frame.decode("utf-8", errors="replace")
        if self.limit.wait_s(organisation.id):
            SUBMISSIONS.labels("mllp", Channel.SPECIALIST.value, "rate-limited").inc()
            get_logger().warning("mllp message answered", ack="AR", codes=[ErrorCode.RATE_LIMITED.value],
                                 organisation=organisation.id)
            return acknowledgement(text, "AR", [RATE_LIMITED], self.clock.now(), uuid.uuid4().hex[:20],
                                   "Rate limit: send it again later.")
        outcome = self.submissions.check(Channel.SPECIALIST, frame)
        version = (header_fields(text)[12:13] or [""])[0]
        code: AckCode
        if isinstance(outcome, Referral) and (refused := sender_errors(organisation, outcome)):
            code, errors, key = "AE", refused, outcome.referrer_referral_id
        elif isinstance(outcome, Referral):
            code, errors, key = "AA", [], outcome.referrer_referral_id
        elif isinstance(outcome, Cancellation):  # REF^I14: cancel patient referral
            refused = cancellation_sender_errors(organisation, outcome.channel, outcome.referrer_identifier)
            code, errors, key = ("AE" if refused else "AA"), refused, outcome.referrer_referral_id
        elif {e.code for e in outcome.errors} & UNSUPPORTED:
            code, errors, key = "AR", outcome.errors, None
        else:
            code, errors, key = "AE", outcome.errors, outcome.referrer_referral_id
        if not version.startswith("2."):
            code, errors = "AR", []
            note = "This HL7 version (MSH-12) is not supported; send v2.x."
        else:
            note = ""
        outcome_name = {"AA": "submitted", "AE": "rejected", "AR": "refused"}[code]
        if code != "AR":
            unavailable = await self.submissions.write(organisation, frame, key)
            if unavailable:
                code, errors, outcome_name = "AR", [], "unavailable"
                note = "The hub cannot store messages just now; send it again later."
        SUBMISSIONS.labels("mllp", Channel.SPECIALIST.value, outcome_name).inc()
        get_logger().info("mllp message answered", ack=code, codes=[e.code.value for e in errors],
                          organisation=organisation.id, referrer_referral_id=outcome.referrer_referral_id)
        return acknowledgement(text, code, errors, self.clock.now(), uuid.uuid4().hex[:20], note)
