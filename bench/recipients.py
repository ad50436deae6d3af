"""The recipient API as a recipient without Kafka meets it: from a referral's publish to its REST-hook notification
and to its Task found by polling (p50/p99 at a steady rate), Task polls per second, and the WIJ inbox's page time
with `--open` open handovers; against raw baselines on the same broker and server, in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.recipients [--rate 20] [--seconds 20] [--open 500] [--polls 1000]

On a secured local Kafka it starts the whole hub (`verwijshub up`), subscribes the WIJ team of the GP example's
postcode with an `id-only` rest-hook (an HTTPS receiver here, its certificate from the hub's CA), then
1. latency: publishes GP referrals for that team at `rate` for `seconds` (as the channel's writer, on Kafka) while
   a poller asks `GET /fhir/Task?owner=..&_lastUpdated=gt<last seen>` back to back, as an ECD that polls would;
   reports p50/p99 from publish to the hook's notification and to the Task's first sight in a poll, beside the
   same paced payloads through bench.e2e's transactional passthrough (three hops, read_committed): the ratio is
   what the hub's four hops and the API add to what Kafka's transactions alone cost here;
2. polling: `--polls` searches of one page (`_count=50`) from 8 keep-alive connections, requests/s and p50/p99,
   beside as many `GET /healthz` on the same server (TLS, uvicorn, no search): the ratio is the search's cost;
3. the inbox: more referrals at once until the team has `--open` open handovers, then the list page and a
   handover's page, each 20 times after a login, p50/p99 (the list's rows counted, so the page is the real one).
Nothing is asserted: it prints figures.
"""

import argparse
import asyncio
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.e2e import passthrough, percentile, publish_all
from schemas.referral import Channel
from services.infra import principals
from services.infra.logging import configure_logging
from services.infra.registry_files import load_registry
from services.infra.tls import LocalCa
from services.recipients.subscriptions import TOPIC
from tests.conftest import new_broker
from tests.recipient_hub import Hub, Receiver, read_status
from tests.referrals import gp_bundle, gp_bytes, random_bsn

CONNECTIONS = 8


def referrals(count: int, run: str) -> list[tuple[Channel, str, bytes]]:
    return [(Channel.GP, f"BENCH-{run}-{i}", gp_bytes(referral_id=f"BENCH-{run}-{i}", bsn=random_bsn()))
            for i in range(count)]


def example_team(hub: Hub) -> str:
    """The WIJ team of the GP example's postcode, which every referral here goes to (basis jeugdhulp)."""
    patient = next(e["resource"] for e in gp_bundle()["entry"] if e["resource"]["resourceType"] == "Patient")
    return load_registry(hub.kafka.settings().registry_dir).postcodes[patient["address"][0]["postalCode"][:4]]


class Poller:
    """An ECD that polls: `GET /Task?owner=..&_lastUpdated=gt<newest seen>` back to back; the first sight of each
    Task (epoch s) and each Task's hub referral id."""

    def __init__(self, client: httpx.AsyncClient, hub: Hub, owner: str) -> None:
        self.client, self.hub, self.owner = client, hub, owner
        self.seen: dict[str, float] = {}
        self.referral_of: dict[str, str] = {}
        self.newest = "1970-01-01T00:00:00+00:00"

    async def run(self) -> None:
        while True:
            url = f"{self.hub.api}/Task?owner={self.owner}&_lastUpdated=gt{quote(self.newest)}&_count=200"
            while url:
                answer = await self.client.get(url)
                assert answer.status_code == 200, answer.text
                page = answer.json()
                now = time.time()
                for entry in page.get("entry", []):
                    task = entry["resource"]
                    self.seen.setdefault(task["id"], now)
                    self.referral_of[task["id"]] = task["groupIdentifier"]["value"]
                    self.newest = max(self.newest, task["meta"]["lastUpdated"])
                url = next((link["url"] for link in page["link"] if link["relation"] == "next"), "")
            await asyncio.sleep(0.05)


def hub_id(referrer_referral_id: str) -> str:
    from schemas.referral import hub_referral_id

    practitioner = next(e["resource"] for e in gp_bundle()["entry"]
                        if e["resource"]["resourceType"] == "Practitioner")
    return hub_referral_id(Channel.GP, practitioner["identifier"][0]["value"], referrer_referral_id)


def quantiles(delays: list[float]) -> str:
    return (f"p50 {percentile(delays, 50) * 1000:.0f} ms, p99 {percentile(delays, 99) * 1000:.0f} ms "
            f"({len(delays)})") if delays else "none seen"


async def latency(hub: Hub, client: httpx.AsyncClient, receiver: Receiver, owner: str, rate: float,
                  seconds: float) -> tuple[list[float], list[float], list[float]]:
    """Publish to hook and to poll, and the passthrough's, in seconds."""
    items = referrals(int(rate * seconds), uuid.uuid4().hex[:8])
    poller = Poller(client, hub, owner)
    polling = asyncio.create_task(poller.run())
    sent = await publish_all(hub.kafka, items, 1 / rate)
    wanted = {hub_id(referral_id): referral_id for _, referral_id, _ in items}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(set(poller.referral_of.values()) & wanted.keys()) < len(wanted):
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # the last notifications
    if polling.done():
        polling.result()  # the poller's error, if it had one
    polling.cancel()
    notified: dict[str, float] = {}
    with receiver.lock:
        for path, bundle, at in receiver.got:
            status = read_status(bundle["entry"][0]["resource"])
            for _, task_id in status["events"] if path == f"/hook/{owner}" else ():
                notified.setdefault(task_id, at)
    by_referral = {wanted[r]: t for t, r in poller.referral_of.items() if r in wanted}
    to_hook = sorted(notified[t] - sent[r] for r, t in by_referral.items() if t in notified)
    to_poll = sorted(poller.seen[t] - sent[r] for r, t in by_referral.items())
    base_sent, base_seen = await passthrough(hub.kafka, referrals(len(items), uuid.uuid4().hex[:8]), transactional=True,
                                             pace=1 / rate)
    baseline = sorted(base_seen[r] / 1000 - base_sent[r] for r in base_seen)
    return to_hook, to_poll, baseline


async def timed(client: httpx.AsyncClient, urls: list[str], connections: int) -> tuple[float, list[float]]:
    """Each url once from `connections` workers: requests/s and each request's seconds."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    times: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            url = queue.get_nowait()
            started = time.perf_counter()
            answer = await client.get(url)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, (url, answer.status_code)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return len(urls) / (time.perf_counter() - started), sorted(times)


async def inbox_pages(hub: Hub, token: str, ca: Path, task_id: str) -> tuple[int, list[float], list[float]]:
    """Log in as the team, then the list and one handover's page 20 times each: rows listed, and the seconds."""
    inbox = hub.inbox
    async with httpx.AsyncClient(verify=str(ca), timeout=60) as browser:
        login = await browser.get(inbox + "login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        await browser.post(inbox + "login", data={"csrf": csrf, "token": token})
        listed = await browser.get(inbox)
        rows = listed.text.count("data-referral=")
        _, lists = await timed(browser, [inbox] * 20, 1)
        _, details = await timed(browser, [f"{inbox}tasks/{task_id}"] * 20, 1)
    return rows, lists, details


def run(args: argparse.Namespace) -> None:
    """The broker and the hub outside the event loop (both start synchronously), the measuring inside it."""
    directory = Path(tempfile.mkdtemp(prefix="bench-recipients-"))
    with new_broker(directory / "kafka") as broker:
        hub = Hub.on_own_ports(broker, directory)
        receiver = Receiver(str(LocalCa(broker.secrets).gateway_pem("127.0.0.1")))
        receiver.up()
        hub.start()
        try:
            asyncio.run(measure(args, hub, receiver))
        finally:
            hub.stop()
            receiver.down()


async def measure(args: argparse.Namespace, hub: Hub, receiver: Receiver) -> None:
    team = example_team(hub)
    owner = principals.wij_team(team)
    token = hub.token(owner)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    async with httpx.AsyncClient(verify=str(hub.ca), timeout=60, headers=headers,
                                 limits=httpx.Limits(max_connections=CONNECTIONS)) as client:
        answer = await client.post(f"{hub.api}/Subscription", json={
            "resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": TOPIC,
            "channel": {"type": "rest-hook", "endpoint": receiver.url(owner), "payload": "application/fhir+json"}})
        assert answer.status_code == 201, answer.text
        warm_up = min(args.seconds, 5.0)
        await latency(hub, client, receiver, owner, args.rate, warm_up)  # untimed: the JVM and caches warm
        to_hook, to_poll, baseline = await latency(hub, client, receiver, owner, args.rate, args.seconds)
        open_now = int(args.rate * warm_up) + int(args.rate * args.seconds)  # all still requested
        print(f"at {args.rate:g}/s for {args.seconds:g} s, publish to:")
        print(f"  the rest-hook's id-only notification   {quantiles(to_hook)}")
        print(f"  the Task's first sight in a poll        {quantiles(to_poll)}")
        print(f"  the end of a transactional passthrough  {quantiles(baseline)}")
        if to_hook and baseline:
            print(f"  ratio hook/passthrough p50 {statistics.median(to_hook) / statistics.median(baseline):.1f}")

        search = f"{hub.api}/Task?owner={owner}&status=requested&_count=50"
        polls, poll_times = await timed(client, [search] * args.polls, CONNECTIONS)
        health, health_times = await timed(client, [hub.api.removesuffix("/fhir") + "/healthz"] * args.polls,
                                           CONNECTIONS)
        print(f"Task polls ({CONNECTIONS} connections, 50 a page): {polls:.0f} req/s, {quantiles(poll_times)}")
        print(f"/healthz on the same server: {health:.0f} req/s, {quantiles(health_times)}; "
              f"ratio polls/healthz {polls / health:.2f}")

        first = (await client.get(search)).json()["entry"][0]["resource"]["id"]
        missing = args.open - open_now
        if missing > 0:
            more = referrals(missing, uuid.uuid4().hex[:8])
            await publish_all(hub.kafka, more)
            wanted = {hub_id(r) for _, r, _ in more}
            poller = Poller(client, hub, owner)
            polling = asyncio.create_task(poller.run())
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not wanted <= set(poller.referral_of.values()):
                await asyncio.sleep(1.0)
            polling.cancel()
    rows, lists, details = await inbox_pages(hub, token, hub.ca, first)
    print(f"inbox list with {rows} open handovers: {quantiles(lists)}; a handover's page: {quantiles(details)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--open", type=int, default=500)
    parser.add_argument("--polls", type=int, default=1000)
    configure_logging("bench", "WARNING")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
