"""Test referrals: the hand-written examples under schemas/examples, varied per test."""

import copy
import json
import random
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
GP_EXAMPLE = EXAMPLES / "gp" / "valid-basis-jeugdhulp.json"


BSNS_MADE: set[str] = set()
"""Every BSN the tests made: the log scan at the end of the run looks for each of them."""


def random_bsn(rng: random.Random | None = None) -> str:
    """A BSN that passes the elfproef, different per call, so tests never share a youth."""
    rng = rng or random.Random()
    while True:
        digits = [rng.randint(0, 9) for _ in range(8)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1))) % 11
        if check < 10 and digits[0] != 0:
            bsn = "".join(map(str, digits)) + str(check)
            BSNS_MADE.add(bsn)
            return bsn


def gp_bundle(**changes: Any) -> dict[str, Any]:
    """The GP example Bundle with some fields replaced: referral_id, bsn, birth_date, postcode,
    product, categories (list of codes), performer_agb, practitioner_agb, authored_on."""
    bundle = copy.deepcopy(json.loads(GP_EXAMPLE.read_text()))
    resources = {entry["resource"]["resourceType"]: entry["resource"] for entry in bundle["entry"]}
    request, patient, practitioner = resources["ServiceRequest"], resources["Patient"], resources["Practitioner"]
    if "referral_id" in changes:
        request["identifier"][0]["value"] = changes["referral_id"]
    if "authored_on" in changes:
        request["authoredOn"] = changes["authored_on"]
    if "bsn" in changes:
        patient["identifier"][0]["value"] = changes["bsn"]
    if "birth_date" in changes:
        patient["birthDate"] = changes["birth_date"]
    if "postcode" in changes:
        patient["address"][0]["postalCode"] = changes["postcode"]
    if "product" in changes:
        request["code"] = {"coding": [{"system": "urn:ijw:productcode", "code": changes["product"]}]}
    if "categories" in changes:
        request["category"] = [{"coding": [{"system": "urn:verwijshub:referral-category", "code": c}]}
                               for c in changes["categories"]]
    if "performer_agb" in changes:
        request["performer"] = [{"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/agb-z",
                                                "value": changes["performer_agb"]}}]
    if "practitioner_agb" in changes:
        practitioner["identifier"][0]["value"] = changes["practitioner_agb"]
    return bundle


def gp_bytes(**changes: Any) -> bytes:
    return json.dumps(gp_bundle(**changes)).encode()
