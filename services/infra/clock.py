"""'Now' as a dependency: the core never reads the wall clock itself, so tests can move time."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    """'Now' read from a file that a test or a demo writes: a week can pass in a second, in every
    service process at once. An absent or empty file means the system time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            text = ""
        return datetime.fromisoformat(text) if text else datetime.now(UTC)
