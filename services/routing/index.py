"""What routing keeps in memory of one partition between records: per youth only what decisions need and no
personal data (no referral, no BSN, no name), the offset of the youth's latest record on `routing.state.v1` to
read the full state back when a decline or a stop needs it, and the open handovers per provider.

Memory is bounded by open work: a youth leaves the index when its state is emptied (closed, or nothing running).
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from schemas.indications import Indication
from schemas.registry import Provider
from schemas.routing import RecipientKind, YouthRouting
from services.routing.core import stop_due


@dataclass(frozen=True, slots=True)
class OpenEntry:
    """An open referral as the index knows it: with whom it is, and who declined it."""

    kind: RecipientKind
    recipient: str
    declined: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class YouthEntry:
    offset: int | None
    """Of the youth's latest record on `routing.state.v1`; None while its newest record is not read back yet."""
    referrals: Mapping[str, OpenEntry]
    indications: tuple[Indication, ...]
    """Pseudonym, product, AGB, dates: no personal data."""

    @classmethod
    def of(cls, state: YouthRouting, offset: int | None) -> "YouthEntry":
        return cls(offset, {rid: OpenEntry(r.decision.recipient.kind, r.decision.recipient.id, tuple(r.declined))
                            for rid, r in state.referrals.items() if r.decision.recipient is not None},
                   tuple(state.indications))


class PartitionIndex:
    """The youths of one owned partition, and its open handovers per provider (the policy's load)."""

    def __init__(self) -> None:
        self.youths: dict[str, YouthEntry] = {}
        self.load: Counter[str] = Counter()
        self._quiet: tuple[frozenset[str], date] | None = None
        """(stopped providers, day) of the last sweep that found no work; void once a youth changes."""

    def get(self, pseudonym: str) -> YouthEntry | None:
        return self.youths.get(pseudonym)

    def put(self, pseudonym: str, entry: YouthEntry | None) -> None:
        """The youth's entry (None: it has no state any more), the load counted along."""
        self._quiet = None
        self._count(self.youths.pop(pseudonym, None), -1)
        if entry is not None:
            self.youths[pseudonym] = entry
            self._count(entry, +1)

    def located(self, pseudonym: str, offset: int) -> None:
        """The youth's newest record was read back at `offset`."""
        entry = self.youths.get(pseudonym)
        if entry is not None:
            self.youths[pseudonym] = YouthEntry(offset, entry.referrals, entry.indications)

    def _count(self, entry: YouthEntry | None, sign: int) -> None:
        if entry is None:
            return
        for open_entry in entry.referrals.values():
            if open_entry.kind is RecipientKind.PROVIDER:
                self.load[open_entry.recipient] += sign
                if self.load[open_entry.recipient] <= 0:
                    del self.load[open_entry.recipient]

    def open_load(self) -> dict[str, int]:
        return dict(self.load)

    def stop_candidates(self, stopped: Mapping[str, Provider], today: date) -> list[str]:
        """The youths with stop work, in a stable order. Asked every tick: a scan that found nothing is not
        repeated until a youth changes, the stopped providers change, or the day does."""
        if not stopped or self._quiet == (frozenset(stopped), today):
            return []
        found = sorted(pseudonym for pseudonym, entry in self.youths.items()
                       if stop_due(((e.kind, e.recipient) for e in entry.referrals.values()), entry.indications,
                                   stopped, today))
        if not found:
            self._quiet = (frozenset(stopped), today)
        return found

    def __len__(self) -> int:
        return len(self.youths)
