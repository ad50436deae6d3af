"""Bearer tokens of the referrer gateway: issued per referrer principal by `verwijshub access token`, checked
by the gateway on every request.

Only a SHA-256 of each token is kept (`gateway-tokens.json`, 0600, in the secrets directory): a copy of the file
lets nobody submit. Issuing a token for a principal replaces its previous one, so issuing again is also how a
stolen token is revoked. The gateway reads the file again when it changes, so a new token works at once.
"""

import hashlib
import json
import secrets
from pathlib import Path

from services.infra.secrets import write_private

TOKENS_FILE = "gateway-tokens.json"
PREFIX = "vwh_"
"""Tokens start so, which makes one found in a log or a repository recognisable (secret scanners)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / TOKENS_FILE
        self._seen: tuple[tuple[int, int], dict[str, str]] | None = None

    def _principals(self) -> dict[str, str]:
        """principal -> SHA-256 of its token, as on disk."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def issue(self, principal: str) -> str:
        """A new token for `principal`; its previous token stops working."""
        token = PREFIX + secrets.token_urlsafe(32)
        known = self._principals()
        known[principal] = _digest(token)
        write_private(self.path, json.dumps(known, indent=1, sort_keys=True).encode())
        return token

    def principal_of(self, token: str) -> str | None:
        """Whose token this is, or None. The file is read again only when it changed (each issue replaces it:
        a new inode)."""
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return None
        version = (found.st_ino, found.st_mtime_ns)
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, {digest: who for who, digest in self._principals().items()})
        return self._seen[1].get(_digest(token))

    def fingerprint(self, token: str) -> str:
        """What a web session keeps of the token it began with (services/recipients/inbox.py): not the token."""
        return _digest(token)[:32]

    def still_issued(self, principal: str, fingerprint: str) -> bool:
        """Whether `principal`'s token is still the one of `fingerprint`: issuing a new one ends its sessions."""
        digest = self._principals().get(principal)
        return digest is not None and secrets.compare_digest(digest[:32], fingerprint)
