"""Referral messages as each channel's referrer system sends them, built from the examples under schemas/examples
with some fields replaced: for `verwijshub simulate` and the tests."""

import copy
import json
import random
from datetime import date
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
GP_EXAMPLE = EXAMPLES / "gp" / "valid-basis-jeugdhulp.json"
DOCUMENT_EXAMPLES = {"gi": EXAMPLES / "gi" / "valid-ots.json", "ggd": EXAMPLES / "ggd" / "valid-school.json",
                     "court": EXAMPLES / "court" / "valid-divorce.json"}
SPECIALIST_EXAMPLE = EXAMPLES / "specialist" / "valid-product.hl7"
EXAMPLE_REFERRERS = {"gp": "01012345", "specialist": "01098765", "gi": "98000101", "ggd": "01076543",
                     "court": "00000001003214345000"}
"""The referrer each channel's example names (the practitioner's, specialist's, institution's, doctor's AGB, the
court's issuer id): the messages built here are sent as the organisation that lists it (`referrers.json`)."""


def random_bsn(rng: random.Random | None = None) -> str:
    """A BSN that passes the elfproef."""
    rng = rng or random.Random()
    while True:
        digits = [rng.randint(0, 9) for _ in range(8)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10 and digits[0] != 0:
            return "".join(map(str, digits)) + str(check)


def gp_bundle(**changes: Any) -> dict[str, Any]:
    """The GP example Bundle with some fields replaced: referral_id, bsn, birth_date, postcode, product,
    categories (list of codes), performer_agb, practitioner_agb, authored_on, given_name, family_name, note."""
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
    if "given_name" in changes:
        patient["name"] = [{"family": changes.get("family_name", "Jansen"), "given": [changes["given_name"]]}]
    if "note" in changes:
        request["note"] = [{"text": changes["note"]}]
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


def document(channel: str, *, referral_id: str, referral_date: date, bsn: str, birth_date: date, postcode: str,
             given_name: str, family_name: str, product: str | None, free_text: str,
             measure: str | None = None) -> dict[str, Any]:
    """A gi, ggd or court JSON document: the channel's example with the youth and the referral replaced."""
    doc = copy.deepcopy(json.loads(DOCUMENT_EXAMPLES[channel].read_text()))
    doc.update(referral_id=referral_id, referral_date=referral_date.isoformat(), free_text=free_text)
    doc["youth"] = {"bsn": bsn, "birth_date": birth_date.isoformat(), "postcode": postcode,
                    "given_name": given_name, "family_name": family_name}
    if product:
        doc["product"] = product
    else:
        doc.pop("product", None)
    if measure:
        doc["measure"] = measure
    if channel == "court":
        doc["order"]["date"] = referral_date.isoformat()
    return doc


def specialist_message(*, referral_id: str, referral_date: date, bsn: str, birth_date: date, postcode: str,
                       given_name: str, family_name: str, product: str) -> bytes:
    """The HL7 v2 REF^I12 example with the youth, the referral and the product replaced."""
    segments = SPECIALIST_EXAMPLE.read_text().replace("\r\n", "\r").replace("\n", "\r").split("\r")
    out = []
    for segment in filter(None, segments):
        fields = segment.split("|")
        if fields[0] == "RF1":
            fields[3] = f"{product}^^IJWPROD"
            fields[6], fields[7] = referral_id, referral_date.strftime("%Y%m%d")
        elif fields[0] == "PID":
            fields[3] = f"{bsn}^^^NLMINBIZA^NNNLD"
            fields[5] = f"{family_name}^{given_name}"
            fields[7] = birth_date.strftime("%Y%m%d")
            address = fields[11].split("^")
            address[4] = postcode
            fields[11] = "^".join(address)
        out.append("|".join(fields))
    return ("\r".join(out) + "\r").encode()
