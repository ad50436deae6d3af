"""One referral, several documents; cancellation on every channel (issue 21 parts 2 and 3): the pure cores.

Reading (services/intake/lifecycle.py), intake's verdict (repeats.py), routing's `on_change`, the notifier's
`apply_change` and the amendment's FHIR message, and the gateway's Task update.
"""

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from schemas.errors import ErrorCode
from schemas.lifecycle import ChangeKind, ReferralChange, RoutedChange
from schemas.notices import NoticeKind, YouthFollowUp
from schemas.referral import AcceptedReferral, Channel, Referral
from schemas.routing import YouthRouting
from schemas.status import FHIR_TASK_STATUS, ReferralStatus, StatusEvent
from services.access.senders import cancellation_sender_errors
from services.gateway.api import cancel_request
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.lifecycle import Cancellation, cancellation, document_kind, read_message
from services.intake.outcome import Rejection
from services.intake.repeats import Cancelled, Seen, cancellation_verdict, referral_digest, seen
from services.notifier.calendar import AMSTERDAM, WorkingCalendar
from services.notifier.followup import Amend, Notify, apply_change, apply_decision, due_effects, next_due
from services.notifier.handover import amendment_message
from services.routing.core import Forwarded, on_change, on_referral, rerouting_facts

EXAMPLES = REPO_ROOT / "schemas" / "examples"
REGISTRY = load_registry(REPO_ROOT / "deploy" / "registry")
PRODUCTS = frozenset(REGISTRY.products)
NOW = datetime(2026, 3, 12, 10, tzinfo=AMSTERDAM)


def read(channel: Channel, path: Path, key: str | None = "k"):
    return read_message(channel, path.read_bytes(), known_products=PRODUCTS, pseudonym_key=key, received_at=NOW,
                        max_bytes=1 << 20)


def letter() -> Referral:
    outcome = read(Channel.GP, EXAMPLES / "gp" / "zorgdomein-document-basis-jeugdhulp.json")
    assert isinstance(outcome, Referral)
    return outcome


# -- reading -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channel", "cancels", "referral"), [
    (Channel.GP, "gp-zorgdomein-cancellation.json", "gp/zorgdomein-document-basis-jeugdhulp.json"),
    (Channel.SPECIALIST, "specialist-ref-i14.hl7", "specialist/valid-product.hl7"),
    (Channel.GI, "gi-withdrawal.json", "gi/valid-ots.json")])
def test_each_channels_cancellation_names_the_hub_id_of_its_referral(channel, cancels, referral):
    found = read(channel, EXAMPLES / "cancellations" / cancels)
    referred = read(channel, EXAMPLES / referral)
    assert isinstance(found, Cancellation) and isinstance(referred, Referral)
    assert (found.referral_id, found.referrer_referral_id) == (referred.referral_id, referred.referrer_referral_id)
    assert found.referrer_identifier == referred.referrer.identifier


def test_a_task_set_to_cancelled_names_the_referral_by_its_hub_id_on_any_channel():
    for channel in Channel:
        found = read(channel, EXAMPLES / "cancellations" / "task-cancelled.json")
        assert isinstance(found, Cancellation) and found.referral_id == letter().referral_id
        assert found.referrer_identifier is None and found.reason == "Het gezin is verhuisd."


def test_a_task_set_to_anything_else_is_refused():
    task = {"resourceType": "Task", "id": "x", "status": "completed"}
    refused = cancellation(Channel.GP, json.dumps(task).encode())
    assert isinstance(refused, Rejection) and refused.errors[0].location == "Task.status"


def test_a_cancellation_without_its_number_or_sender_is_refused_with_the_locations():
    document = json.loads((EXAMPLES / "cancellations" / "gp-zorgdomein-cancellation.json").read_text())
    del document["entry"][0]["resource"]["identifier"]
    document["entry"][0]["resource"]["extension"] = []
    document["entry"][0]["resource"]["author"] = []
    refused = cancellation(Channel.GP, json.dumps(document).encode())
    assert isinstance(refused, Rejection)
    assert [e.location for e in refused.errors] == ["Composition.identifier", "Composition.author"]
    assert all(e.code is ErrorCode.SCHEMA_INVALID for e in refused.errors)


def test_a_withdrawal_with_an_unknown_field_or_another_channel_is_refused():
    withdrawal = json.loads((EXAMPLES / "cancellations" / "gi-withdrawal.json").read_text())
    refused = cancellation(Channel.GI, json.dumps({**withdrawal, "bsn": "999911120"}).encode())
    assert isinstance(refused, Rejection) and refused.errors[0].code is ErrorCode.SCHEMA_INVALID
    other = cancellation(Channel.GI, json.dumps({**withdrawal, "channel": "ggd"}).encode())
    assert isinstance(other, Rejection) and other.errors[0].code is ErrorCode.CHANNEL_MISMATCH


def test_referrals_and_other_hl7_messages_are_no_cancellation():
    for channel, path in ((Channel.GP, "gp/valid-basis-jeugdhulp.json"), (Channel.SPECIALIST, "specialist/valid-product.hl7"),
                          (Channel.GI, "gi/valid-ots.json"), (Channel.SPECIALIST, "specialist/invalid-adt-message.hl7")):
        assert cancellation(channel, (EXAMPLES / path).read_bytes()) is None


def test_the_zorgdomein_documents_of_one_zd_number_are_one_referral_each_with_its_own_text():
    documents = [read(Channel.GP, EXAMPLES / "gp" / name) for name in
                 ("zorgdomein-appointment-request.json", "zorgdomein-document-basis-jeugdhulp.json",
                  "zorgdomein-supplement.json")]
    assert all(isinstance(d, Referral) for d in documents)
    assert len({d.referral_id for d in documents}) == 1
    assert len({referral_digest(d) for d in documents}) == 3, "each document's content is its own"
    assert [rerouting_facts(documents[0], d) for d in documents] == [[], [], []]
    assert [document_kind((EXAMPLES / "gp" / n).read_bytes()) for n in ("zorgdomein-supplement.json",
                                                                         "valid-basis-jeugdhulp.json")] == \
        ["supplement", None]


# -- intake's verdict ---------------------------------------------------------------------------------
def accepted(referral: Referral, **changes) -> AcceptedReferral:
    return AcceptedReferral(**{
        "referral_id": referral.referral_id, "channel": referral.channel, "accepted_at": NOW, "origin": "t/0/0",
        "referrer_referral_id": referral.referrer_referral_id, "digest": referral_digest(referral),
        "organisation": "huisartsen-centrum", "pseudonym": referral.youth.pseudonym, **changes})


def test_a_changed_document_of_the_same_sender_and_youth_is_an_amendment_once():
    first = letter()
    supplement = read(Channel.GP, EXAMPLES / "gp" / "zorgdomein-supplement.json")
    digest, pseudonym = referral_digest(supplement), supplement.youth.pseudonym
    assert seen(None, digest, pseudonym, "huisartsen-centrum") is Seen.NEW
    assert seen(accepted(first), referral_digest(first), pseudonym, "huisartsen-centrum") is Seen.REPEAT
    assert seen(accepted(first), digest, pseudonym, "huisartsen-centrum") is Seen.AMENDMENT
    assert seen(accepted(first, digests=[digest]), digest, pseudonym, "huisartsen-centrum") is Seen.REPEAT


def test_another_youth_another_sender_or_a_record_from_before_amendments_stays_a_conflict():
    first = letter()
    digest = referral_digest(first) + "0"
    assert seen(accepted(first), digest, "another youth", "huisartsen-centrum") is Seen.CONFLICT
    assert seen(accepted(first), digest, first.youth.pseudonym, "huisartsen-noord") is Seen.CONFLICT
    assert seen(accepted(first, pseudonym=None), digest, first.youth.pseudonym, "huisartsen-centrum") is Seen.CONFLICT


def test_a_cancelled_referral_takes_nothing_more_but_its_repeats_stay_repeats():
    first = accepted(letter(), cancelled=True)
    assert seen(first, "other", letter().youth.pseudonym, "huisartsen-centrum") is Seen.CLOSED
    assert seen(first, first.digest, letter().youth.pseudonym, "huisartsen-centrum") is Seen.REPEAT


def test_only_the_sending_organisation_may_cancel_and_only_once():
    first = accepted(letter())
    assert cancellation_verdict(None, "huisartsen-centrum") is Cancelled.UNKNOWN
    assert cancellation_verdict(first, "huisartsen-noord") is Cancelled.UNKNOWN
    assert cancellation_verdict(first, "huisartsen-centrum") is Cancelled.CANCEL
    assert cancellation_verdict(first.model_copy(update={"cancelled": True}), "huisartsen-centrum") is Cancelled.REPEAT


def test_a_cancellation_naming_a_referrer_the_organisation_may_not_send_as_is_refused():
    organisation = next(o for o in REGISTRY.referrers.values() if o.channel is Channel.GP)
    assert cancellation_sender_errors(organisation, Channel.GP, next(iter(organisation.senders))) == []
    assert cancellation_sender_errors(organisation, Channel.GP, None) == []
    [error] = cancellation_sender_errors(organisation, Channel.GP, "00000000")
    assert error.code is ErrorCode.SENDER_NOT_ALLOWED


# -- routing ------------------------------------------------------------------------------------------
def change(kind: ChangeKind, referral: Referral | None = None, text: str | None = None) -> ReferralChange:
    base = referral or letter()
    return ReferralChange(kind=kind, referral_id=base.referral_id, channel=base.channel,
                          referrer_referral_id=base.referrer_referral_id, pseudonym=base.youth.pseudonym, at=NOW,
                          document="supplement" if kind is ChangeKind.AMENDMENT else "cancellation",
                          referral=referral, text=text)


def routed_state() -> YouthRouting:
    return on_referral(YouthRouting(pseudonym=letter().youth.pseudonym), letter(), REGISTRY, NOW, {}).state


def test_an_amendment_is_forwarded_to_the_recipient_holding_the_referral():
    state = routed_state()
    supplement = read(Channel.GP, EXAMPLES / "gp" / "zorgdomein-supplement.json")
    step = on_change(state, change(ChangeKind.AMENDMENT, supplement, supplement.free_text), NOW)
    [forwarded] = step.effects
    assert isinstance(forwarded, Forwarded)
    routed = forwarded.routed
    assert routed.recipient == state.referrals[letter().referral_id].decision.recipient and not routed.errors
    assert step.state is state, "routing's state is unchanged"


@pytest.mark.parametrize("changes", [{"product": "45A51"}, {"referral_date": NOW.date() - timedelta(days=3)},
                                     {"specialist_asked": True}, {"preferred_provider": "98000011"}])
def test_an_amendment_that_would_change_the_routing_is_refused_and_the_referral_stands(changes):
    state = routed_state()
    step = on_change(state, change(ChangeKind.AMENDMENT, letter().model_copy(update=changes)), NOW)
    [forwarded] = step.effects
    assert isinstance(forwarded, Forwarded)
    routed = forwarded.routed
    assert routed.recipient is None and [e.code for e in routed.errors] == [ErrorCode.AMENDMENT_REROUTES]
    assert step.state is state


def test_a_cancellation_closes_the_referral_in_routing_and_a_second_finds_it_closed():
    state = routed_state()
    step = on_change(state, change(ChangeKind.CANCELLATION), NOW)
    [forwarded] = step.effects
    assert isinstance(forwarded, Forwarded)
    routed = forwarded.routed
    assert routed.recipient is not None and letter().referral_id not in step.state.referrals
    [forwarded] = on_change(step.state, change(ChangeKind.CANCELLATION), NOW).effects
    assert isinstance(forwarded, Forwarded)
    again = forwarded.routed
    assert [e.code for e in again.errors] == [ErrorCode.REFERRAL_CLOSED]


# -- the notifier -------------------------------------------------------------------------------------
def handed_over() -> tuple[YouthFollowUp, object]:
    decision = routed_state().referrals[letter().referral_id].decision
    state, _ = apply_decision(YouthFollowUp(pseudonym=letter().youth.pseudonym), decision, NOW, WorkingCalendar(),
                              "centrum")
    return state, decision


def statuses(effects) -> list[ReferralStatus]:
    return [e.status for e in effects if isinstance(e, StatusEvent)]


def test_an_amendment_reaches_the_recipient_as_a_communication_on_the_same_task_and_the_referrer_hears_amended():
    state, decision = handed_over()
    supplement = read(Channel.GP, EXAMPLES / "gp" / "zorgdomein-supplement.json")
    routed = RoutedChange(change=change(ChangeKind.AMENDMENT, supplement, supplement.free_text),
                          recipient=decision.recipient, decided_at=NOW)
    after, effects = apply_change(state, routed, NOW)
    assert after == state and statuses(effects) == [ReferralStatus.AMENDED]
    [amend] = [e for e in effects if isinstance(e, Amend)]
    message = amendment_message(amend.routed, NOW)
    Bundle.model_validate(message)  # valid FHIR R4
    communication = message["entry"][1]["resource"]
    assert communication["resourceType"] == "Communication"
    assert communication["basedOn"][0]["identifier"]["value"] == decision.referral_id
    assert "slaapdagboek" in communication["payload"][0]["contentString"]
    assert message["entry"][0]["resource"]["eventCoding"]["code"] == "I13"
    assert amendment_message(amend.routed, NOW) == message, "the same change again: the same message ids"


def test_a_cancellation_tells_both_sides_and_stops_the_clock_for_good():
    state, decision = handed_over()
    clock = state.handovers[decision.referral_id].clock
    routed = RoutedChange(change=change(ChangeKind.CANCELLATION), recipient=decision.recipient, decided_at=NOW)
    after, effects = apply_change(state, routed, NOW)
    assert statuses(effects) == [ReferralStatus.CANCELLED]
    [notice] = [e for e in effects if isinstance(e, Notify)]
    assert (notice.topic, notice.notice.kind) == (decision.recipient.topic, NoticeKind.CANCELLED)
    assert decision.referral_id not in after.handovers and next_due(after) is None
    assert due_effects(after, clock.due_at + timedelta(days=30), "entree")[1] == [], "no at-risk, no breach"
    assert FHIR_TASK_STATUS[ReferralStatus.CANCELLED] == "cancelled"


def test_a_refused_change_is_told_to_the_referrer_with_its_code_and_changes_nothing():
    state, decision = handed_over()
    routed = on_change(routed_state(), change(ChangeKind.AMENDMENT, letter().model_copy(
        update={"product": "45A51"})), NOW).effects[0].routed
    after, effects = apply_change(state, routed, NOW)
    [status] = effects
    assert after == state and status.status is ReferralStatus.CHANGE_REFUSED
    assert [e.code for e in status.errors] == [ErrorCode.AMENDMENT_REROUTES]


# -- the gateway's Task update ------------------------------------------------------------------------
def test_a_task_update_to_cancelled_is_taken_by_put_and_by_json_patch():
    assert cancel_request(b'{"resourceType": "Task", "id": "r-1", "status": "cancelled", "statusReason": '
                          b'{"text": "verhuisd"}}', "r-1", patch=False) == "verhuisd"
    assert cancel_request(b'[{"op": "replace", "path": "/status", "value": "cancelled"}]', "r-1", patch=True) is None


@pytest.mark.parametrize(("body", "patch", "location"), [
    (b'{"resourceType": "Task", "id": "r-1", "status": "completed"}', False, "Task.status"),
    (b'{"resourceType": "Task", "id": "r-2", "status": "cancelled"}', False, "Task.id"),
    (b'{"resourceType": "Patient"}', False, "Task"),
    (b'[{"op": "replace", "path": "/owner", "value": "x"}]', True, "/status"),
    (b'not json', True, "")])
def test_any_other_task_update_is_refused(body, patch, location):
    [error] = cancel_request(body, "r-1", patch=patch)
    assert error.location == location


def test_send_writes_a_cancellation_as_the_organisation_that_lists_its_referrer():
    from services.cli import sending_organisation
    found = read(Channel.GP, EXAMPLES / "cancellations" / "gp-zorgdomein-cancellation.json")
    referral = letter()
    assert sending_organisation(REGISTRY, Channel.GP, found, None) == \
        sending_organisation(REGISTRY, Channel.GP, referral, None)
    assert REGISTRY.referrers[sending_organisation(REGISTRY, Channel.GP, found, None)].senders >= {"01054321"}


# -- intake's processor, without a broker ------------------------------------------------------------
class _Record:
    def __init__(self, topic: str, value: bytes, offset: int) -> None:
        self.topic, self.value, self.offset, self.partition, self.key, self.headers = topic, value, offset, 0, b"k", []
        self.timestamp = 0


@pytest.fixture
def intake(tmp_path):
    from services.infra.clock import SystemClock
    from services.infra.settings import Settings
    from services.intake.app import Intake
    settings = Settings(_env_file=None, secrets_dir=tmp_path / "secrets", pseudonym_key="a test key" * 4,
                        kafka_username="verwijshub-intake", kafka_password="unused: nothing connects")
    processor = Intake(settings, REGISTRY, SystemClock())
    processor.ledger.open()
    yield processor
    processor.ledger._db.close()
    processor.ledger._directory.cleanup()


def _handle(intake, channel: Channel, path: Path, offset: int, organisation: str | None = None):
    from services.infra import topics as names
    org = organisation or next(o.id for o in REGISTRY.referrers.values()
                               if o.channel is channel and "01054321" in o.senders)
    outputs = asyncio.run(intake.handle(_Record(names.organisation_referrals(channel, org), path.read_bytes(),
                                                offset)))
    intake.ledger.committed(0)
    return [(o.topic, o.headers.get("schema", ""), _json_or_raw(o.value)) for o in outputs]


def _json_or_raw(value: bytes):
    try:
        return json.loads(value)
    except ValueError:
        return {"raw": True}  # a dead letter: the message as received


def test_intake_takes_the_documents_of_one_zd_number_as_one_referral_and_its_cancellation_once(intake):
    """Letter, the letter again, a supplement, a cancellation, the cancellation again, then another supplement."""
    gp = EXAMPLES / "gp"
    first = _handle(intake, Channel.GP, gp / "zorgdomein-document-basis-jeugdhulp.json", 1)
    assert [schema for _, schema, _ in first] == ["verwijshub.StatusEvent/1", "verwijshub.Referral/1",
                                                  "verwijshub.Accepted/1"]
    assert _handle(intake, Channel.GP, gp / "zorgdomein-document-basis-jeugdhulp.json", 2) == []
    amended = _handle(intake, Channel.GP, gp / "zorgdomein-supplement.json", 3)
    assert [schema for _, schema, _ in amended] == ["verwijshub.ReferralChange/1", "verwijshub.Accepted/1"]
    assert (amended[0][2]["kind"], amended[0][2]["document"]) == ("amendment", "supplement")
    assert "slaapdagboek" in amended[0][2]["text"]
    assert amended[0][2]["pseudonym"] == first[1][2]["youth"]["pseudonym"]
    cancel = EXAMPLES / "cancellations" / "gp-zorgdomein-cancellation.json"
    cancelled = _handle(intake, Channel.GP, cancel, 4)
    assert [(schema, value.get("kind")) for _, schema, value in cancelled] == [
        ("verwijshub.ReferralChange/1", "cancellation"), ("verwijshub.Accepted/1", None)]
    assert cancelled[1][2]["cancelled"] is True
    assert _handle(intake, Channel.GP, cancel, 5) == [], "the same cancellation again: no second effect"
    late = _handle(intake, Channel.GP, gp / "zorgdomein-appointment-request.json", 6)
    assert [e["code"] for e in late[-1][2]["errors"]] == ["REFERRAL_CLOSED"]


def test_intake_answers_a_cancellation_of_an_unknown_referral_or_from_another_organisation_with_a_code(intake):
    cancel = EXAMPLES / "cancellations" / "gp-zorgdomein-cancellation.json"
    unknown = _handle(intake, Channel.GP, cancel, 1)
    assert [e["code"] for e in unknown[-1][2]["errors"]] == ["REFERRAL_UNKNOWN"]
    assert unknown[0][0] == "referrals.dlq.v1"
    _handle(intake, Channel.GP, EXAMPLES / "gp" / "zorgdomein-document-basis-jeugdhulp.json", 2)
    others = [o.id for o in REGISTRY.referrers.values() if o.channel is Channel.GP and "01054321" not in o.senders]
    task = EXAMPLES / "cancellations" / "task-cancelled.json"
    assert others, "the shipped registry has a second GP organisation"
    # a Task names no referrer: only the ledger's organisation may cancel by hub id
    refused = asyncio.run(intake.handle(_Record(f"referrals.gp.{others[0]}.v1", task.read_bytes(), 3)))
    [dead] = refused  # no status: the Task names no referral id of the referrer to key one by
    assert dead.topic == "referrals.dlq.v1" and "REFERRAL_UNKNOWN" in dead.headers["errors"]
    taken = _handle(intake, Channel.GP, task, 4)
    assert taken[0][2]["kind"] == "cancellation" and taken[0][2]["document"] == "Task"
