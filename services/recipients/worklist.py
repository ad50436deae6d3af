"""The web inbox's core: a WIJ team's open handovers with their contact deadlines, a handover as a worker reads it,
and a worker's form read into the Task update the recipient API makes of a PUT.

Pure functions (the model: services/recipients/tasks.py). The contact deadline is the notifier's own: the clock it
starts when it hands a referral to a WIJ team (`services/notifier/followup.py`, `start_clock`: 5 working days, at
risk after 4, on the working-day calendar with the hub's holiday settings), counted from the handover message's
`timestamp`, which the notifier writes in the same handling in which it starts that clock. The mark is the one the
notifier's timer will send at that moment (`sla-at-risk`, `sla-breached`): the clock runs while the Task is
requested or accepted, and stops with contact made, a decline, a close or a cancellation, as the notifier's does.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.recipients import RecipientTask, TaskStatus
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.notifier.followup import start_clock
from services.recipients import tasks as core

CLOCK_RUNS = frozenset({TaskStatus.REQUESTED, TaskStatus.ACCEPTED})
"""While a WIJ team's Task has one of these, first contact is still due (the notifier's clock runs)."""
MAX_REASON_CHARS = 2000


class Mark(StrEnum):
    ON_TIME = "on-time"
    AT_RISK = "at-risk"
    BREACHED = "breached"
    STOPPED = "stopped"
    """No contact is due any more (contact made, declined, closed, cancelled)."""


LABELS = {Mark.ON_TIME: "on time", Mark.AT_RISK: "at risk", Mark.BREACHED: "breached",
          Mark.STOPPED: "no contact due"}


@dataclass(frozen=True)
class Row:
    """One open handover in the team's list: no personal data, only what the Task itself holds."""

    task: RecipientTask
    mark: Mark
    due_at: datetime | None
    at_risk_at: datetime | None


def clock_start(handover: Mapping[str, Any] | None) -> datetime | None:
    """When the notifier started the contact clock: the handover message Bundle's `timestamp` (None if absent)."""
    moment = handover.get("timestamp") if handover else None
    try:
        started = datetime.fromisoformat(moment) if isinstance(moment, str) else None
    except ValueError:
        return None
    return started if started is not None and started.tzinfo is not None else None


def row(task: RecipientTask, started_at: datetime, now: datetime, calendar: WorkingCalendar) -> Row:
    """The Task's deadline and mark at `now`, its clock started at `started_at`."""
    if task.status not in CLOCK_RUNS:
        return Row(task, Mark.STOPPED, None, None)
    clock = start_clock(started_at, calendar)
    mark = Mark.BREACHED if now >= clock.due_at else Mark.AT_RISK if now >= clock.at_risk_at else Mark.ON_TIME
    return Row(task, mark, clock.due_at, clock.at_risk_at)


def worklist(tasks: list[RecipientTask], starts: Mapping[str, datetime], now: datetime,
             calendar: WorkingCalendar) -> list[Row]:
    """The open Tasks (not rejected, completed or cancelled), those whose contact is due soonest first, then the
    others by when they were handed over. A Task whose clock start is unknown counts from its `handed_over_at`."""
    rows = [row(task, starts.get(task.id, task.handed_over_at), now, calendar)
            for task in tasks if task.status not in core.TERMINAL]
    return sorted(rows, key=lambda r: (r.due_at is None, r.due_at or r.task.handed_over_at, r.task.id))


# -- a worker's action, as the Task the API's PUT would bring -------------------------------------------
class Action(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    CONTACT = "contact"
    CLOSE = "close"


MOVES: dict[Action, tuple[TaskStatus, str | None]] = {
    Action.ACCEPT: (TaskStatus.ACCEPTED, None), Action.DECLINE: (TaskStatus.REJECTED, None),
    Action.CONTACT: (TaskStatus.IN_PROGRESS, core.CONTACT_MADE), Action.CLOSE: (TaskStatus.COMPLETED, None)}


def actions(task: RecipientTask) -> list[Action]:
    """The actions the Task's status allows (the API's state machine, `tasks.ALLOWED`), in the order shown."""
    allowed = core.ALLOWED.get(task.status, frozenset())
    return [action for action, move in MOVES.items() if move in allowed]


@dataclass(frozen=True)
class FormError:
    message: str
    """About the form, never about the child: shown to the worker, may be logged."""


@dataclass(frozen=True)
class Asked:
    resource: dict[str, Any]
    """The Task as a PUT would bring it: read by `tasks.read_change`, like the API's."""
    if_match: int


def read_form(task: RecipientTask, form: Mapping[str, str]) -> Asked | FormError:
    """A worker's form: `action`, `version` (the Task's version the page showed: the PUT's If-Match), and for a
    decline `reason`, for contact made `contact_at` (a `datetime-local` value, Dutch local time). The Task it becomes
    holds only what `tasks.read_change` reads, so the same form sent again is the same change whatever the Task is
    now, and is answered as applied (no second feedback)."""
    try:
        action = Action(form.get("action", ""))
    except ValueError:
        return FormError("Unknown action.")
    version = form.get("version", "")
    if not version.isdigit():
        return FormError("The form lacks the handover's version; open the handover again.")
    status, business = MOVES[action]
    resource: dict[str, Any] = {"resourceType": "Task", "id": task.id, "status": status.value}
    if business:
        resource["businessStatus"] = {"coding": [{"system": core.BUSINESS_STATUS_SYSTEM, "code": business}]}
    if action is Action.DECLINE:
        reason = " ".join(form.get("reason", "").split())
        if not reason:
            return FormError("A decline needs a reason.")
        if len(reason) > MAX_REASON_CHARS:
            return FormError(f"The reason is longer than {MAX_REASON_CHARS} characters.")
        resource["statusReason"] = {"text": reason}
    if action is Action.CONTACT:
        try:
            when = datetime.fromisoformat(form.get("contact_at", ""))
        except ValueError:
            return FormError("Contact made needs the date and time of the contact.")
        resource["executionPeriod"] = {"start": (when if when.tzinfo else when.replace(tzinfo=AMSTERDAM)).isoformat()}
    return Asked(resource, int(version))


def local(moment: datetime | None) -> str:
    """A moment as a Dutch worker reads it: local time, to the minute."""
    return moment.astimezone(AMSTERDAM).strftime("%a %d %b %Y %H:%M") if moment else ""


def datetime_local(moment: datetime) -> str:
    """A moment as an `<input type="datetime-local">` value, in Dutch local time."""
    return moment.astimezone(AMSTERDAM).strftime("%Y-%m-%dT%H:%M")


# -- the handover as a worker reads it ------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A later record about the referral: an amendment (the referrer's new text) or a notice of the hub."""

    kind: str
    sent: str
    text: str
    amendment: bool


@dataclass(frozen=True)
class Letter:
    youth_name: str
    birth_date: str
    bsn: str
    postcode: str
    referrer: str
    referral_date: str
    categories: list[str]
    product: str
    texts: list[str]
    """The referral's own text (the letter: free text, preferences), as handed over."""
    hub_notes: list[str]
    """The hub's notes on the Task: why it was routed here, a warm handover."""
    later: list[Entry]


def _resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry") or []
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)]


def _of(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((resource for resource in resources if resource.get("resourceType") == kind), {})


def _codes(concepts: Any) -> list[str]:
    return [str(coding.get("code")) for concept in concepts or [] if isinstance(concept, dict)
            for coding in concept.get("coding") or [] if isinstance(coding, dict) and coding.get("code")]


def _texts(notes: Any) -> list[str]:
    return [str(note["text"]) for note in notes or [] if isinstance(note, dict) and note.get("text")]


def _payload(resource: Mapping[str, Any]) -> str:
    return "\n".join(str(part.get("contentString", "")) for part in resource.get("payload") or []
                     if isinstance(part, dict))


def letter(collection: Mapping[str, Any]) -> Letter | None:
    """The handover collection the API serves (`tasks.handover_collection`) read for a worker: the handover message
    (patient, referrer, the letter's text, the hub's notes), then each amendment and notice in order. None when the
    handover itself is no longer there (retention)."""
    entries = _resources(collection)
    if not entries or entries[0].get("resourceType") != "Bundle":
        return None
    handover = _resources(entries[0])
    patient, request, task = _of(handover, "Patient"), _of(handover, "ServiceRequest"), _of(handover, "Task")
    name = next((n for n in patient.get("name") or [] if isinstance(n, dict)), {})
    youth_name = " ".join([*(str(given) for given in name.get("given") or []), str(name.get("family") or "")]).strip()
    address = next((a for a in patient.get("address") or [] if isinstance(a, dict)), {})
    later = []
    for resource in entries[1:]:
        if resource.get("resourceType") == "Bundle":  # an amendment: a message with the new text
            for communication in _resources(resource):
                if communication.get("resourceType") == "Communication":
                    later.append(Entry(", ".join(_codes(communication.get("category"))) or "amendment",
                                       str(communication.get("sent", resource.get("timestamp", ""))),
                                       _payload(communication), True))
        elif resource.get("resourceType") == "Communication":
            later.append(Entry(", ".join(_codes(resource.get("category"))) or "notice", str(resource.get("sent", "")),
                               _payload(resource), False))
    return Letter(
        youth_name=youth_name, birth_date=str(patient.get("birthDate", "")),
        bsn=next((str(i.get("value")) for i in patient.get("identifier") or [] if isinstance(i, dict)), ""),
        postcode=str(address.get("postalCode", "")),
        referrer=str((request.get("requester") or {}).get("display", "")),
        referral_date=str(request.get("authoredOn", "")), categories=_codes(request.get("category")),
        product=", ".join(_codes([request.get("code")])), texts=_texts(request.get("note")),
        hub_notes=_texts(task.get("note")), later=later)
