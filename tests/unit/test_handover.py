import json

"""The handover Bundle: valid FHIR, the four resources, routing reason and recipient in the Task, one message per
handover."""

from datetime import UTC, date, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from schemas.indications import Indication
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.gp import parse_gp
from services.notifier.handover import HUB_REFERRAL_ID_SYSTEM, handover_bundle, handover_message
from services.routing.policy import decide, redecide_after_decline, reroute_after_stop
from tests.referrals import gp_bytes

NOW = datetime(2026, 3, 12, tzinfo=UTC)


def test_handover_bundle_is_valid_fhir_with_task_for_the_recipient():
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    referral = parse_gp(gp_bytes(product="45A51", categories=["specialist"]), received_at=NOW,
                        known_products=frozenset(registry.products), pseudonym_key="k")
    decision = decide(referral, registry, NOW)
    bundle = handover_bundle(decision, NOW)
    again = Bundle.model_validate_json(bundle.model_dump_json())
    header, task, request, patient = (entry.resource for entry in again.entry)
    assert header.get_resource_type() == "MessageHeader" and header.focus[0].reference == again.entry[1].fullUrl
    assert task.status == "requested" and task.owner.identifier.value == "centrum"
    assert task.focus.reference == again.entry[2].fullUrl and task.for_fhir.reference == again.entry[3].fullUrl
    assert decision.rule == "specialist-asked"
    assert "'specialist-asked'" in task.note[0].text and "behavioural-scientist" in task.note[0].text
    assert request.code.coding[0].code == "45A51" and request.category[0].coding[0].code == "specialist"
    assert patient.identifier[0].value == "999911120"
    assert handover_bundle(decide(referral, registry, NOW), NOW).entry[1].fullUrl == again.entry[1].fullUrl


# -- every kind of handover: valid FHIR, a message of its own, the referral's identity in its identifiers --
LATER = datetime(2026, 3, 19, 9, tzinfo=UTC)


def referral(**changes):
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    return registry, parse_gp(gp_bytes(**changes), received_at=NOW, known_products=frozenset(registry.products),
                              pseudonym_key="k")


def wij_team():
    registry, gp = referral()
    return decide(gp, registry, NOW)


def provider():
    registry, gp = referral(product="54B01")
    return decide(gp, registry, NOW)


def preferred_provider():
    registry, gp = referral(product="54B01", performer_agb="98000033")
    return decide(gp, registry, NOW)


def running_indication():
    registry, gp = referral(product="54B01")
    running = Indication(pseudonym=gp.youth.pseudonym, product="54B01", provider_agb="98000101",
                         start=date(2025, 9, 1), end=date(2026, 8, 31))
    return decide(gp, registry, NOW, indications=[running])


def after_decline():
    registry, _ = referral()
    first = provider()
    return redecide_after_decline(first, registry, LATER, "no capacity", excluded={first.recipient.id})


def after_provider_stop():
    registry, _ = referral()
    first = provider()
    stopped = registry.providers[first.recipient.id].model_copy(update={"stopped_on": date(2026, 3, 18)})
    return reroute_after_stop(first.referral, stopped, registry, LATER, "the open handover")


KINDS = {"wij-team": (wij_team, "basis-jeugdhulp"), "provider": (provider, "product-not-in-bjh"),
         "preferred-provider": (preferred_provider, "product-not-in-bjh"),
         "running-indication": (running_indication, "running-indication"),
         "after-decline": (after_decline, "product-not-in-bjh"), "after-provider-stop": (after_provider_stop,
                                                                                           "provider-stopped")}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_handover_is_a_valid_fhir_message(kind):
    make, rule = KINDS[kind]
    decision = make()
    assert decision.rule == rule
    if kind == "preferred-provider":
        assert decision.recipient.id == "98000033"
    if kind == "running-indication":
        assert decision.recipient.id == "98000101"
    wire = json.dumps(handover_message(decision, LATER), separators=(",", ":"))  # the bytes the notifier sends
    bundle = Bundle.model_validate_json(wire)
    assert json.loads(bundle.model_dump_json(exclude_none=True)).keys() == json.loads(wire).keys()
    header, task, request, patient = (entry.resource for entry in bundle.entry)
    assert bundle.type == "message" and bundle.id and header.id
    assert [e.fullUrl for e in bundle.entry] == [f"urn:uuid:{r.id}" for r in (header, task, request, patient)]
    assert (header.eventCoding.system, header.eventCoding.code) == ("http://terminology.hl7.org/CodeSystem/v2-0003",
                                                                   "I12")
    assert header.reason.coding[0].code == rule
    assert header.destination[0].receiver.identifier.value == decision.recipient.id
    assert header.focus[0].reference == bundle.entry[1].fullUrl
    referral_id = {"system": HUB_REFERRAL_ID_SYSTEM, "value": decision.referral_id}
    assert referral_id in [i.model_dump(exclude_none=True) for i in task.identifier]
    assert referral_id in [i.model_dump(exclude_none=True) for i in request.identifier]
    assert task.groupIdentifier.model_dump(exclude_none=True) == referral_id
    assert task.code.coding[0].code == "fulfill" and task.businessStatus.coding[0].code == "2.0"
    assert task.owner.identifier.value == decision.recipient.id
    assert (len(task.note) == 2) == (decision.previous_recipient is not None)
    assert patient.identifier[0].value == "999911120"


def message_ids(bundle: Bundle) -> set[str]:
    return {bundle.id, *(entry.resource.id for entry in bundle.entry), *(entry.fullUrl for entry in bundle.entry)}


@pytest.mark.parametrize("reroute", [after_decline, after_provider_stop])
def test_a_reroute_is_a_new_message_with_new_ids_for_the_same_referral(reroute):
    first, again = provider(), reroute()
    before, after = handover_bundle(first, NOW), handover_bundle(again, LATER)
    assert first.referral_id == again.referral_id
    assert not message_ids(before) & message_ids(after)
    assert before.entry[1].resource.groupIdentifier == after.entry[1].resource.groupIdentifier


def test_the_same_decision_published_again_is_the_same_message():
    """Exactly once at the recipient: a re-published decision carries the ids it had the first time."""
    decision = after_decline()
    assert message_ids(handover_bundle(decision, LATER)) == message_ids(handover_bundle(decision, LATER + timedelta(1)))
