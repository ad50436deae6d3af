"""The local certificate authority: TLS for the embedded Kafka without a real PKI.

On first start the project makes a CA and a broker certificate for the broker's address with the
`cryptography` library; private keys are kept 0600 in the secrets directory. Clients trust `ca.pem`
(a public certificate). The CA's key lives apart, in `ca/ca.key` (a 0700 directory), and only the admin's side
reads it: `kafka start`, `up` before it starts the services, `access sync`. They issue the gateway's certificate
too, so no service ever needs the key. Production replaces all of this with certificates from a real CA
(docs/security.md).
"""

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.infra.secrets import SecretsError, write_private

VALID_DAYS = 825


@dataclass(frozen=True)
class LocalCa:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's private key, in a directory of its own that only the admin's commands read."""
        return self.directory / "ca" / "ca.key"

    def _adopt_legacy_key(self) -> None:
        """An earlier data directory kept the key beside the certificates, where every process looked: moved."""
        legacy = self.directory / "ca.key"
        if legacy.is_file() and not self.ca_key.is_file():
            self.ca_key.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(legacy, self.ca_key)

    def broker_pem(self, host: str) -> Path:
        """Private key (PKCS#8) and certificate chain of the broker on `host`, in the PEM file Kafka reads."""
        return self.directory / f"broker-{host}.pem"

    def ensure(self, host: str) -> Path:
        """The CA (made once) and a broker certificate for `host` and localhost; returns the broker's PEM file."""
        self._adopt_legacy_key()
        if not self.ca_cert.is_file() or not self.ca_key.is_file():
            self._make_ca()
        pem = self.broker_pem(host)
        if not pem.is_file():
            self._make_broker(host, pem)
        return pem

    def gateway_pem_path(self, host: str) -> Path:
        """Where the referrer gateway's key and certificate chain for `host` are (`gateway_pem` makes them)."""
        return self.directory / f"gateway-{host}.pem"

    def gateway_pem(self, host: str) -> Path:
        """Key and certificate chain of the referrer gateway on `host` (made once; the CA must be this one's): the
        admin's side, which reads the CA key."""
        self._adopt_legacy_key()
        pem = self.gateway_pem_path(host)
        if not pem.is_file():
            if self.ca_cert.is_file() and not self.ca_key.is_file():  # another CA's certificate: never replace it
                raise SecretsError(f"{self.ca_cert} is a CA without its key here; give the gateway a certificate "
                                   "with VERWIJSHUB_GATEWAY_CERT_FILE")
            if not self.ca_key.is_file():
                self._make_ca()
            self._make_broker(host, pem, "verwijshub-gateway")
        return pem

    def client_pem(self, organisation_id: str, name: str) -> bytes:
        """A new key and client certificate (PEM: key, certificate, CA) for a referrer organisation's MLLP sender,
        its organisation (O) the registry id the gateway binds the sender to. Nothing is kept here: the
        organisation holds the only copy of the key."""
        self._adopt_legacy_key()
        if not self.ca_key.is_file():
            raise SecretsError(f"no CA key in {self.directory}: client certificates come from the hub's own CA")
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation_id),
                             x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return (_pkcs8(key) + cert.public_bytes(serialization.Encoding.PEM)
                + ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue_gateway_pem(self, host: str) -> Path | None:
        """The gateway's certificate, made now if this CA can sign it (provisioning: `up`, `access sync`); None
        where the CA here is another's, without its key (the gateway then needs VERWIJSHUB_GATEWAY_CERT_FILE)."""
        self._adopt_legacy_key()
        if self.ca_cert.is_file() and not self.ca_key.is_file() and not self.gateway_pem_path(host).is_file():
            return None
        return self.gateway_pem(host)

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Verwijshub local CA")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_key.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(self.ca_key, _pkcs8(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _make_broker(self, host: str, pem: Path, role: str = "verwijshub-broker") -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        for candidate in dict.fromkeys([host, "127.0.0.1"]):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(candidate)))
            except ValueError:
                names.append(x509.DNSName(candidate))
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{role} {host}")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write_private(pem, _pkcs8(key) + cert.public_bytes(serialization.Encoding.PEM)
                      + ca_cert.public_bytes(serialization.Encoding.PEM))


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8: the form Kafka's PEM key store reads (the file's 0600 mode protects it)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def mutual_tls_context(server_pem: Path, client_ca: Path) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by `client_ca` (MLLP's senders)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(server_pem, server_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_organisation(peercert: dict | None) -> str | None:
    """The organisation (O) of a verified peer certificate as `ssl` gives it, or None."""
    for rdn in (peercert or {}).get("subject", ()):
        for attribute, value in rdn:
            if attribute == "organizationName":
                return value
    return None
