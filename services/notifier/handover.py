"""The handover to a recipient: a FHIR R4 message Bundle (MessageHeader, Task, ServiceRequest, Patient).

Built as plain FHIR JSON: validating every message with fhir.resources cost more than a millisecond each, the
larger part of the hub's CPU per referral. The tests validate every kind of handover with fhir.resources (R4B
models, `handover_bundle`) and with an independent FHIR validator instead, so a recipient never receives a Bundle
its FHIR library would refuse. Shaped after the HL7 BSeR referral
message where it applies (event I12, Task code `fulfill` with a BSeR businessStatus); docs/fhir-bser.md
says where the hub differs and why.
"""

import json
import uuid
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from schemas.referral import AGB_SYSTEM, BSN_SYSTEM, CATEGORY_SYSTEM, PRODUCT_SYSTEM, Referral
from schemas.lifecycle import RoutedChange
from schemas.routing import RecipientKind, RoutingDecision

HUB_REFERRAL_ID_SYSTEM = "urn:verwijshub:referral-id"
HANDOVER_ID_SYSTEM = "urn:verwijshub:handover-id"
WIJ_TEAM_SYSTEM = "urn:verwijshub:wij-team"
ROUTING_RULE_SYSTEM = "urn:verwijshub:routing-rule"
REFERRAL_EVENT = {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "I12",
                  "display": "REF/RRI - Patient referral"}
"""BSeR's MessageHeader.eventCoding: the handover is a referral to its recipient."""
TASK_FULFILL = {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}
SERVICE_REQUEST_CREATED = {"coding": [{"system": "http://hl7.org/fhir/us/bser/CodeSystem/TaskBusinessStatusCS",
                                       "code": "2.0", "display": "Service Request Created"}]}
"""BSeR's Task.businessStatus of a new referral; the recipient's feedback moves it on (docs/fhir-bser.md)."""


def handover_id(decision: RoutingDecision) -> uuid.UUID:
    """The id of one handover message: new for every decision that hands the referral to someone (FHIR
    messaging wants a new Bundle id per message, also after a re-route), yet the same for the same decision.
    The notifier publishes a decision again when it stopped between publishing and storing its state; the
    recipient then sees the same Bundle and MessageHeader id and can drop the copy, as FHIR messaging
    expects of a resent message. So it derives from the decision (when, by which rule, to whom), never
    from the clock or a random number."""
    recipient = decision.recipient
    assert recipient is not None
    return uuid.uuid5(uuid.UUID(decision.referral_id), "|".join(
        ("handover", decision.decided_at.isoformat(), decision.rule, recipient.kind.value, recipient.id)))


def _ids(decision: RoutingDecision) -> dict[str, str]:
    """Ids of the Bundle and of each resource in it, all derived from the handover's id."""
    message = handover_id(decision)
    return {"bundle": str(message)} | {part: str(uuid.uuid5(message, part))
                                       for part in ("header", "task", "request", "patient")}


def routing_reason(decision: RoutingDecision) -> str:
    deciding = next(step for step in decision.trace if step.decided)
    flags = f" Flags: {', '.join(decision.flags)}." if decision.flags else ""
    return f"Routed by rule '{decision.rule}': {deciding.reason}.{flags}"


def warm_handover(decision: RoutingDecision) -> str:
    previous = decision.previous_recipient
    kind = "WIJ team" if previous.kind is RecipientKind.WIJ_TEAM else "provider (AGB)"
    return (f"Warm handover: this youth comes from {previous.name}, {kind} {previous.id}; get in touch with "
            "them about the care so far.")


def handover_bundle(decision: RoutingDecision, now: datetime) -> Bundle:
    """The handover as fhir.resources validates it (the tests' view of `handover_message`)."""
    return Bundle.model_validate(handover_message(decision, now))


def handover_bytes(decision: RoutingDecision, now: datetime) -> bytes:
    """The handover as its record's value: compact UTF-8 JSON (`ensure_ascii` would write a non-ASCII letter as six
    bytes, `\\u00eb`; the size limits count on at most four, docs/design.md "Record sizes")."""
    return json.dumps(handover_message(decision, now), separators=(",", ":"), ensure_ascii=False).encode()


def handover_message(decision: RoutingDecision, now: datetime) -> dict[str, Any]:
    """The message for the decision's recipient, as FHIR JSON. Each handover of a referral is a message of its own (ids
    from `handover_id`); what stays the same across re-routes is the hub referral id, in the identifiers
    of Task and ServiceRequest and in Task.groupIdentifier, which ties the handovers of one referral."""
    if decision.recipient is None:
        raise ValueError("a rejected referral has no handover")
    referral, recipient = decision.referral, decision.recipient
    ids = _ids(decision)
    urls = {part: f"urn:uuid:{value}" for part, value in ids.items()}
    referral_identifier = {"system": HUB_REFERRAL_ID_SYSTEM, "value": referral.referral_id}
    owner_system = WIJ_TEAM_SYSTEM if recipient.kind is RecipientKind.WIJ_TEAM else AGB_SYSTEM
    owner = {"identifier": {"system": owner_system, "value": recipient.id}, "display": recipient.name}
    requester = {"identifier": {"system": referral.referrer.identifier_system, "value": referral.referrer.identifier},
                 "display": referral.referrer.display or f"referrer type {referral.referrer.type.value}"}
    header = {
        "resourceType": "MessageHeader",
        "id": ids["header"],
        "eventCoding": REFERRAL_EVENT,
        "destination": [{"name": recipient.name, "endpoint": f"kafka:{recipient.topic}", "receiver": owner}],
        "sender": {"display": "Verwijshub"},
        "source": {"name": "Verwijshub", "endpoint": "urn:verwijshub"},
        "reason": {"coding": [{"system": ROUTING_RULE_SYSTEM, "code": decision.rule}]},
        "focus": [{"reference": urls["task"]}],
    }
    task = {
        "resourceType": "Task",
        "id": ids["task"],
        "identifier": [referral_identifier, {"system": HANDOVER_ID_SYSTEM, "value": ids["bundle"]}],
        "groupIdentifier": referral_identifier,
        "status": "requested",
        "businessStatus": SERVICE_REQUEST_CREATED,
        "intent": "order",
        "code": TASK_FULFILL,
        "focus": {"reference": urls["request"]},
        "for": {"reference": urls["patient"]},
        "authoredOn": now.isoformat(),
        "requester": requester,
        "owner": owner,
        "note": [{"text": routing_reason(decision)}] + ([{"text": warm_handover(decision)}]
                                                         if decision.previous_recipient else []),
    }
    bundle = {
        "resourceType": "Bundle",
        "id": ids["bundle"],
        "type": "message",
        "timestamp": now.isoformat(),
        "entry": [
            {"fullUrl": urls["header"], "resource": header},
            {"fullUrl": urls["task"], "resource": task},
            {"fullUrl": urls["request"], "resource": {"id": ids["request"],
                                                      **service_request(referral, urls["patient"], requester)}},
            {"fullUrl": urls["patient"], "resource": {"id": ids["patient"], **patient(referral)}},
        ],
    }
    return bundle


def service_request(referral: Referral, patient_url: str, requester: dict[str, Any]) -> dict[str, Any]:
    categories = [code for code, asked in (("specialist", referral.specialist_asked),
                                           ("continuation", referral.continuation)) if asked]
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {"system": HUB_REFERRAL_ID_SYSTEM, "value": referral.referral_id},
            {"system": f"urn:verwijshub:referrer-referral-id:{referral.channel.value}",
             "value": referral.referrer_referral_id},
        ],
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient_url},
        "authoredOn": referral.referral_date.isoformat(),
        "requester": requester,
    }
    if categories:
        request["category"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in categories]
    if referral.product:
        request["code"] = {"coding": [{"system": PRODUCT_SYSTEM, "code": referral.product}]}
    if referral.preferred_provider:
        request["performer"] = [{"identifier": {"system": AGB_SYSTEM, "value": referral.preferred_provider}}]
    notes = [text for text in (referral.free_text, referral.preference_notes) if text]
    if notes:
        request["note"] = [{"text": text} for text in notes]
    return request


def patient(referral: Referral) -> dict[str, Any]:
    youth = referral.youth
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": BSN_SYSTEM, "value": youth.bsn}],
        "birthDate": youth.birth_date.isoformat(),
        "address": [{"postalCode": youth.postcode}],
    }
    if youth.family_name or youth.given_name:
        name: dict[str, Any] = {}
        if youth.family_name:
            name["family"] = youth.family_name
        if youth.given_name:
            name["given"] = youth.given_name.split()
        resource["name"] = [name]
    return resource


# -- amendments --------------------------------------------------------------------------------------
AMENDMENT_EVENT = {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "I13",
                   "display": "REF/RRI - Modify patient referral"}
"""The event of an amendment: v2's "modify patient referral", as I12 is the referral itself."""
AMENDMENT_SCHEMA = "verwijshub.Amendment/1"


def amendment_message(routed: RoutedChange, now: datetime) -> dict[str, Any]:
    """An amendment for the recipient holding the referral, as a FHIR R4 message Bundle: a MessageHeader (event
    I13) focused on a Communication whose payload is the new document's text, `basedOn` the referral's Task and
    `about` its ServiceRequest, both by the hub referral id their handover carries as identifier (the same Task,
    whichever handover created it). Ids derive from the change (the same change published again: the same ids)."""
    change, recipient = routed.change, routed.recipient
    assert recipient is not None and change.referral is not None
    message = uuid.uuid5(uuid.UUID(change.referral_id), "|".join(("amendment", change.at.isoformat(),
                                                                   change.document or "")))
    ids = {"bundle": str(message)} | {part: str(uuid.uuid5(message, part)) for part in ("header", "communication")}
    referral_identifier = {"system": HUB_REFERRAL_ID_SYSTEM, "value": change.referral_id}
    owner_system = WIJ_TEAM_SYSTEM if recipient.kind is RecipientKind.WIJ_TEAM else AGB_SYSTEM
    owner = {"identifier": {"system": owner_system, "value": recipient.id}, "display": recipient.name}
    referrer = change.referral.referrer
    text = change.text or "The referrer sent a new version of the referral without free text."
    communication: dict[str, Any] = {
        "resourceType": "Communication", "id": ids["communication"],
        "identifier": [{"system": HANDOVER_ID_SYSTEM, "value": ids["bundle"]}],
        "basedOn": [{"type": "Task", "identifier": referral_identifier}],
        "about": [{"type": "ServiceRequest", "identifier": referral_identifier}],
        "status": "completed",
        "category": [{"coding": [{"system": "urn:verwijshub:amendment", "code": change.document or "amendment"}]}],
        "sent": now.isoformat(),
        "recipient": [owner],
        "sender": {"identifier": {"system": referrer.identifier_system, "value": referrer.identifier},
                   "display": referrer.display or f"referrer type {referrer.type.value}"},
        "payload": [{"contentString": text}],
    }
    header = {
        "resourceType": "MessageHeader", "id": ids["header"], "eventCoding": AMENDMENT_EVENT,
        "destination": [{"name": recipient.name, "endpoint": f"kafka:{recipient.topic}", "receiver": owner}],
        "sender": {"display": "Verwijshub"}, "source": {"name": "Verwijshub", "endpoint": "urn:verwijshub"},
        "focus": [{"reference": f"urn:uuid:{ids['communication']}"}],
    }
    return {"resourceType": "Bundle", "id": ids["bundle"], "type": "message", "timestamp": now.isoformat(),
            "entry": [{"fullUrl": f"urn:uuid:{ids['header']}", "resource": header},
                      {"fullUrl": f"urn:uuid:{ids['communication']}", "resource": communication}]}


def amendment_bytes(routed: RoutedChange, now: datetime) -> bytes:
    return json.dumps(amendment_message(routed, now), separators=(",", ":"), ensure_ascii=False).encode()
