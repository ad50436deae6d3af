"""Routing's remembered state: open handovers, declines, load, and what a provider's stop leaves to do."""

from datetime import date, timedelta

import pytest

from schemas.indications import YouthIndications
from services.routing.policy import decide, redecide_after_decline, reroute_after_stop
from services.routing.state import RoutingState
from tests.unit.test_routing_rules import (
    NOORDERLICHT,
    NOW,
    PSEUDONYM,
    REGISTRY,
    indication,
    referral,
    with_provider,
)


def test_latest_decision_wins_and_declines_accumulate():
    state = RoutingState(REGISTRY)
    first = decide(referral(product="54B01"), REGISTRY, NOW)
    state.apply_decision(first)
    assert state.open_load() == {first.recipient.id: 1}
    later = NOW + timedelta(minutes=1)
    again = redecide_after_decline(first, REGISTRY, later, "full", {first.recipient.id})
    state.apply_decision(again)
    state.apply_decision(first)  # read back late from the log: must not undo the newer decision
    assert state.decisions[first.referral_id] == again
    assert state.declined[first.referral_id] == {first.recipient.id}
    assert state.open_load() == {again.recipient.id: 1}
    state.close(first.referral_id)
    assert state.open_load() == {}


def test_stop_work_covers_open_handovers_and_indications_once():
    registry = with_provider(NOORDERLICHT, stopped_on=date(2026, 4, 1))
    state = RoutingState(registry)
    with_noorderlicht = decide(referral(product="45A51", rid="open"), REGISTRY, NOW, indications=[indication()])
    assert with_noorderlicht.recipient.id == NOORDERLICHT
    state.apply_decision(with_noorderlicht)
    state.apply_indications(PSEUDONYM, YouthIndications(pseudonym=PSEUDONYM, indications=[indication()]))
    imported = indication(product="45A04").model_copy(update={"pseudonym": "cd" * 32})
    state.apply_indications("cd" * 32, YouthIndications(pseudonym="cd" * 32, indications=[imported]))

    assert state.stop_work(date(2026, 3, 31)) == [], "not before the stop date"
    work = state.stop_work(date(2026, 4, 1))
    assert [(w.pseudonym, w.decision is not None, len(w.indications)) for w in work] == [
        (PSEUDONYM, True, 1), ("cd" * 32, False, 1)]

    state.apply_decision(reroute_after_stop(with_noorderlicht.referral, registry.providers[NOORDERLICHT], registry,
                                            NOW + timedelta(days=20), "the open handover"))
    marked = indication(product="45A04").model_copy(update={"pseudonym": "cd" * 32, "rerouted_on": date(2026, 4, 1)})
    state.apply_indications("cd" * 32, YouthIndications(pseudonym="cd" * 32, indications=[marked]))
    left = state.stop_work(date(2026, 4, 1))
    assert [(w.pseudonym, w.decision, len(w.indications)) for w in left] == [(PSEUDONYM, None, 1)], \
        "only the mark of the first youth's indication is left; no second decision"


@pytest.mark.parametrize(("end", "due"), [("2026-04-01", True), ("2026-03-31", False)])
def test_an_ended_indication_needs_no_reroute(end, due):
    state = RoutingState(with_provider(NOORDERLICHT, stopped_on=date(2026, 4, 1)))
    state.apply_indications(PSEUDONYM, YouthIndications(pseudonym=PSEUDONYM, indications=[indication(end=end)]))
    assert bool(state.stop_work(date(2026, 4, 1))) is due


def test_only_the_instance_consuming_a_youths_partition_reroutes_it():
    from aiokafka.partitioner import DefaultPartitioner

    from services.infra.clock import SystemClock
    from services.infra.settings import Settings
    from services.routing.app import Routing

    routing = Routing(broker=None, settings=Settings(partitions=6), registry=REGISTRY, clock=SystemClock())
    partition = DefaultPartitioner()(PSEUDONYM.encode(), list(range(6)), list(range(6)))
    assert routing.owns(PSEUDONYM), "assignment unknown: own everything"
    routing.owned_partitions = lambda: {partition}
    assert routing.owns(PSEUDONYM)
    routing.owned_partitions = lambda: set(range(6)) - {partition}
    assert not routing.owns(PSEUDONYM)


def test_the_follower_reads_a_youths_list_and_a_single_indication():
    from services.infra.clock import SystemClock
    from services.infra.settings import Settings
    from services.routing.app import Routing

    routing = Routing(broker=None, settings=Settings(), registry=REGISTRY, clock=SystemClock())
    listed = YouthIndications(pseudonym=PSEUDONYM, indications=[indication()])
    routing.apply("indications.v1", PSEUDONYM.encode(), listed.model_dump_json().encode())
    routing.apply("indications.v1", PSEUDONYM.encode(), indication(product="45A04").model_dump_json().encode())
    assert [i.product for i in routing.state.indications_of(PSEUDONYM)] == ["45A51", "45A04"]
    routing.apply("indications.v1", PSEUDONYM.encode(), b"{garbage")  # logged and skipped, never raised
    routing.apply("indications.v1", PSEUDONYM.encode(), None)
    assert routing.state.indications_of(PSEUDONYM) == ()
