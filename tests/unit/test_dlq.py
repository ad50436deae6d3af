"""The pure part of `verwijshub dlq`: dead letters and replay markers into rows, selections, offline checks."""

import json
from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY as REGISTRY_METRICS

from services.dlq.core import (
    Outcome,
    ReplayMarker,
    State,
    check,
    due_for_auto_retry,
    from_record,
    next_marker,
    parse_since,
    row,
    select,
    summarise,
)
from services.dlq.store import INBOUND_SCHEMA, resubmission
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.ops.deadletters import export
from services.ops.page import render
from tests.referrals import gp_bytes, random_bsn

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def record(value: bytes, *codes: str, partition: int = 0, offset: int = 0, channel: str = "gp",
           origin: str = "referrals.gp.v1", at: datetime = NOW, **origin_headers: str) -> ConsumerRecord:
    headers = {"channel": channel, "origin-topic": origin, "origin-partition": "2", "origin-offset": "7",
               "errors": json.dumps([{"code": c, "location": "/x", "message": "quotes 2011-02-28"} for c in codes]),
               **{f"origin-header-{k}": v for k, v in origin_headers.items()}}
    return ConsumerRecord("referrals.dlq.v1", partition, offset, int(at.timestamp() * 1000), 0, b"ZD-1", value,
                          None, 0, len(value), [(k, v.encode()) for k, v in headers.items()])


def marker(letter_id: str, outcome: Outcome, attempts: int = 1) -> ReplayMarker:
    return ReplayMarker(dead_letter_id=letter_id, at=NOW, by="verwijshub-admin", outcome=outcome, attempts=attempts)


def test_a_row_names_id_origin_codes_and_referral_id_but_no_content_or_message() -> None:
    bsn = random_bsn()
    letter = from_record(record(gp_bytes(referral_id="ZD-9", bsn=bsn, product="45Z99"), "PRODUCT_UNKNOWN",
                                partition=3, offset=11))
    result = check(letter, REGISTRY, NOW, pseudonym_key="k", max_bytes=1 << 20)
    shown = row(letter, None, result.referrer_referral_id)
    assert (shown.id, shown.origin, shown.errors, shown.referral_id, shown.state) == (
        "3-11", "referrals.gp.v1/2/7", ["PRODUCT_UNKNOWN@/x"], "ZD-9", State.PENDING)
    text = json.dumps(shown.as_json())
    assert bsn not in text and "2011-02-28" not in text and "de Vries" not in text
    assert not result.accepted and result.codes == ["PRODUCT_UNKNOWN"] and letter.transient


def test_the_check_accepts_a_fixed_referral_and_routes_it_offline() -> None:
    letter = from_record(record(gp_bytes(referral_id="ZD-9", bsn=random_bsn()), "PRODUCT_UNKNOWN"))
    result = check(letter, REGISTRY, NOW, pseudonym_key="k", max_bytes=1 << 20)
    assert result.accepted and result.referral_id and "->" in result.routing


def test_feedback_is_checked_against_its_schema_and_hub_records_are_not_replayable() -> None:
    feedback = json.dumps({"referral_id": "R-1", "kind": "accepted", "at": NOW.isoformat()}).encode()
    ok = check(from_record(record(feedback, "NOT_RECIPIENT", origin="feedback.wij.centrum.v1", channel="")),
               REGISTRY, NOW, pseudonym_key="k", max_bytes=1 << 20)
    assert ok.accepted and ok.referrer_referral_id == "R-1"
    internal = check(from_record(record(b"{}", "SCHEMA_INVALID", origin="referrals.normalised.v1")),
                     REGISTRY, NOW, pseudonym_key="k", max_bytes=1 << 20)
    assert not internal.accepted and internal.codes == ["SCHEMA_INVALID"]


def test_select_filters_by_channel_code_time_state_and_id() -> None:
    old = from_record(record(b"a", "BSN_INVALID", offset=1, at=NOW - timedelta(days=2)))
    new = from_record(record(b"b", "PRODUCT_UNKNOWN", offset=2, channel="gi", origin="referrals.gi.v1"))
    done = {"0-2": marker("0-2", Outcome.RESUBMITTED)}
    letters = [new, old]
    assert [d.id for d in select(letters, {}, state=State.ALL)] == ["0-1", "0-2"]  # oldest first
    assert [d.id for d in select(letters, done)] == ["0-1"]
    assert [d.id for d in select(letters, done, state=State.REPLAYED)] == ["0-2"]
    assert [d.id for d in select(letters, {}, state=State.ALL, channel="gi")] == ["0-2"]
    assert [d.id for d in select(letters, {}, state=State.ALL, code="BSN_INVALID")] == ["0-1"]
    assert [d.id for d in select(letters, {}, state=State.ALL, since=NOW - timedelta(hours=1))] == ["0-2"]
    assert [d.id for d in select(letters, done, state=State.ALL, ids=["0-2"])] == ["0-2"]


def test_still_rejected_stays_pending_and_attempts_count_on() -> None:
    letter = from_record(record(b"x", "PRODUCT_UNKNOWN"))
    result = check(letter, REGISTRY, NOW, pseudonym_key="k", max_bytes=1 << 20)
    first = next_marker(letter, None, result, at=NOW, by="verwijshub-admin", already_accepted=False)
    second = next_marker(letter, first, result, at=NOW, by="verwijshub-admin", already_accepted=False)
    assert (first.outcome, first.attempts, second.attempts) == (Outcome.STILL_REJECTED, 1, 2)
    assert select([letter], {letter.id: second}) == [letter]  # still pending
    assert "still-rejected (UNPARSEABLE)" in row(letter, second, None).outcome


def test_auto_retry_takes_pending_transient_dead_letters_with_attempts_left() -> None:
    transient = from_record(record(b"a", "PRODUCT_UNKNOWN", offset=1))
    permanent = from_record(record(b"b", "PRODUCT_UNKNOWN", "BSN_INVALID", offset=2))
    tried = from_record(record(b"c", "PRODUCT_UNKNOWN", offset=3))
    known = {"0-3": marker("0-3", Outcome.STILL_REJECTED, attempts=3)}
    assert [d.id for d in due_for_auto_retry([transient, permanent, tried], known, 3)] == ["0-1"]
    assert [d.id for d in due_for_auto_retry([transient, permanent, tried], known, 4)] == ["0-1", "0-3"]


def test_a_resubmission_goes_back_on_its_origin_with_its_key_headers_and_replay_of() -> None:
    letter = from_record(record(b"raw", "PRODUCT_UNKNOWN", partition=1, offset=5, trace="t-1"))
    again = resubmission(letter)
    assert (again.topic, again.key, again.value) == ("referrals.gp.v1", b"ZD-1", b"raw")
    assert again.headers["replay-of"] == "1-5" and again.headers["trace"] == "t-1"
    assert again.headers["schema"] == INBOUND_SCHEMA and again.headers["channel"] == "gp"


def test_since_takes_durations_and_times() -> None:
    assert parse_since("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_since("1d", NOW) == NOW - timedelta(days=1)
    assert parse_since("2026-03-01T00:00:00", NOW) == datetime(2026, 3, 1, tzinfo=UTC)


def test_the_summary_counts_pending_per_channel_and_code_with_the_oldest_and_no_id() -> None:
    old = from_record(record(b"a", "BSN_INVALID", "DATE_INVALID", offset=1, at=NOW - timedelta(days=2)))
    new = from_record(record(b"b", "BSN_INVALID", offset=2, at=NOW - timedelta(hours=1)))
    done = from_record(record(b"c", "PRODUCT_UNKNOWN", offset=3))
    summary = summarise([new, old, done], {"0-3": marker("0-3", Outcome.RESUBMITTED)}, NOW)
    assert (summary.total, summary.pending, summary.oldest_pending_at) == (3, 2, NOW - timedelta(days=2))
    assert [(c.channel, c.code, c.count, c.oldest_at) for c in summary.counts] == [
        ("gp", "BSN_INVALID", 2, NOW - timedelta(days=2)), ("gp", "DATE_INVALID", 1, NOW - timedelta(days=2))]
    assert "0-1" not in summary.model_dump_json()


def test_operations_metrics_and_page_show_the_pending_dead_letters_and_their_age() -> None:
    old = from_record(record(b"a", "BSN_INVALID", offset=1, at=NOW - timedelta(days=2)))
    summary = summarise([old], {}, NOW - timedelta(hours=1))
    export(summary, NOW, 86400)
    assert REGISTRY_METRICS.get_sample_value("verwijshub_dead_letters_pending",
                                             {"channel": "gp", "code": "BSN_INVALID"}) == 1
    assert REGISTRY_METRICS.get_sample_value("verwijshub_dead_letters_oldest_pending_seconds") == 2 * 86400
    assert REGISTRY_METRICS.get_sample_value("verwijshub_dead_letters_summary_age_seconds") == 3600
    page = render([], {}, [], 0, NOW, [], summary)
    assert "<td>gp</td><td>BSN_INVALID</td><td>1</td><td>2.0 d</td>" in page
    assert "no summary yet" in render([], {}, [], 0, NOW, [], None)
