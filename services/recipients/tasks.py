"""The recipient API's core: a handover's Task, how its recipient may move it on, and the feedback each move is.

Pure functions over one youth's `RecipientTasks` and one `RecipientTask` (the model: services/notifier/followup.py):
a handover or a notice read from a recipient's topic changes the state; a Task update asked over HTTPS is either
refused (a `Refusal`, with its HTTP status and a code), answered as already done (`Unchanged`: the same update
retried, or one that changes nothing), or applied (`Updated`: the new Task and exactly one `Feedback`, the same
JSON a Kafka recipient writes to its feedback topic). The service around it decodes, calls these, and writes the
feedback with the new state in one transaction.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from schemas.feedback import Feedback, FeedbackKind
from schemas.recipients import RecipientTask, RecipientTasks, RecordRef, TaskStatus

HUB_REFERRAL_ID_SYSTEM = "urn:verwijshub:referral-id"
BUSINESS_STATUS_SYSTEM = "urn:verwijshub:task-business-status"
"""Task.businessStatus codes a recipient sets: `contact-made` (with Task.executionPeriod.start, when), and
`indication-started` (a provider, with the indication's product and end in Task.output)."""
OUTPUT_SYSTEM = "urn:verwijshub:task-output"
"""Task.output types of `indication-started`: `indication-product` (valueString) and `indication-end`
(valueDate)."""
REFUSAL_SYSTEM = "urn:verwijshub:recipient-api-error"
CONTACT_MADE, INDICATION_STARTED = "contact-made", "indication-started"
TERMINAL = frozenset({TaskStatus.REJECTED, TaskStatus.COMPLETED, TaskStatus.CANCELLED})
ENDING_NOTICES = frozenset({"cancelled", "handed-over-elsewhere"})
"""Notice kinds after which the referral is no longer this recipient's to move on: its Task becomes cancelled."""


class RefusalCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    IF_MATCH_REQUIRED = "IF_MATCH_REQUIRED"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    NOT_A_TASK = "NOT_A_TASK"
    """The body is no Task of this id (unreadable JSON, another resourceType, another id, a bad JSON Patch)."""
    STATUS_UNKNOWN = "STATUS_UNKNOWN"
    TRANSITION_NOT_ALLOWED = "TRANSITION_NOT_ALLOWED"
    TASK_CLOSED = "TASK_CLOSED"
    REASON_REQUIRED = "REASON_REQUIRED"
    CONTACT_TIME_REQUIRED = "CONTACT_TIME_REQUIRED"
    INDICATION_INVALID = "INDICATION_INVALID"
    SEARCH_INVALID = "SEARCH_INVALID"
    SUBSCRIPTION_INVALID = "SUBSCRIPTION_INVALID"
    UNAVAILABLE = "UNAVAILABLE"


ISSUE_TYPE = {RefusalCode.NOT_FOUND: "not-found", RefusalCode.UNAUTHENTICATED: "login",
              RefusalCode.IF_MATCH_REQUIRED: "required", RefusalCode.VERSION_CONFLICT: "conflict",
              RefusalCode.NOT_A_TASK: "structure", RefusalCode.STATUS_UNKNOWN: "code-invalid",
              RefusalCode.SEARCH_INVALID: "invalid",
              RefusalCode.SUBSCRIPTION_INVALID: "invalid", RefusalCode.UNAVAILABLE: "transient"}
"""FHIR's IssueType of each refusal; the others are `business-rule`."""


@dataclass(frozen=True)
class Refusal:
    status: int
    code: RefusalCode
    message: str
    """About the request, never about the child: it goes to the recipient and may be logged."""


@dataclass(frozen=True)
class Unchanged:
    task: RecipientTask


@dataclass(frozen=True)
class Updated:
    task: RecipientTask
    feedback: Feedback


@dataclass(frozen=True)
class Change:
    """What a recipient asks of its Task, read from the Task it sent."""

    status: str
    business_status: str | None = None
    reason: str | None = None
    contact_at: datetime | None = None
    indication_product: str | None = None
    indication_end: date | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.status, self.business_status, self.reason,
                                          self.contact_at.isoformat() if self.contact_at else None,
                                          self.indication_product,
                                          self.indication_end.isoformat() if self.indication_end else None]
                                         ).encode()).hexdigest()[:32]


def outcome(refusal: Refusal) -> dict[str, Any]:
    """A refusal as a FHIR OperationOutcome: the code in `details.coding`."""
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": ISSUE_TYPE.get(refusal.code, "business-rule"), "diagnostics": refusal.message,
        "details": {"coding": [{"system": REFUSAL_SYSTEM, "code": refusal.code.value}], "text": refusal.message}}]}


def not_found(kind: str, resource_id: str) -> Refusal:
    """The one answer for what is not the caller's, whether it exists or not."""
    return Refusal(404, RefusalCode.NOT_FOUND, f"No {kind} {resource_id} for this recipient.")


# -- what the recipient's topic brings ------------------------------------------------------------------
def handover_task(bundle: dict[str, Any]) -> dict[str, Any] | None:
    """The Task of a handover message Bundle, if it has one with the hub referral id."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Task" and resource.get("id") \
                and (resource.get("groupIdentifier") or {}).get("system") == HUB_REFERRAL_ID_SYSTEM:
            return resource
    return None


def on_handover(state: RecipientTasks, bundle: dict[str, Any], owner: str, ref: RecordRef, now: datetime
                ) -> RecipientTasks:
    """A handover for `owner`: a new Task at version 1; the same handover again (the notifier re-publishes one it
    had not stored as sent) leaves the Task as it is. A Bundle without a hub Task changes nothing."""
    task = handover_task(bundle)
    if task is None or task["id"] in state.tasks or not isinstance(bundle.get("id"), str):
        return state
    new = RecipientTask(id=task["id"], bundle_id=bundle["id"], referral_id=task["groupIdentifier"]["value"],
                        owner=owner, handed_over_at=now, last_updated=now, handover=ref)
    return state.model_copy(update={"tasks": {**state.tasks, new.id: new}})


def on_notice(state: RecipientTasks, referral_id: str | None, owner: str, ref: RecordRef, now: datetime,
              kind: str | None = None) -> RecipientTasks:
    """Any later record about a referral on its recipient's topic (a notice of any `kind`, an amendment): listed
    with the referral's latest Task of that recipient, whose version and lastUpdated move so that polling finds it;
    a notice that ends the referral here (ENDING_NOTICES) cancels an open Task. Any other kind needs no change here."""
    mine = [task for task in state.tasks.values() if task.referral_id == referral_id and task.owner == owner]
    if not mine or any(ref in task.notices for task in mine):
        return state
    task = max(mine, key=lambda task: (task.handed_over_at, task.id))
    ends = kind in ENDING_NOTICES and task.status not in TERMINAL
    changed = task.model_copy(update={"notices": [*task.notices, ref], "version": task.version + 1,
                                      "last_updated": now, "last_change": None,
                                      **({"status": TaskStatus.CANCELLED} if ends else {})})
    return state.model_copy(update={"tasks": {**state.tasks, task.id: changed}})


def forget_closed(state: RecipientTasks, before: datetime) -> RecipientTasks:
    """Without the Tasks closed (completed, rejected) before `before`: memory and state follow open work."""
    kept = {key: task for key, task in state.tasks.items()
            if task.status not in TERMINAL or task.last_updated >= before}
    return state if len(kept) == len(state.tasks) else state.model_copy(update={"tasks": kept})


# -- what the recipient asks ----------------------------------------------------------------------------
def _coding(concept: Any, system: str) -> str | None:
    if not isinstance(concept, dict):
        return None
    return next((c.get("code") for c in concept.get("coding") or [] if isinstance(c, dict)
                 and c.get("system") == system), None)


def read_change(task_id: str, resource: Any) -> Change | Refusal:
    """The change a PUT (or a PATCH, once applied) asks: the Task's status, businessStatus (the hub's system),
    statusReason, executionPeriod.start and, for an indication, its output. Other elements are not read."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Task" or resource.get("id") != task_id:
        return Refusal(400, RefusalCode.NOT_A_TASK, f"The body must be the Task {task_id} (resourceType Task, "
                                                    "the same id).")
    status = resource.get("status")
    if status not in set(TaskStatus):
        return Refusal(422, RefusalCode.STATUS_UNKNOWN, f"Task.status must be one of {', '.join(TaskStatus)}.")
    reason = resource.get("statusReason")
    reason_text = (reason.get("text") if isinstance(reason, dict) else None) or None
    start = (resource.get("executionPeriod") or {}).get("start") if isinstance(resource.get("executionPeriod"),
                                                                               dict) else None
    product = end = None
    for output in resource.get("output") or []:
        code = _coding(output.get("type"), OUTPUT_SYSTEM) if isinstance(output, dict) else None
        if code == "indication-product":
            product = output.get("valueString")
        elif code == "indication-end":
            end = output.get("valueDate")
    try:
        contact_at = datetime.fromisoformat(start) if isinstance(start, str) else None
        indication_end = date.fromisoformat(end) if isinstance(end, str) else None
    except ValueError:
        return Refusal(422, RefusalCode.NOT_A_TASK, "Task.executionPeriod.start must be a dateTime and the "
                                                    "indication-end output a date.")
    if contact_at is not None and contact_at.tzinfo is None:
        return Refusal(422, RefusalCode.CONTACT_TIME_REQUIRED, "Task.executionPeriod.start needs a time zone.")
    return Change(status, _coding(resource.get("businessStatus"), BUSINESS_STATUS_SYSTEM),
                  reason_text if isinstance(reason_text, str) else None, contact_at,
                  product if isinstance(product, str) else None, indication_end)


ALLOWED: dict[TaskStatus, frozenset[tuple[TaskStatus, str | None]]] = {
    TaskStatus.REQUESTED: frozenset({(TaskStatus.ACCEPTED, None), (TaskStatus.REJECTED, None),
                                     (TaskStatus.IN_PROGRESS, CONTACT_MADE)}),
    TaskStatus.ACCEPTED: frozenset({(TaskStatus.REJECTED, None), (TaskStatus.IN_PROGRESS, CONTACT_MADE),
                                    (TaskStatus.IN_PROGRESS, INDICATION_STARTED), (TaskStatus.COMPLETED, None)}),
    TaskStatus.IN_PROGRESS: frozenset({(TaskStatus.IN_PROGRESS, INDICATION_STARTED), (TaskStatus.COMPLETED, None)}),
}
"""From each status, the (status, businessStatus) a recipient may move its Task to; a terminal Task moves no more.
Rejecting is possible until contact is made (a decline after that is a close); in-progress needs a businessStatus."""
FEEDBACK = {(TaskStatus.ACCEPTED, None): FeedbackKind.ACCEPTED, (TaskStatus.REJECTED, None): FeedbackKind.DECLINED,
            (TaskStatus.IN_PROGRESS, CONTACT_MADE): FeedbackKind.CONTACT_MADE,
            (TaskStatus.IN_PROGRESS, INDICATION_STARTED): FeedbackKind.INDICATION_STARTED,
            (TaskStatus.COMPLETED, None): FeedbackKind.CLOSED}
"""The one feedback each move is."""


def update(task: RecipientTask, change: Change, if_match: int | None, now: datetime) -> Updated | Unchanged | Refusal:
    """A recipient's update of its Task, at the version it last read (`If-Match`)."""
    if if_match is None:
        return Refusal(428, RefusalCode.IF_MATCH_REQUIRED, 'An If-Match header with the Task\'s version (its ETag, '
                                                           'W/"<version>") is required.')
    digest = change.digest()
    if if_match == task.version - 1 and task.last_change == digest:
        return Unchanged(task)  # the update that made this version, sent again: its answer again, no effect
    if if_match != task.version:
        return Refusal(412, RefusalCode.VERSION_CONFLICT, f"The Task is at version {task.version}, not {if_match}: "
                                                          "read it again and decide on what it says now.")
    business = change.business_status if change.status == TaskStatus.IN_PROGRESS else None
    status = TaskStatus(change.status)
    if status is task.status and business == task.business_status:
        return Unchanged(task)
    if task.status in TERMINAL:
        return Refusal(409, RefusalCode.TASK_CLOSED, f"The Task is {task.status.value}; it moves no more.")
    if (status, business) not in ALLOWED.get(task.status, frozenset()):
        asked = status.value + (f" ({business})" if business else "")
        return Refusal(409, RefusalCode.TRANSITION_NOT_ALLOWED, f"A {task.status.value} Task cannot become {asked}; "
                       "in-progress needs businessStatus contact-made or indication-started.")
    kind = FEEDBACK[(status, business)]
    fields: dict[str, Any] = {}
    match kind:
        case FeedbackKind.DECLINED:
            if not change.reason:
                return Refusal(422, RefusalCode.REASON_REQUIRED, "A rejected Task needs Task.statusReason.text: why.")
            fields = {"reason": change.reason}
        case FeedbackKind.CONTACT_MADE:
            if change.contact_at is None:
                return Refusal(422, RefusalCode.CONTACT_TIME_REQUIRED, "contact-made needs "
                                                                       "Task.executionPeriod.start: when.")
            if change.contact_at > now:
                return Refusal(422, RefusalCode.CONTACT_TIME_REQUIRED, "The contact time lies in the future.")
            fields = {"contact_at": change.contact_at}
        case FeedbackKind.INDICATION_STARTED:
            if not task.owner.startswith("provider-"):
                return Refusal(422, RefusalCode.INDICATION_INVALID, "Only a provider starts an indication.")
            if not change.indication_product or change.indication_end is None:
                return Refusal(422, RefusalCode.INDICATION_INVALID, "indication-started needs Task.output "
                               f"indication-product (valueString) and indication-end (valueDate), system "
                               f"{OUTPUT_SYSTEM}.")
            fields = {"product": change.indication_product, "indication_end": change.indication_end}
    feedback = Feedback(referral_id=task.referral_id, kind=kind, at=now, **fields)
    moved = {"status": status, "business_status": business or (task.business_status if status is task.status
                                                               else None),
             "version": task.version + 1, "last_updated": now, "last_change": digest}
    if kind is FeedbackKind.DECLINED:
        moved["status_reason"] = change.reason
    if kind is FeedbackKind.CONTACT_MADE:
        moved["contact_at"] = change.contact_at
    if kind is FeedbackKind.INDICATION_STARTED:
        moved |= {"indication_product": change.indication_product,
                  "indication_end": change.indication_end.isoformat()}  # type: ignore[union-attr]
    return Updated(task.model_copy(update=moved), feedback)


# -- what the recipient reads ----------------------------------------------------------------------------
def etag(task: RecipientTask) -> str:
    return f'W/"{task.version}"'


def read_if_match(header: str | None) -> int | None | Refusal:
    """`W/"3"` or `"3"` -> 3; absent -> None."""
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        return Refusal(412, RefusalCode.VERSION_CONFLICT, 'If-Match must be the Task\'s ETag, W/"<version>".')
    return int(text)


def task_resource(task: RecipientTask) -> dict[str, Any]:
    """The Task as FHIR R4 JSON: what the recipient reads and sends back, changed, with PUT."""
    resource: dict[str, Any] = {
        "resourceType": "Task", "id": task.id,
        "meta": {"versionId": str(task.version), "lastUpdated": task.last_updated.isoformat()},
        "identifier": [{"system": HUB_REFERRAL_ID_SYSTEM, "value": task.referral_id}],
        "groupIdentifier": {"system": HUB_REFERRAL_ID_SYSTEM, "value": task.referral_id},
        "status": task.status.value, "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": f"Bundle/{task.bundle_id}"},
        "authoredOn": task.handed_over_at.isoformat(), "lastModified": task.last_updated.isoformat(),
        "owner": {"identifier": {"system": "urn:verwijshub:principal", "value": task.owner}},
    }
    if task.business_status:
        resource["businessStatus"] = {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": task.business_status}]}
    if task.status_reason:
        resource["statusReason"] = {"text": task.status_reason}
    if task.contact_at:
        resource["executionPeriod"] = {"start": task.contact_at.isoformat()}
    if task.indication_product and task.indication_end:
        resource["output"] = [
            {"type": {"coding": [{"system": OUTPUT_SYSTEM, "code": "indication-product"}]},
             "valueString": task.indication_product},
            {"type": {"coding": [{"system": OUTPUT_SYSTEM, "code": "indication-end"}]},
             "valueDate": task.indication_end}]
    return resource


@dataclass(frozen=True)
class Search:
    """`GET /fhir/Task` as read: statuses (any when empty), `_lastUpdated` bounds, page size, where the page starts."""

    statuses: frozenset[TaskStatus] = frozenset()
    after: datetime | None = None
    after_inclusive: bool = False
    before: datetime | None = None
    before_inclusive: bool = False
    count: int = 50
    cursor: tuple[datetime, str] | None = None


MAX_COUNT = 200


def read_search(params: dict[str, list[str]], owner: str) -> Search | Refusal:
    """The search parameters (each may repeat); `owner` other than the caller finds nothing (None)."""
    fields: dict[str, Any] = {}
    try:
        statuses = {status for value in params.get("status", []) for status in value.split(",") if status}
        if unknown := statuses - set(TaskStatus):
            return Refusal(400, RefusalCode.SEARCH_INVALID, f"Unknown status {sorted(unknown)[0]}.")
        fields["statuses"] = frozenset(TaskStatus(s) for s in statuses)
        for value in params.get("_lastUpdated", []):
            prefix, moment = value[:2], value[2:]
            when = datetime.fromisoformat(moment)
            if when.tzinfo is None:
                return Refusal(400, RefusalCode.SEARCH_INVALID, "_lastUpdated needs a time zone.")
            if prefix in ("gt", "ge"):
                fields |= {"after": when, "after_inclusive": prefix == "ge"}
            elif prefix in ("lt", "le"):
                fields |= {"before": when, "before_inclusive": prefix == "le"}
            else:
                return Refusal(400, RefusalCode.SEARCH_INVALID, "_lastUpdated takes the prefixes gt, ge, lt, le.")
        for value in params.get("_count", [])[-1:]:
            fields["count"] = max(1, min(MAX_COUNT, int(value)))
        for value in params.get("_cursor", [])[-1:]:
            moment, _, task_id = value.partition("|")
            fields["cursor"] = (datetime.fromisoformat(moment), task_id)
    except ValueError:
        return Refusal(400, RefusalCode.SEARCH_INVALID, "A search parameter could not be read (_lastUpdated: "
                                                        "gt<instant>; _count: a number).")
    return Search(**fields)


def matches(task: RecipientTask, search: Search) -> bool:
    at = task.last_updated
    return ((not search.statuses or task.status in search.statuses)
            and (search.after is None or at > search.after or (search.after_inclusive and at == search.after))
            and (search.before is None or at < search.before or (search.before_inclusive and at == search.before))
            and (search.cursor is None or (at, task.id) > search.cursor))


def page(tasks: list[RecipientTask], search: Search) -> tuple[list[RecipientTask], tuple[datetime, str] | None]:
    """The page of matching Tasks, oldest change first (keyset paging on (lastUpdated, id): a Task changed while
    a recipient pages moves to a later page, none is skipped); the cursor of the next page, if there is more."""
    found = sorted((task for task in tasks if matches(task, search)), key=lambda task: (task.last_updated, task.id))
    shown = found[:search.count]
    more = len(found) > search.count
    return shown, ((shown[-1].last_updated, shown[-1].id) if more else None)


NOTICE_KIND_SYSTEM = "urn:verwijshub:notice-kind"


def communication(task: RecipientTask, ref: RecordRef, value: dict[str, Any]) -> dict[str, Any]:
    """A later record about the Task, whatever its kind, as a FHIR Communication: its `kind` the category, its
    `message` the payload, its time `sent`, every other field of it an extension (so a new kind of notice, with new
    fields, needs no change here)."""
    resource: dict[str, Any] = {
        "resourceType": "Communication", "id": f"{ref.partition}-{ref.offset}", "status": "completed",
        "about": [{"reference": f"Task/{task.id}"}],
        "category": [{"coding": [{"system": NOTICE_KIND_SYSTEM, "code": str(value.get("kind", "notice"))}]}],
        "payload": [{"contentString": str(value.get("message", ""))}],
    }
    if isinstance(value.get("at"), str):
        resource["sent"] = value["at"]
    extra = {key: item for key, item in value.items() if key not in ("kind", "message", "at", "referral_id")
             and item is not None}
    if extra:
        resource["extension"] = [{"url": f"urn:verwijshub:notice:{key}", "valueString": str(item)}
                                 for key, item in sorted(extra.items())]
    return resource


def handover_collection(task: RecipientTask, values: list[bytes | None]) -> dict[str, Any]:
    """`GET /fhir/Bundle/{id}`: a collection whose first entry is the handover message Bundle exactly as handed over,
    then each later record about it in the order written: a FHIR resource (an amended message) as it is, any other
    (a notice) as a Communication; one that retention removed is left out."""
    entries = []
    for ref, value in zip([task.handover, *task.notices], values, strict=True):
        if value is None:
            continue
        try:
            content = json.loads(value)
        except ValueError:
            continue
        if not isinstance(content, dict):
            continue
        if "resourceType" in content:
            entries.append({"fullUrl": f"urn:uuid:{content.get('id', '')}" if content.get("id") else None,
                            "resource": content})
        else:
            entries.append({"resource": communication(task, ref, content)})
    return {"resourceType": "Bundle", "id": task.bundle_id, "type": "collection", "timestamp":
            task.last_updated.isoformat(), "entry": [{k: v for k, v in e.items() if v is not None} for e in entries]}
