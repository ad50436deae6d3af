"""The monthly monitoring report's figures from the store's facts. Pure: rows in, tables of counts out.

Every table is a partition where its figures add up (so secondary suppression can protect its cells), or a list
of independent counts without a total. Suppression and rendering happen after this (`render.py`).
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta

from services.notifier.calendar import AMSTERDAM, WorkingCalendar

CONTACT_DAYS = 5
CHANNELS = ["gp", "gi", "ggd", "court", "specialist"]
ROUTES = ["WIJ team", "provider", "rejected"]
MEASURES = ["OTS", "voogdij", "none"]
DAY_BINS = ["≤1", "1–2", "2–3", "3–4", "4–5"]
"""Working days to first contact, of the contacts within the promise (the others are the breached and later ones
of the team table: one relation, within = the sum of these, kept in one place)."""
RE_REFERRAL_DAYS = 365


@dataclass
class Table:
    """Counts: `rows` × `columns`, with a row and/or column total where the figures add up."""

    title: str
    rows: list[str]
    columns: list[str]
    counts: list[list[int]]
    row_totals: bool = True
    column_totals: bool = True
    note: str = ""
    links: dict[tuple[int, int], str] = field(default_factory=dict)
    """Figures that appear in another table too, by name: (row, column) in the table with its totals (column
    index len(columns) for a row's total, row index len(rows) for the totals row)."""


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    shares: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(label, table title, numerator column, ...): a share of two cells of a table's totals row."""
    plot: str | None = None
    """Which plot (`render.py`) goes with the section."""


@dataclass(frozen=True)
class Dataset:
    referrals: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    statuses: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    dead_letters_pending: int | None


def month_range(month: date) -> tuple[date, date]:
    return month, month + relativedelta(months=1)


def local_day(moment: datetime) -> date:
    return moment.replace(tzinfo=UTC).astimezone(AMSTERDAM).date()


def in_month(day: date | None, month: date) -> bool:
    start, end = month_range(month)
    return day is not None and start <= day < end


def working_days_between(start: datetime, end: datetime, calendar: WorkingCalendar) -> float:
    """Working days of time from `start` to `end` (naive UTC), as the contact clock counts them."""
    low, high = 0.0, 60.0
    begin = start.replace(tzinfo=UTC)
    target = end.replace(tzinfo=UTC)
    for _ in range(40):  # bisection on add_working_days, which is monotone
        middle = (low + high) / 2
        if calendar.add_working_days(begin, middle) < target:
            low = middle
        else:
            high = middle
    return high


def _route(decision: dict[str, Any]) -> str:
    return {"wij-team": "WIJ team", "provider": "provider"}.get(decision["recipient_kind"] or "", "rejected")


def first_decisions(data: Dataset) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for decision in sorted(data.decisions, key=lambda d: (d["decided_at"], d["offset"])):
        first.setdefault(decision["referral_id"], decision)
    return first


def _matrix(rows: list[str], columns: list[str], counter: Counter) -> list[list[int]]:
    return [[counter[(row, column)] for column in columns] for row in rows]


@dataclass(frozen=True)
class ContactFact:
    referral_id: str
    team: str
    handed_over_at: datetime
    contact_at: datetime | None
    at_risk: bool
    breached: bool


def contacts(data: Dataset) -> list[ContactFact]:
    """Each handover to a WIJ team with its first contact and whether its clock came at risk or breached."""
    statuses: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for status in sorted(data.statuses, key=lambda s: s["at"]):
        if status["referral_id"]:
            statuses[status["referral_id"]].append(status)
    decisions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for decision in sorted(data.decisions, key=lambda d: (d["decided_at"], d["offset"])):
        decisions[decision["referral_id"]].append(decision)
    contact_feedback: dict[tuple[str, str], datetime] = {}
    for item in sorted(data.feedback, key=lambda f: f["at"]):
        if item["kind"] == "contact-made" and item["recipient_kind"] == "wij":
            contact_feedback.setdefault((item["referral_id"], item["recipient_id"]),
                                        item["contact_at"] or item["at"])
    found = []
    for referral_id, chain in decisions.items():
        if any(s["status"] == "cancelled" for s in statuses[referral_id]):
            continue  # withdrawn by its referrer: the contact promise no longer applies (its clock was stopped)
        for index, decision in enumerate(chain):
            if decision["recipient_kind"] != "wij-team":
                continue
            until = chain[index + 1]["decided_at"] if index + 1 < len(chain) else datetime.max
            mine = [s for s in statuses[referral_id] if decision["decided_at"] <= s["at"] <= until]
            handed = next((s["at"] for s in mine if s["status"] == "handed-over"), None)
            if handed is None:
                continue
            found.append(ContactFact(referral_id, decision["recipient_id"], handed,
                                     contact_feedback.get((referral_id, decision["recipient_id"])),
                                     any(s["status"] == "sla-at-risk" for s in mine),
                                     any(s["status"] == "sla-breached" for s in mine)))
    return found


def day_bin(fact: ContactFact, calendar: WorkingCalendar) -> str:
    """The bin of a contact within the promise."""
    assert fact.contact_at is not None
    days = working_days_between(fact.handed_over_at, fact.contact_at, calendar)
    return DAY_BINS[min(int(max(days - 1e-9, 0)), len(DAY_BINS) - 1)]


def within_promise(fact: ContactFact, calendar: WorkingCalendar) -> bool:
    due = calendar.add_working_days(fact.handed_over_at.replace(tzinfo=UTC), CONTACT_DAYS).replace(tzinfo=None)
    return fact.contact_at is not None and fact.contact_at <= due


def build(data: Dataset, month: date, calendar: WorkingCalendar, team_names: dict[str, str] | None = None
          ) -> list[Section]:
    names = team_names or {}
    first = first_decisions(data)
    referrals = {r["referral_id"]: r for r in data.referrals}
    this_month = [r for r in data.referrals if in_month(r["referral_date"], month) and r["referral_id"] in first]

    # 1. referrals
    by_channel = Counter(("referrals", r["channel"]) for r in this_month)
    by_route = Counter((first[r["referral_id"]]["rule"], _route(first[r["referral_id"]])) for r in this_month)
    rules = sorted({rule for rule, _ in by_route})
    by_product = Counter((r["product"] or "none (basis jeugdhulp)", "referrals") for r in this_month)
    by_team = Counter((names.get(r["team"] or "", r["team"] or "no team (central entrance)"), "referrals")
                      for r in this_month)
    months = [month - relativedelta(months=back) for back in range(12, -1, -1)]
    per_month = Counter(r["referral_date"].replace(day=1) for r in data.referrals if r["referral_id"] in first)
    product_rows = sorted({k for k, _ in by_product})
    team_rows = sorted({k for k, _ in by_team})
    referrals_section = Section("Referrals", [
        Table("Per channel", ["referrals"], CHANNELS, _matrix(["referrals"], CHANNELS, by_channel),
              column_totals=False, links={(0, len(CHANNELS)): "referrals", (0, CHANNELS.index("gi")): "gi"}),
        Table("Per route, by the deciding rule", rules, ROUTES, _matrix(rules, ROUTES, by_route),
              links={(len(rules), len(ROUTES)): "referrals"}),
        Table("Per product", product_rows, ["referrals"], _matrix(product_rows, ["referrals"], by_product),
              row_totals=False, links={(len(product_rows), 0): "referrals"}),
        Table("Per WIJ team of the youth's postcode", team_rows, ["referrals"],
              _matrix(team_rows, ["referrals"], by_team), row_totals=False, links={(len(team_rows), 0): "referrals"}),
        Table("This month against the previous twelve", ["referrals"], [m.strftime("%Y-%m") for m in months],
              [[per_month[m] for m in months]], row_totals=False, column_totals=False,
              links={(0, len(months) - 1): "referrals"},
              note="Each month on its own: no total, so no month can be derived from the others."),
    ], plot="timeline")

    # 2. the contact promise: handovers to WIJ teams in the month
    facts = [f for f in contacts(data) if in_month(local_day(f.handed_over_at), month)]
    outcome = Counter()
    risk = Counter()
    bins = Counter()
    for fact in facts:
        team = names.get(fact.team, fact.team)
        within = within_promise(fact, calendar)
        kind = "within 5 working days" if within else "breached" if fact.breached else "later or still running"
        outcome[(team, kind)] += 1
        risk[(team, "at risk (1 day left)")] += fact.at_risk
        if within:
            bins[("contacts", day_bin(fact, calendar))] += 1
    kinds = ["within 5 working days", "breached", "later or still running"]
    teams = sorted({team for team, _ in outcome})
    contact_section = Section("The contact promise (5 working days from the handover to a WIJ team)", [
        Table("Handovers per team and outcome", teams, kinds, _matrix(teams, kinds, outcome),
              links={(len(teams), 0): "within", (len(teams), len(kinds)): "handovers"}),
        Table("Working days from handover to first contact, of the contacts within 5 working days", ["contacts"],
              DAY_BINS, _matrix(["contacts"], DAY_BINS, bins), column_totals=False,
              links={(0, len(DAY_BINS)): "within"}),
        Table("Clocks that came at risk, per team", teams, ["at risk (1 day left)"],
              _matrix(teams, ["at risk (1 day left)"], risk), row_totals=False),
    ], shares=[("Share within 5 working days", "Handovers per team and outcome", 0, -1)], plot="contact")

    # 3. re-referrals, declines, re-routes, stops
    earlier: dict[str, list[date]] = defaultdict(list)
    for r in data.referrals:
        earlier[r["pseudonym"]].append(r["referral_date"])
    re_referred = sum(1 for r in this_month if any(
        timedelta(0) < r["referral_date"] - d <= timedelta(days=RE_REFERRAL_DAYS) for d in earlier[r["pseudonym"]]))
    month_decisions = [d for d in data.decisions if in_month(local_day(d["decided_at"]), month)]
    def feedback_in_month(kind: str) -> int:
        return sum(1 for f in data.feedback if f["kind"] == kind and in_month(local_day(f["at"]), month))

    def warm(d: dict) -> bool:
        return "warm-handover" in (d["flags"] or "").split(",")

    movement = Counter({
        "re-referrals (the same youth within 12 months)": re_referred,
        "declines by a recipient": feedback_in_month("declined"),
        "re-routes after a decline": sum(1 for d in month_decisions if d["previous_id"] and not warm(d)
                                         and d["previous_id"] != d["recipient_id"]),
        "requests for specialist care by WIJ's triage": feedback_in_month("specialist-needed"),
        "re-routes after a provider stopped": sum(1 for d in month_decisions if d["rule"] == "provider-stopped"),
        "warm handovers": sum(1 for d in month_decisions if warm(d)),
        "cancellations by the referrer": sum(1 for st in data.statuses if st["status"] == "cancelled"
                                             and in_month(local_day(st["at"]), month)),
        "amendments delivered (later documents of a referral)": sum(
            1 for st in data.statuses if st["status"] == "amended" and in_month(local_day(st["at"]), month)),
        "provider-stopped alerts": sum(1 for a in data.alerts if a["kind"] == "provider-stopped"
                                       and in_month(local_day(a["at"]), month)),
    })
    movement_rows = list(movement)
    movement_section = Section("Re-referrals, declines and provider stops", [
        Table("In the month", movement_rows, ["count"], [[movement[row]] for row in movement_rows],
              row_totals=False, column_totals=False, note="Independent counts (one referral may appear in several)."),
    ])

    # 4. rejections and dead letters
    rejected = Counter()
    for s in data.statuses:
        if s["status"] == "rejected" and in_month(local_day(s["at"]), month):
            for code in (s["error_codes"] or "UNKNOWN").split(","):
                rejected[(code, s["channel"])] += 1
    codes = sorted({code for code, _ in rejected})
    quality = Section("Rejections (data quality per referrer) and dead letters", [
        Table("Rejection codes per channel (a rejection may carry several codes)", codes, CHANNELS,
              _matrix(codes, CHANNELS, rejected)),
        Table("Dead letters pending on the dead-letter topic (counted from its offsets)", ["dead letters"],
              ["pending"], [[data.dead_letters_pending or 0]], row_totals=False, column_totals=False,
              note="" if data.dead_letters_pending is not None else "Not observed yet."),
    ])

    # 5. indications
    _, end = month_range(month)
    horizon = end + relativedelta(months=3)
    indications = Counter()
    for f in data.feedback:
        if f["kind"] == "indication-started" and f["indication_end"] and end <= f["indication_end"] < horizon:
            indications[(f["product"] or "?", "ending in the coming 3 months")] += 1
        if f["kind"] == "evaluation-done" and in_month(local_day(f["at"]), month):
            indications[(f["product"] or "?", "evaluations done in the month")] += 1
    products = sorted({p for p, _ in indications})
    indication_columns = ["ending in the coming 3 months", "evaluations done in the month"]
    indication_section = Section("Indications", [
        Table(f"Per product (ending {end.isoformat()} up to {horizon.isoformat()})", products, indication_columns,
              _matrix(products, indication_columns, indications), row_totals=False),
    ])

    # 6. the GI stream
    gi = Counter((r["gi_measure"] or "none", _route(first[r["referral_id"]])) for r in this_month
                 if r["channel"] == "gi")
    gi_section = Section("The GI stream (certified institutions), per measure", [
        Table("GI referrals per measure and route", MEASURES, ROUTES, _matrix(MEASURES, ROUTES, gi),
              links={(len(MEASURES), len(ROUTES)): "gi"}),
    ])
    del referrals
    return [referrals_section, contact_section, movement_section, quality, indication_section, gi_section]
