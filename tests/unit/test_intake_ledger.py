"""Intake's ledger without Kafka: what it answers for an id, pending, committed, aborted, and as read back."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from schemas.referral import AcceptedReferral, Channel
from services.intake.ledger import AcceptedLedger
from services.intake.repeats import NO_DIGEST

AT = datetime(2026, 3, 12, 9, 30, tzinfo=UTC)


def accepted(referral_id: str, digest: str | None) -> AcceptedReferral:
    return AcceptedReferral(referral_id=referral_id, channel=Channel.GP, referrer_referral_id="ZD-1", accepted_at=AT,
                            origin="referrals.gp.v1/0/7", digest=digest)


@pytest.fixture
async def ledger():
    ledger = AcceptedLedger(kafka=None)
    ledger.open()
    yield ledger
    await ledger.stop()


def test_an_id_accepted_in_an_open_transaction_is_known_with_its_digest_until_the_transaction_aborts(ledger):
    ledger.accept(0, accepted("a", "d1"))
    assert (ledger.digest("a"), ledger.digest("b")) == ("d1", None)
    ledger.aborted(0)
    assert ledger.digest("a") is None


def test_the_latest_record_of_an_id_counts_as_compaction_keeps_it(ledger):
    """Intake writes an id's record again for each amendment and for its cancellation: the latest is what it knows."""
    ledger.accept(3, accepted("a", "d1"))
    ledger.committed(3)
    later = accepted("a", "d1").model_copy(update={"digests": ["d2"], "cancelled": True})
    ledger.apply(SimpleNamespace(key=b"a", value=later.model_dump_json().encode()))
    assert (ledger.entry("a"), ledger.digest("a"), len(ledger)) == (later, "d1", 1)


def test_records_read_back_give_their_digest_and_an_old_record_without_one_no_digest(ledger):
    ledger.apply(SimpleNamespace(key=b"new", value=accepted("new", "d1").model_dump_json().encode()))
    old = accepted("old", None).model_dump_json(
        exclude={"digest", "organisation", "pseudonym", "digests", "cancelled"}).encode()
    assert b"digest" not in old
    ledger.apply(SimpleNamespace(key=b"old", value=old))
    ledger.apply(SimpleNamespace(key=b"unreadable", value=b"\xff{"))
    ledger.apply(SimpleNamespace(key=None, value=b"{}"))
    assert [ledger.digest(i) for i in ("new", "old", "unreadable")] == ["d1", NO_DIGEST, NO_DIGEST]
    assert len(ledger) == 3


class Counting:
    """The ledger's SQLite connection, counting its writes."""

    def __init__(self, db) -> None:
        self.db, self.writes = db, 0

    def execute(self, sql: str, *args):
        self.writes += sql.startswith("INSERT")
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, *args):
        self.writes += 1
        return self.db.executemany(sql, *args)

    def close(self) -> None:
        self.db.close()


def test_its_own_records_read_back_are_not_written_again_and_the_topics_order_still_decides(ledger):
    ledger._db = Counting(ledger._db)
    ours = accepted("a", "d1")
    ledger.accept(0, ours)
    ledger.committed(0)
    ledger.apply(SimpleNamespace(key=b"a", value=ours.model_dump_json().encode()))  # read back as written
    assert ledger._db.writes == 1 and not ledger.echoes
    theirs = ours.model_copy(update={"cancelled": True})  # another instance's, after ours on the topic
    ledger.apply(SimpleNamespace(key=b"a", value=theirs.model_dump_json().encode()))
    assert ledger._db.writes == 2 and ledger.entry("a") == theirs

    ledger.accept(0, ours)  # ours again, but theirs comes first on the topic: ours, read back last, counts
    ledger.committed(0)
    ledger.apply(SimpleNamespace(key=b"a", value=theirs.model_dump_json().encode()))
    ledger.apply(SimpleNamespace(key=b"a", value=ours.model_dump_json().encode()))
    assert ledger.entry("a") == ours and not ledger.echoes
