"""The committed JSON Schemas and AsyncAPI document are what the code generates now."""

import json

from schemas.generate import SCHEMAS_DIR, asyncapi_document, stale


def test_generated_contract_files_are_current():
    assert stale() == [], "run `verwijshub schemas` and commit the result"


def test_asyncapi_names_every_inbound_channel_and_what_intake_writes():
    channels = asyncapi_document()["channels"]
    addresses = {channel["address"] for channel in channels.values()}
    assert {f"referrals.{c}.v1" for c in ("gp", "gi", "ggd", "court", "specialist")} <= addresses
    assert {"referrals.normalised.v1", "referrals.dlq.v1", "intake.accepted.v1", "status.{channel}.v1"} <= addresses


def test_document_schemas_require_the_youth_and_fix_the_channel():
    gi = json.loads((SCHEMAS_DIR / "json" / "gi-referral.schema.json").read_text())
    assert {"channel", "referral_id", "referral_date", "youth", "institution", "measure"} <= set(gi["required"])
    assert gi["properties"]["channel"]["const"] == "gi"
    assert gi["additionalProperties"] is False
