"""What the hub's two HTTPS faces (the referrer gateway, the recipient API) share: uvicorn as a server the hub
starts and stops, and the certificate each serves."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from services.infra.secrets import SecretsError
from services.infra.tls import LocalCa


class HubServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM are the hub's (`run_services` stops every service), not uvicorn's."""
        yield


def server_certificate(configured: Path | None, secrets: Path, host: str, what: str, setting: str) -> Path:
    """The configured certificate, else the one provisioning made for `host` from the local CA (`up`, `access
    sync`): a service serving HTTPS never reads, nor needs, the CA's key."""
    if configured:
        return configured
    pem = LocalCa(secrets).gateway_pem_path(host)
    if not pem.is_file():
        raise SecretsError(f"no certificate for {what} at {pem}: `verwijshub up` or `verwijshub access sync` makes "
                           f"it from the local CA; or set {setting}")
    return pem
