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
- **AR** for a message that is no REF^I12 (or no HL7 at all), a version other than 2.x, and whenever Kafka does
  not confirm the write in time (the sender keeps it and sends it again).
"""

import asyncio
import contextlib
import ssl
import uuid

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral
from services.gateway.answers import AckCode, acknowledgement, header_fields
from services.gateway.submission import SUBMISSIONS, Submissions
from services.infra.clock import Clock
from services.infra.logging import get_logger

START, END = b"\x0b", b"\x1c\x0d"
UNSUPPORTED = {ErrorCode.CHANNEL_MISMATCH, ErrorCode.UNPARSEABLE}


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
        self.submissions, self.clock = submissions, clock
        self.read_timeout_s, self.idle_timeout_s = read_timeout_s, idle_timeout_s
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        self.server = await asyncio.start_server(self._connection, host, port, ssl=tls)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            for task in list(self.connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task:
            self.connections.add(task)
        deframer = Deframer(2 * self.submissions.settings.max_message_bytes)  # a little too large: AE TOO_LARGE
        try:
            while True:
                pending = bool(deframer.buffer)
                timeout = self.read_timeout_s if pending else self.idle_timeout_s
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                for frame in deframer.feed(data):
                    writer.write(START + (await self.answer(frame)).encode() + END)
                    await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, frame: bytes) -> str:
        """The acknowledgement of one framed message (never raises: a sender always gets an answer)."""
        text = frame.decode("utf-8", errors="replace")
        outcome = self.submissions.check(Channel.SPECIALIST, frame)
        version = (header_fields(text)[12:13] or [""])[0]
        code: AckCode
        if isinstance(outcome, Referral):
            code, errors, key = "AA", [], outcome.referrer_referral_id
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
            unavailable = await self.submissions.write(Channel.SPECIALIST, frame, key)
            if unavailable:
                code, errors, outcome_name = "AR", [], "unavailable"
                note = "The hub cannot store messages just now; send it again later."
        SUBMISSIONS.labels("mllp", Channel.SPECIALIST.value, outcome_name).inc()
        get_logger().info("mllp message answered", ack=code, codes=[e.code.value for e in errors],
                          referrer_referral_id=outcome.referrer_referral_id)
        return acknowledgement(text, code, errors, self.clock.now(), uuid.uuid4().hex[:20], note)
