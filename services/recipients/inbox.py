"""The web inbox of a WIJ team: its open handovers with their contact deadlines, a handover as handed over, and the
moves accept, decline, contact made and close, on server-rendered pages at `/inbox/` of the recipient API's server.

A team logs in with its recipient token (`verwijshub access token wij-<team>`, the same the API takes): the session
(starlette's SessionMiddleware, a cookie signed with itsdangerous under a key kept 0600 in the secrets directory)
holds the team's principal and a fingerprint of that token, so issuing a new token ends every session begun with the
old one. Each form carries the session's CSRF token. A move goes the API's own way: the form becomes the Task a PUT
would bring (`worklist.read_form`), read by `tasks.read_change` and decided by `RecipientsRuntime.submit` at the
version the page showed, so it is the same one feedback record on the team's feedback topic, idempotent and
version-checked. Every answer is `Cache-Control: no-store`; log lines name the team and the Task, never the child.
"""

import json
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from schemas.recipients import RecipientTask
from services.access.tokens import TokenStore
from services.infra.logging import get_logger
from services.infra.secrets import write_private
from services.notifier.calendar import GoodFriday, LiberationDay, WorkingCalendar
from services.recipients import tasks as core
from services.recipients import worklist

if TYPE_CHECKING:
    from services.recipients.app import RecipientsRuntime

SESSION_KEY_FILE = "inbox-session.key"
SESSION_HOURS = 9
"""A session lasts a working day at most; then the team logs in again."""
MAX_FORM_BYTES = 16 * 1024
TEAM_PREFIX = "wij-"
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"}
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["local"] = worklist.local
templates.env.filters["label"] = worklist.LABELS.get


def session_key(directory: Path) -> str:
    """The key that signs the inbox's session cookies, made once (0600): sessions outlive a restart."""
    path = directory / SESSION_KEY_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(48).encode())
    return path.read_text().strip()


class Inbox:
    def __init__(self, runtime: "RecipientsRuntime", tokens: TokenStore) -> None:
        settings = runtime.settings
        self.runtime, self.tokens = runtime, tokens
        self.calendar = WorkingCalendar(LiberationDay(settings.liberation_day), GoodFriday(settings.good_friday))
        self.starts: dict[str, datetime] = {}
        """Task id -> when the notifier started its contact clock (its handover's timestamp), read once per Task;
        kept while the Task is known, so memory follows open work."""

    def team(self, request: Request) -> str | None:
        """The team of the session, while its token is the one it logged in with and the session is young."""
        session = request.session
        who, fingerprint, since = session.get("principal"), session.get("token"), session.get("since", 0)
        if not isinstance(who, str) or not isinstance(fingerprint, str) or not isinstance(since, int | float) \
                or time.time() - since > SESSION_HOURS * 3600 or not self.tokens.still_issued(who, fingerprint):
            return None
        return who

    async def clock_starts(self, tasks: list[RecipientTask]) -> dict[str, datetime]:
        """When each Task's contact clock started, its handover read back once (the list needs no handover after)."""
        known = self.runtime.processor.where
        for task_id in [task_id for task_id in self.starts if task_id not in known]:
            del self.starts[task_id]
        unread = [task for task in tasks if task.status in worklist.CLOCK_RUNS and task.id not in self.starts]
        if unread:
            try:
                records = await self.runtime.reader.read([task.handover for task in unread])
            except (KafkaError, OSError, TimeoutError) as exc:  # counted from handed_over_at this once
                get_logger().warning("inbox: handovers not read for their deadlines", error_type=type(exc).__name__)
                records = []
            for task, record in zip(unread, records, strict=False):
                self.starts[task.id] = self.started(task, record.value if record else None)
        return self.starts

    @staticmethod
    def started(task: RecipientTask, value: bytes | None) -> datetime:
        try:
            handover = json.loads(value) if value else None
        except ValueError:
            handover = None
        return worklist.clock_start(handover if isinstance(handover, dict) else None) or task.handed_over_at


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(request: Request, form: Any) -> bool:
    """The form's token is the session's: a per-session synchronizer token, compared by hand (one compare_digest;
    starlette-csrf's double-submit cookie would also have to be kept off the bearer-token API on the same server)."""
    sent, kept = form.get("csrf"), request.session.get("csrf")
    return isinstance(sent, str) and isinstance(kept, str) and secrets.compare_digest(sent, kept)


def create_inbox(runtime: "RecipientsRuntime", tokens: TokenStore) -> FastAPI:
    inbox = Inbox(runtime, tokens)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def no_store(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    app.add_middleware(SessionMiddleware, secret_key=session_key(runtime.settings.secrets),
                       session_cookie="verwijshub_inbox", max_age=SESSION_HOURS * 3600, path="/inbox",
                       same_site="strict", https_only=runtime.settings.recipients_tls)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, {"csrf": csrf_token(request), **context},
                                          status_code=status)

    def to(request: Request, name: str, **params: str) -> RedirectResponse:
        return RedirectResponse(str(request.url_for(name, **params)), 303)

    async def read_form(request: Request) -> Any | None:
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return None
        return await request.form(max_files=0, max_fields=10)

    @app.get("/login")
    async def login_page(request: Request) -> Response:
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        if form is None or not csrf_ok(request, form):
            return page(request, "login.html", 403, error="The form was out of date; please log in again.")
        token = form.get("token")
        who = tokens.principal_of(token.strip()) if isinstance(token, str) and token.strip() else None
        if who is None or not who.startswith(TEAM_PREFIX):
            get_logger().info("inbox login refused")
            return page(request, "login.html", 401, error="That is no WIJ team's token.")
        assert isinstance(token, str)
        request.session.clear()
        request.session.update({"principal": who, "token": tokens.fingerprint(token.strip()),
                                "since": int(time.time()), "csrf": secrets.token_urlsafe(32)})
        get_logger().info("inbox login", principal=who)
        return to(request, "handovers")

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        if form is not None and csrf_ok(request, form):
            request.session.clear()
        return to(request, "login_page")

    @app.get("/")
    async def handovers(request: Request) -> Response:
        team = inbox.team(request)
        if team is None:
            return to(request, "login_page")
        mine = runtime.processor.tasks_of(team)
        rows = worklist.worklist(mine, await inbox.clock_starts(mine), runtime.processor.clock.now(), inbox.calendar)
        get_logger().info("inbox listed", principal=team, tasks=[r.task.id for r in rows])
        return page(request, "list.html", team=team, rows=rows)

    async def detail(request: Request, team: str, task: RecipientTask, status: int = 200,
                     error: str | None = None) -> Response:
        try:
            records = await runtime.reader.read([task.handover, *task.notices])
        except (KafkaError, OSError, TimeoutError) as exc:
            get_logger().warning("inbox: handover not read", task=task.id, error_type=type(exc).__name__)
            return page(request, "unavailable.html", 503, team=team)
        values = [record.value if record else None for record in records]
        inbox.starts.setdefault(task.id, inbox.started(task, values[0]))
        now = runtime.processor.clock.now()
        get_logger().info("inbox handover shown", principal=team, task=task.id)
        return page(request, "detail.html", status, team=team, task=task, error=error,
                    letter=worklist.letter(core.handover_collection(task, values)),
                    row=worklist.row(task, inbox.starts[task.id], now, inbox.calendar),
                    actions=worklist.actions(task), now_local=worklist.datetime_local(now),
                    flash=request.session.pop("flash", None))

    def own_task(request: Request, task_id: str) -> tuple[str, RecipientTask] | Response:
        """The signed-in team and its Task of that id, or the answer instead: the login page, or not found (as
        another team's Task is)."""
        team = inbox.team(request)
        if team is None:
            return to(request, "login_page")
        task = runtime.processor.task(team, task_id)
        return page(request, "not_found.html", 404, team=team) if task is None else (team, task)

    @app.get("/tasks/{task_id}")
    async def handover(request: Request, task_id: str) -> Response:
        found = own_task(request, task_id)
        return found if isinstance(found, Response) else await detail(request, *found)

    @app.post("/tasks/{task_id}")
    async def move(request: Request, task_id: str) -> Response:
        found = own_task(request, task_id)
        if isinstance(found, Response):
            return found
        team, task = found
        form = await read_form(request)
        if form is None or not csrf_ok(request, form):
            return await detail(request, team, task, 403, "The form was out of date; please try again.")
        asked = worklist.read_form(task, {key: value for key, value in form.items() if isinstance(value, str)})
        if isinstance(asked, worklist.FormError):
            return await detail(request, team, task, 422, asked.message)
        change = core.read_change(task_id, asked.resource)  # from here on the API's PUT, step by step
        result = change if isinstance(change, core.Refusal) else \
            await runtime.submit(team, task_id, change, asked.if_match)
        if isinstance(result, core.Refusal):
            get_logger().info("inbox move refused", principal=team, task=task_id, code=result.code.value)
            now = runtime.processor.task(team, task_id) or task
            return await detail(request, team, now, result.status, result.message)
        get_logger().info("inbox move", principal=team, task=task_id, action=form.get("action"))
        request.session["flash"] = f"Saved: {result.task.status.value}" + (
            f" ({result.task.business_status})" if result.task.business_status else "") + "."
        return to(request, "handover", task_id=task_id)

    return app
