"""The analytics core: a decision, status, feedback or alert becomes facts with codes, dates, the pseudonym, the
age and the PC4, and never a BSN, name, birth date, full postcode or free text; the figures count them."""

import json
from datetime import UTC, date, datetime

from schemas.feedback import Feedback, FeedbackKind
from schemas.referral import Channel
from schemas.status import ReferralStatus, StatusEvent
from services.analytics.facts import age_in_years, facts_of
from services.analytics.figures import Dataset, build, working_days_between
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.adapters import read_referral
from services.notifier.calendar import WorkingCalendar
from services.routing.policy import decide
from tests.referrals import gp_bytes, random_bsn

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2025, 3, 3, 8, tzinfo=UTC)
TEAMS = {pc4: team for pc4, team in REGISTRY.postcodes.items() if team}


def _decision(bsn: str):
    referral = read_referral(Channel.GP, gp_bytes(bsn=bsn, birth_date="2013-03-04", postcode="9712 HB",
                                                  authored_on="2025-03-03"),
                             known_products=frozenset(REGISTRY.products), pseudonym_key="k" * 32, received_at=NOW,
                             max_bytes=1 << 20)
    return decide(referral, REGISTRY, NOW)


def test_a_decision_gives_a_referral_and_a_decision_fact_without_personal_data() -> None:
    bsn = random_bsn()
    decision = _decision(bsn)
    facts = facts_of("routing.decisions.v1", 2, 17, b"p", decision.model_dump_json().encode(), TEAMS)
    assert [f.table for f in facts] == ["referrals", "decisions"]
    referral = facts[0].row
    assert referral["age_years"] == 11 and referral["pc4"] == "9712" and referral["team"] == "centrum"
    assert referral["pseudonym"] == decision.referral.youth.pseudonym and referral["channel"] == "gp"
    assert facts[1].row | {"offset": 17} == facts[1].row and facts[1].row["rule"] == decision.rule
    text = json.dumps([f.row for f in facts], default=str)
    youth = decision.referral.youth
    for personal in (bsn, "2013-03-04", "9712 HB", youth.given_name, youth.family_name,
                     decision.referral.free_text, decision.referral.referrer_referral_id):
        assert not personal or personal not in text


def test_status_feedback_and_rubbish() -> None:
    event = StatusEvent.of(Channel.GP, "ZD-1", "r1", ReferralStatus.HANDED_OVER, NOW, detail="to WIJ Centrum")
    (status,) = facts_of("status.gp.v1", 0, 5, b"ZD-1", event.model_dump_json().encode(), TEAMS)
    assert status.row["status"] == "handed-over" and "detail" not in status.row
    feedback = Feedback(referral_id="r1", kind=FeedbackKind.DECLINED, at=NOW, reason="Geen plek, vrije tekst")
    (fact,) = facts_of("feedback.wij.centrum.v1", 1, 2, b"pseudo", feedback.model_dump_json().encode(), TEAMS)
    assert fact.row["recipient_id"] == "centrum" and fact.row["pseudonym"] == "pseudo"
    assert "Geen plek" not in json.dumps(fact.row, default=str)
    assert facts_of("status.gp.v1", 0, 6, None, b"not json", TEAMS) == []
    assert facts_of("alerts.v1", 0, 6, None, None, TEAMS) == []


def test_age_and_working_days() -> None:
    assert age_in_years(date(2013, 3, 4), date(2025, 3, 3)) == 11
    assert age_in_years(date(2013, 3, 3), date(2025, 3, 3)) == 12
    friday = datetime(2025, 3, 7, 14)  # naive UTC: 15:00 in Amsterdam
    assert abs(working_days_between(friday, datetime(2025, 3, 14, 14), WorkingCalendar()) - 5) < 1e-6


def test_the_figures_count_a_referral_once_by_its_first_decision() -> None:
    decision = _decision(random_bsn())
    facts = facts_of("routing.decisions.v1", 0, 0, b"p", decision.model_dump_json().encode(), TEAMS)
    data = Dataset([facts[0].row], [facts[1].row], [], [], [], 0)
    sections = build(data, date(2025, 3, 1), WorkingCalendar())
    per_channel = sections[0].tables[0]
    assert per_channel.counts == [[1, 0, 0, 0, 0]]


def test_a_cancelled_referral_is_counted_and_left_out_of_the_contact_promise() -> None:
    """A referral handed to its WIJ team, then cancelled by its referrer: one cancellation in the month, and no
    contact fact (its clock was stopped, so it is neither met nor missed)."""
    decision = _decision(random_bsn())
    facts = facts_of("routing.decisions.v1", 0, 0, b"p", decision.model_dump_json().encode(), TEAMS)
    def status(kind: ReferralStatus, offset: int):
        event = StatusEvent.of(Channel.GP, "ext", decision.referral_id, kind, NOW)
        return facts_of("status.gp.v1", 0, offset, b"ext", event.model_dump_json().encode(), TEAMS)[0].row
    handed = status(ReferralStatus.HANDED_OVER, 1)
    kept = build(Dataset([facts[0].row], [facts[1].row], [handed], [], [], 0), date(2025, 3, 1), WorkingCalendar())
    cancelled = build(Dataset([facts[0].row], [facts[1].row], [handed, status(ReferralStatus.CANCELLED, 2)], [], [],
                              0), date(2025, 3, 1), WorkingCalendar())
    def movement(sections) -> dict[str, int]:
        table = next(s for s in sections if s.title.startswith("Re-referrals")).tables[0]
        return dict(zip(table.rows, (row[0] for row in table.counts)))
    assert (movement(kept)["cancellations by the referrer"], movement(cancelled)["cancellations by the referrer"]) \
        == (0, 1)
    assert kept[1].tables != cancelled[1].tables, "the contact promise leaves the cancelled referral out"
