"""The handover to a recipient: a FHIR R4 message Bundle (MessageHeader, Task, ServiceRequest, Patient).

Built as plain FHIR JSON and validated with fhir.resources (R4B models) before it leaves the hub, so a
recipient never receives a Bundle its FHIR library would refuse.
"""

import uuid
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from schemas.referral import AGB_SYSTEM, BSN_SYSTEM, Referral
from schemas.routing import RecipientKind, RoutingDecision
from services.intake.gp import CATEGORY_SYSTEM, PRODUCT_SYSTEM

HUB_REFERRAL_ID_SYSTEM = "urn:verwijshub:referral-id"
WIJ_TEAM_SYSTEM = "urn:verwijshub:wij-team"
EVENT_SYSTEM = "urn:verwijshub:event"


def _urn(referral_id: str, part: str) -> str:
    """Stable fullUrls: the same decision always yields the same Bundle."""
    return f"urn:uuid:{uuid.uuid5(uuid.UUID(referral_id), part)}"


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
    if decision.recipient is None:
        raise ValueError("a rejected referral has no handover")
    referral, recipient = decision.referral, decision.recipient
    urls = {part: _urn(referral.referral_id, part) for part in ("bundle", "header", "task", "request", "patient")}
    owner_system = WIJ_TEAM_SYSTEM if recipient.kind is RecipientKind.WIJ_TEAM else AGB_SYSTEM
    owner = {"identifier": {"system": owner_system, "value": recipient.id}, "display": recipient.name}
    requester = {"identifier": {"system": referral.referrer.identifier_system, "value": referral.referrer.identifier},
                 "display": referral.referrer.display or f"referrer type {referral.referrer.type.value}"}
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": EVENT_SYSTEM, "code": "handover"},
        "destination": [{"name": recipient.name, "endpoint": f"kafka:{recipient.topic}"}],
        "source": {"name": "Verwijshub", "endpoint": "urn:verwijshub"},
        "focus": [{"reference": urls["task"]}],
    }
    task = {
        "resourceType": "Task",
        "identifier": [{"system": HUB_REFERRAL_ID_SYSTEM, "value": referral.referral_id}],
        "status": "requested",
        "intent": "order",
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
        "id": str(uuid.UUID(urls["bundle"][9:])),
        "type": "message",
        "timestamp": now.isoformat(),
        "entry": [
            {"fullUrl": urls["header"], "resource": header},
            {"fullUrl": urls["task"], "resource": task},
            {"fullUrl": urls["request"], "resource": service_request(referral, urls["patient"], requester)},
            {"fullUrl": urls["patient"], "resource": patient(referral)},
        ],
    }
    return Bundle.model_validate(bundle)


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
