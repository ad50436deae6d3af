"""The file clock that tests and demos move: a reader sees the old moment or the new one, never an empty file."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.infra.clock import FileClock

MARCH = datetime(2026, 3, 13, 15, tzinfo=UTC)


def test_set_moves_now_and_none_goes_back_to_the_system_time(tmp_path: Path) -> None:
    clock = FileClock(tmp_path / "now")
    clock.set(MARCH)
    assert clock.now() == MARCH
    clock.set(None)
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=1)


def test_a_reader_never_sees_the_system_time_while_the_clock_is_moved_over_and_over(tmp_path: Path) -> None:
    clock = FileClock(tmp_path / "now")
    clock.set(MARCH)
    moments = [MARCH + timedelta(minutes=i) for i in range(200)]
    writer = threading.Thread(target=lambda: [clock.set(moment) for moment in moments])
    writer.start()
    seen = set()
    while writer.is_alive():
        seen.add(clock.now())
    writer.join()
    assert seen and seen <= set(moments) | {MARCH}  # a rewrite in place (truncate, then write) shows the system time
