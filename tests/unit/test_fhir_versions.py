"""The GP channel in FHIR STU3 and R4: which version a Bundle is read in, what is validated in it, and the STU3
ReferralRequest read as R4's ServiceRequest (services/intake/fhir_versions.py, gp_requests.py)."""

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.referral import FhirVersion, Referral
from services.infra.settings import REPO_ROOT
from services.intake.fhir_versions import detect_version
from services.intake.gp import parse_gp
from services.intake.outcome import Rejection
from services.intake.repeats import referral_digest
from tests.referrals import gp_bundle

GP = REPO_ROOT / "schemas" / "examples" / "gp"
PRODUCTS = frozenset({"45A51", "54B01"})
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
TWINS = [("stu3-message-basis-jeugdhulp.json", "valid-basis-jeugdhulp.json"),
         ("zorgdomein-stu3-stylesheet.json", "zorgdomein-document-basis-jeugdhulp.json"),
         ("zorgdomein-stu3-referralrequest-coverage.json", "zorgdomein-r4-servicerequest-coverage.json")]
"""Each STU3 example and its R4 twin: the same referral, written in the other version."""
STYLESHEET = {"fullUrl": "urn:uuid:5b1f0000-0000-4000-8000-00000000c55a",
              "resource": {"resourceType": "Binary", "contentType": "text/css", "content": "Ym9keSB7fQ=="}}


def example(name: str) -> dict[str, Any]:
    return json.loads((GP / name).read_text())


def parse(document: dict[str, Any]):
    return parse_gp(json.dumps(document).encode(), known_products=PRODUCTS, pseudonym_key="k", received_at=NOW)


def accepted(document: dict[str, Any]) -> Referral:
    outcome = parse(document)
    assert isinstance(outcome, Referral), outcome
    return outcome


def errors(document: dict[str, Any]) -> list[tuple[ErrorCode, str]]:
    outcome = parse(document)
    assert isinstance(outcome, Rejection), outcome
    return [(error.code, error.location) for error in outcome.errors]


def stu3_message(**request: Any) -> dict[str, Any]:
    """The STU3 message example with its ReferralRequest's elements replaced (None: removed)."""
    document = example("stu3-message-basis-jeugdhulp.json")
    resource = document["entry"][1]["resource"]
    for element, value in request.items():
        resource.pop(element, None) if value is None else resource.__setitem__(element, value)
    return document


@pytest.mark.parametrize(("stu3", "r4"), TWINS)
def test_each_example_is_read_in_its_version(stu3: str, r4: str) -> None:
    assert detect_version(example(stu3)) is FhirVersion.STU3 and accepted(example(stu3)).fhir_version == "3.0"
    assert detect_version(example(r4)) is FhirVersion.R4 and accepted(example(r4)).fhir_version == "4.0"


@pytest.mark.parametrize(("stu3", "r4"), TWINS)
def test_an_stu3_referral_is_the_same_referral_as_its_r4_twin(stu3: str, r4: str) -> None:
    """Everything the hub reads, checks and hands over is alike: the ids, youth, referrer, product, flags and free
    text; and one is a repeat of the other, not a conflict (the version is not in the digest)."""
    from_stu3, from_r4 = accepted(example(stu3)), accepted(example(r4))
    assert from_stu3.model_dump(exclude={"fhir_version"}) == from_r4.model_dump(exclude={"fhir_version"})
    assert from_stu3.fhir_version != from_r4.fhir_version
    assert referral_digest(from_stu3) == referral_digest(from_r4)


def test_the_stu3_referral_request_maps_field_by_field() -> None:
    referral = accepted(example("zorgdomein-stu3-referralrequest-coverage.json"))
    assert (referral.referrer_referral_id, referral.referrer.identifier) == ("ZD987654321", "01054321")
    assert referral.product == "54B01"  # ReferralRequest.serviceRequested
    assert referral.specialist_asked and not referral.continuation  # ReferralRequest.type
    assert referral.preferred_provider == "98000033"  # ReferralRequest.recipient
    assert referral.free_text.splitlines()[:3] == [  # reasonCode, description, note, then the sections
        "Angstklachten en dwanghandelingen, toenemend sinds een half jaar.",
        "Graag beoordeling door een kinder- en jeugdpsychiater.", "Ouders vragen een afspraak na schooltijd."]
    message = accepted(stu3_message(authoredOn="2026-03-10", type={"coding": [
        {"system": "urn:verwijshub:referral-category", "code": "continuation"}]}))
    assert message.referral_date.isoformat() == "2026-03-10" and message.continuation  # authoredOn
    assert message.referrer_referral_id == "ZD-2026-000123"  # ReferralRequest.identifier


@pytest.mark.parametrize(("request_changes", "expected"), [
    ({"serviceRequested": [{"coding": [{"system": "urn:ijw:productcode", "code": "99X99"}]}]},
     (ErrorCode.PRODUCT_UNKNOWN, "ReferralRequest.serviceRequested.coding")),
    ({"recipient": [{"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/agb-z", "value": "12"}}]},
     (ErrorCode.AGB_INVALID, "ReferralRequest.recipient.identifier")),
    ({"identifier": None}, (ErrorCode.SCHEMA_INVALID, "ReferralRequest.identifier")),
    ({"authoredOn": "2026-02-30"}, (ErrorCode.DATE_INVALID, "Bundle.entry[1].resource.authoredOn")),
    ({"intent": None}, (ErrorCode.SCHEMA_INVALID, "Bundle.entry[1].resource.intent")),  # 1..1 in STU3
])
def test_an_stu3_error_names_the_element_the_sender_wrote(request_changes: dict[str, Any], expected) -> None:
    assert errors(stu3_message(**request_changes)) == [expected]


def test_the_shape_decides_before_a_profile_and_a_neutral_bundle_is_read_as_r4() -> None:
    neutral = example("zorgdomein-document-basis-jeugdhulp.json")
    del neutral["timestamp"]  # the one element of it that only R4 knows
    assert detect_version(neutral) is FhirVersion.STU3  # ZorgDomein's zd-document profile is STU3's
    del neutral["meta"]
    assert detect_version(neutral) is FhirVersion.R4  # alike in both: the hub's own version
    assert detect_version({**neutral, "entry": [*neutral["entry"], STYLESHEET]}) is FhirVersion.STU3
    claimed_but_r4 = example("zorgdomein-r4-servicerequest-coverage.json")
    assert claimed_but_r4["meta"]["profile"][0].startswith("http://zorgdomein.nl/")
    assert detect_version(claimed_but_r4) is FhirVersion.R4


def test_an_element_the_hub_does_not_read_never_rejects_a_referral() -> None:
    """An STU3 stylesheet in an R4 message, a Coverage neither version can read, a resource type of no version:
    the referral is read from the rest, in the version of what the hub reads."""
    bundle = gp_bundle()
    bundle["entry"] += [STYLESHEET, {"resource": {"resourceType": "Coverage", "grouping": 7, "class": "x",
                                                  "payor": "nobody"}},
                        {"resource": {"resourceType": "ZorgDomeinAttachment", "anything": ["at all"]}}]
    referral = accepted(bundle)
    assert referral.fhir_version == "4.0" and referral == accepted(gp_bundle()).model_copy(
        update={"received_at": referral.received_at})


@pytest.mark.parametrize("resource_type", [None, ["Binary"], 7])
def test_every_entry_must_still_be_a_resource(resource_type: Any) -> None:
    """Found by the fuzz test: a list as resourceType once raised TypeError in the detection."""
    bundle = gp_bundle()
    resource = {"contentType": "text/css"} if resource_type is None else {"resourceType": resource_type}
    bundle["entry"].append({"fullUrl": "urn:uuid:1", "resource": resource})
    assert errors(bundle) == [(ErrorCode.SCHEMA_INVALID, "Bundle.entry[4].resource")]


def test_what_the_hub_reads_follows_the_rules_of_its_version() -> None:
    header = stu3_message()
    del header["entry"][0]["resource"]["event"]  # STU3's MessageHeader.event is 1..1
    assert errors(header) == [(ErrorCode.SCHEMA_INVALID, "Bundle.entry[0].resource.event")]
    patient = stu3_message()
    patient["entry"][2]["resource"]["birthDate"] = "2012-02-30"
    assert errors(patient) == [(ErrorCode.DATE_INVALID, "Bundle.entry[2].resource.birthDate")]


def test_a_request_of_the_other_version_is_refused_never_dropped() -> None:
    """A ServiceRequest in an STU3 message, a ReferralRequest in an R4 message: read as nothing, the product or
    the whole referral would vanish; each is a coded rejection naming the resource."""
    stu3 = stu3_message()
    service_request = copy.deepcopy(gp_bundle()["entry"][1])
    stu3["entry"].append(service_request)
    assert (ErrorCode.SCHEMA_INVALID, "Bundle.entry[4].resource.resourceType") in errors(stu3)
    r4 = gp_bundle()
    r4["entry"][1] = stu3_message()["entry"][1]
    found = errors(r4)
    assert (ErrorCode.SCHEMA_INVALID, "Bundle.entry[1].resource.resourceType") in found
    assert {code for code, _ in found} == {ErrorCode.SCHEMA_INVALID}
    assert parse(r4).referrer_referral_id == "ZD-2026-000123"  # read leniently, so the GP can be told


def test_the_fhir_version_leaves_the_digest_as_it_was() -> None:
    """Digests recorded before the field existed stay valid: a referral's digest is that of the same referral
    without a version."""
    referral = accepted(example("stu3-message-basis-jeugdhulp.json"))
    assert referral_digest(referral) == referral_digest(referral.model_copy(update={"fhir_version": None}))
