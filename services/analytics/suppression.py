"""Small-number suppression of a table of counts, as statistical offices do it (docs/report.md). Pure.

Primary: every count from 1 to 4 is shown as "<5". Secondary: a line (a row with its total, a column with its
total) that has exactly one hidden member would give that member away as the total minus the others, so the
smallest positive visible member of that line (a cell or the total) is hidden too, shown as "x", preferring one
whose crossing line has a lone hidden member as well (so hidden cells close into rectangles rather than spread);
repeated until every line with a visible total has none or at least two hidden members.

Linked figures: the same figure in two tables (the month's referrals as one table's total and another's; the GI
referrals as a cell of one and the total of the other) is hidden in both when it is hidden in one, and the
suppression of both runs again (`suppress_linked`), so no table gives away what another hides. Zero is shown: it is no child.
"""

from dataclasses import dataclass

SMALL = "<5"
HIDDEN = "x"
THRESHOLD = 5


@dataclass(frozen=True)
class Suppressed:
    """A table after suppression: `cells[i][j]`, `row_totals[i]`, `column_totals[j]`, `total` as shown (None:
    the table has no such total), and which positions are hidden (i, j), with j == len(columns) for a row's total
    and i == len(rows) for the totals row."""

    cells: list[list[str]]
    row_totals: list[str] | None
    column_totals: list[str] | None
    total: str | None
    hidden: frozenset[tuple[int, int]]

    def is_hidden(self, i: int, j: int) -> bool:
        return (i, j) in self.hidden


def suppress(counts: list[list[int]], *, row_totals: bool = True, column_totals: bool = True,
             forced: frozenset[tuple[int, int]] = frozenset()) -> Suppressed:
    """`forced`: positions to hide as well (as "x"), because the same figure is hidden in another table."""
    rows, columns = len(counts), len(counts[0]) if counts else 0
    grid = {(i, j): counts[i][j] for i in range(rows) for j in range(columns)}
    if row_totals:
        grid |= {(i, columns): sum(counts[i]) for i in range(rows)}
    if column_totals:
        grid |= {(rows, j): sum(counts[i][j] for i in range(rows)) for j in range(columns)}
    if row_totals and column_totals:
        grid[(rows, columns)] = sum(map(sum, counts))
    lines: list[list[tuple[int, int]]] = []
    if row_totals:
        lines += [[(i, j) for j in range(columns + 1)] for i in range(rows + (1 if column_totals else 0))]
    if column_totals:
        lines += [[(i, j) for i in range(rows + 1)] for j in range(columns + (1 if row_totals else 0))]
    primary = {position for position, value in grid.items() if 0 < value < THRESHOLD}
    hidden = set(primary) | {position for position in forced if position in grid}
    lines_of: dict[tuple[int, int], list[list[tuple[int, int]]]] = {}
    for line in lines:
        for position in line:
            lines_of.setdefault(position, []).append(line)

    def lonely(position: tuple[int, int], line: list[tuple[int, int]]) -> int:
        """How many other lines through `position` also have just one hidden member: hiding it mends those too,
        which closes rectangles instead of spreading chains of hidden cells."""
        return sum(1 for other in lines_of[position] if other is not line and sum(p in hidden for p in other) == 1)

    changed = True
    while changed:
        changed = False
        for line in lines:
            if sum(position in hidden for position in line) != 1:
                continue
            candidates = sorted((-lonely(p, line), grid[p], p) for p in line if p not in hidden and grid[p] > 0)
            if candidates:
                hidden.add(candidates[0][2])
                changed = True

    def shown(position: tuple[int, int]) -> str:
        return SMALL if position in primary else HIDDEN if position in hidden else str(grid[position])

    return Suppressed(
        cells=[[shown((i, j)) for j in range(columns)] for i in range(rows)],
        row_totals=[shown((i, columns)) for i in range(rows)] if row_totals else None,
        column_totals=[shown((rows, j)) for j in range(columns)] if column_totals else None,
        total=shown((rows, columns)) if row_totals and column_totals else None,
        hidden=frozenset(hidden))


def share(numerator: str, denominator: str) -> str:
    """A percentage of two shown counts; hidden when either is."""
    if not numerator.isdigit() or not denominator.isdigit():
        return HIDDEN
    return f"{100 * int(numerator) / int(denominator):.0f}%" if int(denominator) else "-"


def suppress_linked(tables: list[tuple[list[list[int]], bool, bool, dict[tuple[int, int], str]]]
                    ) -> list[Suppressed]:
    """Each table (counts, row totals, column totals, links: position -> name of the figure) suppressed, with
    every linked figure hidden everywhere as soon as it is hidden anywhere; repeated until nothing changes."""
    forced: list[frozenset[tuple[int, int]]] = [frozenset()] * len(tables)
    while True:
        results = [suppress(counts or [[]], row_totals=rows, column_totals=columns, forced=force)
                   for (counts, rows, columns, _), force in zip(tables, forced, strict=True)]
        hidden_names = {name for (_, _, _, links), result in zip(tables, results, strict=True)
                        for position, name in links.items() if position in result.hidden}
        wanted = [frozenset(position for position, name in links.items() if name in hidden_names) | force
                  for (_, _, _, links), force in zip(tables, forced, strict=True)]
        if wanted == forced:
            return results
        forced = wanted
