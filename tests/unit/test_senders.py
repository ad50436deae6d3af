"""Who may send as whom: a referrer organisation's credential, and the topic it writes, bind the referrers its
referrals may name (services/access/senders.py, services/intake/senders.py). Without a broker."""

import json
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral
from services.access.senders import organisation_of, organisation_sending_as, sender_errors
from services.infra import principals, topics
from services.infra.registry_files import REFERRERS_FILE, RegistryError, read_registry_dir, registry_from_contents
from services.infra.settings import REPO_ROOT
from services.intake.adapters import read_referral
from services.intake.senders import sender_rejection
from tests.referrals import gp_bytes

CONTENTS = read_registry_dir(REPO_ROOT / "deploy" / "registry")
REGISTRY = registry_from_contents(CONTENTS)
CENTRUM, PADDEPOEL = REGISTRY.referrers["huisartsen-centrum"], REGISTRY.referrers["huisartsen-paddepoel"]
NOW = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)


def gp_referral(practitioner_agb: str) -> Referral:
    outcome = read_referral(Channel.GP, gp_bytes(practitioner_agb=practitioner_agb),
                            known_products=frozenset(REGISTRY.products), pseudonym_key="k", received_at=NOW, max_bytes=1 << 20)
    assert isinstance(outcome, Referral)
    return outcome


def test_an_organisation_may_send_as_the_referrers_it_lists_and_no_other() -> None:
    assert sender_errors(CENTRUM, gp_referral("01012345")) == []
    (error,) = sender_errors(PADDEPOEL, gp_referral("01012345"))
    assert (error.code, error.location) == (ErrorCode.SENDER_NOT_ALLOWED, "Practitioner.identifier")
    assert "01012345" not in error.message  # a fixed text
    assert sender_errors(PADDEPOEL, gp_referral("01023456")) == []


def test_an_organisation_of_another_channel_may_not_send_even_as_an_identifier_it_lists() -> None:
    gi_like = REGISTRY.referrers["jeugdbescherming-noord"].model_copy(update={"senders": frozenset({"01012345"})})
    assert [e.code for e in sender_errors(gi_like, gp_referral("01012345"))] == [ErrorCode.SENDER_NOT_ALLOWED]


def test_a_principal_stands_for_its_organisation_and_a_tool_sends_as_the_one_listing_the_referrer() -> None:
    assert organisation_of(REGISTRY, principals.referrer("umcg")) == REGISTRY.referrers["umcg"]
    assert organisation_of(REGISTRY, "referrer-unknown") is None and organisation_of(REGISTRY, "wij-centrum") is None
    assert organisation_sending_as(REGISTRY, Channel.GP, "01023456") == PADDEPOEL
    assert organisation_sending_as(REGISTRY, Channel.SPECIALIST, "01023456") is None


def test_intake_judges_by_the_topic_the_referral_was_written_to() -> None:
    referral = gp_referral("01012345")
    assert sender_rejection(REGISTRY, topics.organisation_referrals(Channel.GP, CENTRUM.id), referral) is None
    posing = sender_rejection(REGISTRY, topics.organisation_referrals(Channel.GP, PADDEPOEL.id), referral)
    assert posing is not None and [e.code for e in posing.errors] == [ErrorCode.SENDER_NOT_ALLOWED]
    assert posing.referrer_referral_id == referral.referrer_referral_id  # so the referrer is told `rejected`
    unknown = sender_rejection(REGISTRY, topics.organisation_referrals(Channel.GP, "gone"), referral)
    assert unknown is not None and unknown.errors[0].code is ErrorCode.SENDER_NOT_ALLOWED
    other_channel = sender_rejection(REGISTRY, topics.organisation_referrals(Channel.GP, "umcg"), referral)
    assert other_channel is not None
    assert sender_rejection(REGISTRY, topics.referrals(Channel.GP), referral) is None  # the admin's topic


def test_inbound_topics_name_their_channel_and_organisation() -> None:
    assert topics.inbound("referrals.gp.huisartsen-centrum.v1") == (Channel.GP, "huisartsen-centrum")
    assert topics.inbound("referrals.gp.v1") == (Channel.GP, None)
    assert [topics.inbound(t) for t in ("referrals.normalised.v1", "referrals.dlq.v1", "status.gp.v1")] == [None] * 3
    assert topics.organisation_referrals(Channel.GP, CENTRUM.id) in topics.all_topics(REGISTRY)


def test_the_referrers_file_is_optional_and_validated() -> None:
    without = {name: text for name, text in CONTENTS.items() if name != REFERRERS_FILE}
    assert registry_from_contents(without).referrers == {}
    assert registry_from_contents(without).version != REGISTRY.version
    twice = json.loads(CONTENTS[REFERRERS_FILE]) * 2
    with pytest.raises(RegistryError, match="twice"):
        registry_from_contents({**CONTENTS, REFERRERS_FILE: json.dumps(twice)})
    with pytest.raises(RegistryError):
        registry_from_contents({**CONTENTS, REFERRERS_FILE: json.dumps([{"id": "A B", "channel": "gp", "name": "x",
                                                                          "senders": ["1"]}])})
