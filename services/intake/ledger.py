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

from aiokafka import AIOKafkaConsumer

from schemas.referral import AcceptedReferral
from services.infra import topics
from services.infra.connection import KafkaConnection
from services.infra.kafka import Outbound, outbound, partitions_of
from services.infra.logging import get_logger


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

    def _add(self, ids: set[str]) -> None:
        if ids:
            self._db.executemany("INSERT OR IGNORE INTO accepted VALUES (?)", [(i,) for i in ids])

    async def start(self) -> None:
        """Follow the ledger; returns once it is read to its end."""
        self._directory = tempfile.TemporaryDirectory(prefix="verwijshub-intake-")
        self._db = sqlite3.connect(Path(self._directory.name) / "accepted.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")  # rebuilt from the topic at every start: no journal needed
        self._db.execute("CREATE TABLE accepted (referral_id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._task = asyncio.create_task(self._follow(), name="intake-ledger")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._db is not None:
            self._db.close()
            self._directory.cleanup()

    async def _follow(self) -> None:
        """Read the ledger (committed records only) from the start, set `ready` at its end, then keep following."""
        log = get_logger(service="intake")
        while True:  # a broker hiccup restarts the follow; `ready` stays set once loaded
            consumer = AIOKafkaConsumer(**self.kafka.consumer_options(), enable_auto_commit=False,
                                        client_id="verwijshub-intake-ledger")
            try:
                await consumer.start()
                partitions = await partitions_of(self.kafka, [topics.INTAKE_ACCEPTED])
                if not partitions:
                    raise RuntimeError(f"{topics.INTAKE_ACCEPTED} does not exist (yet)")
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                ends = await consumer.end_offsets(partitions)
                behind = {tp for tp, end in ends.items() if end > 0}
                while True:
                    if not behind and not self.ready.is_set():
                        self.ready.set()
                        log.info("accepted-referral ledger loaded", accepted=len(self))
                    batches = await consumer.getmany(timeout_ms=500)
                    for tp, records in batches.items():
                        self._add({r.key.decode(errors="replace") for r in records if r.key})
                        if tp in behind and await consumer.position(tp) >= ends[tp]:
                            behind.discard(tp)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; never take the service down
                log.error("ledger follow failed, retrying", error_type=type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
