"""The handover Bundle: valid FHIR, the four resources, routing reason and recipient in the Task."""

from datetime import UTC, datetime

from fhir.resources.R4B.bundle import Bundle

from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.gp import parse_gp
from services.notifier.handover import handover_bundle
from services.routing.policy import decide
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
