"""The gateway's HTTPS interface (FastAPI): FHIR messaging and documents for GPs, JSON documents for GIs, GGDs
and courts, the referral's state as a FHIR Task, and the process's health and metrics.

Each submission: the referrer's bearer token names its principal, a referrer organisation of the registry; it may
submit on its own organisation's channel only; its rate is limited; the body is read within a size and a time limit;
the channel's adapter checks it, and that the referrer it names is one the organisation may send as
(SENDER_NOT_ALLOWED, 422); Kafka confirms the write to the organisation's own topic (acks=all); only then a 2xx. FHIR paths answer in FHIR (OperationOutcome), the JSON
paths in the hub's own shapes (`schemas/openapi.json`).
"""

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from schemas.errors import ErrorCode, ReferralError
from schemas.inbound import CourtReferral, GgdReferral, GiReferral
from schemas.lifecycle import Withdrawal
from schemas.referral import Channel, Referral
from services.access.senders import cancellation_sender_errors, sender_errors
from services.access.tokens import TokenStore
from services.gateway import answers
from services.gateway.answers import GatewayProblem, Rejected, Submitted
from services.gateway.limits import RateLimit
from services.gateway.submission import SUBMISSIONS, Submissions
from services.intake.lifecycle import Cancellation
from services.intake.outcome import Rejection
from services.gateway.tasks import StatusBook, task_resource
from services.infra.logging import get_logger

FHIR_JSON = "application/fhir+json"
RETRY_AFTER_S = 10
JSON_CHANNELS: dict[Channel, type[BaseModel]] = {Channel.GI: GiReferral, Channel.GGD: GgdReferral,
                                                 Channel.COURT: CourtReferral}
bearer = HTTPBearer(auto_error=False, description="A referrer organisation's token from `verwijshub access token "
                                                  "referrer-<organisation>`.")


class Refusal(Exception):
    """A request answered before its referral is looked at (no token, wrong channel, too fast, too slow, too
    large, Kafka away)."""

    def __init__(self, status: int, problem: GatewayProblem | None = None, errors: list[ReferralError] | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status)
        self.status, self.problem, self.errors, self.retry_after_s = status, problem, errors, retry_after_s


def _problem(status: int, error: str, detail: str, retry_after_s: float | None = None) -> Refusal:
    problem = GatewayProblem(error=error, detail=detail)  # type: ignore[arg-type]
    return Refusal(status, problem, retry_after_s=retry_after_s)


class GatewayApi:
    def __init__(self, submissions: Submissions, book: StatusBook, tokens: TokenStore, ready: Callable[[], bool]
                 ) -> None:
        settings = submissions.settings
        self.submissions, self.book, self.tokens, self.ready = submissions, book, tokens, ready
        self.limit = RateLimit(settings.gateway_rate_per_minute)
        self.max_bytes, self.read_timeout_s = settings.max_message_bytes, settings.gateway_read_timeout_s

    def principal(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        who = self.tokens.principal_of(credentials.credentials) if credentials else None
        if who is None:
            raise _problem(401, "unauthenticated", "A bearer token from `verwijshub access token` is needed.")
        wait = self.limit.wait_s(who)
        if wait:
            raise _problem(429, "rate-limited", "Too many requests; try again after Retry-After seconds.", wait)
        return who

    async def body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self.too_large(int(declared))

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_bytes:
                    raise self.too_large(size)
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.read_timeout_s)
        except TimeoutError:
            raise _problem(408, "timeout", f"The body did not arrive within {self.read_timeout_s:.0f} s.") from None

    def too_large(self, size: int) -> Refusal:
        return Refusal(413, errors=[ReferralError(code=ErrorCode.TOO_LARGE, location="",
                                                  message=f"The message is {size}+ bytes; at most {self.max_bytes}.")])

    async def submit(self, channel: Channel, request: Request, credentials: HTTPAuthorizationCredentials | None
                     ) -> Referral | Cancellation:
        """The referral (or cancellation), once Kafka confirmed it; a `Refusal` otherwise."""
        who = self.principal(credentials)
        organisation = self.submissions.organisation(who)
        if organisation is None or organisation.channel is not channel:
            raise _problem(403, "forbidden", f"{who} may not submit on the {channel.value} channel.")
        raw = await self.body(request)
        outcome = self.submissions.check(channel, raw)
        if isinstance(outcome, Referral) and (refused := sender_errors(organisation, outcome)):
            outcome = Rejection(refused, outcome.referrer_referral_id)
        if isinstance(outcome, Cancellation) and (refused := cancellation_sender_errors(
                organisation, outcome.channel, outcome.referrer_identifier)):
            outcome = Rejection(refused, outcome.referrer_referral_id)
        if not isinstance(outcome, (Referral, Cancellation)):
            SUBMISSIONS.labels("http", channel.value, "rejected").inc()
            get_logger().info("submission rejected", channel=channel.value, principal=who,
                              referrer_referral_id=outcome.referrer_referral_id,
                              codes=[e.code.value for e in outcome.errors])
            raise Refusal(answers.http_status(outcome.errors), errors=outcome.errors)
        await self.store(organisation, raw, outcome.referrer_referral_id, channel)
        SUBMISSIONS.labels("http", channel.value, "submitted").inc()
        get_logger().info("submission stored", channel=channel.value, principal=who,
                          correlation_id=outcome.referral_id, referrer_referral_id=outcome.referrer_referral_id)
        return outcome

    async def store(self, organisation, raw: bytes, key: str | None, channel: Channel) -> None:
        """Written to the organisation's topic; a 503 `Refusal` when Kafka did not confirm it."""
        unavailable = await self.submissions.write(organisation, raw, key)
        if unavailable:
            SUBMISSIONS.labels("http", channel.value, "unavailable").inc()
            get_logger().warning("submission not stored", channel=channel.value, error_type=unavailable.reason)
            raise _problem(503, "unavailable", "The hub cannot store referrals just now; send it again after "
                                               "Retry-After seconds.", RETRY_AFTER_S)

    async def cancel(self, referral_id: str, request: Request, credentials: HTTPAuthorizationCredentials | None,
                     patch: bool) -> str:
        """A referrer's FHIR update of its referral's Task to `cancelled` (PUT: the Task; PATCH: a JSON Patch
        replacing `/status`), written to its organisation's topic as a Task intake reads as a cancellation
        (services/intake/lifecycle.py); the referrer's referral id, once Kafka confirmed it."""
        who = self.principal(credentials)
        progress, organisation = self.book.progress.get(referral_id), self.submissions.organisation(who)
        if progress is None or organisation is None or organisation.channel is not progress.channel:  # as unknown
            raise _problem(404, "not-found", f"No referral {referral_id} of {who} (yet).")
        raw = await self.body(request)
        reason = cancel_request(raw, referral_id, patch)
        if isinstance(reason, list):
            SUBMISSIONS.labels("http", progress.channel.value, "rejected").inc()
            raise Refusal(400, errors=reason)
        task = {"resourceType": "Task", "id": referral_id, "status": "cancelled", "intent": "order",
                "identifier": [{"system": f"urn:verwijshub:referrer-referral-id:{progress.channel.value}",
                                "value": progress.referrer_referral_id}]}
        if reason:
            task["statusReason"] = {"text": reason}
        await self.store(organisation, json.dumps(task).encode(), progress.referrer_referral_id, progress.channel)
        SUBMISSIONS.labels("http", progress.channel.value, "submitted").inc()
        get_logger().info("cancellation stored", channel=progress.channel.value, principal=who,
                          correlation_id=referral_id, referrer_referral_id=progress.referrer_referral_id)
        return progress.referrer_referral_id


def cancel_request(raw: bytes, referral_id: str, patch: bool) -> str | None | list[ReferralError]:
    """A Task update's body: the reason given (or None) when it sets the status to `cancelled` and nothing else the
    hub would have to keep, else its errors. Pure."""
    def refused(location: str, message: str) -> list[ReferralError]:
        return [ReferralError(code=ErrorCode.SCHEMA_INVALID, location=location, message=message)]
    try:
        body = json.loads(raw)
    except ValueError:
        return [ReferralError(code=ErrorCode.UNPARSEABLE, location="", message="The body is not JSON.")]
    if patch:
        operations = body if isinstance(body, list) else []
        if not any(isinstance(o, dict) and o.get("op") == "replace" and o.get("path") == "/status"
                   and o.get("value") == "cancelled" for o in operations):
            return refused("/status", "A referrer may only replace its Task's /status with 'cancelled' (JSON Patch).")
        reason = next((o.get("value") for o in operations if isinstance(o, dict)
                       and o.get("path") in ("/statusReason/text", "/statusReason")), None)
        reason = reason.get("text") if isinstance(reason, dict) else reason
        return reason[:2000] if isinstance(reason, str) and reason.strip() else None
    if not isinstance(body, dict) or body.get("resourceType") != "Task":
        return refused("Task", "The body must be a FHIR Task.")
    if body.get("id") not in (None, referral_id):
        return refused("Task.id", "The Task's id must be the id in the path.")
    if body.get("status") != "cancelled":
        return refused("Task.status", "A referrer may only set its referral's Task to 'cancelled'.")
    reason = body.get("statusReason") if isinstance(body.get("statusReason"), dict) else {}
    text = reason.get("text")
    return text[:2000] if isinstance(text, str) and text.strip() else None


def _headers(refusal: Refusal) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(refusal.retry_after_s)))} if refusal.retry_after_s is not None else {}


def fhir_refusal(refusal: Refusal) -> JSONResponse:
    body = (answers.operation_outcome(refusal.errors) if refusal.errors is not None
            else answers.problem_outcome(refusal.problem))  # type: ignore[arg-type]
    return JSONResponse(body, refusal.status, _headers(refusal), media_type=FHIR_JSON)


def json_refusal(refusal: Refusal) -> JSONResponse:
    body = (Rejected(errors=refusal.errors) if refusal.errors is not None else refusal.problem)
    return JSONResponse(body.model_dump(mode="json"), refusal.status, _headers(refusal))  # type: ignore[union-attr]


def _fhir(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {FHIR_JSON: {"schema": schema}}}


OUTCOME = answers.OPERATION_OUTCOME_SCHEMA
FHIR_REFUSALS = {401: _fhir(OUTCOME, "No valid bearer token."),
                 403: _fhir(OUTCOME, "The token's referrer organisation may not submit on this channel."),
                 408: _fhir(OUTCOME, "The body did not arrive in time."),
                 413: _fhir(OUTCOME, "TOO_LARGE."),
                 429: _fhir(OUTCOME, "Rate limit; see Retry-After."),
                 503: _fhir(OUTCOME, "Kafka did not confirm the write: nothing was stored; see Retry-After.")}
FHIR_ROUTES = [
    ("/fhir/$process-message", 202, "process_message",
     "FHIR messaging: a referral message Bundle (or document) on the gp channel"),
    ("/fhir/Bundle", 201, "receive_document",
     "ZorgDomein 'Receive documents': a FHIR document Bundle (or message) on the gp channel; 201 as a FHIR create"),
]
FHIR_BODY = {"requestBody": {"required": True, "content": {FHIR_JSON: {"schema": answers.FHIR_BUNDLE_SCHEMA}}}}
JSON_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Rejected, "description": "Not readable as the channel's document (UNPARSEABLE, "
                                            "SCHEMA_INVALID, CHANNEL_MISMATCH)."},
    422: {"model": Rejected, "description": "Readable, but against the hub's rules (BSN, AGB, dates, age, product, "
                                            "a referrer the token's organisation may not send as)."},
    413: {"model": Rejected, "description": "TOO_LARGE."},
    401: {"model": GatewayProblem, "description": "No valid bearer token."},
    403: {"model": GatewayProblem, "description": "The token's referrer organisation may not submit on this channel."},
    408: {"model": GatewayProblem, "description": "The body did not arrive in time."},
    429: {"model": GatewayProblem, "description": "Rate limit; see Retry-After."},
    503: {"model": GatewayProblem, "description": "Kafka did not confirm the write: nothing was stored; see "
                                                  "Retry-After."}}


def create_api(gateway: GatewayApi) -> FastAPI:
    app = FastAPI(title="Verwijshub referrer gateway", version="1.0.0", openapi_url=None, docs_url=None,
                  redoc_url=None, description="Referrals over HTTPS: FHIR STU3 or R4 messages and documents on the gp "
                  "channel, JSON documents on gi, ggd and court. Each is checked at once with the channel's adapter "
                  "and confirmed only once Kafka stored it (acks=all); a re-sent referral gets the same answer and has "
                  "one effect. Errors and codes: schemas/CHANNELS.md.")

    for path, status, name, summary in FHIR_ROUTES:
        app.post(path, status_code=status, response_class=Response, openapi_extra=FHIR_BODY, name=name,
                 summary=summary, responses={
                     status: _fhir(OUTCOME, "Stored on Kafka; Location follows the referral as a FHIR Task."),
                     400: _fhir(OUTCOME, "Not a readable FHIR message or document Bundle."),
                     422: _fhir(OUTCOME, "Against the hub's rules (SENDER_NOT_ALLOWED: a referrer the token's "
                                         "organisation may not send as); every error an issue."), **FHIR_REFUSALS},
                 )(_fhir_route(gateway, status))

    for channel, model in JSON_CHANNELS.items():
        app.post(f"/referrals/{channel.value}", status_code=202, response_model=Submitted,
                 responses=JSON_REFUSALS, summary=f"A {channel.value} referral document, or a withdrawal of one",
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"oneOf": [{"$ref": f"#/components/schemas/{model.__name__}"},
                                          {"$ref": "#/components/schemas/Withdrawal"}]}}}}},
                 name=f"submit_{channel.value}")(_json_route(gateway, channel))

    @app.get("/fhir/Task/{referral_id}", response_class=Response,
             responses={200: _fhir(answers.TASK_SCHEMA, "The referral's state."),
                        404: _fhir(OUTCOME, "No referral of this referrer with this id (yet)."),
                        401: FHIR_REFUSALS[401], 429: FHIR_REFUSALS[429]},
             summary="The referral's state as a FHIR Task, for the referrer that sent it")
    async def task(referral_id: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        try:
            who = gateway.principal(credentials)
        except Refusal as refusal:
            return fhir_refusal(refusal)
        progress, organisation = gateway.book.progress.get(referral_id), gateway.submissions.organisation(who)
        if progress is None or organisation is None or organisation.channel is not progress.channel:  # as unknown
            return fhir_refusal(_problem(404, "not-found", f"No referral {referral_id} of {who} (yet)."))
        return JSONResponse(task_resource(referral_id, progress), media_type=FHIR_JSON)

    for method, patch in (("put", False), ("patch", True)):
        getattr(app, method)(
            "/fhir/Task/{referral_id}", response_class=Response, status_code=202, name=f"cancel_task_{method}",
            summary="Cancel the referral: its Task's status set to 'cancelled' by the referrer that sent it"
                    + (" (JSON Patch replacing /status)" if patch else " (the Task with status 'cancelled')"),
            openapi_extra={"requestBody": {"required": True, "content": {
                ("application/json-patch+json" if patch else FHIR_JSON): {"schema": {"type": "array"} if patch
                                                                          else answers.TASK_SCHEMA}}}},
            responses={202: _fhir(OUTCOME, "The cancellation is stored on Kafka; the Task shows 'cancelled' once "
                                           "the hub closed the referral."),
                       400: _fhir(OUTCOME, "Not a Task update to 'cancelled'."),
                       404: _fhir(OUTCOME, "No referral of this referrer with this id (yet)."),
                       **{k: v for k, v in FHIR_REFUSALS.items() if k != 403}},
        )(_cancel_route(gateway, patch))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        return Response("ready\n" if gateway.ready() else "starting\n", 200 if gateway.ready() else 503,
                        media_type="text/plain")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _fhir_route(gateway: GatewayApi, status: int):
    async def submit(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                     ) -> Response:
        try:
            referral = await gateway.submit(Channel.GP, request, credentials)
        except Refusal as refusal:
            return fhir_refusal(refusal)
        return JSONResponse(answers.accepted_outcome(referral.referral_id, referral.referrer_referral_id), status,
                            {"Location": answers.task_location(referral.referral_id)}, media_type=FHIR_JSON)

    return submit


def _cancel_route(gateway: GatewayApi, patch: bool):
    async def cancel(referral_id: str, request: Request,
                     credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        try:
            referrer_referral_id = await gateway.cancel(referral_id, request, credentials, patch)
        except Refusal as refusal:
            return fhir_refusal(refusal)
        return JSONResponse(answers.cancelled_outcome(referral_id, referrer_referral_id), 202,
                            {"Location": answers.task_location(referral_id)}, media_type=FHIR_JSON)

    return cancel


def _json_route(gateway: GatewayApi, channel: Channel):
    async def submit(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                     ) -> Response:
        try:
            referral = await gateway.submit(channel, request, credentials)
        except Refusal as refusal:
            return json_refusal(refusal)
        body = answers.submitted(referral.referral_id, referral.referrer_referral_id)
        return JSONResponse(body.model_dump(mode="json"), 202, {"Location": body.location})

    return submit


def openapi_document(app: FastAPI | None = None) -> dict[str, Any]:
    """The OpenAPI document (of a gateway whose handlers never run, when no `app` is given), with the JSON
    channels' request schemas from the same pydantic models as
    schemas/json/ (committed as schemas/openapi.json)."""
    from fastapi.openapi.utils import get_openapi

    app = app or create_api(None)  # type: ignore[arg-type]
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    document["paths"]["/fhir/Task/{referral_id}"]["get"]["responses"].pop("422", None)  # any id is well-formed
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for model in (*JSON_CHANNELS.values(), Withdrawal):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return document
