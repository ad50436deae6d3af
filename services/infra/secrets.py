"""Secrets kept on disk: the principals' passwords and the pseudonym key, generated, mode 0600, never logged.

One directory (`VERWIJSHUB_SECRETS_DIR`, default `<data dir>/secrets`, mode 0700) holds them beside the local
CA (see `tls.py`). Each principal's password is a file of its own (`credentials/<principal>.password`), so a
process is given its own credential and no other: `up` hands each service only the path of its file
(VERWIJSHUB_KAFKA_CREDENTIAL_FILE). Only `verwijshub access client-config` ever prints a password.
"""

import json
import os
import secrets
from pathlib import Path

CREDENTIALS_DIR = "credentials"
CREDENTIAL_SUFFIX = ".password"
LEGACY_CREDENTIALS_FILE = "credentials.json"
"""Where earlier versions kept every principal's password in one file; moved into one file each on first use."""
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


def credential_file(directory: Path, principal: str) -> Path:
    """Where `principal`'s password lives in the secrets directory `directory`."""
    return directory / CREDENTIALS_DIR / f"{principal}{CREDENTIAL_SUFFIX}"


def principal_of(path: Path) -> str:
    """The principal a credential file belongs to: its name without `.password`."""
    if not path.name.endswith(CREDENTIAL_SUFFIX):
        raise SecretsError(f"{path} is no credential file (<principal>{CREDENTIAL_SUFFIX})")
    return path.name.removesuffix(CREDENTIAL_SUFFIX)


def write_credential(directory: Path, principal: str, password: str) -> Path:
    """Store one principal's password in its own file (0600, in a 0700 directory), replacing it whole: the one
    way the hub writes a credential (provisioning, `access rotate`)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credential_file(directory, principal)
    write_private(path, password.encode())
    return path


def read_credential(path: Path) -> str:
    """The password in one principal's credential file: what a service loads, and nothing else."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SecretsError(f"no credential file {path}; run `verwijshub access sync` (or set "
                           "VERWIJSHUB_KAFKA_USERNAME/PASSWORD)") from None


def migrate_legacy_credentials(directory: Path) -> None:
    """An earlier data directory's `credentials.json` (every password in one file) becomes one file per principal,
    then is removed: a file holding them all is what a service must not be able to read."""
    legacy = directory / LEGACY_CREDENTIALS_FILE
    if not legacy.is_file():
        return
    for principal, password in json.loads(legacy.read_text()).items():
        if not credential_file(directory, principal).is_file():
            write_credential(directory, principal, password)
    legacy.unlink()


class CredentialStore:
    """Every principal's password, one 0600 file each: the admin's side (provisioning, `access`, the local broker).
    Read afresh on every call so `rotate` in another process is seen. A service never uses it: it reads its own
    file (`read_credential`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, principal: str) -> Path:
        return credential_file(self.directory, principal)

    def all(self) -> dict[str, str]:
        migrate_legacy_credentials(self.directory)
        folder = self.directory / CREDENTIALS_DIR
        files = sorted(folder.glob(f"*{CREDENTIAL_SUFFIX}")) if folder.is_dir() else []
        return {principal_of(path): read_credential(path) for path in files}

    def password(self, principal: str) -> str:
        migrate_legacy_credentials(self.directory)
        return read_credential(self.path(principal))

    def ensure(self, principals: list[str]) -> dict[str, str]:
        """The passwords of `principals`, generating those that have none yet."""
        known = self.all()
        for principal in principals:
            if principal not in known:
                known[principal] = new_password()
                write_credential(self.directory, principal, known[principal])
        return {p: known[p] for p in principals}

    def store(self, principal: str, password: str) -> None:
        """Set one principal's password (`access rotate`, once the broker took it). Its file is replaced whole, so
        a reader sees the old password or the new one, never half a file."""
        migrate_legacy_credentials(self.directory)
        write_credential(self.directory, principal, password)


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
