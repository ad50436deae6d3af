"""The gateway's pure parts without a broker: MLLP framing, the answers (HL7 ACK, OperationOutcome, status codes),
the rate limit, the bearer tokens, and the GP adapter's document form beyond the shipped example."""

import asyncio
import json
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Channel, Referral
from services.access.tokens import TokenStore
from services.gateway.answers import (
    acknowledgement,
    escape,
    header_fields,
    hl7_location,
    http_status,
    operation_outcome,
)
from services.gateway.api import openapi_document
from services.gateway.limits import RateLimit
from services.gateway.mllp import Deframer, MllpListener, allowed_organisation, plain_allow_list
from services.gateway.submission import Submissions
from services.infra.clock import SystemClock
from services.infra.pseudonym import NOT_COMPUTED
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT, Settings
from services.infra.tls import LocalCa, mutual_tls_context
from services.intake.adapters import read_referral
from services.intake.gp import parse_gp
from services.intake.outcome import Rejection

EXAMPLES = REPO_ROOT / "schemas" / "examples"
MESSAGE = (EXAMPLES / "specialist" / "valid-product.hl7").read_text()
NOW = datetime(2026, 3, 12, 9, 15, tzinfo=UTC)


def error(code: ErrorCode, location: str, message: str = "wrong") -> ReferralError:
    return ReferralError(code=code, location=location, message=message)


def test_frames_split_over_reads_several_in_one_read_and_bytes_between_them_dropped() -> None:
    deframer = Deframer(max_frame=1000)
    assert deframer.feed(b"\r\n\x0bMSH|one") == []
    assert deframer.feed(b"\x1c") == []
    assert deframer.feed(b"\x0d junk \x0bMSH|two\x1c\x0d\x0bMSH|thr") == [b"MSH|one", b"MSH|two"]
    assert deframer.feed(b"ee\x1c\x0d") == [b"MSH|three"]
    assert deframer.dropped == len(b"\r\n") + len(b" junk ")


def test_an_unterminated_frame_gives_way_to_the_next_and_an_endless_one_is_dropped() -> None:
    deframer = Deframer(max_frame=10)
    assert deframer.feed(b"\x0bMSH|lost\x0bMSH|kept\x1c\x0d") == [b"MSH|kept"]
    assert deframer.feed(b"\x0b" + b"x" * 50) == [] and not deframer.buffer
    assert deframer.feed(b"\x0bMSH|ok\x1c\x0d") == [b"MSH|ok"]


def test_the_ack_swaps_sender_and_receiver_echoes_the_control_id_and_names_each_error() -> None:
    ack = acknowledgement(MESSAGE, "AE", [error(ErrorCode.BSN_INVALID, "PID-3", "BSN a|b^c"),
                                          error(ErrorCode.SCHEMA_INVALID, "")], NOW, "ACK1")
    segments = [s.split("|") for s in ack.rstrip("\r").split("\r")]
    msh, msa, err, err2 = segments
    assert msh[2:6] == ["VERWIJSHUB", "GRONINGEN", "HIS", "UMCG^01234567^AGB"]
    assert (msh[8], msh[9], msh[11]) == ("ACK^I12^ACK", "ACK1", "2.5") and msh[6] == "20260312091500"
    assert msa[:3] == ["MSA", "AE", "MSG-0001"]
    assert (err[2], err[3].split("^")[0], err[4], err[5], err[7], err[8]) == (
        "PID^1^3", "102", "E", "BSN_INVALID^^VERWIJSHUB", "PID-3", "BSN a\\F\\b\\S\\c")
    assert err2[2] == "" and err2[3].startswith("101^")


def test_hl7_helpers_read_msh_leniently_and_escape_delimiters() -> None:
    assert header_fields(MESSAGE.replace("\r", "\n"))[10] == "MSG-0001"
    assert header_fields("not hl7") == []
    assert escape("a\\b&c~d") == "a\\E\\b\\T\\c\\R\\d"
    assert (hl7_location("PID-3"), hl7_location("MSH"), hl7_location(""), hl7_location("/x")) == (
        "PID^1^3", "MSH^1", "", "")


def test_an_ack_for_no_hl7_at_all_is_still_a_well_formed_ack() -> None:
    ack = acknowledgement("garbage", "AR", [], NOW, "ACK2", "no HL7")
    assert ack.startswith("MSH|^~\\&|||||20260312091500||ACK|ACK2|P|2.5\rMSA|AR||no HL7\r")


def test_every_error_becomes_an_issue_of_a_valid_operation_outcome() -> None:
    errors = [error(ErrorCode.BSN_INVALID, "Patient.identifier"), error(ErrorCode.UNPARSEABLE, "")]
    outcome = OperationOutcome.model_validate(operation_outcome(errors))
    assert [(i.code, i.details.coding[0].code) for i in outcome.issue] == [
        ("business-rule", "BSN_INVALID"), ("structure", "UNPARSEABLE")]
    assert outcome.issue[0].expression == ["Patient.identifier"] and outcome.issue[1].expression is None


def test_status_codes_split_structure_from_rules_and_size() -> None:
    assert http_status([error(ErrorCode.BSN_INVALID, "")]) == 422
    assert http_status([error(ErrorCode.BSN_INVALID, ""), error(ErrorCode.SCHEMA_INVALID, "")]) == 400
    assert http_status([error(ErrorCode.TOO_LARGE, "")]) == 413


def test_the_rate_limit_allows_a_burst_then_one_per_interval_per_referrer() -> None:
    clock = [0.0]
    limit = RateLimit(60, now=lambda: clock[0])
    assert all(limit.wait_s("referrer-huisartsen-centrum") == 0 for _ in range(60))
    assert limit.wait_s("referrer-huisartsen-centrum") == 1.0 and limit.wait_s("referrer-umcg") == 0
    clock[0] = 1.0
    assert limit.wait_s("referrer-huisartsen-centrum") == 0


def test_a_token_names_its_referrer_until_a_new_one_is_issued_and_is_stored_only_hashed(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    first = store.issue("referrer-huisartsen-centrum")
    other = store.issue("referrer-umcg")
    assert store.principal_of(first) == "referrer-huisartsen-centrum" and store.principal_of(other) == "referrer-umcg"
    assert first not in store.path.read_text() and stat.S_IMODE(store.path.stat().st_mode) == 0o600
    second = TokenStore(tmp_path).issue("referrer-huisartsen-centrum")
    assert store.principal_of(first) is None and store.principal_of(second) == "referrer-huisartsen-centrum"
    assert store.principal_of("vwh_guess") is None and TokenStore(tmp_path / "none").principal_of(first) is None


def _document(**changes) -> bytes:
    document = json.loads((EXAMPLES / "gp" / "zorgdomein-document-basis-jeugdhulp.json").read_text())
    composition = document["entry"][0]["resource"]
    for key, value in changes.items():
        if value is None:
            composition.pop(key, None)
        else:
            composition[key] = value
    return json.dumps(document).encode()


def _parse(raw: bytes):
    products = frozenset(load_registry(REPO_ROOT / "deploy" / "registry").products)
    return parse_gp(raw, known_products=products, pseudonym_key="k", received_at=NOW)


def test_a_document_names_its_sender_by_author_when_it_has_no_zd_sender() -> None:
    outcome = _parse(_document(extension=None))
    assert isinstance(outcome, Referral) and outcome.referrer.identifier == "01054321"
    assert outcome.referrer_referral_id == "ZD123456789" and outcome.product is None


def test_a_cancellation_document_is_no_referral_and_a_document_without_zd_number_or_subject_is_refused() -> None:
    cancellation = _parse(_document(type={"coding": [{
        "system": "http://zorgdomein.nl/terminology/code-system/document-type", "code": "cancellation"}]}))
    assert isinstance(cancellation, Rejection) and cancellation.errors[0].code is ErrorCode.CHANNEL_MISMATCH
    anonymous = _parse(_document(identifier=None))
    assert isinstance(anonymous, Rejection) and anonymous.errors[0].location == "Composition.identifier"
    nobody = _parse(_document(subject={"reference": "urn:uuid:unknown"}))
    assert isinstance(nobody, Rejection) and nobody.errors[0].location == "Composition.subject"


def test_the_committed_openapi_document_is_the_one_the_gateway_serves() -> None:
    committed = json.loads((REPO_ROOT / "schemas" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document()))
    assert set(committed["paths"]) == {"/fhir/$process-message", "/fhir/Bundle", "/fhir/Task/{referral_id}",
                                       "/referrals/gi", "/referrals/ggd", "/referrals/court"}


class _Broker:
    """Stands in for the gateway's Kafka producer: records what was written, or times out like a broker away."""

    def __init__(self, away: bool = False) -> None:
        self.away, self.written = away, []

    async def publish(self, raw, topic, key=None, headers=None):
        if self.away:
            raise TimeoutError
        self.written.append((topic, key))


REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
UMCG = REGISTRY.referrers["umcg"]


def _listener(tmp_path: Path, broker: _Broker, **settings: object) -> MllpListener:
    settings = Settings(_env_file=None, secrets_dir=tmp_path, pseudonym_key="k", gateway_kafka_timeout_s=0.5,
                        **settings)
    return MllpListener(Submissions(broker, settings, REGISTRY, SystemClock()), SystemClock(), 5.0)


def _client_context(tmp_path: Path, organisation: str | None) -> ssl.SSLContext:
    """A sender's TLS context: trusting the hub's CA, with a client certificate of `organisation` (None: none)."""
    ca = LocalCa(tmp_path)
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    if organisation:
        pem = tmp_path / f"{organisation}.pem"
        pem.write_bytes(ca.client_pem(organisation, organisation))
        context.load_cert_chain(pem)
    return context


async def test_mllp_over_mutual_tls_writes_before_aa_writes_a_rejected_message_before_ae_and_answers_ar_when_away(
        tmp_path: Path) -> None:
    pem = LocalCa(tmp_path).gateway_pem("127.0.0.1")
    broker = _Broker()
    listener = _listener(tmp_path, broker)
    port = await listener.start("127.0.0.1", 0, mutual_tls_context(pem, LocalCa(tmp_path).ca_cert))
    invalid = (EXAMPLES / "specialist" / "invalid-bsn-and-agb.hl7").read_bytes()
    adt = (EXAMPLES / "specialist" / "invalid-adt-message.hl7").read_bytes()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(tmp_path, "umcg"))
        answers = []
        for message in (MESSAGE.encode(), invalid, adt):
            writer.write(b"\x0b" + message + b"\x1c\x0d")
            answers.append(await reader.readuntil(b"\x1c\x0d"))
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(tmp_path, "martini"))
        writer.write(b"\x0b" + MESSAGE.encode() + b"\x1c\x0d")  # martini may not send as UMCG's specialist
        answers.append(await reader.readuntil(b"\x1c\x0d"))
        writer.close()
    finally:
        await listener.stop()
    assert [a.split(b"MSA|")[1][:2] for a in answers] == [b"AA", b"AE", b"AR", b"AE"]
    assert b"SENDER_NOT_ALLOWED^^VERWIJSHUB" in answers[3] and b"SENDER_NOT_ALLOWED" not in answers[1]
    assert broker.written == [("referrals.specialist.umcg.v1", b"UMCG-REF-2026-0042")] * 2 + [
        ("referrals.specialist.martini.v1", b"UMCG-REF-2026-0042")]  # each AE for intake's dead letters

    away = _listener(tmp_path, _Broker(away=True))
    assert "MSA|AR|MSG-0001|" in await away.answer(MESSAGE.encode(), UMCG)


async def test_mllp_refuses_a_sender_without_certificate_or_of_another_channel_and_past_the_cap(
        tmp_path: Path) -> None:
    pem = LocalCa(tmp_path).gateway_pem("127.0.0.1")
    listener = _listener(tmp_path, _Broker(), mllp_max_connections=1)
    port = await listener.start("127.0.0.1", 0, mutual_tls_context(pem, LocalCa(tmp_path).ca_cert))
    frame = b"\x0b" + MESSAGE.encode() + b"\x1c\x0d"

    async def answer(context: ssl.SSLContext) -> bytes:
        """What the listener answers a message: b"" when it closed the connection (TLS 1.3: a refused certificate
        shows at the first read)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(frame)
            try:
                return await reader.read(65536)
            finally:
                writer.close()
        except (ssl.SSLError, ConnectionError):
            return b""

    try:
        assert b"MSA|AA|" in await answer(_client_context(tmp_path, "umcg"))
        while listener.connections:  # until the listener saw that one close
            await asyncio.sleep(0.01)
        assert await answer(_client_context(tmp_path, None)) == b""
        assert await answer(_client_context(tmp_path, "huisartsen-centrum")) == b""  # a GP organisation: closed
        held, holding = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(tmp_path, "umcg"))
        holding.write(frame)
        assert b"MSA|AA|" in await held.readuntil(b"\x1c\x0d")  # the listener holds this one now
        assert await answer(_client_context(tmp_path, "umcg")) == b""  # past the cap of one
        holding.close()
    finally:
        await listener.stop()


async def test_a_revoked_client_certificate_is_refused_once_the_list_is_reloaded_another_still_answered(
        tmp_path: Path) -> None:
    ca = LocalCa(tmp_path)
    pem = ca.gateway_pem("127.0.0.1")
    ca.provide_crl()  # as provisioning signs it: empty
    listener = _listener(tmp_path, _Broker())
    umcg, martini = _client_context(tmp_path, "umcg"), _client_context(tmp_path, "martini")
    port = await listener.start("127.0.0.1", 0, mutual_tls_context(pem, ca.ca_cert), ca.crl)
    frame = b"\x0b" + MESSAGE.encode() + b"\x1c\x0d"

    async def answered(context: ssl.SSLContext) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(frame)
            try:
                return b"MSA|" in await reader.read(65536)
            finally:
                writer.close()
        except (ssl.SSLError, ConnectionError):
            return False

    try:
        assert await answered(umcg) and await answered(martini)
        held, holding = await asyncio.open_connection("127.0.0.1", port, ssl=umcg)
        holding.write(frame)
        await held.readuntil(b"\x1c\x0d")  # the listener holds this one
        (serial,) = [entry["serial"] for entry in ca.issued() if entry["organisation"] == "umcg"]
        assert ca.revoke("umcg") == [serial] and ca.revoke("umcg") == []  # once
        while await held.read(65536):  # closed by the listener once it reloaded the list
            pass
        assert not await answered(umcg)
        assert await answered(martini)  # another organisation's certificate: still answered
        fresh = _client_context(tmp_path, "umcg")  # a new certificate for UMCG works again
        assert await answered(fresh)
    finally:
        await listener.stop()
    assert [entry["organisation"] for entry in ca.issued()] == ["umcg", "martini", "umcg"]
    assert {entry["organisation"] for entry in ca.issued() if "revoked_at" in entry} == {"umcg"}


def test_plain_mllp_is_taken_only_from_an_allowed_address_bound_to_its_organisation() -> None:
    allowed = plain_allow_list(" 10.20.0.0/16=umcg, 127.0.0.1=martini ,::1=umcg")
    assert [allowed_organisation(allowed, a) for a in ("10.20.3.4", "127.0.0.1", "::1", "10.21.0.1", "x")] == [
        "umcg", "martini", "umcg", None, None]
    assert plain_allow_list("") == []
    with pytest.raises(ValueError):
        plain_allow_list("10.0.0.1")


async def test_mllp_past_the_organisations_rate_answers_ar_rate_limited_and_writes_nothing(tmp_path: Path) -> None:
    broker = _Broker()
    listener = _listener(tmp_path, broker, mllp_rate_per_minute=2)
    acks = [await listener.answer(MESSAGE.encode(), UMCG) for _ in range(3)]
    assert [a.split("MSA|")[1][:2] for a in acks] == ["AA", "AA", "AR"]
    assert "RATE_LIMITED^^VERWIJSHUB" in acks[2] and len(broker.written) == 2
    other = await listener.answer(MESSAGE.encode(), REGISTRY.referrers["martini"])  # a bucket of its own
    assert "MSA|AE|" in other and "SENDER_NOT_ALLOWED" in other and len(broker.written) == 3


@pytest.mark.parametrize("example", sorted(p for p in EXAMPLES.glob("*/*") if p.name != "expected.json" and p.parent.name != "cancellations"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_gateways_check_without_the_pseudonym_key_gives_intakes_verdict(tmp_path: Path, example: Path) -> None:
    """The gateway validates as intake does, with no pseudonym key in the process: same referral or same errors,
    only the pseudonym not computed."""
    settings = Settings(_env_file=None, secrets_dir=tmp_path / "secrets")  # no key configured, none on disk
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    channel = Channel(example.parent.name)
    checked = Submissions(_Broker(), settings, registry, SystemClock()).check(channel, example.read_bytes())
    intake = read_referral(channel, example.read_bytes(), known_products=frozenset(registry.products),
                           pseudonym_key="intake's key", received_at=checked.received_at
                           if isinstance(checked, Referral) else NOW, max_bytes=settings.max_message_bytes)
    assert type(checked) is type(intake)
    if isinstance(intake, Referral):
        assert checked.youth.pseudonym == NOT_COMPUTED and intake.youth.pseudonym != NOT_COMPUTED
        assert checked.model_copy(update={"youth": intake.youth}) == intake
    else:
        assert checked.errors == intake.errors
    assert not (tmp_path / "secrets").exists(), "no pseudonym key was read or made"
