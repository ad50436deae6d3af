"""The accepted-referral ledger: what makes a re-sent referral have its effect once, across restarts, and binds
each referral id to its first content.

Intake writes one record per accepted referral to the compacted topic `intake.accepted.v1`, keyed by the hub
referral id (deterministic: channel, referrer, referrer's referral id), in the same transaction as the referral
and its `received` status. Every intake instance reads that topic from the start before it handles its first
referral and keeps following it, so a referral accepted by another instance or before a restart is known. The
record holds no personal data: ids, channel, time, the origin offset and the digest of the referral's content
(`repeats.py`, which decides from it whether a referral with a known id is a repeat or a conflict).

The ids and their digests are kept in an SQLite file of the process, not in memory: the ledger grows with every
referral ever accepted, intake's memory must not (the file is rebuilt from the topic at each start, so it holds
nothing the topic does not). Ids of a transaction not yet committed are pending in memory, per partition, until
it commits. The latest record of an id counts, as compaction keeps it: intake writes one when it accepts a referral
and one more for each amendment (its digest added) and for a cancellation (`cancelled`); a repeat or a conflict
none. Each record is the whole of what intake knows of the referral: sender organisation, youth pseudonym (never
the BSN), digests.

Left open: the same referral re-sent under another Kafka key can land in another partition, owned by another
instance; if both copies arrive within the ledger's follow latency (milliseconds), both are accepted.
"""

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

from aiokafka import ConsumerRecord
from datetime import UTC, datetime

from schemas.referral import AcceptedReferral
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.following import follow
from services.infra.contract import Output
from services.infra.kafka import Outbound
from services.infra.logging import get_logger
from services.infra.starting import waiting_for
from services.intake.repeats import NO_DIGEST

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACCEPTED = Output("accepted-ledger", topics.INTAKE_ACCEPTED, AcceptedReferral, (
    "Internal, compacted: one record per accepted referral, keyed by hub referral id, with its content's digest; "
    "read back at start to drop re-sent referrals and refuse an id sent again with other content."))


class AcceptedLedger:
    """The hub referral ids intake has accepted with their content's digests, as read from (and written to)
    `intake.accepted.v1`."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self.ready = asyncio.Event()
        self.pending: dict[int, dict[str, AcceptedReferral]] = {}
        """partition -> id -> the ledger records written in its open transaction."""
        self.echoes: dict[str, str] = {}
        """id -> the record this instance committed and has not read back yet: as many as the follower lags."""
        self._directory = self._db = None
        self._task: asyncio.Task[None] | None = None

    def entry(self, referral_id: str) -> AcceptedReferral | None:
        """What intake knows of an accepted id (the latest record); None: not accepted."""
        for accepted in self.pending.values():
            if referral_id in accepted:
                return accepted[referral_id]
        row = self._db.execute("SELECT record FROM accepted WHERE referral_id = ?", (referral_id,)).fetchone()
        return _record_in(referral_id, row[0]) if row else None

    def digest(self, referral_id: str) -> str | None:
        """The digest recorded with an accepted id (`NO_DIGEST` for a record without one); None: not accepted."""
        entry = self.entry(referral_id)
        return None if entry is None else entry.digest or NO_DIGEST

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM accepted").fetchone()[0]

    def accept(self, partition: int, accepted: AcceptedReferral) -> Outbound:
        """The ledger record of an accepted (or amended, or cancelled) referral; it counts from now on (pending
        until the partition's transaction commits)."""
        self.pending.setdefault(partition, {})[accepted.referral_id] = accepted
        return ACCEPTED.record(accepted, accepted.referral_id, correlation_id=accepted.referral_id,
                               channel=accepted.channel)

    def committed(self, partition: int) -> None:
        self._add(self.pending.pop(partition, {}))

    def aborted(self, partition: int) -> None:
        self.pending.pop(partition, None)

    def apply(self, record: ConsumerRecord) -> None:
        """One record of `intake.accepted.v1`, another instance's or this one's (the latest of an id counts). This
        instance's own, read back as it wrote them, are in the file already (`_add`, at commit): not written twice."""
        if not record.key:
            return
        referral_id, value = record.key.decode(errors="replace"), (record.value or b"").decode(errors="replace")
        if self.echoes.pop(referral_id, None) == value:
            return
        self._db.execute("INSERT OR REPLACE INTO accepted VALUES (?, ?)", (referral_id, value))

    def _add(self, accepted: dict[str, AcceptedReferral]) -> None:
        if accepted:
            rows = [(rid, entry.model_dump_json()) for rid, entry in accepted.items()]
            self._db.executemany("INSERT OR REPLACE INTO accepted VALUES (?, ?)", rows)
            self.echoes.update(rows)

    async def start(self) -> None:
        """Follow the ledger; returns once it is read to its end."""
        self.open()
        self._task = asyncio.create_task(follow(self.kafka, [topics.INTAKE_ACCEPTED], self.apply, self.ready,
                                                "verwijshub-intake-ledger"), name="intake-ledger")
        await waiting_for(f"{topics.INTAKE_ACCEPTED} read to its end", self.ready.wait())
        get_logger(service="intake").info("accepted-referral ledger loaded", accepted=len(self))

    def open(self) -> None:
        """The empty SQLite file the topic is read into (`start` opens it; a test may alone)."""
        self._directory = tempfile.TemporaryDirectory(prefix="verwijshub-intake-")
        self._db = sqlite3.connect(Path(self._directory.name) / "accepted.sqlite", isolation_level=None)
        # Rebuilt from the topic at every start: neither a journal nor a sync to disk per insert is needed (the
        # sync cost a quarter of intake's time under load).
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE accepted (referral_id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._db is not None:
            self._db.close()
            self._directory.cleanup()


def _record_in(referral_id: str, value: str) -> AcceptedReferral:
    """A ledger record's value; one not readable (or written before digests) counts as accepted with `NO_DIGEST`,
    as it always did: a referral with its id is a repeat, a change of it unknown."""
    try:
        return AcceptedReferral.model_validate_json(value)
    except ValueError:
        return AcceptedReferral(referral_id=referral_id, channel="gp", referrer_referral_id="", accepted_at=EPOCH,
                                origin="", digest=NO_DIGEST)
