"""The youth pseudonym: keeps one youth's events in one partition without putting a BSN in a key or log."""

import hashlib
import hmac


def youth_pseudonym(bsn: str, key: str) -> str:
    """HMAC-SHA256 of the BSN under the hub's secret key, hex; not reversible without the key."""
    return hmac.new(key.encode(), bsn.encode(), hashlib.sha256).hexdigest()


NOT_COMPUTED = ""
"""The pseudonym of a referral checked without the key: the gateway validates a message only, and intake, which
holds the key, computes the pseudonym when it reads the message from Kafka."""


def youth_pseudonym_if_keyed(bsn: str, key: str | None) -> str:
    """The pseudonym under `key`; NOT_COMPUTED without one (a check that needs no pseudonym)."""
    return NOT_COMPUTED if key is None else youth_pseudonym(bsn, key)
