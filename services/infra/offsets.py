"""The runtime's bookkeeping, pure: where each owned input stands, what a transaction commits, when a batch closes.

No Kafka here (services/infra/processing.py drives it), so every rule is unit-tested on its own
(tests/unit/test_offsets.py).
"""

from dataclasses import dataclass, field

Input = tuple[str, int]
"""An input partition: (topic, partition)."""


@dataclass
class Offsets:
    """The committed offset of every input this instance owns: the first record not yet committed."""

    committed: dict[Input, int] = field(default_factory=dict)
    never: set[Input] = field(default_factory=set)
    """Inputs the group never committed: their beginning is committed with the next transaction, so that their lag
    shows from the start (a group's lag is counted over its committed offsets)."""

    def own(self, found: dict[Input, int | None], beginnings: dict[Input, int]) -> None:
        """Newly assigned inputs: their committed offsets as the group answered (None: never committed, then
        `beginnings` says where they begin)."""
        for tp, offset in found.items():
            if offset is None:
                self.committed[tp] = beginnings[tp]
                self.never.add(tp)
            else:
                self.committed[tp] = offset
                self.never.discard(tp)

    def release(self, numbers: set[int] | None = None) -> None:
        """Forget the inputs of partition numbers no longer owned (all of them without `numbers`)."""
        for tp in [tp for tp in self.committed if numbers is None or tp[1] in numbers]:
            del self.committed[tp]
            self.never.discard(tp)

    def to_commit(self, positions: dict[Input, int]) -> dict[Input, int]:
        """What a transaction commits: each owned input's position (the consumer's next offset, which is past the
        transaction markers after its last record, so that a caught-up input shows no lag) where that is past what
        is committed, and the beginning of inputs never committed."""
        offsets = {tp: positions[tp] for tp, committed in self.committed.items()
                   if tp in positions and positions[tp] > committed}
        return {**{tp: self.committed[tp] for tp in self.never}, **offsets}

    def done(self, offsets: dict[Input, int]) -> None:
        """A transaction with these offsets committed."""
        for tp, offset in offsets.items():
            if tp in self.committed:
                self.committed[tp] = max(self.committed[tp], offset)
                self.never.discard(tp)

    def of(self, numbers: set[int]) -> dict[Input, int]:
        """Where the inputs of partition numbers start again after an aborted transaction: what is committed."""
        return {tp: offset for tp, offset in self.committed.items() if tp[1] in numbers}


@dataclass
class Window:
    """When the records collected for one transaction are enough: `interval_s` after the first (Kafka Streams'
    `commit.interval.ms`), or `most` records, whichever comes first; 0 s takes what one fetch returned."""

    interval_s: float
    most: int
    opened: float | None = None

    def closed(self, now: float, count: int) -> bool:
        """Whether `count` records collected by `now` close the window (the first of them opens it)."""
        if count and self.opened is None:
            self.opened = now
        return count >= self.most or (self.opened is not None and now >= self.opened + self.interval_s)

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the next fetch may wait: until the window closes, or `idle_s` while it has no record."""
        if self.opened is None:
            return idle_s
        return max(0.0, self.opened + self.interval_s - now)
