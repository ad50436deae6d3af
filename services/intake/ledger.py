"""The accepted-referral ledger: what makes a re-sent referral have its effect once, across restarts.

Intake writes one record per accepted referral to the compacted topic `intake.accepted.v1`, keyed by the hub
referral id (deterministic: channel, referrer, referrer's referral id), in the same transaction as the referral
and its `received` status. Every intake instance reads that topic from the start before it handles its first
referral and keeps following it, so a referral accepted by another instance or before a restart is known as a
duplicate. The record holds no personal data: ids, channel, time and the origin offset only.

The ids are kept in an SQLite file of the process, not in memory: the ledger grows with every referral ever
accepted, intake's memory must not (the file is rebuilt from the topic at each start, so it holds nothing the
topic does not). Ids of a transaction not yet committed are pending in memory, per partition, until it commits.

Left open: the same referral re-sent under another Kafka key can land in another partition, owned by another
instance; if both copies arrive within the ledger's follow latency (milliseconds), both are accepted.
"""

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

from aiokafka import ConsumerRecord

from schemas.referral import AcceptedReferral
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.following import follow
from services.infra.kafka import Outbound, outbound
from services.infra.logging import get_logger
from services.infra.starting import waiting_for


class AcceptedLedger:
    """The hub referral ids intake has accepted, as read from (and written to) `intake.accepted.v1`."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self.ready = asyncio.Event()
        self.pending: dict[int, set[str]] = {}
        """partition -> ids accepted in its open transaction."""
        self._directory = self._db = None
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, referral_id: str) -> bool:
        if any(referral_id in ids for ids in self.pending.values()):
            return True
        return self._db.execute("SELECT 1 FROM accepted WHERE referral_id = ?", (referral_id,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM accepted").fetchone()[0]

    def accept(self, partition: int, accepted: AcceptedReferral) -> Outbound:
        """The ledger record of an accepted referral; its id counts as accepted from now on (pending until the
        partition's transaction commits)."""
        self.pending.setdefault(partition, set()).add(accepted.referral_id)
        return outbound(topics.INTAKE_ACCEPTED, accepted, accepted.referral_id, correlation_id=accepted.referral_id,
                        channel=accepted.channel)

    def committed(self, partition: int) -> None:
        self._add(self.pending.pop(partition, set()))

    def aborted(self, partition: int) -> None:
        self.pending.pop(partition, None)

    def _apply(self, record: ConsumerRecord) -> None:
        if record.key:
            self._add({record.key.decode(errors="replace")})

    def _add(self, ids: set[str]) -> None:
        if ids:
            self._db.executemany("INSERT OR IGNORE INTO accepted VALUES (?)", [(i,) for i in ids])

    async def start(self) -> None:
        """Follow the ledger; returns once it is read to its end."""
        self._directory = tempfile.TemporaryDirectory(prefix="verwijshub-intake-")
        self._db = sqlite3.connect(Path(self._directory.name) / "accepted.sqlite", isolation_level=None)
        # Rebuilt from the topic at every start: neither a journal nor a sync to disk per insert is needed (the
        # sync cost a quarter of intake's time under load).
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE accepted (referral_id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._task = asyncio.create_task(follow(self.kafka, [topics.INTAKE_ACCEPTED], self._apply, self.ready,
                                                "verwijshub-intake-ledger"), name="intake-ledger")
        await waiting_for(f"{topics.INTAKE_ACCEPTED} read to its end", self.ready.wait())
        get_logger(service="intake").info("accepted-referral ledger loaded", accepted=len(self))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._db is not None:
            self._db.close()
            self._directory.cleanup()
