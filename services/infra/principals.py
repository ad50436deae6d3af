"""Principal names: who connects to Kafka. One place, so the ACL matrix, the clients and the docs agree.

Every client connects as its own principal: one per hub service, one for operations, one admin (the only
super user), one per referrer organisation (`referrers.json`), one per recipient. A referrer's or recipient's consumer groups must
start with its principal's name and a dot (`wij-centrum.epd`).
"""

ADMIN = "verwijshub-admin"
OPERATIONS = "verwijshub-ops"
GATEWAY = "verwijshub-gateway"
"""The referrer gateway (HTTPS and MLLP): writes what referrers hand it over HTTP or MLLP, reads their statuses."""
RECIPIENTS = "verwijshub-recipients"
"""The recipient API (HTTPS, FHIR): reads the handover topics, writes the feedback topics for the recipients it
authenticated, and its own state."""
ANALYTICS = "verwijshub-analytics"
"""The analytics sink: reads decisions, statuses, feedback and alerts; describes the dead-letter topic."""


def service(name: str) -> str:
    """intake, routing, notifier: the same name as the service's consumer group."""
    return f"verwijshub-{name}"


def referrer(organisation_id: str) -> str:
    """A referrer organisation of the registry: it writes its own inbound topic, `referrals.<channel>.<id>.v1`."""
    return f"referrer-{organisation_id}"


def wij_team(team_id: str) -> str:
    return f"wij-{team_id}"


def provider(agb: str) -> str:
    return f"provider-{agb}"
