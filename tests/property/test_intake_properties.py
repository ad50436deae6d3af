"""Property tests: no input of any kind makes an adapter raise; each gives a Referral or coded errors.

`VERWIJSHUB_HYPOTHESIS_EXAMPLES` sets the examples per property (default 150; CI keeps the default).
Run with `--hypothesis-show-statistics` to see how many inputs were generated.
"""

import json
import os
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral
from services.infra.settings import REPO_ROOT
from services.intake.app import PARSERS
from services.intake.outcome import Rejection

EXAMPLES = {channel: sorted((REPO_ROOT / "schemas" / "examples" / channel.value).glob("valid-*"))[0].read_bytes()
            for channel in Channel}
PRODUCTS = frozenset({"45A53", "45A56", "50G26", "50G41"})
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
PROFILE = settings(max_examples=int(os.environ.get("VERWIJSHUB_HYPOTHESIS_EXAMPLES", "150")), deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])
channels = st.sampled_from(list(Channel))


def outcome_of(channel: Channel, raw: bytes):
    outcome = PARSERS[channel](raw, known_products=PRODUCTS, pseudonym_key="k", received_at=NOW, max_bytes=64 * 1024)
    assert isinstance(outcome, Referral | Rejection)
    if isinstance(outcome, Rejection):
        assert outcome.errors and all(isinstance(e.code, ErrorCode) and e.message for e in outcome.errors)
    return outcome


@PROFILE
@given(channel=channels, raw=st.binary(max_size=2048))
def test_arbitrary_bytes(channel, raw):
    assert isinstance(outcome_of(channel, raw), Rejection)


@PROFILE
@given(channel=channels, data=st.data())
def test_byte_mutations_of_valid_messages(channel, data):
    raw = bytearray(EXAMPLES[channel])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[position] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del raw[position]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=4))
    outcome_of(channel, bytes(raw))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@PROFILE
@given(channel=st.sampled_from([Channel.GP, Channel.GI, Channel.GGD, Channel.COURT]), data=st.data())
def test_json_field_mutations_of_valid_documents(channel, data):
    """Replace or delete fields of a valid JSON message anywhere in its tree."""
    document = json.loads(EXAMPLES[channel])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if p]
        path = data.draw(st.sampled_from(paths))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
    outcome_of(channel, json.dumps(document).encode())


@PROFILE
@given(data=st.data())
def test_hl7_field_mutations_of_the_valid_message(data):
    """Replace HL7 fields, components and separators of a valid REF^I12 with arbitrary text."""
    segments = [s.split("|") for s in EXAMPLES[Channel.SPECIALIST].decode().strip("\r").split("\r")]
    for _ in range(data.draw(st.integers(1, 4))):
        segment = data.draw(st.sampled_from(segments))
        index = data.draw(st.integers(0, len(segment) + 2))
        segment += [""] * (index + 1 - len(segment))
        segment[index] = data.draw(st.text(alphabet=st.sampled_from("0123456789AZaz ^~&\\|\r\n-é"), max_size=20))
    outcome_of(Channel.SPECIALIST, "\r".join("|".join(s) for s in segments).encode())
