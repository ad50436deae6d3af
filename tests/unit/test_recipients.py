from aiokafka import ConsumerRecord

"""Recipients as operations sees them, without a broker: the notifier's clock counts per recipient and
partition, their merge, who has read how far, the age in working days, LATE, and how `lag` and the page show it."""

import json
import re
from datetime import UTC, datetime, timedelta

from rich.console import Console

from schemas.notices import ClockCounts, ContactClock, OpenHandover, RecipientClocks, YouthFollowUp
from schemas.referral import Channel
from schemas.routing import Recipient as Addressee
from schemas.routing import RecipientKind
from services.infra import topics
from services.infra.clock import SystemClock
from services.infra.provisioning import topic_config
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.notifier.app import Notifier
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.notifier.followup import partition_clocks, summed_clocks, youth_clocks
from services.ops.commands import as_json, recipients_table
from services.ops.page import render
from services.ops.recipients import (
    AT_RISK_OF_LOSS,
    Recipient,
    RecipientStatus,
    at_risk_of_loss,
    format_duration,
    format_retention,
    groups_of,
    judge,
    merge_clocks,
    read_position,
    recipient_view,
    recipients_of,
    retention_ms,
    topic_retention,
)

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
CALENDAR = WorkingCalendar()
FRIDAY_4PM = datetime(2026, 11, 20, 16, tzinfo=AMSTERDAM)
CENTRUM = Recipient("wij-centrum", "wij-team", "centrum", "WIJ Centrum", "handovers.wij.centrum.v1")


def handover(referral_id: str, kind: RecipientKind, recipient_id: str, *, at_risk: bool = False,
             breached: bool = False, clock: bool = True) -> OpenHandover:
    topic = f"handovers.{'wij' if kind is RecipientKind.WIJ_TEAM else 'provider'}.{recipient_id}.v1"
    return OpenHandover(
        referral_id=referral_id, referrer_referral_id=referral_id, channel=Channel.GP,
        recipient=Addressee(kind=kind, id=recipient_id, name=recipient_id, topic=topic),
        clock=ContactClock(started_at=FRIDAY_4PM, at_risk_at=FRIDAY_4PM, due_at=FRIDAY_4PM, at_risk_sent=at_risk,
                           breached_sent=breached) if clock else None)


def youth(pseudonym: str, *handovers: OpenHandover) -> YouthFollowUp:
    return YouthFollowUp(pseudonym=pseudonym, handovers={h.referral_id: h for h in handovers})


def test_clocks_are_counted_per_recipient_principal_and_carry_no_youth() -> None:
    states = [youth("p1", handover("R1", RecipientKind.WIJ_TEAM, "centrum"),
                    handover("R2", RecipientKind.PROVIDER, "12345678", clock=False)),
              youth("p2", handover("R3", RecipientKind.WIJ_TEAM, "centrum", at_risk=True),
                    handover("R4", RecipientKind.WIJ_TEAM, "haren", at_risk=True, breached=True))]
    assert summed_clocks(map(youth_clocks, states)) == {"wij-centrum": ClockCounts(open=2, at_risk=1),
                                                        "wij-haren": ClockCounts(breached=1)}
    key, value = partition_clocks(3, [youth_clocks(state) for state in states], FRIDAY_4PM)
    assert key == b"3" and value.partition == 3
    assert not re.search(r"p1|p2|R\d", value.model_dump_json())  # counts only


def summary(partition: int, **recipients: ClockCounts) -> tuple[bytes, bytes]:
    value = RecipientClocks(partition=partition, at=FRIDAY_4PM, recipients={k.replace("_", "-"): v
                                                                            for k, v in recipients.items()})
    return str(partition).encode(), value.model_dump_json().encode()


def test_the_latest_summary_per_notifier_partition_is_summed() -> None:
    records = [summary(0, wij_centrum=ClockCounts(open=5)), summary(1, wij_centrum=ClockCounts(open=1, at_risk=1)),
               summary(0, wij_centrum=ClockCounts(open=2), wij_haren=ClockCounts(breached=1)),
               (b"2", b"not json"), summary(4, wij_haren=ClockCounts(open=9)), (b"4", b"")]
    assert merge_clocks(records) == {"wij-centrum": ClockCounts(open=3, at_risk=1),
                                     "wij-haren": ClockCounts(breached=1)}


def test_a_recipients_groups_are_its_own_prefix_only() -> None:
    names = ["wij-centrum.epd", "wij-centrum-oost.epd", "wij-centrum", "verwijshub-notifier", "wij-centrum.b"]
    assert groups_of("wij-centrum", names) == ["wij-centrum.b", "wij-centrum.epd"]


def test_read_is_the_furthest_group_and_no_group_reads_nothing() -> None:
    assert read_position(0, 10, []) == 0
    assert read_position(4, 10, []) == 4  # retention removed 0-3: they wait for nobody
    assert read_position(0, 10, [3, 7]) == 7
    assert read_position(5, 10, [2]) == 5 and read_position(0, 10, [12]) == 10


def test_working_days_between_skip_weekends_and_holidays_and_invert_add_working_days() -> None:
    assert CALENDAR.working_days_between(FRIDAY_4PM, FRIDAY_4PM + timedelta(days=3)) == 1.0  # to Monday 16:00
    christmas_eve = datetime(2026, 12, 24, 12, tzinfo=AMSTERDAM)
    assert CALENDAR.working_days_between(christmas_eve, datetime(2026, 12, 28, 12, tzinfo=AMSTERDAM)) == 1.0
    for days in (0.25, 1, 3.5, 5):
        assert abs(CALENDAR.working_days_between(FRIDAY_4PM, CALENDAR.add_working_days(FRIDAY_4PM, days)) - days) < 1e-9
    assert CALENDAR.working_days_between(FRIDAY_4PM, FRIDAY_4PM - timedelta(hours=1)) == 0.0


def test_late_is_an_unread_handover_older_than_one_working_day() -> None:
    assert judge(0, None) is RecipientStatus.OK
    assert judge(2, 0.9) is RecipientStatus.WAITING and judge(2, 1.0) is RecipientStatus.WAITING
    assert judge(1, 1.01) is RecipientStatus.LATE


def test_a_team_without_a_group_has_everything_unread_and_ages_over_the_weekend() -> None:
    written_ms = int(FRIDAY_4PM.timestamp() * 1000)
    partitions = {0: (0, 2, 0), 1: (0, 1, 0), 2: (0, 0, 0)}
    monday_10am = datetime(2026, 11, 23, 10, tzinfo=AMSTERDAM)
    waiting = recipient_view(CENTRUM, [], 0, partitions, written_ms, ClockCounts(open=3), monday_10am, CALENDAR)
    assert waiting.unread == 3 and waiting.handovers == 3 and waiting.status is RecipientStatus.WAITING
    assert waiting.oldest_unread_seconds == 66 * 3600
    assert waiting.oldest_unread_working_days == 0.75  # Friday 16-24 h and Monday 0-10 h
    late = recipient_view(CENTRUM, [], 0, partitions, written_ms, ClockCounts(open=3), monday_10am + timedelta(hours=7),
                          CALENDAR)
    assert late.status is RecipientStatus.LATE and late.oldest_unread_at == FRIDAY_4PM.astimezone(UTC)
    read = recipient_view(CENTRUM, ["wij-centrum.epd"], 1, {0: (0, 2, 2), 1: (0, 1, 1)}, None, ClockCounts(),
                          monday_10am, CALENDAR)
    assert read.status is RecipientStatus.OK and read.unread == 0 and read.oldest_unread_seconds is None
    assert not read.attention and late.attention
    assert recipient_view(CENTRUM, ["wij-centrum.epd"], 1, {}, None, ClockCounts(open=1, breached=1), monday_10am,
                          CALENDAR).attention


def test_every_team_and_provider_of_the_registry_is_a_recipient() -> None:
    every = recipients_of(REGISTRY)
    assert len(every) == len(REGISTRY.teams) + len(REGISTRY.providers)
    assert CENTRUM in every
    assert all(r.topic.startswith("handovers.") and r.principal.split("-")[0] in ("wij", "provider") for r in every)


def views() -> list:
    monday_5pm = datetime(2026, 11, 23, 17, tzinfo=AMSTERDAM)
    written_ms = int(FRIDAY_4PM.timestamp() * 1000)
    haren = Recipient("wij-haren", "wij-team", "haren", "WIJ Haren", "handovers.wij.haren.v1")
    return [recipient_view(CENTRUM, [], 0, {0: (0, 2, 0)}, written_ms, ClockCounts(open=2), monday_5pm, CALENDAR),
            recipient_view(haren, ["wij-haren.epd"], 1, {0: (0, 4, 4)}, None, ClockCounts(open=1), monday_5pm,
                           CALENDAR)]


def test_lag_shows_recipients_not_ok_unless_asked_for_all_and_json_has_all() -> None:
    console = Console(record=True, width=200)
    console.print(recipients_table(views()))
    text = console.export_text()
    assert "wij-centrum" in text and "LATE" in text and "nobody" in text and "wij-haren" not in text
    console = Console(record=True, width=200)
    console.print(recipients_table(views(), every_recipient=True))
    assert "wij-haren.epd (1 connected)" in console.export_text()
    document = json.loads(as_json([], views()))
    centrum, haren = document["recipients"]
    assert centrum["status"] == "LATE" and centrum["read"] is False and centrum["unread"] == 2
    assert centrum["oldest_unread_working_days"] > 1 and centrum["clocks"] == {"open": 2, "at_risk": 0, "breached": 0}
    assert haren["status"] == "OK" and haren["groups"] == ["wij-haren.epd"]


def test_the_page_marks_a_late_recipient_first() -> None:
    page = render([], {}, [], 0, FRIDAY_4PM, list(reversed(views())))
    assert 'id="recipient-wij-centrum"' in page and 'class="recipient-LATE"' in page
    assert page.index("recipient-wij-centrum") < page.index("recipient-wij-haren")
    assert "1 of 2 recipients LATE" in page


DAY_MS = 86_400_000


def test_at_risk_of_loss_is_an_unread_record_older_than_half_the_retention() -> None:
    assert not at_risk_of_loss(None, 10 * DAY_MS)  # nothing unread
    assert not at_risk_of_loss(5 * 86_400, 10 * DAY_MS)  # exactly half: not yet
    assert at_risk_of_loss(5 * 86_400 + 1, 10 * DAY_MS)
    assert at_risk_of_loss(31, 60_000) and not at_risk_of_loss(29, 60_000)
    assert not at_risk_of_loss(10**9, None)  # kept forever
    assert at_risk_of_loss(1, 0)  # a retention of 0 deletes at once


def test_the_retention_is_the_brokers_where_it_says_else_the_settings() -> None:
    assert retention_ms("-1") is None and retention_ms(None) is None and retention_ms("junk") is None
    assert retention_ms("604800000") == 7 * DAY_MS and retention_ms("0") == 0
    topic = topics.wij_handovers("centrum")
    configured = topic_config(topic, Settings(_env_file=None))["retention.ms"]
    assert topic_retention(topic, {topic: "3600000"}, configured) == (3_600_000, "broker")
    assert topic_retention(topic, {topic: "-1"}, configured) == (None, "broker")
    assert topic_retention(topic, {"handovers.wij.haren.v1": "1"}, configured) == (90 * DAY_MS, "settings")
    assert topic_retention(topic, {}, None) == (None, "settings")
    assert format_retention(90 * DAY_MS) == "90.0 d" and format_retention(None) == "kept"


def test_a_recipient_is_at_risk_of_loss_whatever_its_working_days_say() -> None:
    """A week of unread handovers on a topic kept 10 days is at risk (and LATE); an hour on a topic kept an hour
    and a half is at risk though not yet LATE; on a topic kept forever nothing is ever at risk."""
    written_ms = int(FRIDAY_4PM.timestamp() * 1000)
    a_week_later = FRIDAY_4PM + timedelta(days=7)
    judged = lambda now, retention: recipient_view(  # noqa: E731
        CENTRUM, [], 0, {0: (0, 2, 0)}, written_ms, ClockCounts(open=2), now, CALENDAR, retention)
    losing = judged(a_week_later, (10 * DAY_MS, "broker"))
    assert losing.at_risk_of_loss and losing.status is RecipientStatus.LATE and losing.attention
    assert losing.marks == f"LATE, {AT_RISK_OF_LOSS}" and losing.retention_from == "broker"
    assert not judged(a_week_later, (90 * DAY_MS, "settings")).at_risk_of_loss
    assert not judged(a_week_later, (None, "broker")).at_risk_of_loss
    early = judged(FRIDAY_4PM + timedelta(hours=1), (5_400_000, "broker"))
    assert early.at_risk_of_loss and early.status is RecipientStatus.WAITING
    read = recipient_view(CENTRUM, ["wij-centrum.epd"], 1, {0: (0, 2, 2)}, None, ClockCounts(), a_week_later,
                          CALENDAR, (1, "broker"))
    assert not read.at_risk_of_loss and read.marks == "OK"


def test_lag_and_the_page_mark_a_recipient_at_risk_of_loss_first() -> None:
    written_ms = int(FRIDAY_4PM.timestamp() * 1000)
    now = FRIDAY_4PM + timedelta(days=7)
    haren = Recipient("wij-haren", "wij-team", "haren", "WIJ Haren", "handovers.wij.haren.v1")
    both = [recipient_view(CENTRUM, [], 0, {0: (0, 2, 0)}, written_ms, ClockCounts(), now, CALENDAR,
                           (90 * DAY_MS, "broker")),
            recipient_view(haren, [], 0, {0: (0, 1, 0)}, written_ms + 60_000, ClockCounts(), now, CALENDAR,
                           (10 * DAY_MS, "broker"))]
    page = render([], {}, [], 0, now, both)
    assert page.index("recipient-wij-haren") < page.index("recipient-wij-centrum")  # both LATE; haren at risk
    assert f"1 of 2 recipients {AT_RISK_OF_LOSS}" in page and ": wij-haren." in page
    haren_row = re.search(r'<tr class="recipient-LATE" id="recipient-wij-haren">(.*?)</tr>', page).group(1)
    centrum_row = re.search(r'<tr class="recipient-LATE" id="recipient-wij-centrum">(.*?)</tr>', page).group(1)
    assert AT_RISK_OF_LOSS in haren_row and "10.0 d" in haren_row and AT_RISK_OF_LOSS not in centrum_row
    console = Console(record=True, width=220)
    console.print(recipients_table(both))
    text = console.export_text()
    assert f"2 LATE, 1 {AT_RISK_OF_LOSS}" in text and f"LATE, {AT_RISK_OF_LOSS}" in text
    document = {r["principal"]: r for r in json.loads(as_json([], both))["recipients"]}
    assert document["wij-haren"]["at_risk_of_loss"] is True and document["wij-haren"]["retention_ms"] == 10 * DAY_MS
    assert document["wij-centrum"]["at_risk_of_loss"] is False and document["wij-centrum"]["retention_from"] == "broker"


def test_ages_read_as_people_read_them() -> None:
    assert [format_duration(s) for s in (None, 3.4, 119, 600, 5.5 * 3600, 604823.4)] == [
        "-", "3 s", "119 s", "10 min", "5.5 h", "7.0 d"]


async def test_the_notifier_publishes_each_owned_partitions_clocks_when_loaded_and_then_every_interval() -> None:
    notifier = Notifier(Settings(_env_file=None), REGISTRY, SystemClock())
    two = youth("p2", handover("R3", RecipientKind.WIJ_TEAM, "centrum", at_risk=True))
    await notifier.load(0, [record(b"p1", youth("p1", handover("R1", RecipientKind.WIJ_TEAM, "centrum"))
                                   .model_dump_json().encode())])
    await notifier.load(4, [record(b"p2", two.model_dump_json().encode()), record(b"p3", None)])
    published = notifier.recipient_clocks(0) + notifier.recipient_clocks(4)
    assert notifier.recipient_clocks(0) + notifier.recipient_clocks(4) == []  # within the interval: nothing new
    assert [(r.topic, r.key) for r in published] == [(topics.OPS_RECIPIENTS, b"0"), (topics.OPS_RECIPIENTS, b"4")]
    assert merge_clocks([(r.key, r.value) for r in published]) == {"wij-centrum": ClockCounts(open=2, at_risk=1)}
    notifier.unload(0)
    await notifier.load(0, [])  # owned again (here: empty): its clocks are published again at once
    assert [r.key for r in await notifier.tick(0)] == [b"0"]  # (nothing due in it)


def record(key: bytes, value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(topics.NOTIFIER_STATE, 0, 0, 0, 0, key, value, None, 0, 0, [])
