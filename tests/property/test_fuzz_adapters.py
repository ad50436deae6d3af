"""Fuzzing every channel's adapter with mutated valid examples: a Referral or coded errors, never an exception.

Seeded and deterministic: the same inputs on every run, so a failure names an input that can be replayed.
`VERWIJSHUB_FUZZ_INPUTS` sets the inputs per channel (default 300, a few seconds for all five channels);
a long run: `VERWIJSHUB_FUZZ_INPUTS=100000 .venv/bin/pytest tests/property/test_fuzz_adapters.py -s`
(`-s` shows the figures per channel). `VERWIJSHUB_FUZZ_SEED` picks another set of inputs.
"""

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode
from schemas.referral import Channel, Referral
from services.infra.settings import REPO_ROOT
from services.intake.adapters import PARSERS
from services.intake.outcome import Rejection

INPUTS = int(os.environ.get("VERWIJSHUB_FUZZ_INPUTS", "300"))
SEED = os.environ.get("VERWIJSHUB_FUZZ_SEED", "0")
MAX_BYTES = 256 * 1024
PRODUCTS = frozenset({"45A51", "45A53", "45A56", "50G26", "50G41", "54B01"})
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
EXAMPLES = REPO_ROOT / "schemas" / "examples"
SEEDS = {channel: [(EXAMPLES / channel.value / name).read_bytes() for name, codes in sorted(json.loads(
    (EXAMPLES / channel.value / "expected.json").read_text()).items()) if not codes] for channel in Channel}
"""Every accepted example of each channel (`expected.json`), so the fuzz reaches each form a channel takes (gp:
R4 and STU3 messages and documents)."""

NASTY = [b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"\\ud800"', b"\\udc00", b"\\u0000", b"9" * 5000, b"1e999",
         b"-0.0e-99999", b"NaN", b"null", b"[]", b"{}", b'""', b"  ", b"\r", b"\n", b"|", b"^", b"~", b"&", b"\\",
         b"~" * 20_000, b"|" * 5000, b"^" * 5000, b"MSH|^~\\&|", b"\rPID|||", b"\rNTE|||", b"\xef\xbb\xbf",
         "\u202e\u00e9\U0001f600".encode()]
"""Fragments that broke parsers before: control and invalid bytes, lone surrogates, numbers of thousands of
digits, HL7 separators and field repetitions by the thousand."""


def _flip(rng: random.Random, raw: bytearray) -> None:
    raw[rng.randrange(len(raw))] = rng.randrange(256)


def _truncate(rng: random.Random, raw: bytearray) -> None:
    del raw[rng.randrange(len(raw)):]


def _duplicate(rng: random.Random, raw: bytearray) -> None:
    start = rng.randrange(len(raw))
    end = min(len(raw), start + rng.randint(1, 400))
    raw[end:end] = raw[start:end] * rng.choice([1, 2, 50])


def _delete(rng: random.Random, raw: bytearray) -> None:
    start = rng.randrange(len(raw))
    del raw[start:start + rng.randint(1, 40)]


def _nest(rng: random.Random, raw: bytearray) -> None:
    depth = rng.choice([1, 5, 199, 200, 1000, 100_000])
    opening, closing = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b"[[", b"]]")])
    position = rng.randrange(len(raw) + 1)
    raw[position:position] = opening * depth + (closing * depth if rng.random() < 0.7 else b"")


def _insert(rng: random.Random, raw: bytearray) -> None:
    position = rng.randrange(len(raw) + 1)
    raw[position:position] = rng.choice(NASTY)


def _replace_value(rng: random.Random, raw: bytearray) -> None:
    """A quoted value or HL7 field replaced by a nasty fragment, so the mutation reaches the mapping."""
    separators = [i for i, byte in enumerate(raw) if byte in b'"|:^']
    if separators:
        position = rng.choice(separators) + 1
        end = position
        while end < len(raw) and raw[end] not in b'"|,^\r\n}':
            end += 1
        raw[position:end] = rng.choice(NASTY)


MUTATIONS: list[Callable[[random.Random, bytearray], None]] = [_flip, _truncate, _duplicate, _delete, _nest,
                                                               _insert, _replace_value]

_PLACEHOLDER = "fuzz-placeholder-7f3a"
JSON_VALUES = [b"9" * 5000, b"-" + b"9" * 400, b"1e999", b"1e-999", b"NaN", b"-Infinity", b"0", b"-1", b"true",
               b"null", b'""', b'"   "', b'"  de Vries  "', b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"',
               b'"a\\u0007b"', b'"\\ud83d\\ude00"', b'"' + b"x" * 100_000 + b'"', b"[]", b"{}", b"[" * 199 + b"]" * 199,
               b"[" * 5000 + b"]" * 5000, b'{"resourceType":"Bundle"}', b'{"resourceType":"Nope"}', b'"2026-02-30"',
               b'"9999-12-31T23:59:59+14:00"', b'"0001-01-01"', b'"999911120"', b'"12345678"', b'["a", " ", ""]']
"""JSON values put in place of one field of a valid document, so that the document still parses and the
mutation reaches the model and the mapping."""


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [prefix] + [path for key, child in children for path in _paths(child, (*prefix, key))]


def _json_field(rng: random.Random, seed: bytes) -> bytearray:
    document = json.loads(seed)
    path = rng.choice(_paths(document)[1:])
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = _PLACEHOLDER
    return bytearray(json.dumps(document).encode().replace(f'"{_PLACEHOLDER}"'.encode(), rng.choice(JSON_VALUES)))


def mutated(rng: random.Random, seeds: list[bytes]) -> bytes:
    seed = rng.choice(seeds)
    if seed.startswith(b"{") and rng.random() < 0.5:
        raw = _json_field(rng, seed)
        rounds = rng.choice([0, 0, 0, 1])
    else:
        raw, rounds = bytearray(seed), rng.choice([1, 1, 1, 2, 3, 5])
    for _ in range(rounds):
        if not raw:
            break
        rng.choice(MUTATIONS)(rng, raw)
    return bytes(raw)


@pytest.mark.parametrize("channel", list(Channel))
def test_mutated_examples_give_a_referral_or_coded_errors(channel: Channel) -> None:
    rng = random.Random(f"{SEED}:{channel.value}")
    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    for number in range(INPUTS):
        raw = mutated(rng, SEEDS[channel])
        try:
            outcome = PARSERS[channel](raw, known_products=PRODUCTS, pseudonym_key="k", received_at=NOW,
                                       max_bytes=MAX_BYTES)
        except Exception as exc:  # the point of the test: name the input that broke the adapter
            pytest.fail(f"{channel} input {number} (seed {SEED}) raised {type(exc).__name__}: {exc!s:.200}; "
                        f"input {raw[:300]!r}")
        if isinstance(outcome, Referral):
            outcome.model_dump_json()  # intake publishes it next: it must encode
            texts = (outcome.youth.given_name, outcome.youth.family_name, outcome.free_text, outcome.preference_notes)
            assert all(text is None or text == text.strip() != "" for text in texts), texts
            outcomes["accepted"] += 1
        else:
            assert isinstance(outcome, Rejection) and outcome.errors and outcome.failure is None
            assert all(isinstance(e.code, ErrorCode) and e.message for e in outcome.errors)
            outcomes["rejected"] += 1
            outcomes.update(f"  {code}" for code in {e.code.value for e in outcome.errors})
    seconds = time.perf_counter() - started
    print(f"\nfuzz {channel.value}: {INPUTS} inputs in {seconds:.1f}s: {outcomes['accepted']} accepted, "
          f"{outcomes['rejected']} rejected; rejections naming each code: "
          + ", ".join(f"{code.strip()} {count}" for code, count in sorted(outcomes.items()) if code.startswith(" ")))
    assert outcomes["accepted"] + outcomes["rejected"] == INPUTS
