"""The hub's Prometheus metrics, one place for all services (prometheus-client's default registry).

Labels carry channels, error codes, rules, recipient kinds, recipients (principal names of teams and
providers), services, groups and topics: never a BSN, a pseudonym, a name or a postcode.
`serve_metrics` exposes them with `/healthz` and `/readyz`.
"""

from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.infra.http import serve

MESSAGES_CONSUMED = Counter("verwijshub_messages_consumed_total", "Records a service consumed.",
                            ["service", "topic"])
REFERRALS_ACCEPTED = Counter("verwijshub_referrals_accepted_total", "Referrals intake accepted.", ["channel"])
REFERRALS_REJECTED = Counter("verwijshub_referrals_rejected_total",
                             "Referrals rejected, by error code (intake's validation and routing's rule 1).",
                             ["channel", "code"])
DECISIONS = Counter("verwijshub_decisions_total", "Routing decisions, by deciding rule and recipient kind.",
                    ["rule", "recipient_kind"])
HANDOVERS = Counter("verwijshub_handovers_total", "Handover Bundles the notifier published.", ["recipient_kind"])
CONTACT_CLOCKS = Gauge("verwijshub_contact_clocks", "Contact clocks of the handovers this notifier owns: "
                       "open (running), at_risk (one working day left sent), breached.", ["state"])
SLA_BREACHES = Counter("verwijshub_sla_breaches_total", "Contact promises breached (5 working days passed).")
DEAD_LETTERS = Counter("verwijshub_dead_letters_total", "Records put on the dead-letter topic, by the topic they "
                       "came from and their first error code.", ["topic", "code"])
HANDLER_SECONDS = Histogram("verwijshub_handler_seconds", "Time to handle one consumed record.", ["service"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CONSUMER_LAG = Gauge("verwijshub_consumer_lag", "Records not yet consumed by a consumer group.",
                     ["group", "topic", "partition"])
CONSUMER_LAG_SECONDS = Gauge("verwijshub_consumer_lag_seconds", "Age of the oldest record a group has not consumed.",
                             ["group", "topic", "partition"])
RECIPIENT_UNREAD = Gauge("verwijshub_recipient_unread", "Records on a recipient's handover topic that none of its "
                         "consumer groups has committed past (with no group: all).", ["recipient"])
RECIPIENT_READERS = Gauge("verwijshub_recipient_readers", "A recipient's consumer groups that have committed on its "
                          "handover topic (0: nobody reads it).", ["recipient"])
RECIPIENT_OLDEST_UNREAD_SECONDS = Gauge("verwijshub_recipient_oldest_unread_seconds",
                                        "Age of a recipient's oldest unread handover (0: none).", ["recipient"])
RECIPIENT_OLDEST_UNREAD_WORKING_DAYS = Gauge("verwijshub_recipient_oldest_unread_working_days",
                                             "Age of a recipient's oldest unread handover in working days (0: none).",
                                             ["recipient"])
RECIPIENT_RETENTION_SECONDS = Gauge("verwijshub_recipient_retention_seconds", "Retention of a recipient's handover "
                                    "topic: the broker deletes a record this old, read or not (-1: kept forever).",
                                    ["recipient"])
RECIPIENT_AT_RISK_OF_LOSS = Gauge("verwijshub_recipient_at_risk_of_loss", "1 when a recipient's oldest unread "
                                  "handover is older than half its topic's retention (AT RISK OF LOSS), else 0.",
                                  ["recipient"])
RECIPIENT_CONTACT_CLOCKS = Gauge("verwijshub_recipient_contact_clocks", "A recipient's contact clocks, as the "
                                 "notifiers publish them: open, at_risk, breached.", ["recipient", "state"])
DEAD_LETTERS_PENDING = Gauge("verwijshub_dead_letters_pending", "Dead letters not replayed, by channel and error "
                             "code, as the admin's `dlq` commands last summarised them (ops.deadletters.v1).",
                             ["channel", "code"])
DEAD_LETTERS_OLDEST_PENDING_SECONDS = Gauge("verwijshub_dead_letters_oldest_pending_seconds",
                                            "Age of the oldest pending dead letter (0: none).")
DEAD_LETTERS_PENDING_LIMIT_SECONDS = Gauge("verwijshub_dead_letters_pending_limit_seconds",
                                           "How long a dead letter may wait (VERWIJSHUB_DLQ_PENDING_ALERT_HOURS).")
DEAD_LETTERS_SUMMARY_AGE_SECONDS = Gauge("verwijshub_dead_letters_summary_age_seconds",
                                         "Age of that summary: it is refreshed only when an admin runs `dlq list`, "
                                         "`dlq replay` or `registry publish`.")
GROUP_STATUS = Gauge("verwijshub_consumer_group_status", "Lag status of a group: 0 OK, 1 WARN, 2 ERR.", ["group"])


def metrics_response() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest()


def serve_metrics(host: str, port: int, ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """/metrics, /healthz (the process answers) and /readyz (the services are started) on host:port."""
    return serve(host, port, {
        "/metrics": metrics_response,
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": lambda: (200, "text/plain", b"ready\n") if ready() else (503, "text/plain", b"starting\n"),
    })
