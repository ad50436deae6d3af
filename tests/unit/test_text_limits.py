"""Every text a referrer fills has a limit (issue 19): over it, the referral is refused with TOO_LONG at the field,
on every channel, never cut; at it, everything the hub writes about the referral fits its topic."""

import json
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import MAX_FREE_TEXT_CHARS, MAX_ID_CHARS, MAX_NAME_CHARS, TEXT_LIMITS, Channel, Referral
from services.gateway.answers import http_status, operation_outcome
from services.infra.kafka import OUTBOUND_RECORD_BYTES
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.adapters import read_referral
from services.intake.outcome import Rejection
from services.notifier.handover import handover_bytes
from services.routing.policy import decide
from tests.referrals import channel_bytes, gp_bundle, gp_bytes

REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
NTE = "Angstklachten na ziekenhuisopname; kinderpsychiater adviseert begeleiding."
FREE_TEXT_AT = {Channel.GP: "ServiceRequest.note", Channel.SPECIALIST: "NTE-3", Channel.GI: "/free_text",
                Channel.GGD: "/free_text", Channel.COURT: "/free_text"}


def read(channel: Channel, raw: bytes):
    return read_referral(channel, raw, known_products=frozenset(REGISTRY.products), pseudonym_key="k",
                         received_at=NOW, max_bytes=1024 * 1024)


def with_free_text(channel: Channel, text: str, referral_id: str = "REF-LIMITS-1") -> bytes:
    if channel is Channel.GP:
        return json.dumps(gp_bundle(referral_id=referral_id, note=text), ensure_ascii=False).encode()
    raw = channel_bytes(channel.value, referral_id).decode()
    if channel is Channel.SPECIALIST:
        assert NTE in raw
        return raw.replace(NTE, text).encode()
    document = json.loads(raw)
    document["free_text"] = text
    return json.dumps(document).encode()


@pytest.mark.parametrize("channel", list(Channel))
def test_free_text_at_its_limit_is_accepted_and_one_more_is_refused_at_the_field(channel: Channel) -> None:
    baseline = read(channel, with_free_text(channel, "x"))
    assert isinstance(baseline, Referral) and baseline.free_text
    room = MAX_FREE_TEXT_CHARS - (len(baseline.free_text) - 1)  # the GP's reason joins the note in the free text
    at_limit = read(channel, with_free_text(channel, "x" * room))
    assert isinstance(at_limit, Referral) and len(at_limit.free_text or "") == MAX_FREE_TEXT_CHARS
    refused = read(channel, with_free_text(channel, "x" * (room + 1)))
    assert isinstance(refused, Rejection)
    assert [(e.code, e.location) for e in refused.errors] == [(ErrorCode.TOO_LONG, FREE_TEXT_AT[channel])]
    assert refused.errors[0].message == f"This field holds at most {MAX_FREE_TEXT_CHARS} characters."
    assert refused.referrer_referral_id == "REF-LIMITS-1"  # so the referrer is told


def test_the_measured_specialist_message_700_kb_of_quotes_is_refused_too_long() -> None:
    raw = with_free_text(Channel.SPECIALIST, '"' * 700_000)
    assert len(raw) < 1024 * 1024  # under the inbound limit: the adapter, not the size check, refuses it
    refused = read(Channel.SPECIALIST, raw)
    assert isinstance(refused, Rejection)
    assert [(e.code, e.location) for e in refused.errors] == [(ErrorCode.TOO_LONG, "NTE-3")]
    assert '"' not in refused.errors[0].message


def test_200000_non_ascii_letters_of_gp_free_text_are_refused_too_long() -> None:
    raw = with_free_text(Channel.GP, "ë" * 200_000)
    assert 400_000 < len(raw) < 1024 * 1024
    refused = read(Channel.GP, raw)
    assert isinstance(refused, Rejection)
    assert [(e.code, e.location) for e in refused.errors] == [(ErrorCode.TOO_LONG, "ServiceRequest.note")]


def test_a_too_long_name_is_refused_with_the_others_errors_and_names_its_field() -> None:
    raw = channel_bytes("specialist", "REF-LIMITS-2", bsn="123456789").decode()  # not passing the elfproef
    refused = read(Channel.SPECIALIST, raw.replace("de Vries^Sanne", "de Vries^" + "S" * 201).encode())
    assert isinstance(refused, Rejection)
    assert {(e.code, e.location) for e in refused.errors} == {(ErrorCode.TOO_LONG, "PID-5"),
                                                            (ErrorCode.BSN_INVALID, "PID-3")}
    assert "SSS" not in json.dumps([e.model_dump() for e in refused.errors])


def test_a_referral_id_too_long_is_refused_and_not_used_to_tell_the_referrer() -> None:
    refused = read(Channel.GI, channel_bytes("gi", "R" * (MAX_ID_CHARS + 1)))
    assert isinstance(refused, Rejection)
    assert [(e.code, e.location) for e in refused.errors] == [(ErrorCode.TOO_LONG, "/referral_id")]
    assert refused.referrer_referral_id is None  # a status keyed by it would repeat it, as large as it came


def test_every_record_of_a_referral_at_all_its_limits_fits_far_under_its_topic() -> None:
    """The arithmetic of `TEXT_LIMITS`, worst case: each character a control character (six bytes escaped), or a
    character of four bytes of UTF-8 (an emoji), in every field at its limit."""
    referral = read(Channel.GP, gp_bytes(referral_id="REF-LIMITS-3"))
    assert isinstance(referral, Referral)
    for worst in ("\x01", "\U0001f600", '"'):
        def full(name: str) -> str:
            return worst * TEXT_LIMITS[name]
        big = referral.model_copy(update={
            "referrer": referral.referrer.model_copy(update={name: full(f"referrer.{name}") for name in (
                "identifier_system", "identifier", "display")}),
            "referrer_referral_id": full("referrer_referral_id"), "free_text": full("free_text"),
            "preference_notes": full("preference_notes"),
            "youth": referral.youth.model_copy(update={"given_name": full("youth.given_name"),
                                                       "family_name": full("youth.family_name")})})
        decision = decide(big, REGISTRY, NOW)
        assert decision.recipient is not None
        sizes = [len(big.model_dump_json().encode()), len(decision.model_dump_json().encode()),
                 len(handover_bytes(decision, NOW))]
        assert max(sizes) < 150_000 < OUTBOUND_RECORD_BYTES, (repr(worst), sizes)


def test_the_model_holds_the_limits_too() -> None:
    referral = read(Channel.GP, gp_bytes(referral_id="REF-LIMITS-4"))
    assert isinstance(referral, Referral)
    with pytest.raises(ValueError):
        Referral.model_validate({**referral.model_dump(), "free_text": "x" * (MAX_FREE_TEXT_CHARS + 1)})
    with pytest.raises(ValueError):
        Referral.model_validate({**referral.model_dump(), "youth": {**referral.youth.model_dump(),
                                                                    "family_name": "x" * (MAX_NAME_CHARS + 1)}})


def test_the_gateway_answers_a_too_long_field_422_with_a_too_long_issue_at_it() -> None:
    refused = read(Channel.GI, with_free_text(Channel.GI, "x" * (MAX_FREE_TEXT_CHARS + 1)))
    assert isinstance(refused, Rejection)
    (issue,) = operation_outcome(refused.errors)["issue"]
    assert (http_status(refused.errors), issue["code"], issue["expression"]) == (422, "too-long", ["/free_text"])
