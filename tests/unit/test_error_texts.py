"""No error text quotes a submitted value: errors travel on status topics, in dead-letter headers and in the
gateway's Task (`statusReason`), which operations and analytics read (docs/security.md). The values stay in the
dead letter's raw bytes only."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.referral import Channel
from services.infra.registry_files import load_registry
from services.infra.settings import REPO_ROOT
from services.intake.app import PARSERS
from services.intake.outcome import Rejection, schema_message

EXAMPLES = REPO_ROOT / "schemas" / "examples"
PRODUCTS = frozenset(load_registry(REPO_ROOT / "deploy" / "registry").products)
NOW = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
HL7_SEPARATORS = re.compile(r"[|^~&\\\r\n]")
BAD_DATES = ["2014-13-45", "2012-02-30", "17-05-2012", "20121317", "2012/05/17", "not-a-date-4711"]
BAD_BSNS = ["123456789", "12345678X", "99991112", "000000000"]
BAD_POSTCODES = ["XY12 ZZ9", "97123 HB", "12AB"]
BAD_PRODUCTS = ["99Z99", "ZZZ01"]


def leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [str(value)] if value is not None and not isinstance(value, bool) else []


def submitted(raw: bytes) -> set[str]:
    """The values in a message long enough to be told apart from the words of a fixed text: every token of an HL7
    message, every leaf of a JSON one, that holds a digit (dates, BSNs, AGB codes, postcodes, product codes, ids)
    or is a person's or an organisation's name."""
    text = raw.decode(errors="replace")
    try:
        tokens = leaves(json.loads(text))
    except ValueError:
        tokens = HL7_SEPARATORS.split(text)
    return {t.strip() for t in tokens if len(t.strip()) >= 4 and (re.search(r"\d", t) or " " in t.strip())}


def messages(channel: Channel, raw: bytes) -> list[str]:
    outcome = PARSERS[channel](raw, known_products=PRODUCTS, pseudonym_key="k", received_at=NOW)
    assert isinstance(outcome, Rejection), "a malformed message is rejected"
    return [e.message for e in outcome.errors]


def assert_quotes_nothing(channel: Channel, raw: bytes, values: set[str]) -> None:
    texts = messages(channel, raw)
    quoted = {(value, text) for value in values for text in texts if value in text}
    assert not quoted, f"error texts quote submitted values: {quoted}"


INVALID = sorted(EXAMPLES.glob("*/invalid-*"))


@pytest.mark.parametrize("path", INVALID, ids=[f"{p.parent.name}/{p.name}" for p in INVALID])
def test_no_invalid_example_is_quoted_in_its_errors(path: Path):
    raw = path.read_bytes()
    values = submitted(raw)
    assert values, "the scan has something to look for"
    assert_quotes_nothing(Channel(path.parent.name), raw, values)


def json_with_youth(path: Path, **youth: str) -> bytes:
    document = json.loads(path.read_text())
    document["youth"].update(youth)
    return json.dumps(document).encode()


def crafted() -> list[tuple[Channel, bytes, str]]:
    """Each channel's valid example with one malformed birth date, BSN, postcode or product code in it."""
    cases = []
    for channel, name in ((Channel.GI, "valid-ots.json"), (Channel.GGD, "valid-school.json"),
                          (Channel.COURT, "valid-divorce.json")):
        path = EXAMPLES / channel.value / name
        cases += [(channel, json_with_youth(path, birth_date=v), v) for v in BAD_DATES]
        cases += [(channel, json_with_youth(path, bsn=v), v) for v in BAD_BSNS]
        cases += [(channel, json_with_youth(path, postcode=v), v) for v in BAD_POSTCODES]
        document = json.loads(path.read_text())
        cases += [(channel, json.dumps({**document, "product": v}).encode(), v) for v in BAD_PRODUCTS]
    gp = (EXAMPLES / "gp" / "valid-basis-jeugdhulp.json").read_text()
    cases += [(Channel.GP, gp.replace("2012-05-17", v).encode(), v) for v in BAD_DATES]
    cases += [(Channel.GP, gp.replace("999911120", v).encode(), v) for v in BAD_BSNS]
    cases += [(Channel.GP, gp.replace("9712 HB", v).encode(), v) for v in BAD_POSTCODES]
    hl7 = (EXAMPLES / "specialist" / "valid-product.hl7").read_text()
    cases += [(Channel.SPECIALIST, hl7.replace("20120517", v.replace("-", "")).encode(), v.replace("-", ""))
              for v in BAD_DATES]
    cases += [(Channel.SPECIALIST, hl7.replace("999911120", v).encode(), v) for v in BAD_BSNS]
    cases += [(Channel.SPECIALIST, hl7.replace("9712 HB", v).encode(), v) for v in BAD_POSTCODES]
    return cases


CRAFTED = crafted()


@pytest.mark.parametrize(("channel", "raw", "value"), CRAFTED,
                         ids=[f"{c.value}-{v}" for c, _, v in CRAFTED])
def test_a_malformed_date_bsn_postcode_or_product_is_never_quoted(channel, raw, value):
    assert value.encode() in raw, "the malformed value is in the message"
    assert_quotes_nothing(channel, raw, submitted(raw) | {value})


def test_pydantic_texts_are_kept_only_where_they_name_the_schema_alone():
    quoting = {"type": "value_error", "msg": "Value error, 2012-14-07 is not a date"}
    assert "2012-14-07" not in schema_message(quoting)
    assert schema_message({"type": "missing", "msg": "Field required"}) == "Field required."
