"""The WIJ teams' web inbox on a real secured broker, under the real `verwijshub up`, driven by headless Chromium
(Playwright, Debian's chromium): a GP referral for a WIJ team shows in that team's inbox with the notifier's contact
deadline; the team reads the referral as handed over and records contact; the referrer's status topic gets
`contact-made` and the team's feedback topic exactly one record, the same form sent again none; another team sees
none of it and its detail URL is 404; every page is `no-store`; a new token ends the old sessions; the hub's log
holds nothing of the child. Screenshots in test-artifacts/inbox/."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from schemas.referral import Channel
from services.infra import principals, topics
from services.infra.clock import FileClock
from services.infra.settings import REPO_ROOT
from services.notifier.calendar import WorkingCalendar
from services.notifier.followup import start_clock
from services.recipients.worklist import local
from tests.conftest import ARTIFACTS, TestKafka
from tests.recipient_hub import Hub, eventually, topic_records
from tests.referrals import random_bsn
from tests.system_tools import require

pytestmark = pytest.mark.e2e
FOR_A_TEAM = REPO_ROOT / "schemas" / "examples" / "gp" / "zorgdomein-document-basis-jeugdhulp.json"
SHOTS = ARTIFACTS / "inbox"
CLOCK = SHOTS / "now.txt"
"""The hub's clock file (VERWIJSHUB_CLOCK_FILE): empty is the system time."""


@pytest.fixture(scope="module")
def hub(private_kafka: TestKafka) -> Iterator[Hub]:
    """The whole hub as `up` runs it, on a broker of this module's own: on the session's broker a worker's session
    hub would run a second recipient API in the same group, holding half of the Tasks."""
    CLOCK.parent.mkdir(parents=True, exist_ok=True)
    FileClock(CLOCK).set(None)
    running = Hub.on_own_ports(private_kafka, SHOTS, VERWIJSHUB_CLOCK_FILE=str(CLOCK))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    chromium = require("chromium")  # Debian's (`make tools`): Playwright downloads no browser of its own
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox",
                                                                              "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


def refer_to_a_team(hub: Hub, bsn: str) -> tuple[str, str]:
    """A ZorgDomein document of this youth through the gateway: the hub referral id and its WIJ team."""
    referral_id, recipient = hub.refer(FOR_A_TEAM, bsn)
    assert recipient["kind"] == "wij-team"
    return referral_id, recipient["id"]


def handover_timestamp(hub: Hub, team: str, referral_id: str) -> datetime:
    """The handover message's timestamp, from the team's handover topic: when the notifier started its clock."""
    (record,) = topic_records(hub.kafka.admin, topics.wij_handovers(team),
                              lambda r: referral_id.encode() in r.value, 1, timeout_s=60)
    return datetime.fromisoformat(json.loads(record.value)["timestamp"])


def log_in(browser, hub: Hub, token: str):
    """A browser context of its own (its own cookies) logged in with the team's token. TLS is the hub's own CA's,
    which Chromium is not given: the certificate is checked by the curl tests of the same server."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    first = page.goto(hub.inbox)
    assert first is not None and page.url.endswith("/inbox/login"), "no session: the login page"
    page.fill("#token", token)
    page.click("main button[type=submit]")
    page.wait_for_url(hub.inbox)
    return context, page


def test_a_team_sees_its_handover_with_its_deadline_and_records_contact_and_another_team_sees_nothing(
        hub: Hub, browser) -> None:
    bsn = random_bsn()
    referral_id, team = refer_to_a_team(hub, bsn)
    other = next(t for t in ("centrum", "korrewegwijk") if t != team)
    token, other_token = hub.token(principals.wij_team(team)), hub.token(principals.wij_team(other))

    context, page = log_in(browser, hub, token)
    row = f"tr[data-referral='{referral_id}']"

    def listed() -> bool:
        page.reload()
        return page.locator(row).count() == 1
    eventually(listed, "the handover in the team's inbox", timeout_s=120)
    due = start_clock(handover_timestamp(hub, team, referral_id), WorkingCalendar()).due_at
    assert page.locator(f"{row} td.due").inner_text().strip() == local(due), "the notifier's deadline"
    assert page.locator(row).get_attribute("data-mark") == "on-time"
    assert bsn not in page.content() and "Hoekstra" not in page.content(), "the list shows no personal data"
    page.screenshot(path=str(SHOTS / "inbox.png"), full_page=True)

    page.click(f"{row} a")
    page.wait_for_url("**/inbox/tasks/*")
    detail_url = page.url
    shown = page.goto(detail_url)
    assert shown is not None and shown.status == 200
    assert shown.headers["cache-control"] == "no-store"
    letter = page.locator("#letter").inner_text()
    assert bsn in letter and "Hoekstra" in letter, "the referral as handed over"
    assert page.locator("#due").inner_text().startswith(local(due))
    page.screenshot(path=str(SHOTS / "handover.png"), full_page=True)

    contact = page.locator("form:has(input[name=action][value=contact])")
    form = {field: contact.locator(f"input[name={field}]").input_value()
            for field in ("csrf", "version", "action", "contact_at")}
    contact.locator("button").click()
    assert "Saved: in-progress (contact-made)." in page.locator(".flash").inner_text()
    assert page.locator("#status").inner_text().strip() == "in-progress (contact-made)"
    page.screenshot(path=str(SHOTS / "contact-made.png"), full_page=True)
    again = page.request.post(detail_url, form=form, max_redirects=0)  # the same form sent again (a double click)
    assert again.status == 303, again.text()
    forged = page.request.post(detail_url, form={**form, "csrf": "not-the-sessions"}, max_redirects=0)
    assert forged.status == 403

    statuses = topic_records(hub.kafka.admin, topics.status(Channel.GP),
                             lambda r: json.loads(r.value).get("referral_id") == referral_id, 4, timeout_s=60)
    assert [json.loads(r.value)["status"] for r in statuses][-1] == "contact-made"
    feedback = topic_records(hub.kafka.admin, topics.wij_feedback(team),
                             lambda r: json.loads(r.value).get("referral_id") == referral_id, 1, timeout_s=60,
                             settle_s=3.0)
    assert [json.loads(r.value)["kind"] for r in feedback] == ["contact-made"], "one record, the retry none"
    made = datetime.fromisoformat(json.loads(feedback[0].value)["contact_at"])
    assert abs((made - datetime.now(UTC)).total_seconds()) < 300, "the time the form said, Dutch local time"

    other_context, other_page = log_in(browser, hub, other_token)
    assert other_page.locator(row).count() == 0, "another team's inbox does not show it"
    refused = other_page.goto(detail_url)
    assert refused is not None and refused.status == 404
    assert other_page.request.post(detail_url, form=form, max_redirects=0).status == 404
    other_context.close()

    hub.token(principals.wij_team(team))  # a new token for the team: sessions begun with the old one end
    page.goto(hub.inbox)
    assert page.url.endswith("/inbox/login")
    context.close()

    log = hub.log.read_text()
    assert bsn not in log and "Hoekstra" not in log and token not in log, "nothing of the child or the token logged"
    moves = [line for line in log.splitlines() if '"event": "inbox move"' in line]
    assert any(json.loads(line)["principal"] == principals.wij_team(team) for line in moves), "an audit line"


def test_a_handover_past_its_deadline_is_marked_breached_and_shows_the_notifiers_notice(hub: Hub, browser) -> None:
    """The hub's clock moved past the contact deadline: the list marks the handover breached, and the notifier's
    `sla-breached` notice to the team shows on the handover's page (a notice read back from the team's topic)."""
    referral_id, team = refer_to_a_team(hub, random_bsn())
    token = hub.token(principals.wij_team(team))
    due = start_clock(handover_timestamp(hub, team, referral_id), WorkingCalendar()).due_at
    context, page = log_in(browser, hub, token)
    row = f"tr[data-referral='{referral_id}']"

    def marked(mark: str) -> bool:
        page.reload()
        return page.locator(row).count() == 1 and page.locator(row).get_attribute("data-mark") == mark
    eventually(lambda: marked("on-time"), "the handover in the team's inbox, on time", timeout_s=120)
    FileClock(CLOCK).set(due - timedelta(hours=1))
    eventually(lambda: marked("at-risk"), "the handover at risk, an hour before its deadline", timeout_s=30)
    FileClock(CLOCK).set(due + timedelta(minutes=1))
    eventually(lambda: marked("breached"), "the handover breached", timeout_s=30)
    page.screenshot(path=str(SHOTS / "breached.png"), full_page=True)

    page.click(f"{row} a")
    page.wait_for_url("**/inbox/tasks/*")

    def noticed() -> bool:
        page.reload()
        return page.locator("#later").count() == 1 and "sla-breached" in page.locator("#later").inner_text()
    eventually(noticed, "the notifier's sla-breached notice on the handover's page", timeout_s=120)
    assert page.locator("#due .mark").inner_text() == "breached"
    context.close()
