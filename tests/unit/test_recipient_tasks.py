"""The recipient API's core: Tasks from handovers and notices, the moves a recipient may make, the feedback each is,
retries, stale versions, paging; and the processor that decides updates in its partition's tick."""

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord

from schemas.feedback import FeedbackKind
from schemas.recipients import RecipientTask, RecipientTasks, RecordRef, TaskStatus
from services.infra import topics
from services.infra.settings import Settings
from services.recipients import tasks as core
from services.recipients.app import Pending, Recipients

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
REF = RecordRef(topic="handovers.provider.12345678.v1", partition=0, offset=7, schema="verwijshub.Handover/1")


def bundle(task_id: str = "t1", referral_id: str = "r1", bundle_id: str = "b1") -> dict:
    return {"resourceType": "Bundle", "id": bundle_id, "type": "message", "entry": [
        {"resource": {"resourceType": "MessageHeader", "id": "h"}},
        {"resource": {"resourceType": "Task", "id": task_id, "status": "requested",
                      "groupIdentifier": {"system": core.HUB_REFERRAL_ID_SYSTEM, "value": referral_id}}}]}


def a_task(**fields) -> RecipientTask:
    return RecipientTask(**{"id": "t1", "bundle_id": "b1", "referral_id": "r1", "owner": "provider-12345678",
                            "handed_over_at": NOW, "last_updated": NOW, "handover": REF, **fields})


def sent(status: str, **fields) -> dict:
    return {"resourceType": "Task", "id": "t1", "status": status, **fields}


def change(status: str, **fields) -> core.Change:
    found = core.read_change("t1", sent(status, **fields))
    assert isinstance(found, core.Change), found
    return found


CONTACT = {"businessStatus": {"coding": [{"system": core.BUSINESS_STATUS_SYSTEM, "code": "contact-made"}]},
           "executionPeriod": {"start": "2026-12-02T09:30:00+01:00"}}
INDICATION = {"businessStatus": {"coding": [{"system": core.BUSINESS_STATUS_SYSTEM, "code": "indication-started"}]},
              "output": [{"type": {"coding": [{"system": core.OUTPUT_SYSTEM, "code": "indication-product"}]},
                          "valueString": "45A01"},
                         {"type": {"coding": [{"system": core.OUTPUT_SYSTEM, "code": "indication-end"}]},
                          "valueDate": "2027-06-01"}]}


def test_a_handover_becomes_a_requested_task_at_version_1_and_the_same_handover_again_changes_nothing():
    state = core.on_handover(RecipientTasks(pseudonym="p"), bundle(), "provider-12345678", REF, NOW)
    task = state.tasks["t1"]
    assert (task.status, task.version, task.referral_id, task.bundle_id, task.owner) == \
        (TaskStatus.REQUESTED, 1, "r1", "b1", "provider-12345678")
    assert core.on_handover(state, bundle(), "provider-12345678", REF, NOW + timedelta(1)) == state
    assert core.on_handover(RecipientTasks(pseudonym="p"), {"resourceType": "Bundle", "entry": []},
                            "provider-12345678", REF, NOW).tasks == {}


def test_a_notice_of_any_kind_is_listed_with_its_referrals_task_and_moves_its_version():
    state = core.on_handover(RecipientTasks(pseudonym="p"), bundle(), "provider-12345678", REF, NOW)
    notice = RecordRef(topic=REF.topic, partition=0, offset=9, schema="verwijshub.Notice/1")
    later = core.on_notice(state, "r1", "provider-12345678", notice, NOW + timedelta(hours=1))
    assert later.tasks["t1"].notices == [notice] and later.tasks["t1"].version == 2
    assert core.on_notice(later, "r1", "provider-12345678", notice, NOW) == later, "the same record once"
    assert core.on_notice(state, "other", "provider-12345678", notice, NOW) == state
    assert core.on_notice(state, "r1", "provider-87654321", notice, NOW) == state, "another's topic"


@pytest.mark.parametrize("kind", ["cancelled", "handed-over-elsewhere"])
def test_a_notice_that_ends_the_referral_here_cancels_its_task_which_then_moves_no_more(kind):
    state = core.on_handover(RecipientTasks(pseudonym="p"), bundle(), "provider-12345678", REF, NOW)
    ref = RecordRef(topic=REF.topic, partition=0, offset=11, schema="verwijshub.Notice/1")
    later = core.on_notice(state, "r1", "provider-12345678", ref, NOW, kind)
    task = later.tasks["t1"]
    assert task.status is TaskStatus.CANCELLED
    refused = core.update(task, core.read_change("t1", {"resourceType": "Task", "id": "t1", "status": "accepted"}),
                          task.version, NOW)
    assert isinstance(refused, core.Refusal) and refused.status == 409
    kept = core.on_notice(state, "r1", "provider-12345678", ref, NOW, "sla-at-risk")
    assert kept.tasks["t1"].status is TaskStatus.REQUESTED


@pytest.mark.parametrize(("status", "fields", "kind"), [
    ("accepted", {}, FeedbackKind.ACCEPTED),
    ("rejected", {"statusReason": {"text": "no capacity"}}, FeedbackKind.DECLINED),
    ("in-progress", CONTACT, FeedbackKind.CONTACT_MADE),
])
def test_each_move_from_requested_is_exactly_one_feedback(status, fields, kind):
    result = core.update(a_task(), change(status, **fields), 1, NOW)
    assert isinstance(result, core.Updated)
    assert result.feedback.kind is kind and result.feedback.referral_id == "r1" and result.feedback.at == NOW
    assert result.task.version == 2 and result.task.status == status and result.task.last_updated == NOW
    if kind is FeedbackKind.DECLINED:
        assert result.feedback.reason == "no capacity"
    if kind is FeedbackKind.CONTACT_MADE:
        assert result.feedback.contact_at == datetime(2026, 12, 2, 8, 30, tzinfo=UTC)
        assert result.task.business_status == "contact-made"


def test_a_provider_starts_an_indication_and_closes_the_task():
    started = core.update(a_task(status=TaskStatus.IN_PROGRESS, business_status="contact-made", version=3),
                          change("in-progress", **INDICATION), 3, NOW)
    assert isinstance(started, core.Updated)
    assert (started.feedback.kind, started.feedback.product, started.feedback.indication_end) == \
        (FeedbackKind.INDICATION_STARTED, "45A01", date(2027, 6, 1))
    closed = core.update(started.task, change("completed"), 4, NOW)
    assert isinstance(closed, core.Updated) and closed.feedback.kind is FeedbackKind.CLOSED
    assert closed.task.status is TaskStatus.COMPLETED


def test_the_same_update_sent_again_is_answered_with_no_second_effect_and_a_stale_version_is_412():
    first = core.update(a_task(), change("accepted"), 1, NOW)
    assert isinstance(first, core.Updated)
    again = core.update(first.task, change("accepted"), 1, NOW + timedelta(seconds=5))
    assert again == core.Unchanged(first.task)
    stale = core.update(first.task, change("rejected", statusReason={"text": "x"}), 1, NOW)
    assert isinstance(stale, core.Refusal) and (stale.status, stale.code) == (412, core.RefusalCode.VERSION_CONFLICT)
    assert core.update(first.task, change("accepted"), 2, NOW) == core.Unchanged(first.task), "no change: no effect"


@pytest.mark.parametrize(("task", "status", "fields", "http", "code"), [
    (a_task(), "completed", {}, 409, core.RefusalCode.TRANSITION_NOT_ALLOWED),
    (a_task(), "in-progress", {}, 409, core.RefusalCode.TRANSITION_NOT_ALLOWED),
    (a_task(), "rejected", {}, 422, core.RefusalCode.REASON_REQUIRED),
    (a_task(), "in-progress", {"businessStatus": CONTACT["businessStatus"]}, 422,
     core.RefusalCode.CONTACT_TIME_REQUIRED),
    (a_task(), "in-progress", {**CONTACT, "executionPeriod": {"start": "2026-12-03T09:00:00+00:00"}}, 422,
     core.RefusalCode.CONTACT_TIME_REQUIRED),
    (a_task(status=TaskStatus.COMPLETED), "accepted", {}, 409, core.RefusalCode.TASK_CLOSED),
    (a_task(status=TaskStatus.IN_PROGRESS, business_status="contact-made"), "rejected",
     {"statusReason": {"text": "late"}}, 409, core.RefusalCode.TRANSITION_NOT_ALLOWED),
    (a_task(owner="wij-centrum", status=TaskStatus.ACCEPTED), "in-progress", INDICATION, 422,
     core.RefusalCode.INDICATION_INVALID),
    (a_task(status=TaskStatus.ACCEPTED), "in-progress", {"businessStatus": INDICATION["businessStatus"]}, 422,
     core.RefusalCode.INDICATION_INVALID),
])
def test_a_move_the_task_may_not_make_is_refused_with_a_code(task, status, fields, http, code):
    result = core.update(task, change(status, **fields), task.version, NOW)
    assert isinstance(result, core.Refusal) and (result.status, result.code) == (http, code)
    outcome = core.outcome(result)
    assert outcome["issue"][0]["details"]["coding"] == [{"system": core.REFUSAL_SYSTEM, "code": code.value}]


def test_no_if_match_is_428_and_a_body_that_is_not_the_task_is_refused():
    refused = core.update(a_task(), change("accepted"), None, NOW)
    assert isinstance(refused, core.Refusal) and refused.status == 428
    assert core.read_if_match('W/"4"') == 4 and core.read_if_match('"4"') == 4 and core.read_if_match(None) is None
    assert isinstance(core.read_if_match("*"), core.Refusal)
    for body in (None, [], {"resourceType": "Patient", "id": "t1"}, sent("accepted") | {"id": "t2"}):
        found = core.read_change("t1", body)
        assert isinstance(found, core.Refusal) and found.code is core.RefusalCode.NOT_A_TASK
    unknown = core.read_change("t1", sent("on-hold"))
    assert isinstance(unknown, core.Refusal) and unknown.code is core.RefusalCode.STATUS_UNKNOWN


def test_the_task_read_back_is_the_change_it_was_made_of():
    moved = core.update(a_task(), change("in-progress", **CONTACT), 1, NOW)
    assert isinstance(moved, core.Updated)
    resource = core.task_resource(moved.task)
    assert resource["meta"]["versionId"] == "2" and core.etag(moved.task) == 'W/"2"'
    assert core.read_change("t1", resource) == change("in-progress", **CONTACT)
    assert core.update(moved.task, core.read_change("t1", resource), 2, NOW) == core.Unchanged(moved.task)


def test_polling_pages_by_last_change_and_filters_by_status_and_time():
    tasks = [a_task(id=f"t{i}", last_updated=NOW + timedelta(minutes=i // 2),
                    status=TaskStatus.ACCEPTED if i % 3 == 0 else TaskStatus.REQUESTED) for i in range(7)]
    search = core.read_search({"_count": ["3"]}, "provider-12345678")
    assert isinstance(search, core.Search)
    seen, cursor = [], None
    while True:
        shown, cursor = core.page(tasks, search if cursor is None else
                                  core.Search(count=3, cursor=cursor))
        seen += [task.id for task in shown]
        if cursor is None:
            break
    assert sorted(seen) == sorted(task.id for task in tasks) and len(seen) == len(set(seen))
    only = core.read_search({"status": ["accepted"], "_lastUpdated": [f"gt{NOW.isoformat()}"]}, "x")
    assert isinstance(only, core.Search)
    assert [task.id for task in core.page(tasks, only)[0]] == ["t3", "t6"]
    for bad in ({"status": ["done"]}, {"_lastUpdated": ["eq2026-12-02T10:00:00+00:00"]},
                {"_lastUpdated": ["gt2026-12-02T10:00:00"]}, {"_count": ["many"]}):
        refused = core.read_search(bad, "x")
        assert isinstance(refused, core.Refusal) and refused.code is core.RefusalCode.SEARCH_INVALID


def test_closed_tasks_are_forgotten_after_the_keeping_time_and_open_ones_never():
    state = RecipientTasks(pseudonym="p", tasks={
        "open": a_task(id="open", last_updated=NOW - timedelta(days=100)),
        "old": a_task(id="old", status=TaskStatus.COMPLETED, last_updated=NOW - timedelta(days=8)),
        "new": a_task(id="new", status=TaskStatus.REJECTED, last_updated=NOW - timedelta(days=1))})
    assert set(core.forget_closed(state, NOW - timedelta(days=7)).tasks) == {"open", "new"}


def test_the_bundle_is_the_handover_as_handed_over_then_each_notice_whatever_its_kind():
    notice = RecordRef(topic=REF.topic, partition=0, offset=9, schema="verwijshub.Notice/1")
    task = a_task(notices=[notice])
    handover = json.dumps(bundle()).encode()
    later = json.dumps({"kind": "some-new-kind", "at": NOW.isoformat(), "referral_id": "r1", "message": "m",
                        "due": None, "product": "45A01"}).encode()
    collection = core.handover_collection(task, [handover, later])
    assert collection["type"] == "collection" and collection["entry"][0]["resource"] == bundle()
    communication = collection["entry"][1]["resource"]
    assert communication["category"][0]["coding"][0]["code"] == "some-new-kind"
    assert communication["extension"] == [{"url": "urn:verwijshub:notice:product", "valueString": "45A01"}]
    assert len(core.handover_collection(task, [handover, None])["entry"]) == 1, "a record past retention left out"


# -- the processor ----------------------------------------------------------------------------------------------
def record(topic: str, offset: int, value: dict, schema: str, key: str = "youth") -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, 0, 0, key.encode(), json.dumps(value).encode(), None, 0, 0,
                          [("schema", schema.encode())])


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment


@pytest.fixture
def processor() -> Recipients:
    settings = Settings(kafka_bootstrap="x:9092", pseudonym_key="k", _env_file=None)
    return Recipients(settings, FixedClock(NOW))


async def test_the_processor_keeps_tasks_per_recipient_and_decides_an_update_in_its_partitions_tick(processor):
    await processor.load(0, [])
    topic = topics.provider_handovers("12345678")
    (state,) = await processor.handle(record(topic, 0, bundle(), "verwijshub.Handover/1"))
    assert state.topic == topics.RECIPIENTS_STATE and state.partition == 0 and state.key == b"youth"
    assert processor.task("provider-12345678", "t1") is not None
    assert processor.task("provider-87654321", "t1") is None, "another recipient's Task is not found"

    pending = Pending("provider-12345678", "t1", change("accepted"), 1)
    processor.queued[0] = [pending]
    feedback, stored = await processor.tick(0)
    assert feedback.topic == topics.provider_feedback("12345678") and feedback.key == b"youth"
    assert json.loads(feedback.value)["kind"] == "accepted" and stored.topic == topics.RECIPIENTS_STATE
    assert not pending.future.done(), "answered only once its transaction committed"
    processor.committed(0, [])
    assert isinstance(pending.future.result(), core.Updated)

    retried = Pending("provider-12345678", "t1", change("accepted"), 1)
    processor.queued[0] = [retried]
    assert await processor.tick(0) == [] and isinstance(retried.future.result(), core.Unchanged)

    aborted = Pending("provider-12345678", "t1", change("rejected", statusReason={"text": "x"}), 2)
    processor.queued[0] = [aborted]
    assert len(await processor.tick(0)) == 2
    processor.unload(0)  # the transaction aborted: memory goes, the request is told to send it again
    assert aborted.future.result().status == 503
    await processor.load(0, [ConsumerRecord(topics.RECIPIENTS_STATE, 0, 0, 0, 0, b"youth", stored.value, None, 0, 0,
                                            [])])
    assert processor.task("provider-12345678", "t1").status is TaskStatus.ACCEPTED, "rebuilt from the state topic"


async def test_a_notice_on_the_topic_moves_the_task_and_an_unreadable_record_is_passed_over(processor):
    await processor.load(0, [])
    topic = topics.wij_handovers("centrum")
    await processor.handle(record(topic, 0, bundle(), "verwijshub.Handover/1"))
    (stored,) = await processor.handle(record(topic, 1, {"kind": "sla-at-risk", "referral_id": "r1", "message": "m",
                                                         "at": NOW.isoformat()}, "verwijshub.Notice/1"))
    assert processor.task("wij-centrum", "t1").version == 2
    garbage = ConsumerRecord(topic, 0, 2, 0, 0, b"youth", b"not json", None, 0, 0, [])
    assert await processor.handle(garbage) == []


async def test_subscriptions_see_a_tasks_change_only_once_its_transaction_committed(processor):
    """The committed view `settled_tasks` (what a Subscription numbers events of): a change that aborted is none."""
    told: list[set[str]] = []
    processor.on_settled = told.append
    await processor.load(0, [])
    owner = "provider-12345678"
    await processor.handle(record(topics.provider_handovers("12345678"), 0, bundle(), "verwijshub.Handover/1"))
    assert processor.settled_tasks(owner) == [] and told == [], "not committed yet"
    processor.committed(0, [])
    assert [task.id for task in processor.settled_tasks(owner)] == ["t1"] and told == [{owner}]

    processor.queued[0] = [Pending(owner, "t1", change("accepted"), 1)]
    assert len(await processor.tick(0)) == 2
    processor.unload(0)  # aborted
    assert processor.settled_tasks(owner)[0].version == 1 and told == [{owner}], "the aborted change is no event"
