"""Small-number suppression: no count from 1 to 4 is shown, nor can it be derived from a total and the other
cells of its row or column (the rule of docs/report.md)."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.suppression import HIDDEN, SMALL, share, suppress, suppress_linked

counts = st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=5), min_size=1, max_size=5).map(
    lambda rows: [row + [0] * (max(map(len, rows)) - len(row)) for row in rows])


def _lines(shown, rows: int, columns: int, row_totals: bool, column_totals: bool):
    """Every line with a visible total: (the shown members, the total shown)."""
    grid = {(i, j): shown.cells[i][j] for i in range(rows) for j in range(columns)}
    if row_totals:
        grid |= {(i, columns): shown.row_totals[i] for i in range(rows)}
    if column_totals:
        grid |= {(rows, j): shown.column_totals[j] for j in range(columns)}
    if row_totals and column_totals:
        grid[(rows, columns)] = shown.total
    lines = []
    if row_totals:
        lines += [[grid[(i, j)] for j in range(columns + 1)] for i in range(rows + column_totals)]
    if column_totals:
        lines += [[grid[(i, j)] for i in range(rows + 1)] for j in range(columns + row_totals)]
    return grid, lines


@settings(max_examples=400, deadline=None)
@given(counts, st.booleans(), st.booleans())
def test_no_small_count_is_shown_or_derivable_from_its_line(table, row_totals, column_totals) -> None:
    shown = suppress(table, row_totals=row_totals, column_totals=column_totals)
    rows, columns = len(table), len(table[0])
    grid, lines = _lines(shown, rows, columns, row_totals, column_totals)
    assert not [value for value in grid.values() if value in {"1", "2", "3", "4"}]
    for i in range(rows):
        for j in range(columns):
            if 0 < table[i][j] < 5:
                assert shown.cells[i][j] == SMALL
            elif shown.cells[i][j] not in (SMALL, HIDDEN):
                assert shown.cells[i][j] == str(table[i][j])  # what is shown is true
    for line in lines:
        hidden = sum(value in (SMALL, HIDDEN) for value in line)
        assert hidden != 1, line  # one hidden member would be the total minus the others


def test_a_single_small_cell_takes_a_second_one_with_it() -> None:
    shown = suppress([[40, 3, 0, 0]], column_totals=False)
    assert shown.cells == [[HIDDEN, SMALL, "0", "0"]] and shown.row_totals == ["43"]


def test_a_small_cell_next_to_zeros_only_hides_the_total() -> None:
    shown = suppress([[0, 3, 0]], column_totals=False)
    assert shown.cells == [["0", SMALL, "0"]] and shown.row_totals == [SMALL]


def test_a_table_without_totals_hides_only_the_small_counts() -> None:
    shown = suppress([[7, 2, 0, 12]], row_totals=False, column_totals=False)
    assert shown.cells == [["7", SMALL, "0", "12"]]


def test_shares_are_hidden_with_their_counts() -> None:
    assert share("20", "25") == "80%"
    assert share(HIDDEN, "25") == HIDDEN and share("20", SMALL) == HIDDEN and share("0", "0") == "-"


def test_a_large_random_table_keeps_its_large_cells_mostly_visible() -> None:
    rng = random.Random(14)
    table = [[rng.randint(20, 60) for _ in range(6)] for _ in range(8)]
    table[3][2] = 2
    shown = suppress(table)
    assert sum(cell in (SMALL, HIDDEN) for row in shown.cells for cell in row) == 4  # a rectangle of four


def test_a_figure_hidden_in_one_table_is_hidden_in_every_table_that_shows_it() -> None:
    """The GI referrals: a cell of the per-channel table, the total of the GI table. Hidden in the first (as the
    partner of a small cell), it would otherwise be shown as the GI table's total and give the small cell away."""
    per_channel = ([[40, 3, 9]], True, False, {(0, 2): "gi", (0, 3): "referrals"})
    gi = ([[6], [3]], False, True, {(2, 0): "gi"})
    channel, gi_shown = suppress_linked([per_channel, gi])
    assert channel.cells == [["40", SMALL, HIDDEN]] and channel.row_totals == ["52"]
    assert gi_shown.column_totals == [HIDDEN] and gi_shown.cells == [["6"], [SMALL]]
