"""The pending dead letters in numbers, for operations (compacted `ops.deadletters.v1`, one record, key `summary`).

Counts, codes, channels and times only: operations may read it, though it may not read the dead letters.
"""

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel

SUMMARY_KEY = "summary"


class PendingCount(BaseModel):
    channel: str
    code: str
    count: int
    oldest_at: datetime


class DeadLetterSummary(BaseModel):
    SCHEMA: ClassVar[str] = "verwijshub.DeadLetterSummary/1"
    at: datetime
    """When the admin's command counted them."""
    total: int
    pending: int
    oldest_pending_at: datetime | None = None
    counts: list[PendingCount] = []
    """Per channel and error code: pending dead letters and the oldest one's time (a dead letter with two codes
    counts under each)."""
