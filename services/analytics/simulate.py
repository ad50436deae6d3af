"""`verwijshub simulate`: months of referrals through the real running hub, on a moved clock, so the report has
real data and the hub runs through months of working days and holidays.

It plays only the hub's users: referrers publish on their inbound topics and read their status topics (as
`referrer-<organisation>`, each on its own topic), recipients read their handover topics and write their feedback topics (as `wij-<id>`,
`provider-<agb>`); the admin publishes one registry change (a provider stops). It never writes an internal topic.
Time is the notifier's test clock (`VERWIJSHUB_CLOCK_FILE`, which the hub must read too): each working day the
clock is set to 08:00 (recipients' feedback of the day) and 09:00 (the day's referrals), and the simulation waits
until the hub has answered before it moves on.
"""

import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from dateutil.relativedelta import relativedelta
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.feedback import Feedback, FeedbackKind
from schemas.referral import Channel
from schemas.registry import ReferrerOrganisation, Registry
from services.analytics import messages
from services.access.senders import organisation_sending_as
from services.analytics.sink import wait_until_stored
from services.hub import start_process, stop_process
from services.infra import principals, topics
from services.infra.clock import FileClock
from services.infra.kafka import partitions_of
from services.infra.registry_files import load_registry
from services.infra.settings import Settings, get_settings
from services.notifier.calendar import AMSTERDAM, WorkingCalendar

GIVEN = ["Sanne", "Daan", "Noor", "Levi", "Emma", "Finn", "Julia", "Sem", "Tess", "Milan", "Lotte", "Bram"]
FAMILY = ["de Vries", "Mulder", "Hendriks", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Bos", "Dijkstra"]
FREE_TEXT = "Zorgen thuis en op school; ouders vragen om ondersteuning (simulatie)."
DECLINE_REASON = "Geen passend aanbod deze maand (simulatie)."
CHANNEL_SHARE = {"gp": 0.70, "ggd": 0.10, "gi": 0.08, "specialist": 0.07, "court": 0.05}
PRODUCTS = {"gp": [None] * 6 + ["45A51", "45A04", "51G01", "45A56"], "ggd": ["50G26", "50G26", None],
            "gi": ["45A56", "45A51", None], "court": ["50G41", "50G41", None], "specialist": ["45A53", "54B01"]}
CONTACT_DAYS = [1] * 25 + [2] * 25 + [3] * 20 + [4] * 12 + [5] * 8 + [6] * 5 + [7] * 3 + [8] * 2
"""Working days from handover to first contact: mostly within 5, some breaches."""
STOPPING_PROVIDER = "98000011"
"""The provider that stops when no other has been handed a referral yet; else the one with the most."""
WAIT_S = 30.0


@dataclass
class Youth:
    bsn: str
    birth_date: date
    postcode: str
    given_name: str
    family_name: str


@dataclass
class World:
    """What the simulated referrers and recipients have seen of the hub."""

    statuses: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """referrer's referral id -> statuses in order."""
    hub_ids: dict[str, str] = field(default_factory=dict)
    """referrer's referral id -> the hub's referral id."""
    handovers: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(recipient kind, recipient id, hub referral id, pseudonym), in the order read."""
    notices: list[tuple[str, str, dict]] = field(default_factory=list)
    """(provider agb, pseudonym, notice)."""


@dataclass
class Totals:
    referrals: int = 0
    invalid: int = 0
    feedback: int = 0
    stops: int = 0


class Simulation:
    def __init__(self, settings: Settings, registry: Registry, start: date, months: int, seed: int,
                 per_year: int = 1100, console: Console | None = None) -> None:
        if settings.clock_file is None:
            raise ValueError("VERWIJSHUB_CLOCK_FILE must be set, for the hub and for simulate")
        self.settings, self.registry, self.start, self.seed = settings, registry, start, seed
        self.end = start + relativedelta(months=months)
        self.rng = random.Random(seed)
        self.per_day = per_year / 250
        self.calendar = WorkingCalendar()
        self.world, self.totals = World(), Totals()
        self.youths: list[Youth] = []
        self.bsns: set[str] = set()
        self.actions: dict[date, list[tuple[str, str, str, str, Feedback]]] = defaultdict(list)
        self.planned: set[tuple[str, str, str]] = set()
        self.producers: dict[str, AIOKafkaProducer] = {}
        self.consumers: dict[str, asyncio.Task] = {}
        self.positioned = 0
        self.stopped: set[str] = set()
        self.stop_day = self.working_day_on_or_after(start + (self.end - start) / 2)
        self.pc4s = [pc4 for pc4, team in registry.postcodes.items() if team]
        self.counter = 0
        self.console = console or Console(stderr=True)

    # -- time ------------------------------------------------------------------------------------
    def working_day_on_or_after(self, day: date) -> date:
        while not self.calendar.is_working_day(day):
            day += timedelta(days=1)
        return day

    def after_working_days(self, day: date, count: int) -> date:
        for _ in range(count):
            day = self.working_day_on_or_after(day + timedelta(days=1))
        return day

    def set_clock(self, day: date, hour: int) -> None:
        FileClock(self.settings.clock_file).set(datetime(day.year, day.month, day.day, hour, tzinfo=AMSTERDAM))

    # -- Kafka as the hub's users ----------------------------------------------------------------
    async def producer(self, principal: str) -> AIOKafkaProducer:
        if principal not in self.producers:
            producer = AIOKafkaProducer(**self.settings.connection(principal).client_options(), acks="all",
                                        enable_idempotence=True)
            await producer.start()
            self.producers[principal] = producer
        return self.producers[principal]

    async def follow(self, principal: str, topic: str, handle) -> None:
        """Read a topic as `principal` from its end now on, handing each record to `handle`."""
        connection = self.settings.connection(principal)
        partitions = await partitions_of(connection, [topic])
        if not partitions:  # not visible to it: a provider an earlier run stopped, past its read grace (live registry)
            self.positioned += 1
            return
        consumer = AIOKafkaConsumer(**connection.consumer_options(), enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)
            self.positioned += 1
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        handle(record)
        finally:
            await consumer.stop()

    def on_status(self, record) -> None:
        event = json.loads(record.value)
        self.world.statuses[event["referrer_referral_id"]].append(event["status"])
        if event.get("referral_id"):
            self.world.hub_ids[event["referrer_referral_id"]] = event["referral_id"]

    def on_handover(self, kind: str, recipient: str):
        def handle(record) -> None:
            schema = dict(record.headers or ()).get("schema", b"").decode()
            if schema == "verwijshub.Handover/1":
                correlation = dict(record.headers).get("correlation-id", b"").decode()
                self.world.handovers.append((kind, recipient, correlation, record.key.decode()))
            elif schema == "verwijshub.Notice/1" and kind == "provider":
                self.world.notices.append((recipient, record.key.decode() if record.key else "",
                                           json.loads(record.value)))
        return handle

    async def start_users(self) -> None:
        for channel in CHANNEL_SHARE:
            referrer = principals.referrer(self.sender(channel).id)
            self.consumers[referrer] = asyncio.create_task(self.follow(referrer, topics.status(channel),
                                                                       self.on_status))
        for team in self.registry.teams:
            self.consumers[principals.wij_team(team)] = asyncio.create_task(self.follow(
                principals.wij_team(team), topics.wij_handovers(team), self.on_handover("wij", team)))
        for agb in self.registry.providers:
            self.consumers[principals.provider(agb)] = asyncio.create_task(self.follow(
                principals.provider(agb), topics.provider_handovers(agb), self.on_handover("provider", agb)))
        if not await self.wait_for(lambda: self.positioned == len(self.consumers), 120):  # before the first referral
            raise TimeoutError("the simulated referrers and recipients could not all connect")

    async def stop_users(self) -> None:
        for task in self.consumers.values():
            task.cancel()
        await asyncio.gather(*self.consumers.values(), return_exceptions=True)
        for producer in self.producers.values():
            await producer.stop()

    async def wait_for(self, done, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            await asyncio.sleep(0.05)
        return False

    # -- the referrers ---------------------------------------------------------------------------
    def sender(self, channel: str) -> ReferrerOrganisation:
        """The referrer organisation that sends the channel's messages (it lists their example's referrer)."""
        found = organisation_sending_as(self.registry, Channel(channel), messages.EXAMPLE_REFERRERS[channel])
        if found is None:
            raise LookupError(f"no {channel} organisation in the registry lists {messages.EXAMPLE_REFERRERS[channel]}")
        return found

    def youth(self, day: date) -> Youth:
        if self.youths and self.rng.random() < 0.08:  # referred again
            return self.rng.choice(self.youths)
        birth = day - timedelta(days=self.rng.randint(365, 17 * 365))
        pc4 = self.rng.choice(self.pc4s)
        youth = Youth(messages.random_bsn(self.rng), birth, f"{pc4} {self.rng.choice('ABCDEGHKLMNPRSTVXZ')}"
                      f"{self.rng.choice('ABCDEGHKLMNPRSTVXZ')}", self.rng.choice(GIVEN), self.rng.choice(FAMILY))
        self.youths.append(youth)
        self.bsns.add(youth.bsn)
        return youth

    def channels_open(self, day: date) -> list[str]:
        return [c for c in CHANNEL_SHARE if self.registry.channels[c].joins_bjh_on is None
                or self.registry.channels[c].joins_bjh_on <= day or c == "gp"]

    def referral(self, day: date) -> tuple[str, str, bytes, bool]:
        """(channel, referrer's referral id, message, valid)."""
        channels = self.channels_open(day)
        channel = self.rng.choices(channels, [CHANNEL_SHARE[c] for c in channels])[0]
        youth = self.youth(day)
        self.counter += 1
        rid = f"SIM{self.seed}-{day:%Y%m%d}-{self.counter:05d}"
        valid = self.rng.random() > 0.02
        bsn = youth.bsn if valid else youth.bsn[:8] + str((int(youth.bsn[8]) + 1) % 10)  # fails the elfproef
        self.bsns.add(bsn)
        postcode = youth.postcode if self.rng.random() > 0.01 else "9999 ZZ"  # outside the municipality
        product = self.rng.choice(PRODUCTS[channel])
        person = {"bsn": bsn, "birth_date": youth.birth_date, "postcode": postcode,
                  "given_name": youth.given_name, "family_name": youth.family_name}
        if channel == "gp":
            raw = json.dumps(messages.gp_bundle(
                referral_id=rid, authored_on=day.isoformat(), bsn=bsn, birth_date=youth.birth_date.isoformat(),
                postcode=postcode, given_name=youth.given_name, family_name=youth.family_name, note=FREE_TEXT,
                **({"product": product} if product else {}))).encode()
        elif channel == "specialist":
            raw = messages.specialist_message(referral_id=rid, referral_date=day, product=product or "45A53",
                                              **person)
        else:
            measure = self.rng.choices(["OTS", "voogdij", "none"], [5, 2, 3])[0] if channel == "gi" else None
            raw = json.dumps(messages.document(channel, referral_id=rid, referral_date=day, product=product,
                                               free_text=FREE_TEXT, measure=measure, **person)).encode()
        return channel, rid, raw, valid

    async def send_referrals(self, day: date) -> None:
        count = self.poisson(self.per_day)
        sent = []
        for _ in range(count):
            channel, rid, raw, valid = self.referral(day)
            sender = self.sender(channel)
            producer = await self.producer(principals.referrer(sender.id))
            await producer.send_and_wait(topics.organisation_referrals(sender.channel, sender.id), raw,
                                         key=rid.encode())
            sent.append(rid)
            self.totals.referrals += 1
            self.totals.invalid += not valid
        finished = {"handed-over", "rejected"}
        if not await self.wait_for(lambda: all(finished & set(self.world.statuses[r]) for r in sent)):
            self.console.print(f"[yellow]{day}: not every referral answered within {WAIT_S:.0f}s[/yellow]")
        await self.wait_for(lambda: all(self.handover_seen(r) for r in sent
                                        if "handed-over" in self.world.statuses[r]), 10)

    def handover_seen(self, rid: str) -> bool:
        hub_id = self.world.hub_ids.get(rid)
        return any(h[2] == hub_id for h in self.world.handovers)

    def poisson(self, mean: float) -> int:
        count, threshold, product = 0, pow(2.718281828, -mean), self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    # -- the recipients --------------------------------------------------------------------------
    def plan(self, day: date) -> None:
        """Each new handover gets its recipient's answers, on later working days, by a fixed dice of its own."""
        for kind, recipient, hub_id, pseudonym in self.world.handovers:
            if (kind, recipient, hub_id) in self.planned:
                continue
            self.planned.add((kind, recipient, hub_id))
            dice = random.Random(f"{self.seed}:{kind}:{recipient}:{hub_id}")
            at = lambda d: datetime(d.year, d.month, d.day, 8, tzinfo=AMSTERDAM)  # noqa: E731
            act = lambda d, fb_kind, **extra: self.actions[d].append(  # noqa: E731
                (kind, recipient, hub_id, pseudonym, Feedback(referral_id=hub_id, kind=fb_kind, at=at(d), **extra)))
            if kind == "wij":
                next_day = self.after_working_days(day, 1)
                if dice.random() < 0.04 and recipient != "entree":
                    act(next_day, FeedbackKind.DECLINED, reason=DECLINE_REASON)
                    continue
                act(next_day, FeedbackKind.ACCEPTED)
                contact_day = self.after_working_days(day, dice.choice(CONTACT_DAYS))
                act(contact_day, FeedbackKind.CONTACT_MADE, contact_at=at(contact_day))
                act(self.after_working_days(contact_day, 15), FeedbackKind.CLOSED)
            else:
                next_day = self.after_working_days(day, 1)
                if dice.random() < 0.10:
                    act(next_day, FeedbackKind.DECLINED, reason=DECLINE_REASON)
                    continue
                act(next_day, FeedbackKind.ACCEPTED)
                begin = self.after_working_days(day, 3)
                end = begin + relativedelta(months=dice.randint(4, 9))
                act(begin, FeedbackKind.INDICATION_STARTED, product=dice.choice(sorted(
                    self.registry.providers[recipient].products)), indication_end=end)
        for agb, pseudonym, notice in self.world.notices:
            key = ("evaluation", agb, f"{pseudonym}:{notice.get('product')}:{notice.get('indication_end')}")
            if notice.get("kind") != "evaluation-due" or key in self.planned:
                continue
            self.planned.add(key)
            if random.Random(f"{self.seed}:{key}").random() < 0.7:
                later = self.after_working_days(day, 10)
                self.actions[later].append(("provider", agb, "-", pseudonym, Feedback(
                    referral_id="-", kind=FeedbackKind.EVALUATION_DONE, product=notice.get("product"),
                    at=datetime(later.year, later.month, later.day, 8, tzinfo=AMSTERDAM))))

    async def send_feedback(self, day: date) -> None:
        expected: list[tuple[str, int]] = []
        for kind, recipient, hub_id, pseudonym, feedback in self.actions.pop(day, []):
            if kind == "provider" and recipient in self.stopped:
                continue  # a stopped provider may no longer write
            principal = principals.wij_team(recipient) if kind == "wij" else principals.provider(recipient)
            topic = topics.wij_feedback(recipient) if kind == "wij" else topics.provider_feedback(recipient)
            try:
                producer = await self.producer(principal)
                await producer.send_and_wait(topic, feedback.model_dump_json().encode(), key=pseudonym.encode())
            except KafkaError:
                continue
            self.totals.feedback += 1
            if feedback.kind in (FeedbackKind.ACCEPTED, FeedbackKind.CONTACT_MADE, FeedbackKind.CLOSED,
                                 FeedbackKind.DECLINED):
                rid = next((r for r, h in self.world.hub_ids.items() if h == hub_id), None)
                if rid:
                    expected.append((rid, len(self.world.statuses[rid]) + 1))
        await self.wait_for(lambda: all(len(self.world.statuses[r]) >= n for r, n in expected), 15)

    # -- the registry ----------------------------------------------------------------------------
    async def stop_provider(self, day: date) -> None:
        """Publish the registry with one provider stopped today, as its administrator would: the one the hub
        handed the most referrals so far, so its stop moves open referrals."""
        from services.routing.commands import publish_registry

        handed = Counter(recipient for kind, recipient, *_ in self.world.handovers if kind == "provider")
        stopping = handed.most_common(1)[0][0] if handed else STOPPING_PROVIDER

        with tempfile.TemporaryDirectory(prefix="verwijshub-registry-") as directory:
            shutil.copytree(self.settings.registry_dir, directory, dirs_exist_ok=True)
            path = Path(directory) / "providers.json"
            providers = json.loads(path.read_text())
            for provider in providers:
                if provider["agb"] == stopping:
                    provider["stopped_on"] = day.isoformat()
            path.write_text(json.dumps(providers, indent=1))
            registry = await publish_registry(self.settings, Path(directory))
        if self.settings.connection(principals.ADMIN).secured:  # the stopped provider loses write, as `publish` does
            from services.access.commands import sync_access
            await asyncio.to_thread(sync_access, self.settings, registry)
        self.stopped.add(stopping)
        self.consumers[principals.provider(stopping)].cancel()  # its read may be gone too (grace period)
        self.totals.stops += 1
        before = len(self.world.handovers)  # routing re-routes the provider's open referrals at the change
        if await self.wait_for(lambda: len(self.world.handovers) > before, 10):
            await asyncio.sleep(1.0)  # the rest of them

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> Totals:
        days = []
        day = self.start
        while day < self.end:
            if self.calendar.is_working_day(day):
                days.append(day)
            day += timedelta(days=1)
        await self.start_users()
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=self.console) as progress:
                task = progress.add_task("simulating", total=len(days))
                for day in days:
                    progress.update(task, description=f"simulating {day}")
                    self.set_clock(day, 8)  # the hub reads the file at each use: no need to wait
                    await self.send_feedback(day)
                    if day == self.stop_day:
                        await self.stop_provider(day)
                    self.set_clock(day, 9)
                    await self.send_referrals(day)
                    await asyncio.sleep(0.3)  # breaches due at 09:00 fire before the next day's contacts
                    self.plan(day)
                    progress.advance(task)
                last = self.working_day_on_or_after(self.end)
                self.set_clock(last, 8)
                await asyncio.sleep(1.0)
                await self.send_feedback(last)  # contacts still due at the start of the next month
                self.set_clock(last, 9)
                await asyncio.sleep(1.0)
        finally:
            await self.stop_users()
        return self.totals


def start_hub_process(settings: Settings, log_file: Path) -> subprocess.Popen:
    """`verwijshub up` on the simulation's clock, for the one-line demo; returns once it is ready."""
    env = {**os.environ, "VERWIJSHUB_CLOCK_FILE": str(settings.clock_file), "VERWIJSHUB_NOTIFIER_TICK_SECONDS": "0.1",
           "VERWIJSHUB_LOG_FILE": str(log_file)}
    return start_process(["up"], env, log_file)


def simulate(start: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
             months: Annotated[int, typer.Option("--months", min=1, help="How many months.")] = 1,
             seed: Annotated[int, typer.Option("--seed", help="Seed of the dice: the same seed, the same stretch.")] = 1,
             per_year: Annotated[int, typer.Option("--per-year", min=1, help="Referrals a year (the seeds' order "
                                                   "is about 1,100 youths a year in basis jeugdhulp).")] = 1100,
             start_hub: Annotated[bool, typer.Option("--start-hub", help="Run `verwijshub up` on the simulation's "
                                                     "clock for the simulation, and stop it after.")] = False) -> None:
    """Drive months of referrals through the running hub on a moved clock (VERWIJSHUB_CLOCK_FILE, which the hub
    must read too; with --start-hub a clock file under the data directory), as referrers and recipients would."""
    settings = get_settings()
    if start_hub and settings.clock_file is None:
        settings = settings.model_copy(update={"clock_file": settings.data_dir / "simulation-clock"})
    if settings.clock_file is None:
        Console(stderr=True).print("[red]set VERWIJSHUB_CLOCK_FILE for the hub and for simulate (or --start-hub)[/red]")
        raise typer.Exit(2)
    first = date.fromisoformat(start)
    settings.clock_file.parent.mkdir(parents=True, exist_ok=True)
    simulation = Simulation(settings, load_registry(settings.registry_dir), first, months, seed, per_year)
    simulation.set_clock(first, 8)
    hub = start_hub_process(settings, settings.log_file or settings.data_dir / "hub.log") if start_hub else None
    try:
        totals = asyncio.run(simulation.run())
        if hub is not None:
            asyncio.run(wait_until_stored(settings))
    finally:
        if hub is not None:
            stop_process(hub)
    Console(stderr=True).print(f"simulated {first} to {simulation.end}: {totals.referrals} referrals "
                               f"({totals.invalid} with an invalid BSN), {totals.feedback} feedback messages, "
                               f"{totals.stops} provider stop(s)")
