"""What a GP referral asks for, read alike from an R4 ServiceRequest and an STU3 ReferralRequest.

STU3's ReferralRequest became R4's ServiceRequest, with its elements renamed or moved (docs/design.md, "FHIR
versions"). The mapping (services/intake/gp.py) reads a `RequestedCare` and never the resource, so it reads both
versions one way; the error locations still name the element the sender wrote.
"""

from dataclasses import dataclass
from typing import Any

from schemas.referral import AGB_SYSTEM, CATEGORY_SYSTEM, PRODUCT_SYSTEM

_ELEMENTS = {
    "ServiceRequest": {"identifier": "identifier", "authoredOn": "authoredOn", "product": "code.coding",
                       "preferred provider": "performer.identifier", "free text": "note"},
    "ReferralRequest": {"identifier": "identifier", "authoredOn": "authoredOn", "product": "serviceRequested.coding",
                        "preferred provider": "recipient.identifier", "free text": "note"},
}
"""Where each version keeps what the hub reads: the product in ServiceRequest.code or in ReferralRequest's
`serviceRequested`, the hub's categories in `category` or in ReferralRequest's `type` (its "type of referral"), a
preferred provider among the `performer`s or the `recipient`s, the free text in `reasonCode` texts and `note`s (and
ReferralRequest's `description`)."""


@dataclass(frozen=True)
class RequestedCare:
    """The care a referral asks for, as the hub reads it; values as sent (the mapping checks them)."""

    resource_type: str
    identifier: str | None
    authored_on: object
    product: str | None
    categories: frozenset[str]
    names_preferred_provider: bool
    """A performer (recipient) is named by an AGB identifier: its value, `preferred_provider`, is then checked."""
    preferred_provider: str | None
    free_text: str | None

    def location(self, what: str) -> str:
        """The FHIR path of `what` (a key of `_ELEMENTS`) in the resource the sender wrote."""
        return f"{self.resource_type}.{_ELEMENTS[self.resource_type][what]}"


def requested_care(request: Any) -> RequestedCare:
    """A validated ServiceRequest (R4) or ReferralRequest (STU3) read as `RequestedCare`."""
    if request.get_resource_type() == "ReferralRequest":
        concepts, categories = request.serviceRequested or [], [request.type] if request.type else []
        performers, description = request.recipient or [], [request.description]
    else:
        concepts, categories = [request.code] if request.code else [], request.category or []
        performers, description = request.performer or [], []
    agb = next((p.identifier for p in performers if p.identifier is not None and p.identifier.system == AGB_SYSTEM),
               None)
    texts = [*(rc.text for rc in request.reasonCode or [] if rc and rc.text), *description,
             *(note.text for note in request.note or [] if note and note.text)]
    return RequestedCare(
        resource_type=request.get_resource_type(),
        identifier=identifier_value(request.identifier),
        authored_on=request.authoredOn,
        product=next((c.code.strip() for concept in concepts for c in concept.coding or []
                      if c.system == PRODUCT_SYSTEM and c.code), None),
        categories=frozenset(c.code for concept in categories for c in concept.coding or []
                             if c.system == CATEGORY_SYSTEM),
        names_preferred_provider=agb is not None,
        preferred_provider=agb.value if agb is not None else None,
        free_text="\n".join(text for text in texts if text) or None,
    )


def identifier_value(identifiers: list[Any] | None, system: str | None = None) -> str | None:
    """The first non-blank value among `identifiers` (of `system`, when given), trimmed."""
    for identifier in identifiers or []:
        if (system is None or identifier.system == system) and identifier.value and identifier.value.strip():
            return identifier.value.strip()
    return None
