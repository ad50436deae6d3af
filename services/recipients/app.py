"""The recipient API service: each recipient's handovers as FHIR Tasks it polls and moves on over HTTPS.

It runs on the one processing runtime (services/infra/processing.py) as its own principal, `verwijshub-recipients`:
its consumer group reads every handover topic (handovers and notices, keyed by youth pseudonym), and each youth's
Tasks live on the compacted `recipients.state.v1`, co-partitioned with them. A Task update asked over HTTPS is
queued for its youth's partition and decided there, in that partition's tick, which the request runs at once: so
the update is serialised with the handovers and notices of the same partition, and its feedback record, on the
recipient's own `feedback.<kind>.<id>.v1`, is written in ONE transaction with the Task's new state. The request is
answered only once that transaction committed; one that aborted is answered 503 (and a retry finds its update
either applied, answered as applied, or not: never twice). Why not follow the handover topics instead: they keep 90
days, feedback 30, and a Task lives as long as its care (months), so its state needs a topic that keeps it as long
as it is open (docs/design.md, "The recipient API").
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import uvicorn
from faststream.kafka import KafkaBroker

from schemas.feedback import Feedback
from schemas.recipients import RecipientTask, RecipientTasks, RecordRef
from schemas.registry import Registry
from services.infra import topics
from services.infra.clock import Clock
from services.infra.contract import Output
from services.infra.kafka import Outbound, Record, encode
from services.infra.logging import get_logger
from services.infra.processing import Processor, Runtime, document_input
from services.infra.settings import Settings
from services.infra.web import HubServer, server_certificate
from services.recipients import tasks as core
from services.recipients.delivery import SUBSCRIPTIONS, Deliveries, hook_context
from services.recipients.reading import RecordReader

SERVICE = "recipients"
INPUTS = r"handovers\.(wij|provider)\.[^.]+\.v1"
HANDOVER_SCHEMA = "verwijshub.Handover/1"
SWEEP_EVERY_S = 60.0
"""How often a partition forgets the Tasks closed longer than VERWIJSHUB_RECIPIENTS_KEEP_CLOSED_DAYS ago."""
FEEDBACK = {kind: Output(f"feedback-{kind}", address, Feedback, (
    "A recipient's feedback, written by the recipient API for a Task update of that recipient (the same JSON a "
    "recipient on Kafka writes), keyed by youth pseudonym.")) for kind, address in
    {"wij": topics.wij_feedback("{team}"), "provider": topics.provider_feedback("{agb}")}.items()}
STATE = Output("state", topics.RECIPIENTS_STATE, RecipientTasks, (
    "Internal, compacted: one youth's Tasks at the recipient API (status, version, where the handover and notices "
    "lie), in the partition of its handovers; an empty value once none is left."))


def owner_of(topic: str) -> tuple[str, str, str]:
    """`handovers.wij.centrum.v1` -> (`wij-centrum`, its feedback topic, the kind)."""
    _, kind, recipient, _ = topic.split(".", 3)
    feedback = topics.wij_feedback(recipient) if kind == "wij" else topics.provider_feedback(recipient)
    return f"{kind}-{recipient}", feedback, kind


def feedback_topic(owner: str) -> tuple[str, str]:
    kind, _, recipient = owner.partition("-")
    return (topics.wij_feedback(recipient) if kind == "wij" else topics.provider_feedback(recipient)), kind


@dataclass
class Pending:
    """A Task update waiting for its partition's tick, then for its transaction."""

    owner: str
    task_id: str
    change: core.Change
    if_match: int | None
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    result: core.Updated | core.Unchanged | core.Refusal | None = None


UNAVAILABLE = core.Refusal(503, core.RefusalCode.UNAVAILABLE, "The hub could not store the update just now; send it "
                                                              "again (with the same If-Match): it has one effect.")


class Recipients(Processor):
    service = SERVICE
    inputs = INPUTS
    state_topic = topics.RECIPIENTS_STATE
    writes = (*FEEDBACK.values(), STATE, SUBSCRIPTIONS)

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.clock = clock
        self.keep_closed = timedelta(days=settings.recipients_keep_closed_days)
        self.youths: dict[int, dict[str, RecipientTasks]] = {}
        self.where: dict[str, tuple[int, str]] = {}
        """Task id -> (partition, youth pseudonym)."""
        self.by_owner: dict[str, set[str]] = {}
        """Recipient principal -> its Task ids."""
        self.queued: dict[int, list[Pending]] = {}
        self.inflight: dict[int, list[Pending]] = {}
        self.swept: dict[int, float] = {}
        self.settled: dict[str, dict[str, RecipientTask]] = {}
        """Recipient principal -> its Tasks as committed (what a Subscription numbers events of: a change that
        might still abort is never an event)."""
        self.unsettled: dict[int, list[tuple[RecipientTasks, RecipientTasks]]] = {}
        """The youths' state changes of a partition's open transaction, settled when it commits."""
        self.on_settled: Callable[[set[str]], None] | None = None
        self.log = get_logger(service=SERVICE)

    # -- memory ------------------------------------------------------------------------------------------
    def _index(self, partition: int, state: RecipientTasks, present: bool) -> None:
        for task in state.tasks.values():
            if present:
                self.where[task.id] = (partition, state.pseudonym)
                self.by_owner.setdefault(task.owner, set()).add(task.id)
            else:
                self.where.pop(task.id, None)
                self.by_owner.get(task.owner, set()).discard(task.id)

    def _settle(self, before: RecipientTasks, after: RecipientTasks) -> set[str]:
        for task in before.tasks.values():
            if task.id not in after.tasks:
                self.settled.get(task.owner, {}).pop(task.id, None)
        for task in after.tasks.values():
            self.settled.setdefault(task.owner, {})[task.id] = task
        return {task.owner for task in [*before.tasks.values(), *after.tasks.values()]}

    def settled_tasks(self, owner: str) -> list[RecipientTask]:
        return list(self.settled.get(owner, {}).values())

    def put(self, partition: int, before: RecipientTasks, after: RecipientTasks) -> list[Outbound]:
        """The youth's state record when it changed, memory changed with it (the last step of a handling)."""
        if after == before:
            return []
        self.unsettled.setdefault(partition, []).append((before, after))
        youths = self.youths.setdefault(partition, {})
        self._index(partition, before, present=False)
        if after.tasks:
            youths[after.pseudonym] = after
            self._index(partition, after, present=True)
        else:
            youths.pop(after.pseudonym, None)
        return [STATE.record(encode(after) if after.tasks else b"", after.pseudonym, partition=partition)]

    def state_of(self, partition: int, pseudonym: str) -> RecipientTasks:
        return self.youths.get(partition, {}).get(pseudonym) or RecipientTasks(pseudonym=pseudonym)

    def task(self, owner: str, task_id: str) -> RecipientTask | None:
        """The Task, if it is `owner`'s."""
        located = self.where.get(task_id)
        task = self.state_of(*located).tasks.get(task_id) if located else None
        return task if task is not None and task.owner == owner else None

    def tasks_of(self, owner: str) -> list[RecipientTask]:
        return [task for task_id in self.by_owner.get(owner, ()) if (task := self.task(owner, task_id))]

    # -- the runtime's hooks --------------------------------------------------------------------------------
    async def load(self, partition: int, state: list[Record]) -> None:
        latest: dict[str, bytes] = {}
        for record in state:
            if record.key is not None:
                latest[record.key.decode()] = record.value or b""
        self.youths[partition] = {}
        for pseudonym, value in latest.items():
            if value:
                youth = RecipientTasks.model_validate_json(value)
                self.youths[partition][pseudonym] = youth
                self._index(partition, youth, present=True)
                self._settle(RecipientTasks(pseudonym=pseudonym), youth)
        self.log.info("recipient tasks loaded", partition=partition,
                      tasks=sum(len(y.tasks) for y in self.youths[partition].values()))

    def unload(self, partition: int) -> None:
        self.unsettled.pop(partition, None)
        for youth in self.youths.pop(partition, {}).values():
            self._index(partition, youth, present=False)
        for pending in [*self.inflight.pop(partition, []), *self.queued.pop(partition, [])]:
            if not pending.future.done():
                pending.future.set_result(UNAVAILABLE)

    def committed(self, partition: int, produced: list[tuple[Outbound, int]]) -> None:
        owners: set[str] = set()
        for before, after in self.unsettled.pop(partition, []):
            owners |= self._settle(before, after)
        if owners and self.on_settled is not None:
            self.on_settled(owners)
        for pending in self.inflight.pop(partition, []):
            if not pending.future.done():
                pending.future.set_result(pending.result)

    async def handle(self, record: Record) -> list[Outbound]:
        """A handover (a new Task) or any other record about a referral on a recipient's topic (listed with its
        Task); a record the hub itself wrote and this cannot read is logged and passed over, never retried."""
        if record.key is None or not record.value:
            return []
        owner, _, _ = owner_of(record.topic)
        schema = next((value.decode(errors="replace") for name, value in record.headers or () if name == "schema"),
                      "")
        ref = RecordRef(topic=record.topic, partition=record.partition, offset=record.offset, schema=schema)
        before = self.state_of(record.partition, record.key.decode(errors="replace"))
        try:
            content = json.loads(record.value)
        except ValueError:
            content = None
        if not isinstance(content, dict):
            self.log.warning("handover topic record not readable: passed over", topic=record.topic,
                             offset=record.offset)
            return []
        now = self.clock.now()
        if schema == HANDOVER_SCHEMA:
            after = core.on_handover(before, content, owner, ref, now)
        else:
            referral_id = content.get("referral_id")
            if not isinstance(referral_id, str):  # an amendment (a FHIR Bundle) names it in its correlation-id
                referral_id = next((value.decode(errors="replace") for name, value in record.headers or ()
                                    if name == "correlation-id"), None) or None
            kind = content.get("kind")
            after = core.on_notice(before, referral_id, owner, ref, now, kind if isinstance(kind, str) else None)
        return self.put(record.partition, before, after)

    async def tick(self, partition: int) -> list[Outbound]:
        """The Task updates queued for the partition, decided in order; the closed Tasks forgotten now and then."""
        now, records = self.clock.now(), []
        taken = self.queued.pop(partition, [])
        for pending in taken:
            task = self.task(pending.owner, pending.task_id)
            pending.result = core.not_found("Task", pending.task_id) if task is None else \
                core.update(task, pending.change, pending.if_match, now)
            if isinstance(pending.result, core.Updated):
                _, pseudonym = self.where[task.id]  # type: ignore[union-attr]
                before = self.state_of(partition, pseudonym)
                after = before.model_copy(update={"tasks": {**before.tasks, task.id: pending.result.task}})
                topic, kind = feedback_topic(pending.owner)
                records.append(FEEDBACK[kind].record(pending.result.feedback, pseudonym, topic=topic,
                                                     correlation_id=task.referral_id))  # type: ignore[union-attr]
                records += self.put(partition, before, after)
                self.log.info("task updated", principal=pending.owner, task=task.id,  # type: ignore[union-attr]
                              feedback=pending.result.feedback.kind.value)
        if time.monotonic() - self.swept.get(partition, float("-inf")) >= SWEEP_EVERY_S:
            self.swept[partition] = time.monotonic()
            for youth in list(self.youths.get(partition, {}).values()):
                records += self.put(partition, youth, core.forget_closed(youth, now - self.keep_closed))
        if records:
            self.inflight.setdefault(partition, []).extend(taken)
        else:
            for pending in taken:
                pending.future.set_result(pending.result)
        return records

    @staticmethod
    def document(broker: KafkaBroker) -> None:
        """What the recipient API reads (one group, by the pattern INPUTS), keyed by youth pseudonym."""
        for kind, address in (("wij", topics.wij_handovers("{team}")), ("provider", topics.provider_handovers("{agb}"))):
            document_input(broker, f"recipients:handovers-{kind}", "Each recipient's handovers (each becomes a FHIR "
                           "Task it polls and moves on over HTTPS) and notices (listed with their Task).",
                           topic=address)


class RecipientsRuntime(Runtime):
    """The runtime of `Recipients`, which also serves the HTTPS API once its partitions are taken."""

    processor: Recipients

    def __init__(self, processor: Recipients, settings: Settings) -> None:
        super().__init__(processor, settings)
        from services.access.tokens import TokenStore
        from services.recipients.api import RecipientApi, create_api

        self.reader = RecordReader(self.kafka)
        self.started = False
        self.app = create_api(RecipientApi(self, TokenStore(settings.secrets)))
        self.server: HubServer | None = None
        self.serving: asyncio.Task[None] | None = None
        scheme = "https" if settings.recipients_tls else "http"
        self.base = settings.recipients_public_url or \
            f"{scheme}://{settings.recipients_host}:{settings.recipients_port}/fhir"
        self.deliveries = Deliveries(
            self.kafka, processor.clock, hook_context(settings.recipients_hook_ca_file, settings.secrets / "ca.pem"),
            self.base, processor.settled_tasks, self.task_resource, retry_longest_s=settings.recipients_hook_retry_max_s)
        processor.on_settled = self.deliveries.changed

    def task_resource(self, owner: str, task_id: str) -> dict | None:
        task = self.processor.task(owner, task_id)
        return core.task_resource(task) if task is not None else None

    async def submit(self, owner: str, task_id: str, change: core.Change, if_match: int | None
                     ) -> core.Updated | core.Unchanged | core.Refusal:
        """Decide a Task update in its partition's tick and wait for its transaction."""
        located = self.processor.where.get(task_id)
        if located is None or self.processor.task(owner, task_id) is None:
            return core.not_found("Task", task_id)
        pending = Pending(owner, task_id, change, if_match)
        self.processor.queued.setdefault(located[0], []).append(pending)
        try:
            async with asyncio.timeout(self.settings.recipients_update_timeout_s):
                await self.tick_now(located[0])
                return await asyncio.shield(pending.future)
        except TimeoutError:
            return UNAVAILABLE

    def certificate(self) -> Path:
        return server_certificate(self.settings.recipients_cert_file, self.settings.secrets,
                                  self.settings.recipients_host, "the recipient API", "VERWIJSHUB_RECIPIENTS_CERT_FILE")

    async def start(self) -> None:
        settings = self.settings
        pem = str(self.certificate()) if settings.recipients_tls else None
        await super().start()
        await self.deliveries.start()  # the Tasks are loaded: what changed while the hub was down is numbered now
        config = uvicorn.Config(self.app, host=settings.recipients_host, port=settings.recipients_port,
                                lifespan="off", ssl_certfile=pem, ssl_keyfile=pem, log_config=None, access_log=False,
                                timeout_keep_alive=15, timeout_graceful_shutdown=5, limit_concurrency=200)
        self.server = HubServer(config)
        self.serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.serving.done():
                raise RuntimeError(f"the recipient API could not listen on {settings.recipients_host}:"
                                   f"{settings.recipients_port}")
            await asyncio.sleep(0.05)
        self.started = True
        scheme = "https" if settings.recipients_tls else "http"
        get_logger().info("recipient API listening",
                          url=f"{scheme}://{settings.recipients_host}:{settings.recipients_port}/fhir")

    async def stop(self) -> None:
        self.started = False
        if self.server and self.serving:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.serving, 10)
        await self.deliveries.stop()
        await self.reader.stop()
        await super().stop()


def create_recipients(settings: Settings, registry: Registry, clock: Clock) -> RecipientsRuntime:
    return RecipientsRuntime(Recipients(settings, clock), settings)
