"""The local certificate authority: TLS for the embedded Kafka without a real PKI.

On first start the project makes a CA and a broker certificate for the broker's address with the
`cryptography` library; private keys are kept 0600 in the secrets directory. Clients trust `ca.pem`
(a public certificate). The CA's key lives apart, in `ca/ca.key` (a 0700 directory), and only the admin's side
reads it: `kafka start`, `up` before it starts the services, `access sync`. They issue the gateway's certificate
too, so no service ever needs the key. Production replaces all of this with certificates from a real CA
(docs/security.md).

MLLP client certificates (`verwijshub access certificate`) are listed as issued (`ca/issued.json`: serial,
organisation, validity; never a key) so that `verwijshub access revoke-certificate` can revoke an organisation's:
they go on a certificate revocation list signed by the CA (`mllp-crl.pem`, public), which the gateway's MLLP
listener checks every client certificate against and reloads when it changes.
"""

import ipaddress
import json
import os
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.infra.secrets import SecretsError, write_private

VALID_DAYS = 825
CRL_VALID_DAYS = VALID_DAYS
"""A revocation list past its next update makes OpenSSL refuse every certificate it covers: it is signed anew
on every revocation and every `up` and `access sync`, and valid as long as a certificate."""


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

    @property
    def crl(self) -> Path:
        """The revocation list of MLLP client certificates (public: the gateway reads it)."""
        return self.directory / "mllp-crl.pem"

    @property
    def issued_file(self) -> Path:
        return self.directory / "ca" / "issued.json"

    def issued(self) -> list[dict[str, str]]:
        """Every MLLP client certificate issued: serial (hex), organisation, not_after, revoked_at (when revoked)."""
        return json.loads(self.issued_file.read_text()) if self.issued_file.is_file() else []

    def revoke(self, organisation_id: str, serial: str | None = None) -> list[str]:
        """Revoke `organisation_id`'s client certificates (only `serial`, when given) not revoked yet, and sign the
        revocation list anew; returns the serials revoked now."""
        issued, now = self.issued(), datetime.now(UTC)
        revoked = []
        for entry in issued:
            if entry["organisation"] == organisation_id and "revoked_at" not in entry \
                    and (serial is None or int(serial, 16) == int(entry["serial"], 16)):
                entry["revoked_at"] = now.isoformat()
                revoked.append(entry["serial"])
        write_private(self.issued_file, json.dumps(issued, indent=1).encode())
        self.write_crl()
        return revoked

    def write_crl(self) -> Path:
        """Sign the revocation list of every revoked client certificate (empty: none), replacing it atomically."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if self.crl.is_file():  # OpenSSL takes the list updated last; its times are whole seconds
            before = x509.load_pem_x509_crl(self.crl.read_bytes()).last_update_utc
            time.sleep(max(0.0, (before + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()))
        now = datetime.now(UTC).replace(microsecond=0)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now).next_update(now + timedelta(days=CRL_VALID_DAYS))
                   .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False))
        for entry in self.issued():
            if "revoked_at" in entry:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(entry["serial"], 16))
                    .revocation_date(datetime.fromisoformat(entry["revoked_at"])).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        write_private(self.crl, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl

    def provide_crl(self) -> None:
        """The revocation list re-signed (provisioning: `up`, `access sync`) where this CA's key is, so it never
        expires while the hub is kept running; nothing where the CA is another's."""
        if self.ca_key.is_file() and self.ca_cert.is_file():
            self.write_crl()

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
        issued = [*self.issued(), {"serial": format(cert.serial_number, "X"), "organisation": organisation_id,
                                   "not_after": cert.not_valid_after_utc.isoformat()}]
        write_private(self.issued_file, json.dumps(issued, indent=1).encode())
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


def mutual_tls_context(server_pem: Path, client_ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by `client_ca` (MLLP's senders), and, once
    `crl` exists, not revoked on it (`load_crl`)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(server_pem, server_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    if crl is not None and crl.is_file():
        load_crl(context, crl)
    return context


def load_crl(context: ssl.SSLContext, crl: Path) -> frozenset[int]:
    """Check client certificates against the revocation list `crl` from now on; returns its revoked serials.
    Loaded again after a change, the list joins the earlier ones in the context's store, and OpenSSL uses the
    one updated last (each is a superset of those before it)."""
    context.load_verify_locations(cafile=str(crl))
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return frozenset(entry.serial_number for entry in x509.load_pem_x509_crl(crl.read_bytes()))


def certificate_serial(peercert: dict | None) -> int | None:
    """The serial number of a verified peer certificate as `ssl` gives it (hex), or None."""
    serial = (peercert or {}).get("serialNumber")
    return int(serial, 16) if serial else None


def certificate_organisation(peercert: dict | None) -> str | None:
    """The organisation (O) of a verified peer certificate as `ssl` gives it, or None."""
    for rdn in (peercert or {}).get("subject", ()):
        for attribute, value in rdn:
            if attribute == "organizationName":
                return value
    return None
