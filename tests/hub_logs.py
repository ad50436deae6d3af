"""Reading a log that a running process still writes."""

import json
from pathlib import Path


def log_events(log_file: Path) -> list[dict]:
    """The JSON lines the process has written whole: a line it is still writing (no newline yet) is left for the
    next read, not parsed half (a test polling the log met `Unterminated string` under a loaded machine)."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    whole = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.startswith("{")]
