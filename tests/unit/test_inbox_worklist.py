"""The web inbox's core: contact deadlines and their marks as the notifier counts them, the team's list, a worker's
form read into the same Task update the API's PUT makes, and a handover read for a worker."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.feedback import FeedbackKind
from schemas.recipients import RecipientTask, RecordRef, TaskStatus
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.gp import parse_gp
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.notifier.followup import start_clock
from services.notifier.handover import handover_bytes
from services.recipients import tasks as core
from services.recipients import worklist
from services.recipients.worklist import Action, FormError, Mark
from services.routing.policy import decide
from tests.referrals import gp_bytes

CALENDAR = WorkingCalendar()
FRIDAY = datetime(2026, 12, 4, 15, 0, tzinfo=AMSTERDAM)
REF = RecordRef(topic="handovers.wij.centrum.v1", partition=0, offset=3, schema="verwijshub.Handover/1")


def a_task(task_id: str = "t1", **fields) -> RecipientTask:
    return RecipientTask(**{"id": task_id, "bundle_id": "b1", "referral_id": "r1", "owner": "wij-centrum",
                            "handed_over_at": FRIDAY, "last_updated": FRIDAY, "handover": REF, **fields})


# -- deadlines -----------------------------------------------------------------------------------------
def test_the_deadline_is_five_working_days_from_the_notifiers_clock_start_at_risk_one_before():
    row = worklist.row(a_task(), FRIDAY, FRIDAY, CALENDAR)
    assert row.due_at == datetime(2026, 12, 11, 15, 0, tzinfo=AMSTERDAM)  # the weekend does not count
    assert row.at_risk_at == datetime(2026, 12, 10, 15, 0, tzinfo=AMSTERDAM)
    clock = start_clock(FRIDAY, CALENDAR)
    assert (row.due_at, row.at_risk_at) == (clock.due_at, clock.at_risk_at), "the notifier's own clock"
    christmas = worklist.row(a_task(), datetime(2026, 12, 23, 12, tzinfo=AMSTERDAM), FRIDAY, CALENDAR)
    assert christmas.due_at == datetime(2026, 12, 31, 12, tzinfo=AMSTERDAM)  # Christmas, the weekend not counted


@pytest.mark.parametrize(("after", "mark"), [
    (timedelta(0), Mark.ON_TIME), (timedelta(days=5, hours=23, minutes=59), Mark.ON_TIME),
    (timedelta(days=6), Mark.AT_RISK), (timedelta(days=6, hours=23, minutes=59), Mark.AT_RISK),
    (timedelta(days=7), Mark.BREACHED), (timedelta(days=30), Mark.BREACHED)])
def test_the_mark_is_what_the_notifiers_timer_sends_at_that_moment(after, mark):
    assert worklist.row(a_task(), FRIDAY, FRIDAY + after, CALENDAR).mark is mark


@pytest.mark.parametrize("status", [TaskStatus.IN_PROGRESS, TaskStatus.REJECTED, TaskStatus.COMPLETED,
                                    TaskStatus.CANCELLED])
def test_contact_made_a_decline_a_close_or_a_cancellation_stops_the_clock(status):
    row = worklist.row(a_task(status=status), FRIDAY, FRIDAY + timedelta(days=30), CALENDAR)
    assert (row.mark, row.due_at) == (Mark.STOPPED, None)


def test_the_clock_start_is_the_handover_messages_timestamp():
    assert worklist.clock_start({"timestamp": FRIDAY.isoformat()}) == FRIDAY
    assert worklist.clock_start({"timestamp": "2026-12-04T15:00:00"}) is None, "no time zone: not a moment"
    assert worklist.clock_start({"timestamp": "friday"}) is None and worklist.clock_start(None) is None


def test_the_list_holds_the_open_tasks_the_soonest_due_first():
    tasks = [a_task("late", handed_over_at=FRIDAY + timedelta(days=3)), a_task("early"),
             a_task("made", status=TaskStatus.IN_PROGRESS, business_status="contact-made"),
             a_task("closed", status=TaskStatus.COMPLETED), a_task("gone", status=TaskStatus.CANCELLED),
             a_task("declined", status=TaskStatus.REJECTED)]
    rows = worklist.worklist(tasks, {"late": FRIDAY + timedelta(days=3), "early": FRIDAY}, FRIDAY, CALENDAR)
    assert [r.task.id for r in rows] == ["early", "late", "made"]
    unknown = worklist.worklist([a_task("x", handed_over_at=FRIDAY)], {}, FRIDAY, CALENDAR)
    assert unknown[0].due_at == start_clock(FRIDAY, CALENDAR).due_at, "no clock start read: from handed_over_at"


# -- a worker's form -----------------------------------------------------------------------------------
def moved(task: RecipientTask, form: dict[str, str], now: datetime = FRIDAY + timedelta(hours=2)):
    """The form taken the API's way: read_form, then tasks.read_change and tasks.update."""
    asked = worklist.read_form(task, form)
    assert isinstance(asked, worklist.Asked), asked
    change = core.read_change(task.id, asked.resource)
    assert isinstance(change, core.Change), change
    return core.update(task, change, asked.if_match, now)


def test_each_action_is_the_move_and_the_one_feedback_of_the_apis_put():
    accepted = moved(a_task(), {"action": "accept", "version": "1"})
    assert isinstance(accepted, core.Updated) and accepted.feedback.kind is FeedbackKind.ACCEPTED
    declined = moved(a_task(), {"action": "decline", "version": "1", "reason": "  not\r\n our area "})
    assert isinstance(declined, core.Updated) and declined.feedback.kind is FeedbackKind.DECLINED
    assert declined.feedback.reason == "not our area" and declined.task.status is TaskStatus.REJECTED
    contact = moved(accepted.task, {"action": "contact", "version": "2", "contact_at": "2026-12-04T16:30"})
    assert isinstance(contact, core.Updated) and contact.feedback.kind is FeedbackKind.CONTACT_MADE
    assert contact.feedback.contact_at == datetime(2026, 12, 4, 15, 30, tzinfo=UTC), "Dutch local time"
    closed = moved(contact.task, {"action": "close", "version": "3"})
    assert isinstance(closed, core.Updated) and closed.feedback.kind is FeedbackKind.CLOSED
    again = moved(closed.task, {"action": "close", "version": "3"})
    assert isinstance(again, core.Unchanged), "the same form sent twice: answered, no second feedback"
    stale = moved(closed.task, {"action": "close", "version": "1"})
    assert isinstance(stale, core.Refusal) and stale.code is core.RefusalCode.VERSION_CONFLICT


def test_contact_in_the_future_is_refused_by_the_apis_rules():
    refused = moved(a_task(), {"action": "contact", "version": "1", "contact_at": "2026-12-05T09:00"})
    assert isinstance(refused, core.Refusal) and refused.code is core.RefusalCode.CONTACT_TIME_REQUIRED


@pytest.mark.parametrize(("form", "says"), [
    ({"action": "delete", "version": "1"}, "Unknown action"), ({"action": "accept"}, "version"),
    ({"action": "accept", "version": "W/1"}, "version"), ({"action": "decline", "version": "1"}, "reason"),
    ({"action": "decline", "version": "1", "reason": "   "}, "reason"),
    ({"action": "decline", "version": "1", "reason": "x" * 2001}, "longer"),
    ({"action": "contact", "version": "1"}, "date and time"),
    ({"action": "contact", "version": "1", "contact_at": "yesterday"}, "date and time")])
def test_a_form_lacking_what_its_action_needs_is_refused_with_a_message(form, says):
    refused = worklist.read_form(a_task(), form)
    assert isinstance(refused, FormError) and says in refused.message


@pytest.mark.parametrize(("status", "business", "shown"), [
    (TaskStatus.REQUESTED, None, [Action.ACCEPT, Action.DECLINE, Action.CONTACT]),
    (TaskStatus.ACCEPTED, None, [Action.DECLINE, Action.CONTACT, Action.CLOSE]),
    (TaskStatus.IN_PROGRESS, "contact-made", [Action.CLOSE]),
    (TaskStatus.COMPLETED, None, []), (TaskStatus.CANCELLED, None, [])])
def test_the_page_offers_the_moves_the_apis_state_machine_allows(status, business, shown):
    assert worklist.actions(a_task(status=status, business_status=business)) == shown


# -- the handover as a worker reads it -------------------------------------------------------------------
def test_the_letter_is_read_from_the_collection_the_api_serves_with_amendments_and_notices_in_order():
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    referral = parse_gp(gp_bytes(), received_at=FRIDAY, known_products=frozenset(registry.products),
                        pseudonym_key="k")
    decision = decide(referral, registry, FRIDAY)
    handover = handover_bytes(decision, FRIDAY)
    amendment = {"resourceType": "Bundle", "id": "a1", "type": "message", "timestamp": "2026-12-07T10:00:00+00:00",
                 "entry": [{"resource": {"resourceType": "MessageHeader", "id": "h"}},
                           {"resource": {"resourceType": "Communication", "id": "c",
                                         "category": [{"coding": [{"code": "referral-letter"}]}],
                                         "sent": "2026-12-07T10:00:00+00:00",
                                         "payload": [{"contentString": "Sleeps badly since October."}]}}]}
    notice = {"kind": "sla-at-risk", "at": "2026-12-10T14:00:00+00:00", "referral_id": decision.referral_id,
              "message": "One working day left."}
    task = a_task(notices=[REF.model_copy(update={"offset": 4}), REF.model_copy(update={"offset": 5})])
    collection = core.handover_collection(task, [handover, json.dumps(amendment).encode(), json.dumps(notice).encode()])
    letter = worklist.letter(collection)
    assert letter is not None
    youth = referral.youth
    assert letter.bsn == youth.bsn and letter.birth_date == youth.birth_date.isoformat()
    assert letter.postcode == youth.postcode
    assert letter.youth_name == " ".join(filter(None, [youth.given_name, youth.family_name]))
    assert referral.free_text and letter.texts[0] == referral.free_text, "the letter's text as handed over"
    assert any("Routed by rule" in note for note in letter.hub_notes)
    assert [(e.kind, e.amendment, e.text) for e in letter.later] == [
        ("referral-letter", True, "Sleeps badly since October."), ("sla-at-risk", False, "One working day left.")]
    assert worklist.clock_start(json.loads(handover)) == FRIDAY, "the clock starts at the handover's timestamp"


def test_a_handover_past_retention_has_no_letter():
    assert worklist.letter(core.handover_collection(a_task(), [None])) is None
