"""The youth pseudonym: keeps one youth's events in one partition without putting a BSN in a key or log."""

import hashlib
import hmac


def youth_pseudonym(bsn: str, key: str) -> str:
    """HMAC-SHA256 of the BSN under the hub's secret key, hex; not reversible without the key."""
    return hmac.new(key.encode(), bsn.encode(), hashlib.sha256).hexdigest()
