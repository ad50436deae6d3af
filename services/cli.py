"""The `verwijshub` command line: run the hub, its services and the local Kafka; check and route files."""

import asyncio
import json
import math
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from schemas.errors import ReferralError
from schemas.referral import Channel, Referral
from schemas.registry import Registry
from services.access.commands import access_app, provide_gateway_certificate, sync_access
from services.access.senders import organisation_sending_as
from services.analytics import report as analytics_report
from services.analytics import simulate as analytics_simulate
from services.dlq.commands import dlq_app
from services.hub import SERVICES, dump_stacks_on_sigusr1, dump_tasks_on_sigusr1, run_services
from services.infra import principals, topics
from services.infra.clock import SystemClock
from services.infra.kafka import wait_until_ready
from services.infra.local_kafka import LocalKafka, LocalKafkaError, resolve_classpath
from services.infra.logging import configure_logging
from services.infra.provisioning import provision_hub_topics
from services.infra.registry_files import RegistryError, load_registry
from services.infra.registry_topic import latest_registry
from services.infra.secrets import SecretsError
from services.infra.settings import Settings, get_settings
from services.infra.starting import StartTimeout, waiting_for
from services.intake.adapters import PARSERS, read_referral
from services.intake.lifecycle import Cancellation, cancellation
from services.intake.outcome import ParseOutcome, Rejection
from services.ops import commands as ops_commands
from services.routing import commands as routing_commands
from services.routing.policy import decide
from services.supervisor import ServiceExited, Supervisor, start_forkserver

app = typer.Typer(help="Verwijshub: the youth-care referral hub of Groningen, on Apache Kafka.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="The embedded local Apache Kafka broker (KRaft, one node).", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(routing_commands.registry_app, name="registry")
app.add_typer(routing_commands.indications_app, name="indications")
app.command("whatif")(routing_commands.whatif)
app.command("lag")(ops_commands.lag)
app.add_typer(access_app, name="access")
app.add_typer(dlq_app, name="dlq")
app.command("report")(analytics_report.report)
app.command("simulate")(analytics_simulate.simulate)
console = Console(stderr=True)

Service = StrEnum("Service", {name: name for name in SERVICES})
ChannelOption = Annotated[Channel, typer.Option("--channel", "-c", help="The referrer channel the file is for.")]
FileArgument = Annotated[str, typer.Argument(help="The referral file, or - for standard input.")]
RegistryOption = Annotated[Path | None, typer.Option(
    "--registry", help="Registry directory (default: VERWIJSHUB_REGISTRY_DIR, else deploy/registry).")]


def _registry(settings: Settings, directory: Path | None = None):
    try:
        return load_registry(directory or settings.registry_dir)
    except (RegistryError, OSError) as exc:
        console.print(f"[red]registry: {exc}[/red]")
        raise typer.Exit(2) from exc


def _read(file: str) -> bytes:
    return sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()


def _parse(channel: Channel, raw: bytes, settings: Settings, registry) -> ParseOutcome:
    if channel not in PARSERS:
        console.print(f"[red]the {channel} channel has no adapter yet[/red]")
        raise typer.Exit(2)
    return read_referral(channel, raw, known_products=frozenset(registry.products),
                         received_at=SystemClock().now(),
                         pseudonym_key=settings.youth_pseudonym_key(),
                         max_bytes=settings.max_message_bytes)


def _print_rejection(errors: list[ReferralError], **extra: object) -> None:
    print(json.dumps({"rejected": True, "errors": [e.model_dump(mode="json") for e in errors], **extra}, indent=2))
    raise typer.Exit(1)


@app.command()
def up() -> None:
    """Run the whole hub: start the local Kafka unless VERWIJSHUB_KAFKA_BOOTSTRAP is set, create the topics,
    principals and ACLs, and run intake, routing, notifier, the gateway, the analytics sink and the recipient API,
    each as its own process with only its own credential, until Ctrl-C (a service that dies stops the hub: exit 1)."""
    start_forkserver()  # first: the services' imports overlap what follows, and it reads no secret of `up`'s
    settings = get_settings()
    log_file = settings.log_file or settings.data_dir / "hub.log"
    settings = settings.model_copy(update={"log_file": log_file})  # the services' processes log there too
    configure_logging("hub", settings.log_level, log_file)
    dump_stacks_on_sigusr1()
    registry = _registry(settings)
    if not settings.secured:
        console.print("[bold red]WARNING: VERWIJSHUB_KAFKA_SECURITY_PROTOCOL=PLAINTEXT: no authentication, no "
                      "ACLs; any process that reaches the port reads every child's data. For debugging only."
                      "[/bold red]")
    broker = None if settings.kafka_bootstrap else LocalKafka.from_settings(settings)
    if broker is not None:
        console.print(f"starting the local Apache Kafka on {broker.bootstrap} ...")

    def ready(created: list[str]) -> None:
        table = Table(title="Verwijshub is up", show_header=False)
        table.add_row("broker", settings.bootstrap + (" (embedded)" if broker else ""))
        if broker:
            table.add_row("broker log", str(broker.log_file))
        table.add_row("hub log", str(log_file))
        table.add_row("topics", f"{len(topics.all_topics(registry))} ({len(created)} created now)")
        table.add_row("send a referral", "verwijshub send --channel gp schemas/examples/gp/valid-basis-jeugdhulp.json")
        table.add_row("stop", "Ctrl-C (the local Kafka keeps running: verwijshub kafka stop)")
        Console().print(table)

    try:
        asyncio.run(start_hub_and_run(settings, registry, broker, ready))
    except SecretsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except (LocalKafkaError, StartTimeout, ServiceExited) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


async def start_hub_and_run(settings: Settings, registry: Registry, broker: LocalKafka | None,
                            ready: Callable[[list[str]], None]) -> None:
    """`up` after its checks: the broker answering, the topics, principals and ACLs of the registry in force (a
    live one, else the files), the registry published unless one is, then the services; each step logged with
    its time, and given up at VERWIJSHUB_START_TIMEOUT_S; then each service as a process of its own
    (services/supervisor.py)."""
    dump_tasks_on_sigusr1(asyncio.get_running_loop())
    if broker is not None:
        await waiting_for(f"the local Kafka at {broker.bootstrap} to answer", asyncio.to_thread(broker.start))
    else:
        await waiting_for(f"Kafka at {settings.bootstrap} to answer", wait_until_ready(
            settings.connection(principals.ADMIN), math.inf, settings.kafka_brokers))  # the deadline is this wait's
    settings.youth_pseudonym_key()  # generated on the first `up` (beside the broker's secrets); the old default refused
    if settings.secured:
        live = await waiting_for(f"{topics.REGISTRY} read to its end",
                                 latest_registry(settings.connection(principals.ADMIN)))
        created = (await waiting_for("topics, principals and ACLs provisioned",
                                     asyncio.to_thread(sync_access, settings, live or registry))).topics_created
    else:
        live = None
        created = (await waiting_for("topics provisioned",
                                     asyncio.to_thread(provision_hub_topics, settings, registry))).created
        provide_gateway_certificate(settings)
    if live is None:
        await waiting_for(f"the registry files published on {topics.REGISTRY}",
                          routing_commands.publish_registry_unless_present(settings, settings.registry_dir))
    await Supervisor(list(SERVICES), settings).run(on_ready=lambda: ready(created))


@app.command()
def run(services: Annotated[list[Service], typer.Argument(help="The service(s) to run in this process.")]) -> None:
    """Run services against the configured Kafka, e.g. `run routing` (start more processes to scale out)."""
    settings = get_settings()
    names = [service.value for service in services]
    configure_logging("+".join(names), settings.log_level, settings.log_file)
    dump_stacks_on_sigusr1()
    try:
        asyncio.run(run_services(names, settings, _registry(settings)))
    except StartTimeout as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def sending_organisation(registry: Registry, channel: Channel, outcome: ParseOutcome | Cancellation,
                         chosen: str | None) -> str:
    """The organisation `send` writes as: the one chosen, else the channel's one that lists the referral's (or the
    cancellation's) referrer, else (a file the adapter refuses, which is sent all the same) the channel's first; ''
    for none."""
    identifier = outcome.referrer.identifier if isinstance(outcome, Referral) else \
        outcome.referrer_identifier if isinstance(outcome, Cancellation) else None
    found = organisation_sending_as(registry, channel, identifier) if identifier else None
    first = min((org.id for org in registry.referrers.values() if org.channel is channel), default="")
    return chosen or (found.id if found else first)


@app.command()
def send(channel: ChannelOption, file: FileArgument,
         referrer: Annotated[str | None, typer.Option("--as", help="The referrer organisation (registry id) to send "
                                                      "as; default: the one that lists the file's referrer, else the "
                                                      "channel's first.")] = None
         ) -> None:
    """Publish a referral file (or a cancellation: schemas/examples/cancellations/) on a referrer organisation's own
    topic, as its system would, connected as its principal (`referrer-<organisation>`)."""
    settings = get_settings()
    raw = _read(file)
    registry = _registry(settings)
    outcome = cancellation(channel, raw) or _parse(channel, raw, settings, registry)  # a cancellation is sent too
    organisation = sending_organisation(registry, channel, outcome, referrer)
    if organisation not in registry.referrers or registry.referrers[organisation].channel is not channel:
        console.print(f"[red]no {channel.value} referrer organisation to send as: name one of "
                      f"{', '.join(o.id for o in registry.referrers.values() if o.channel is channel) or 'none'} "
                      "with --as[/red]")
        raise typer.Exit(2)
    topic = topics.organisation_referrals(channel, organisation)
    referral_id = outcome.referrer_referral_id
    key = referral_id.encode() if referral_id else None

    async def publish() -> None:
        producer = AIOKafkaProducer(**settings.connection(principals.referrer(organisation)).client_options(),
                                    acks="all", enable_idempotence=True,
                                    max_request_size=max(len(raw) + 4096, 1024 * 1024))
        await producer.start()
        try:
            await producer.send_and_wait(topic, raw, key=key, headers=[("channel", channel.value.encode())])
        finally:
            await producer.stop()

    asyncio.run(publish())
    console.print(f"sent {len(raw)} bytes to {topic} (key {referral_id or '-'}); "
                  f"watch {topics.status(channel)} for its status")


@app.command()
def check(channel: ChannelOption, file: FileArgument) -> None:
    """Offline: parse and validate a referral file. Prints the canonical Referral (exit 0) or
    {"rejected": true, "errors": [...]} (exit 1)."""
    settings = get_settings()
    outcome = _parse(channel, _read(file), settings, _registry(settings))
    if isinstance(outcome, Rejection):
        _print_rejection(outcome.errors)
    print(outcome.model_dump_json(indent=2))


@app.command()
def route(channel: ChannelOption, file: FileArgument, registry_dir: RegistryOption = None,
          indications: Annotated[Path | None, typer.Option(
              "--indications", help="CSV of running indications: bsn,product,provider_agb,start,end.")] = None,
          ) -> None:
    """Offline: check a referral file, then decide it. Prints the RoutingDecision with its trace (exit 0),
    or the rejection as `check` does (exit 1)."""
    settings = get_settings()
    registry = _registry(settings, registry_dir)
    outcome = _parse(channel, _read(file), settings, registry)
    if isinstance(outcome, Rejection):
        _print_rejection(outcome.errors)
    assert isinstance(outcome, Referral)
    running = routing_commands.load_indications_file(indications, settings) if indications else []
    decision = decide(outcome, registry, SystemClock().now(), indications=running)
    if decision.rejected:
        _print_rejection(decision.errors, trace=[step.model_dump(mode="json") for step in decision.trace])
    print(decision.model_dump_json(indent=2, exclude={"referral"}))


@app.command()
def schemas(check_only: Annotated[bool, typer.Option("--check", help="Only say whether they are current.")] = False
            ) -> None:
    """Generate the JSON Schemas and the AsyncAPI document under schemas/ from the code."""
    from schemas.generate import main as generate

    raise typer.Exit(generate(["--check"] if check_only else []))


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Resolve the Kafka jars from Maven Central into the cache (done by `start` when needed)."""
    settings = get_settings()
    classpath = resolve_classpath(settings.cache_dir)
    console.print(f"{len(classpath.split(':'))} jars cached under {settings.cache_dir}")


@kafka_app.command("start")
def kafka_start(brokers: Annotated[int | None, typer.Option(
        "--brokers", min=1, max=5, help="Nodes (KRaft, combined broker and controller); 3 gives replication 3 and "
        "min.insync.replicas 2. Default VERWIJSHUB_KAFKA_BROKERS (1); set that for `up` and the clients too.")] = None,
                ) -> None:
    """Start the local Kafka (formatting its storage on first use) and wait until it answers."""
    settings = get_settings()
    if brokers is not None:
        settings = settings.model_copy(update={"kafka_brokers": brokers})
    kafka = LocalKafka.from_settings(settings)
    try:
        kafka.start()
    except LocalKafkaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"Kafka answers on {kafka.bootstrap} ({len(kafka.nodes)} node(s), first pid {kafka.pid()}, "
                  f"log {kafka.log_file})")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the local Kafka cleanly."""
    stopped = LocalKafka.from_settings(get_settings()).stop()
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the local Kafka runs (exit 0) or not (exit 1)."""
    kafka = LocalKafka.from_settings(get_settings())
    pid = kafka.pid()
    if pid is None:
        console.print(f"Kafka is not running (data {kafka.data_dir})")
        raise typer.Exit(1)
    console.print(f"Kafka runs: pid {pid}, {kafka.bootstrap}, log {kafka.log_file}")


if __name__ == "__main__":
    app()
