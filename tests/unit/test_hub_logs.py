"""Reading a log its process still writes (tests/hub_logs.py)."""

from pathlib import Path

from tests.hub_logs import log_events


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    log.write_text('{"event": "ready"}\nnot json: a library\'s plain line\n{"event": "services rea')
    assert log_events(log) == [{"event": "ready"}]
    with log.open("a") as out:
        out.write('dy"}\n')
    assert log_events(log) == [{"event": "ready"}, {"event": "services ready"}]


def test_a_log_not_yet_made_has_no_events(tmp_path: Path) -> None:
    assert log_events(tmp_path / "hub.log") == []
