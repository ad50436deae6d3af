"""'Now' as a dependency: the core never reads the wall clock itself, so tests can move time."""

import os
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

    def set(self, moment: datetime | None) -> None:
        """Move every reader's 'now' to `moment` (None: back to the system time). Atomically, a new file renamed
        over the old: a reader that saw the file empty halfway through a rewrite would take the system time and
        breach every open contact clock at once (a notifier test did, once, on a loaded machine)."""
        new = self.path.with_name(self.path.name + ".new")
        new.write_text(moment.isoformat() if moment else "")
        os.replace(new, self.path)
