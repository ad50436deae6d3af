"""The recipient API's HTTPS interface (FastAPI): FHIR R4 Tasks a recipient polls, reads and moves on.

Every request but `/fhir/metadata` carries the bearer token of one recipient (`verwijshub access token wij-<team>` or
`provider-<agb>`), and sees that recipient's Tasks only: another recipient's Task, Bundle or Subscription is
answered 404 exactly as one that does not exist. Every read of a handover is an audit line (who, which Task, when;
no content). Every refusal is an OperationOutcome with a code (`urn:verwijshub:recipient-api-error`).
"""

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jsonpatch
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.recipients import Subscription
from services.access.tokens import TokenStore
from services.infra.logging import get_logger
from services.recipients import subscriptions as subs
from services.recipients import tasks as core
from services.recipients.inbox import create_inbox

if TYPE_CHECKING:
    from services.recipients.app import RecipientsRuntime

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
MAX_BODY_BYTES = 256 * 1024
bearer = HTTPBearer(auto_error=False, description="A recipient's token from `verwijshub access token wij-<team>` or "
                                                  "`verwijshub access token provider-<agb>`.")
RECIPIENT_PREFIXES = ("wij-", "provider-")
MAX_SUBSCRIPTIONS = 10
"""Per recipient: each is a task of the hub's and a record on its topic."""


class RecipientApi:
    def __init__(self, runtime: "RecipientsRuntime", tokens: TokenStore) -> None:
        self.runtime, self.tokens = runtime, tokens

    def recipient(self, credentials: HTTPAuthorizationCredentials | None) -> str | core.Refusal:
        """The recipient principal of the token; a referrer's token is no recipient's."""
        who = self.tokens.principal_of(credentials.credentials) if credentials else None
        if who is None or not who.startswith(RECIPIENT_PREFIXES):
            return core.Refusal(401, core.RefusalCode.UNAUTHENTICATED, "A recipient's bearer token from `verwijshub "
                                                                       "access token` is needed.")
        return who


def fhir(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status, {"Cache-Control": "no-store", **(headers or {})}, media_type=FHIR_JSON)


def refused(refusal: core.Refusal) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
    return fhir(core.outcome(refusal), refusal.status, headers)


def task_response(task: Any, status: int = 200) -> JSONResponse:
    return fhir(core.task_resource(task), status, {"ETag": core.etag(task),
                                                   "Last-Modified": task.last_updated.strftime(
                                                       "%a, %d %b %Y %H:%M:%S GMT")})


def _fhir(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {FHIR_JSON: {"schema": schema}}}


OUTCOME = {"type": "object", "required": ["resourceType", "issue"],
           "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array", "minItems": 1}},
           "description": "A FHIR R4 OperationOutcome; `issue[].details.coding` (system "
                          f"{core.REFUSAL_SYSTEM}) has the refusal's code."}
TASK = {"type": "object", "required": ["resourceType", "id", "status", "intent", "meta"],
        "properties": {"resourceType": {"const": "Task"}, "id": {"type": "string"},
                       "status": {"enum": [status.value for status in core.TaskStatus]}, "intent": {"const": "order"},
                       "meta": {"type": "object"}, "businessStatus": {"type": "object"}},
        "description": "A FHIR R4 Task: one handover to this recipient (docs/design.md, \"The recipient API\")."}
BUNDLE = {"type": "object", "required": ["resourceType", "type"],
          "properties": {"resourceType": {"const": "Bundle"}, "type": {"type": "string"},
                         "entry": {"type": "array"}, "link": {"type": "array"}}, "description": "A FHIR R4 Bundle."}
SUBSCRIPTION = {"type": "object", "required": ["resourceType", "criteria", "channel"],
                "properties": {"resourceType": {"const": "Subscription"}, "id": {"type": "string"},
                               "status": {"type": "string"}, "criteria": {"type": "string"},
                               "channel": {"type": "object"}},
                "description": "A FHIR R4 Subscription of the Subscriptions Backport IG (profile backport-subscription):"
                               f" criteria the topic {subs.TOPIC}, channel.type rest-hook to an https endpoint, "
                               "channel._payload's backport-payload-content id-only (the default), empty or "
                               "full-resource, optionally the backport-heartbeat-period and backport-timeout "
                               "extensions on channel."}
UNAUTHENTICATED = _fhir(OUTCOME, "No recipient's bearer token (UNAUTHENTICATED).")
NOT_FOUND = _fhir(OUTCOME, "No such Task, Bundle or Subscription of this recipient (NOT_FOUND): another's is not "
                           "found either.")
UNAVAILABLE = _fhir(OUTCOME, "Kafka did not store it in time (UNAVAILABLE): send it again, it has one effect.")
UPDATE_ANSWERS = {
    200: {"description": "The Task as it is now (also for the same update sent again: one effect).",
          "content": {FHIR_JSON: {"schema": TASK}}},
    400: _fhir(OUTCOME, "Not this Task (NOT_A_TASK)."), 401: UNAUTHENTICATED, 404: NOT_FOUND,
    409: _fhir(OUTCOME, "Not a move this Task may make (TRANSITION_NOT_ALLOWED, TASK_CLOSED)."),
    412: _fhir(OUTCOME, "The Task is at another version than If-Match (VERSION_CONFLICT)."),
    413: _fhir(OUTCOME, "The body is larger than 256 KiB (NOT_A_TASK)."),
    422: _fhir(OUTCOME, "A move without what it needs (REASON_REQUIRED, CONTACT_TIME_REQUIRED, INDICATION_INVALID, "
                        "STATUS_UNKNOWN)."),
    428: _fhir(OUTCOME, "No If-Match (IF_MATCH_REQUIRED)."), 503: UNAVAILABLE}
IF_MATCH = {"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"},
            "description": 'The Task\'s ETag as last read, W/"<version>".'}


def capability_statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement", "status": "active",
        "instantiates": [f"{subs.BACKPORT}/CapabilityStatement/backport-subscription-server-r4"], "date": "2026-12-02", "kind": "instance",
        "software": {"name": "Verwijshub recipient API"}, "implementation": {"description": "Verwijshub recipient "
                                                                                             "API", "url": base},
        "fhirVersion": "4.0.1", "format": ["application/fhir+json"],
        "rest": [{"mode": "server", "security": {"description": "A bearer token per recipient (`verwijshub access "
                                                                "token`); each sees only its own Tasks."},
                  "resource": [
                      {"type": "Task", "versioning": "versioned-update", "conditionalUpdate": False,
                       "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "update"},
                                       {"code": "patch"}],
                       "searchParam": [{"name": "owner", "type": "reference"}, {"name": "status", "type": "token"},
                                       {"name": "_lastUpdated", "type": "date"}, {"name": "_count", "type": "number"}]},
                      {"type": "Bundle", "interaction": [{"code": "read"}]},
                      {"type": "Subscription", "supportedProfile": [subs.SUBSCRIPTION_PROFILE],
                       "extension": [{"url": f"{subs.BACKPORT}/StructureDefinition/"
                                             "capabilitystatement-subscriptiontopic-canonical",
                                      "valueCanonical": subs.TOPIC}],
                       "interaction": [{"code": "create"}, {"code": "read"}, {"code": "delete"}],
                       "operation": [{"name": "status", "definition": f"{subs.BACKPORT}/OperationDefinition/"
                                                                      "backport-subscription-status"}]}]}]}


def create_api(api: RecipientApi | None) -> FastAPI:
    app = FastAPI(title="Verwijshub recipient API", version="1.0.0", openapi_url=None, docs_url=None,
                  redoc_url=None, description="For WIJ teams and providers that do not run Kafka: each handover as "
                  "a FHIR R4 Task, polled (`GET /fhir/Task`), read with its message (`GET /fhir/Bundle/{id}`) and "
                  "moved on with PUT or PATCH and If-Match; each move is one feedback record on the recipient's "
                  "feedback topic. A recipient sees its own Tasks only. A recipient may instead be told of each new or "
                  "changed Task: a FHIR Subscription (Subscriptions Backport IG, rest-hook), whose `$status` gives "
                  "eventsSinceSubscriptionStart.")
    if api is not None:  # the WIJ teams' web pages (inbox.py), on the same server; not part of the FHIR contract
        app.mount("/inbox", create_inbox(api.runtime, api.tokens))

    def who(credentials: HTTPAuthorizationCredentials | None) -> str | core.Refusal:
        assert api is not None
        return api.recipient(credentials)

    @app.get("/fhir/metadata", response_class=Response, summary="The CapabilityStatement",
             responses={200: _fhir({"type": "object"}, "A FHIR R4 CapabilityStatement.")})
    async def metadata(request: Request) -> Response:
        return fhir(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))

    @app.get("/fhir/Task", response_class=Response, summary="The recipient's Tasks (a searchset, paged)",
             openapi_extra={"parameters": [
                 {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
                 for name, text in (("owner", "The recipient (its principal); another finds nothing."),
                                    ("status", "requested, accepted, rejected, in-progress, completed; comma: or."),
                                    ("_lastUpdated", "gt|ge|lt|le<instant with time zone>."),
                                    ("_count", f"Page size, 1-{core.MAX_COUNT} (50)."),
                                    ("_cursor", "Where the next page starts (from a `next` link)."))]},
             responses={200: _fhir(BUNDLE, "A searchset Bundle of Tasks; `link` next while there is more."),
                        400: _fhir(OUTCOME, "A parameter not readable (SEARCH_INVALID)."), 401: UNAUTHENTICATED})
    async def search(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                     ) -> Response:
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return refused(owner)
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        search = core.read_search(params, owner)
        if isinstance(search, core.Refusal):
            return refused(search)
        asked = [value.rsplit("|", 1)[-1].removeprefix("Organization/") for value in params.get("owner", [])]
        mine = api.runtime.processor.tasks_of(owner) if all(value == owner for value in asked) else []
        shown, cursor = core.page(mine, search)
        base = str(request.url_for("search"))
        links = [{"relation": "self", "url": str(request.url)}]
        if cursor is not None:
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
            query.append(("_cursor", f"{cursor[0].isoformat()}|{cursor[1]}"))
            links.append({"relation": "next", "url": f"{base}?{urlencode(query)}"})
        get_logger().info("tasks listed", principal=owner, tasks=[task.id for task in shown])
        return fhir({"resourceType": "Bundle", "type": "searchset", "link": links,
                     "entry": [{"fullUrl": f"{base}/{task.id}", "resource": core.task_resource(task),
                                "search": {"mode": "match"}} for task in shown]})

    @app.get("/fhir/Task/{task_id}", response_class=Response, summary="One Task of the recipient",
             responses={200: {"description": "The Task; ETag its version.", "content": {FHIR_JSON: {"schema": TASK}}},
                        401: UNAUTHENTICATED, 404: NOT_FOUND})
    async def read(task_id: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return refused(owner)
        task = api.runtime.processor.task(owner, task_id)  # type: ignore[union-attr]
        if task is None:
            return refused(core.not_found("Task", task_id))
        get_logger().info("task read", principal=owner, task=task_id)
        return task_response(task)

    async def change(task_id: str, request: Request, owner: str, patch: bool) -> Response:
        assert api is not None
        if_match = core.read_if_match(request.headers.get("if-match"))
        if isinstance(if_match, core.Refusal):
            return refused(if_match)
        task = api.runtime.processor.task(owner, task_id)
        if task is None:
            return refused(core.not_found("Task", task_id))
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return refused(core.Refusal(413, core.RefusalCode.NOT_A_TASK, "The body is larger than 256 KiB."))
        try:
            sent = json.loads(body)
            resource = jsonpatch.apply_patch(core.task_resource(task), sent) if patch else sent
        except (ValueError, TypeError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            return refused(core.Refusal(400, core.RefusalCode.NOT_A_TASK, "The body is not a FHIR Task in JSON"
                                        + (" (PATCH: a JSON Patch that applies to the Task)." if patch else ".")))
        asked = core.read_change(task_id, resource)
        if isinstance(asked, core.Refusal):
            return refused(asked)
        result = await api.runtime.submit(owner, task_id, asked, if_match)
        if isinstance(result, core.Refusal):
            get_logger().info("task update refused", principal=owner, task=task_id, code=result.code.value)
            return refused(result)
        return task_response(result.task)

    @app.put("/fhir/Task/{task_id}", response_class=Response, summary="Move the Task on (the whole Task, changed)",
             openapi_extra={"parameters": [IF_MATCH], "requestBody": {"required": True, "content": {
                 FHIR_JSON: {"schema": TASK}}}}, responses=UPDATE_ANSWERS)
    async def put(task_id: str, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                  ) -> Response:
        owner = who(credentials)
        return refused(owner) if isinstance(owner, core.Refusal) else await change(task_id, request, owner, False)

    @app.patch("/fhir/Task/{task_id}", response_class=Response, summary="Move the Task on (a JSON Patch)",
               openapi_extra={"parameters": [IF_MATCH], "requestBody": {"required": True, "content": {
                   JSON_PATCH: {"schema": {"type": "array", "items": {"type": "object"}}}}}},
               responses=UPDATE_ANSWERS)
    async def patch(task_id: str, request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        owner = who(credentials)
        return refused(owner) if isinstance(owner, core.Refusal) else await change(task_id, request, owner, True)

    @app.get("/fhir/Bundle/{bundle_id}", response_class=Response,
             summary="A handover as handed over, with every later record about it",
             responses={200: _fhir(BUNDLE, "A collection: the handover message Bundle as handed over, then each "
                                           "later notice as a Communication, in order."),
                        401: UNAUTHENTICATED, 404: NOT_FOUND, 503: UNAVAILABLE})
    async def bundle(bundle_id: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                     ) -> Response:
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return refused(owner)
        assert api is not None
        task = next((task for task in api.runtime.processor.tasks_of(owner) if task.bundle_id == bundle_id), None)
        if task is None:
            return refused(core.not_found("Bundle", bundle_id))
        try:
            records = await api.runtime.reader.read([task.handover, *task.notices])
        except (KafkaError, OSError, TimeoutError) as exc:
            get_logger().warning("handover not read", task=task.id, error_type=type(exc).__name__)
            return refused(core.Refusal(503, core.RefusalCode.UNAVAILABLE, "The handover could not be read just "
                                                                           "now; ask again."))
        if records[0] is None:
            return refused(core.Refusal(404, core.RefusalCode.NOT_FOUND, f"The handover {bundle_id} is past its "
                                                                         "topic's retention."))
        get_logger().info("handover read", principal=owner, task=task.id)
        return fhir(core.handover_collection(task, [r.value if r else None for r in records]))

    @app.post("/fhir/Subscription", response_class=Response, summary="Subscribe to the recipient's handovers "
              "(Subscriptions Backport IG, rest-hook)",
              openapi_extra={"requestBody": {"required": True, "content": {FHIR_JSON: {"schema": SUBSCRIPTION}}}},
              responses={201: _fhir(SUBSCRIPTION, "The Subscription as kept, status requested: the handshake "
                                                  "follows (active once the hook took it, error while it does not)."),
                         400: _fhir(OUTCOME, "Not a Subscription in JSON (SUBSCRIPTION_INVALID)."),
                         401: UNAUTHENTICATED, 413: _fhir(OUTCOME, "The body is larger than 256 KiB."),
                         422: _fhir(OUTCOME, "Not a Subscription the hub serves (SUBSCRIPTION_INVALID)."),
                         503: UNAVAILABLE})
    async def subscribe(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                        ) -> Response:
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return refused(owner)
        assert api is not None
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return refused(core.Refusal(413, core.RefusalCode.SUBSCRIPTION_INVALID, "The body is larger than "
                                                                                    "256 KiB."))
        try:
            resource = json.loads(body)
        except ValueError:
            resource = None
        deliveries = api.runtime.deliveries
        subscription = subs.read_subscription(resource, owner, uuid.uuid4().hex, api.runtime.processor.clock.now(),
                                              api.runtime.processor.settled_tasks(owner))
        if isinstance(subscription, core.Refusal):
            return refused(subscription)
        if sum(1 for s in deliveries.subscriptions.values() if s.owner == owner) >= MAX_SUBSCRIPTIONS:
            return refused(core.Refusal(422, core.RefusalCode.SUBSCRIPTION_INVALID, f"At most {MAX_SUBSCRIPTIONS} "
                                        "Subscriptions per recipient: delete one first."))
        try:
            await asyncio.wait_for(deliveries.create(subscription), api.runtime.settings.recipients_update_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            get_logger().warning("subscription not stored", principal=owner, error_type=type(exc).__name__)
            return refused(core.Refusal(503, core.RefusalCode.UNAVAILABLE, "The Subscription could not be stored "
                                                                           "just now; send it again."))
        get_logger().info("subscription created", principal=owner, subscription=subscription.id,
                          content=subscription.payload.value, heartbeat_s=subscription.heartbeat_s)
        return fhir(subs.subscription_resource(subscription), 201,
                    {"Location": f"{api.runtime.base}/Subscription/{subscription.id}"})

    def own_subscription(subscription_id: str, credentials: HTTPAuthorizationCredentials | None
                         ) -> Subscription | core.Refusal:
        """The caller's Subscription of that id; another's is not found, as one that does not exist."""
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return owner
        assert api is not None
        found = api.runtime.deliveries.of(owner, subscription_id)
        return core.not_found("Subscription", subscription_id) if found is None else found

    @app.get("/fhir/Subscription/{subscription_id}", response_class=Response, summary="One Subscription of the "
             "recipient", responses={200: _fhir(SUBSCRIPTION, "The Subscription, with its status now."),
                                     401: UNAUTHENTICATED, 404: NOT_FOUND})
    async def subscription(subscription_id: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                           ) -> Response:
        found = own_subscription(subscription_id, credentials)
        return refused(found) if isinstance(found, core.Refusal) else fhir(subs.subscription_resource(found))

    @app.delete("/fhir/Subscription/{subscription_id}", response_class=Response, summary="End a Subscription",
                responses={204: {"description": "Deleted: no notification follows."}, 401: UNAUTHENTICATED,
                           404: NOT_FOUND, 503: UNAVAILABLE})
    async def unsubscribe(subscription_id: str,
                          credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        owner = who(credentials)
        if isinstance(owner, core.Refusal):
            return refused(owner)
        assert api is not None
        try:
            gone = await asyncio.wait_for(api.runtime.deliveries.delete(owner, subscription_id),
                                          api.runtime.settings.recipients_update_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            get_logger().warning("subscription not deleted", principal=owner, error_type=type(exc).__name__)
            return refused(core.Refusal(503, core.RefusalCode.UNAVAILABLE, "The Subscription could not be deleted "
                                                                           "just now; send it again."))
        if not gone:
            return refused(core.not_found("Subscription", subscription_id))
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    @app.get("/fhir/Subscription/{subscription_id}/$status", response_class=Response,
             summary="The Subscription's status (backport $status): eventsSinceSubscriptionStart",
             responses={200: _fhir(BUNDLE, "A searchset Bundle of one SubscriptionStatus Parameters (type "
                                           "query-status): status, events-since-subscription-start, error."),
                        401: UNAUTHENTICATED, 404: NOT_FOUND})
    async def subscription_status(subscription_id: str,
                                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        found = own_subscription(subscription_id, credentials)
        if isinstance(found, core.Refusal):
            return refused(found)
        assert api is not None
        return fhir(subs.status_bundle(found, api.runtime.base, api.runtime.processor.clock.now()))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ready = api is not None and api.runtime.started and api.runtime.healthy()
        return Response("ready\n" if ready else "starting\n", 200 if ready else 503, media_type="text/plain")

    return app


def openapi_document() -> dict[str, Any]:
    """The recipient API's OpenAPI document, of an app whose handlers never run (committed as
    schemas/openapi-recipients.json)."""
    from fastapi.openapi.utils import get_openapi

    app = create_api(None)
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in document["paths"].values():
        for operation in path.values():  # FastAPI's own 422 (any path parameter is well-formed); PUT's 422 is ours
            if operation["responses"].get("422", {}).get("description") == "Validation Error":
                del operation["responses"]["422"]
    components = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if "components" in document and not components:
        document["components"].pop("schemas", None)
    return document
