"""The runtime's pure bookkeeping (services/infra/offsets.py): what a transaction commits, where inputs start again,
when a batch's window closes."""

from services.infra.offsets import Offsets, Window

A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)


def test_a_transaction_commits_the_positions_past_what_is_committed_and_nothing_else() -> None:
    offsets = Offsets()
    offsets.own({A0: 10, A1: 4, B0: 7}, {})
    assert offsets.to_commit({A0: 12, A1: 4, B0: 6}) == {A0: 12}  # A1 unmoved; B0 behind (sought back) is not taken


def test_markers_past_the_last_record_are_committed_so_a_caught_up_input_shows_no_lag() -> None:
    """The consumer's position after a transactional record is past its commit marker (offset + 2): committing
    offset + 1 would leave a lag of one for ever."""
    offsets = Offsets()
    offsets.own({A0: 5}, {})
    last_record = 5
    assert offsets.to_commit({A0: last_record + 2}) == {A0: 7}


def test_an_input_never_committed_commits_its_beginning_with_the_next_transaction() -> None:
    offsets = Offsets()
    offsets.own({A0: None, A1: 3}, {A0: 40})
    assert offsets.to_commit({}) == {A0: 40}
    offsets.done({A0: 40})
    assert offsets.to_commit({}) == {} and not offsets.never


def test_after_an_abort_the_inputs_start_where_committed_not_where_the_consumer_got() -> None:
    offsets = Offsets()
    offsets.own({A0: 10, A1: 4, B0: 7}, {})
    attempted = offsets.to_commit({A0: 20, A1: 9})
    assert attempted == {A0: 20, A1: 9}  # never `done`: the transaction aborted
    assert offsets.of({0}) == {A0: 10, B0: 7} and offsets.of({1}) == {A1: 4}


def test_a_commit_never_moves_an_input_back_and_released_inputs_are_forgotten() -> None:
    offsets = Offsets()
    offsets.own({A0: 10, A1: 4}, {})
    offsets.done({A0: 8, A1: 6, B0: 99})  # B0 not owned (released meanwhile): not taken
    assert offsets.committed == {A0: 10, A1: 6}
    offsets.release({1})
    assert offsets.committed == {A0: 10}
    offsets.release()
    assert offsets.committed == {} and offsets.to_commit({A0: 50}) == {}


def test_a_window_closes_its_interval_after_the_first_record_or_when_full() -> None:
    window = Window(interval_s=0.1, most=3)
    assert not window.closed(0.0, 0) and window.wait_s(0.0, idle_s=0.5) == 0.5  # no record yet: waits idle
    assert not window.closed(1.0, 1) and round(window.wait_s(1.05, idle_s=0.5), 3) == 0.05
    assert not window.closed(1.05, 2)  # the records held so far, not a sum of what each fetch brought
    assert window.closed(1.1, 2)
    full = Window(interval_s=10, most=3)
    assert not full.closed(0.0, 2) and full.closed(0.01, 3)


def test_a_window_of_no_interval_takes_what_one_fetch_returned() -> None:
    window = Window(interval_s=0, most=500)
    assert window.closed(0.0, 2) and window.wait_s(0.0, idle_s=0.5) == 0
