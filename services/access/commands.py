"""`verwijshub access`: principals, passwords and ACLs reconciled with the registry; client configurations.

Run as the admin principal. Passwords live in the secrets directory (0600) and are printed only by
`client-config`; nothing here logs one.
"""

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table

from schemas.referral import Channel
from schemas.registry import ReferrerOrganisation, Registry
from services.access.kafka_admin import AccessAdmin, AccessError
from services.access.matrix import Principal, all_principals, grants
from services.access.senders import organisation_of
from services.access.strimzi import manifests
from services.access.tokens import TokenStore
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.connection import KafkaConnection
from services.infra.provisioning import provision_hub_topics
from services.infra.registry_files import RegistryError, load_registry
from services.infra.registry_topic import latest_registry
from services.infra.secrets import CredentialStore, SecretsError, new_password, write_private
from services.infra.settings import Settings, get_settings
from services.infra.tls import LocalCa

access_app = typer.Typer(help="Who may connect and what each principal may do, reconciled with the registry.",
                         no_args_is_help=True)
console = Console(stderr=True)
MANAGED_PREFIXES = ("verwijshub-", "referrer-", "wij-", "provider-")
"""SCRAM users and ACLs whose principal starts so are the hub's to add and remove; others are left alone."""


@dataclass(frozen=True)
class SyncResult:
    topics_created: list[str]
    users_added: int
    users_removed: int
    grants_added: int
    grants_removed: int
    grants: int


def _managed(name: str) -> bool:
    return name.startswith(MANAGED_PREFIXES)


async def registry_in_force(settings: Settings) -> Registry:
    """The registry published on registry.v1 (a live change, e.g. a provider's stop), else the files."""
    return await latest_registry(settings.connection(principals.ADMIN)) or load_registry(settings.registry_dir)


def provide_gateway_certificate(settings: Settings) -> None:
    """The gateway's TLS certificate from the local CA, made here on the admin's side so that the gateway never
    reads the CA's key (none when one is configured, or the CA here is another's); and the MLLP revocation list
    signed anew, so that it never expires."""
    ca = LocalCa(settings.secrets)
    if not settings.gateway_cert_file:
        ca.issue_gateway_pem(settings.gateway_host)
    if not settings.recipients_cert_file and settings.recipients_host != settings.gateway_host:
        ca.issue_gateway_pem(settings.recipients_host)  # the recipient API's, on its host
    ca.provide_crl()


def sync_access(settings: Settings, registry: Registry) -> SyncResult:
    """Make the broker match the registry: every principal's topics, SCRAM user and grants; a principal no
    longer in the registry loses its user and grants; a stopped provider loses write at once and read after
    the grace period (VERWIJSHUB_ACCESS_READ_GRACE_DAYS)."""
    admin_connection = settings.connection(principals.ADMIN)
    provisioned = provision_hub_topics(settings, registry)
    provide_gateway_certificate(settings)
    people = [p.name for p in all_principals(registry)]
    passwords = CredentialStore(settings.secrets).ensure(people)
    admin = AccessAdmin(admin_connection)
    present_users = {user for user in admin.scram_users() if _managed(user)}
    new_users = {p for p in people if p not in present_users and p != principals.ADMIN}
    admin.set_passwords({user: passwords[user] for user in sorted(new_users)})
    gone_users = present_users - set(people)
    admin.delete_users(gone_users)
    wanted = set(grants(registry, SystemClock().now().date(), timedelta(days=settings.access_read_grace_days)))
    present = {grant for grant in admin.grants() if _managed(grant.principal)}
    admin.remove(present - wanted)
    admin.add(wanted - present)
    users = set(people) - {principals.ADMIN}
    admin.settle(lambda: users <= admin.scram_users() and not gone_users & admin.scram_users()
                 and {g for g in admin.grants() if _managed(g.principal)} == wanted)
    return SyncResult(provisioned.created, len(new_users), len(gone_users), len(wanted - present),
                      len(present - wanted), len(wanted))


def _settings_and_registry() -> tuple[Settings, Registry]:
    settings = get_settings()
    try:
        return settings, asyncio.run(registry_in_force(settings))
    except (RegistryError, OSError, SecretsError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _principal(registry: Registry, name: str) -> Principal:
    found = next((p for p in all_principals(registry) if p.name == name), None)
    if found is None:
        console.print(f"[red]no principal {name!r}; `verwijshub access list` shows them[/red]")
        raise typer.Exit(2)
    return found


@access_app.command("sync")
def sync() -> None:
    """Reconcile topics, SCRAM users and ACLs with the registry in force (`up` and `registry publish` do this)."""
    settings, registry = _settings_and_registry()
    try:
        result = sync_access(settings, registry)
    except (AccessError, SecretsError) as exc:
        console.print(f"[red]access not synchronised: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"access in sync with registry {registry.version}: {result.grants} grants "
                  f"(+{result.grants_added} -{result.grants_removed}), users +{result.users_added} "
                  f"-{result.users_removed}")


@access_app.command("list")
def list_access(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False) -> None:
    """Every principal of the registry, whether its SCRAM user exists, and the grants the broker holds for it."""
    settings, registry = _settings_and_registry()
    admin = AccessAdmin(settings.connection(principals.ADMIN))
    users, present = admin.scram_users(), admin.grants()
    rows = []
    for person in all_principals(registry):
        held = sorted(g for g in present if g.principal == person.name)
        rows.append({"principal": person.name, "kind": person.kind,
                     "user": person.name in users or person.name == principals.ADMIN,
                     "grants": [f"{g.operation.value} {g.resource.value} {g.name}"
                                f"{'*' if g.pattern.value == 'prefixed' else ''}" for g in held]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("principal", "kind", "user", "grants")
    for row in rows:
        grants_text = "super user" if row["principal"] == principals.ADMIN else "\n".join(row["grants"]) or "-"
        table.add_row(row["principal"], row["kind"], "yes" if row["user"] else "no", grants_text)
    Console().print(table)


class ConfigFormat(StrEnum):
    LIBRDKAFKA = "librdkafka"
    JAVA = "java"
    ENV = "env"


def client_config_text(kafka: KafkaConnection, form: ConfigFormat) -> str:
    """A ready client configuration: `kcat -F`, Kafka's `--command-config`, or the hub's own settings."""
    props = {ConfigFormat.LIBRDKAFKA: kafka.librdkafka, ConfigFormat.JAVA: kafka.java,
             ConfigFormat.ENV: kafka.environment}[form]()
    return "".join(f"{key}={value}\n" for key, value in props.items())


@access_app.command("client-config")
def client_config(
    principal: Annotated[str, typer.Argument(help="The principal, e.g. provider-12345678 or referrer-umcg.")],
    form: Annotated[ConfigFormat, typer.Option("--format", help="librdkafka (kcat -F), java (--command-config) "
                                               "or env (VERWIJSHUB_* settings).")] = ConfigFormat.LIBRDKAFKA,
) -> None:
    """Print a client configuration for PRINCIPAL, password included (the only command that prints one)."""
    settings, registry = _settings_and_registry()
    _principal(registry, principal)
    if settings.kafka_username:
        console.print("[red]VERWIJSHUB_KAFKA_USERNAME is set: client-config reads the secrets directory[/red]")
        raise typer.Exit(2)
    try:
        print(client_config_text(settings.connection(principal), form), end="")
    except SecretsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def rotate_password(admin: AccessAdmin, store: CredentialStore, principal: str) -> None:
    """Give `principal` a new random password: on the broker first, then in the store. The store thus never
    holds a password the broker refused or never got: if the broker says no or does not answer, the old password
    stays stored and keeps working. Should the store then not be writable, the broker gets the old one back."""
    old, password = store.all().get(principal), new_password()
    try:
        admin.set_passwords({principal: password})
    except (AccessError, KafkaException, TimeoutError) as exc:
        raise AccessError(f"the broker did not take a new password for {principal} ({exc}); its old password "
                          f"stays in {store.path(principal)} and keeps working") from exc
    try:
        store.store(principal, password)
    except OSError as exc:
        try:
            admin.set_passwords({principal: old} if old is not None else {})
            outcome = ("the broker has its old password again" if old is not None
                       else "it had none stored before: rotate again once the store is writable")
        except (AccessError, KafkaException, TimeoutError):
            outcome = "nor could the broker get the old one back: rotate again once the store is writable"
        raise AccessError(f"the new password for {principal} could not be stored in {store.path(principal)} "
                          f"({exc}); {outcome}") from exc


@access_app.command("rotate")
def rotate(principal: Annotated[str, typer.Argument(help="The principal whose password is replaced.")]) -> None:
    """Issue a new random password for PRINCIPAL: set on the broker, then stored (a refused change stores
    nothing, exit 1). New connections need the new password at once (its clients a new client-config); live ones
    are cut off when their SASL session ends (`connections.max.reauth.ms`), and a hub service of PRINCIPAL must be
    restarted to read it. For the admin of the local Kafka, restart the broker too: its own connections log in
    with the password it started with."""
    settings, registry = _settings_and_registry()
    _principal(registry, principal)
    store = CredentialStore(settings.secrets)
    try:
        rotate_password(AccessAdmin(settings.connection(principals.ADMIN)), store, principal)
    except (AccessError, KafkaException, TimeoutError) as exc:
        console.print(f"password not rotated: {exc}", style="red", markup=False)
        raise typer.Exit(1) from exc
    console.print(f"new password for {principal} set on the broker and stored in {store.path(principal)}")
    if principal == principals.ADMIN and not settings.kafka_bootstrap:
        console.print("restart the local Kafka now (`verwijshub kafka stop`, then `start`): its own connections "
                      "still log in with the old password and fail when their session ends")


def _referrer(registry: Registry, principal: str) -> ReferrerOrganisation:
    found = organisation_of(registry, principal) if _principal(registry, principal).kind == "referrer" else None
    if found is None:
        console.print(f"[red]{principal} is no referrer organisation: only they submit through the gateway[/red]")
        raise typer.Exit(2)
    return found


@access_app.command("token")
def token(principal: Annotated[str, typer.Argument(help="A referrer organisation's principal, e.g. "
                                                        "referrer-huisartsen-centrum, or a recipient's, e.g. "
                                                        "wij-centrum or provider-12345678.")]) -> None:
    """Issue a bearer token for PRINCIPAL: a referrer organisation's submits referrals through the gateway (HTTPS), as
    the referrers its organisation lists; a WIJ team's or provider's reads and moves its own handovers' Tasks at the
    recipient API. Replaces its previous token, which stops working at once; only a hash is stored, so the token is
    printed this once."""
    settings, registry = _settings_and_registry()
    if _principal(registry, principal).kind != "recipient":
        _referrer(registry, principal)
    print(TokenStore(settings.secrets).issue(principal))


@access_app.command("certificate")
def certificate(
    principal: Annotated[str, typer.Argument(help="A specialist referrer organisation's principal, e.g. "
                                                  "referrer-umcg.")],
    out: Annotated[Path, typer.Option("--out", help="Where the PEM (key, certificate, CA) is written, 0600.")],
) -> None:
    """Issue an MLLP client certificate for PRINCIPAL from the hub's CA: its key, its certificate (organisation = the
    registry id, which binds the referrers it may send as) and the CA, in one PEM for the HL7 engine. Only this file
    holds the key; a new one does not revoke an old one: `access revoke-certificate` does."""
    settings, registry = _settings_and_registry()
    organisation = _referrer(registry, principal)
    if organisation.channel is not Channel.SPECIALIST:
        console.print(f"[red]{principal} is on the {organisation.channel.value} channel: only the specialist "
                      "channel speaks MLLP[/red]")
        raise typer.Exit(2)
    try:
        write_private(out, LocalCa(settings.secrets).client_pem(organisation.id, organisation.name))
    except (SecretsError, OSError) as exc:
        console.print(f"[red]no certificate issued: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"MLLP client certificate for {principal} written to {out}")


@access_app.command("revoke-certificate")
def revoke_certificate(
    principal: Annotated[str, typer.Argument(help="A specialist referrer organisation's principal, e.g. "
                                                  "referrer-umcg.")],
    serial: Annotated[str | None, typer.Option("--serial", help="Only this certificate (hex serial, as "
                                               "`openssl x509 -serial` prints it); default: every one issued to "
                                               "the organisation.")] = None,
) -> None:
    """Revoke PRINCIPAL's MLLP client certificates: on the hub CA's revocation list, which the gateway reloads
    within seconds; from then on a connection with one is refused at the TLS handshake, and one already open is
    closed. Another organisation's certificates keep working; `access certificate` issues a new one."""
    settings, registry = _settings_and_registry()
    organisation = _referrer(registry, principal)
    try:
        revoked = LocalCa(settings.secrets).revoke(organisation.id, serial.upper() if serial else None)
    except (SecretsError, OSError) as exc:
        console.print(f"[red]nothing revoked: {exc}[/red]")
        raise typer.Exit(1) from exc
    if not revoked:
        console.print(f"[red]no certificate of {principal}{f' with serial {serial}' if serial else ''} to revoke "
                      "(none issued by this hub's CA, or all revoked already)[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {len(revoked)} MLLP client certificate(s) of {principal}: {', '.join(revoked)}")


class ExportFormat(StrEnum):
    STRIMZI = "strimzi"


@access_app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where the manifests are written (created if missing).")],
    form: Annotated[ExportFormat, typer.Option("--format", help="Manifest format.")] = ExportFormat.STRIMZI,
) -> None:
    """Write Strimzi KafkaUser and KafkaTopic manifests for every principal and topic of the registry."""
    settings, registry = _settings_and_registry()
    granted = grants(registry, SystemClock().now().date(), timedelta(days=settings.access_read_grace_days))
    files = manifests(all_principals(registry), granted, topics.all_topics(registry), settings.partitions)
    directory.mkdir(parents=True, exist_ok=True)
    for name, manifest in files.items():
        (directory / name).write_text(yaml.safe_dump(manifest, sort_keys=False))
    console.print(f"{len(files)} {form.value} manifests written to {directory}")
