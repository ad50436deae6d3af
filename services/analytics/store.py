"""The analytics store: a DuckDB file of pseudonymised facts, with a versioned schema and migrations.

Why DuckDB: an embedded analytical database in one file under the data directory, no server to run. DuckDB lets
one process write a file and nobody else open it meanwhile, so the sink opens it only for the moment it writes a
batch, and readers (`verwijshub report`) retry while it is busy.

Facts are upserted on their source (topic, partition, offset), the `referrals` row on the hub referral id, so
reading a topic again yields identical tables. `source_offsets` says how far each partition was read.
"""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from services.analytics.facts import Fact

MIGRATIONS: list[str] = [
    # 1: the facts of decisions, statuses, feedback and alerts
    """
    CREATE TABLE referrals (referral_id VARCHAR PRIMARY KEY, channel VARCHAR, referrer_type VARCHAR,
        referral_date DATE, pseudonym VARCHAR, age_years INTEGER, pc4 VARCHAR, team VARCHAR, product VARCHAR,
        specialist_asked BOOLEAN, continuation BOOLEAN, gi_measure VARCHAR);
    CREATE TABLE decisions (topic VARCHAR, "partition" INTEGER, "offset" BIGINT, referral_id VARCHAR,
        decided_at TIMESTAMP, rule VARCHAR, recipient_kind VARCHAR, recipient_id VARCHAR, previous_kind VARCHAR,
        previous_id VARCHAR, flags VARCHAR, error_codes VARCHAR, PRIMARY KEY (topic, "partition", "offset"));
    CREATE TABLE statuses (topic VARCHAR, "partition" INTEGER, "offset" BIGINT, referral_id VARCHAR,
        channel VARCHAR, status VARCHAR, "at" TIMESTAMP, error_codes VARCHAR, PRIMARY KEY (topic, "partition", "offset"));
    CREATE TABLE feedback (topic VARCHAR, "partition" INTEGER, "offset" BIGINT, recipient_kind VARCHAR,
        recipient_id VARCHAR, pseudonym VARCHAR, referral_id VARCHAR, kind VARCHAR, "at" TIMESTAMP,
        contact_at TIMESTAMP, product VARCHAR, indication_end DATE, PRIMARY KEY (topic, "partition", "offset"));
    CREATE TABLE alerts (topic VARCHAR, "partition" INTEGER, "offset" BIGINT, kind VARCHAR, "at" TIMESTAMP,
        pseudonym VARCHAR, referral_id VARCHAR, provider VARCHAR, team VARCHAR,
        PRIMARY KEY (topic, "partition", "offset"));
    CREATE TABLE source_offsets (topic VARCHAR, "partition" INTEGER, next_offset BIGINT,
        PRIMARY KEY (topic, "partition"));
    """,
    # 2: dead letters pending, counted from the topic's offsets (the sink may not read a dead letter)
    """
    CREATE TABLE dead_letters_observed ("partition" INTEGER PRIMARY KEY, log_start BIGINT, log_end BIGINT,
        observed_at TIMESTAMP);
    """,
]
FACT_TABLES = ("referrals", "decisions", "statuses", "feedback", "alerts")
TABLES = (*FACT_TABLES, "source_offsets", "dead_letters_observed")
BUSY_RETRY_S = 0.2


def migrate(db: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema to the newest version, each migration in its own transaction; returns the version."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute(statements)
            db.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [version])
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _busy(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


@contextmanager
def opened(path: Path, *, read_only: bool = False, wait_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store, migrated (unless read-only); waits while another process holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
            db = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(BUSY_RETRY_S)
    try:
        if not read_only:
            migrate(db)
        yield db
    finally:
        db.close()


def write(db: duckdb.DuckDBPyConnection, facts: Iterable[Fact], offsets: dict[tuple[str, int], int]) -> None:
    """Upsert facts and the offsets read up to, in one transaction."""
    by_table: dict[str, list[dict]] = {}
    for fact in facts:
        by_table.setdefault(fact.table, []).append(fact.row)
    db.execute("BEGIN TRANSACTION")
    try:
        for table, rows in by_table.items():
            columns = list(rows[0])
            quoted = ", ".join(f'"{c}"' for c in columns)
            conflict = "DO NOTHING" if table == "referrals" else "DO UPDATE SET " + ", ".join(
                f'"{c}" = excluded."{c}"' for c in columns if c not in ("topic", "partition", "offset"))
            db.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))}) "
                           f"ON CONFLICT {conflict}", [[row[c] for c in columns] for row in rows])
        if offsets:
            db.executemany('INSERT INTO source_offsets VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET '
                           'next_offset = greatest(source_offsets.next_offset, excluded.next_offset)',
                           [[topic, partition, offset] for (topic, partition), offset in offsets.items()])
        db.execute("COMMIT")
    except Exception:
        db.execute("ROLLBACK")
        raise


def observe_dead_letters(db: duckdb.DuckDBPyConnection, ends: dict[int, tuple[int, int]], at: object) -> None:
    if not ends:
        return
    db.executemany('INSERT INTO dead_letters_observed VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET '
                   'log_start = excluded.log_start, log_end = excluded.log_end, observed_at = excluded.observed_at',
                   [[partition, start, end, at] for partition, (start, end) in ends.items()])


def dump(db: duckdb.DuckDBPyConnection, tables: Iterable[str] = FACT_TABLES) -> dict[str, list[tuple]]:
    """Every row of the tables, in a stable order (tests compare two stores with it)."""
    return {table: db.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in tables}


def offsets_read(db: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], int]:
    return {(topic, partition): offset for topic, partition, offset in
            db.execute('SELECT topic, "partition", next_offset FROM source_offsets').fetchall()}
