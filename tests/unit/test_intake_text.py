"""Names and free text read one way on every channel (trimmed, blank absent), up to the handover's Patient.name;
and the pathological inputs of issue 10, refused with a code on every channel."""

import copy
import json
from datetime import UTC, datetime

import pytest

from schemas.referral import Channel, Referral
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.adapters import PARSERS, read_referral
from services.intake.outcome import Rejection
from services.intake.reading import clean_text
from services.notifier.handover import handover_bundle
from services.routing.policy import decide
from tests.referrals import gp_bundle

EXAMPLES = REPO_ROOT / "schemas" / "examples"
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)


def read(channel: Channel, raw: bytes):
    return PARSERS[channel](raw, known_products=frozenset(REGISTRY.products), pseudonym_key="k", received_at=NOW)


def document(channel: Channel, given: str, family: str, note: str) -> bytes:
    """The channel's valid example with the youth's names and the free text replaced."""
    if channel is Channel.SPECIALIST:
        hl7 = (EXAMPLES / "specialist" / "valid-product.hl7").read_text()
        hl7 = hl7.replace("de Vries^Sanne", f"{family}^{given}")
        return hl7.replace("Angstklachten na ziekenhuisopname; kinderpsychiater adviseert begeleiding.", note).encode()
    if channel is Channel.GP:
        bundle = gp_bundle()
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        request = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
        patient["name"] = [{"family": family, "given": [given]}]
        request["note"] = [{"text": note}]
        request.pop("reasonCode", None)
        return json.dumps(bundle).encode()
    example = json.loads(next((EXAMPLES / channel.value).glob("valid-*.json")).read_text())
    changed = copy.deepcopy(example)
    changed["youth"].update(given_name=given, family_name=family)
    changed["free_text"] = note
    return json.dumps(changed).encode()


@pytest.mark.parametrize("channel", list(Channel))
def test_names_and_free_text_are_trimmed_on_every_channel_up_to_the_handover(channel):
    referral = read(channel, document(channel, "  Sanne ", " de Vries  ", "  Angst na opname.  "))
    assert isinstance(referral, Referral), referral
    youth = referral.youth
    assert (youth.given_name, youth.family_name, referral.free_text) == ("Sanne", "de Vries", "Angst na opname.")
    patient = handover_bundle(decide(referral, REGISTRY, NOW), NOW).entry[3].resource
    assert patient.name[0].family == "de Vries" and patient.name[0].given == ["Sanne"]


@pytest.mark.parametrize("channel", list(Channel))
def test_blank_names_and_free_text_are_absent_on_every_channel(channel):
    referral = read(channel, document(channel, "   ", " \t ", "  "))
    assert isinstance(referral, Referral), referral
    assert (referral.youth.given_name, referral.youth.family_name, referral.free_text) == (None, None, None)
    assert handover_bundle(decide(referral, REGISTRY, NOW), NOW).entry[3].resource.name is None


@pytest.mark.parametrize(("value", "expected"), [
    (" de Vries ", "de Vries"), ("\tJan\n", "Jan"), ("", None), ("  ", None), (None, None), (42, None),
])
def test_clean_text(value, expected):
    assert clean_text(value) == expected


HL7_HEAD = b"MSH|^~\\&|HIS|UMCG|VERWIJSHUB|GRONINGEN|20260312091400||REF^I12^REF_I12|MSG-1|P|2.5\r"
PATHOLOGICAL = {
    "deep nesting": b"[" * 100_000,
    "deep nesting in a document": b'{"youth": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    "a number of 5000 digits": b'{"referral_id": ' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"referral_id": "\xff\xfe"}',
    "a lone surrogate": b'{"referral_id": "\\ud800"}',
    "an escaped NUL": b'{"referral_id": "a\\u0000b"}',
    "a NUL byte": b'{"referral_id": "a\x00b"}',
    "NaN": b'{"referral_id": NaN}',
    "HL7 field repeated 200,000 times": HL7_HEAD + b"PID|1||" + b"999911120^^^NLMINBIZA^NNNLD~" * 30_000,
    "HL7 with a NUL byte": HL7_HEAD + b"PID|1||\x00",
    "HL7 with an encoded surrogate": HL7_HEAD + "PID|1||\ud800".encode("utf-8", "surrogatepass"),
}


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_pathological_inputs_are_refused_with_a_code_on_every_channel(channel, name):
    outcome = read(channel, PATHOLOGICAL[name])
    assert isinstance(outcome, Rejection) and outcome.errors and outcome.failure is None


def test_an_adapter_that_raises_gives_unparseable_and_names_the_exception(monkeypatch):
    def broken(raw, **options):
        raise RecursionError("deep")

    monkeypatch.setitem(PARSERS, Channel.GP, broken)
    outcome = read_referral(Channel.GP, b"{}", known_products=frozenset(), pseudonym_key="k", received_at=NOW,
                            max_bytes=1024)
    assert [e.code.value for e in outcome.errors] == ["UNPARSEABLE"] and outcome.failure == "RecursionError"
