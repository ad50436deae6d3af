"""Secrets kept on disk: the principals' passwords and the pseudonym key, generated, mode 0600, never logged.

One directory (`VERWIJSHUB_SECRETS_DIR`, default `<data dir>/secrets`, mode 0700) holds them beside the local
CA (see `tls.py`). Only `verwijshub access client-config` ever prints a password.
"""

import json
import os
import secrets
from pathlib import Path

CREDENTIALS_FILE = "credentials.json"
PSEUDONYM_KEY_FILE = "pseudonym.key"
PUBLIC_DEFAULT_PSEUDONYM_KEY = "local-development-key-change-me"
"""The key earlier versions shipped in their source: anyone can recompute its pseudonyms, so it is refused."""


class SecretsError(RuntimeError):
    """A secret is missing or unusable; the message says which and what to do, never its value."""


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read, created with that mode (never briefly world-readable), and
    atomically: written beside it and renamed over it, so a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def new_password() -> str:
    return secrets.token_urlsafe(24)


class CredentialStore:
    """Principal -> password, in one 0600 JSON file; read afresh on every call so `rotate` in another process
    is seen."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CREDENTIALS_FILE

    def all(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def password(self, principal: str) -> str:
        try:
            return self.all()[principal]
        except KeyError:
            raise SecretsError(f"no password for principal {principal!r} in {self.path}; run "
                               "`verwijshub access sync` (or set VERWIJSHUB_KAFKA_USERNAME/PASSWORD)") from None

    def ensure(self, principals: list[str]) -> dict[str, str]:
        """The passwords of `principals`, generating those that have none yet."""
        known = self.all()
        missing = [p for p in principals if p not in known]
        if missing:
            known.update({p: new_password() for p in missing})
            write_private(self.path, json.dumps(known, indent=1, sort_keys=True).encode())
        return {p: known[p] for p in principals}

    def store(self, principal: str, password: str) -> None:
        """Set one principal's password (`access rotate`, once the broker took it). The file is replaced whole, so
        a reader sees the old passwords or the new ones, never half a file."""
        known = self.all()
        known[principal] = password
        write_private(self.path, json.dumps(known, indent=1, sort_keys=True).encode())


def pseudonym_key(directory: Path, configured: str | None) -> str:
    """The configured key, else the one generated on first use (32 random bytes) in the secrets directory.
    The old public default is refused: with it a pseudonym is as good as the BSN."""
    if configured is not None:
        if configured == PUBLIC_DEFAULT_PSEUDONYM_KEY:
            raise SecretsError("VERWIJSHUB_PSEUDONYM_KEY is the old public default; unset it to have a random key "
                               "generated, or set a secret one")
        return configured
    path = directory / PSEUDONYM_KEY_FILE
    if not path.is_file():
        write_private(path, secrets.token_hex(32).encode())
    return path.read_text().strip()
