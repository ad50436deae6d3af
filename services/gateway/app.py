"""The gateway service: its Kafka producer (a FastStream broker, as every service has), the HTTPS server
(uvicorn) and the MLLP listener, started and stopped with the broker by `run_services`."""

import asyncio
import contextlib
from pathlib import Path

import uvicorn
from faststream.kafka import KafkaBroker

from schemas.referral import Channel
from schemas.registry import Registry
from services.access.tokens import TokenStore
from services.gateway.api import GatewayApi, create_api
from services.gateway.mllp import MllpListener
from services.gateway.submission import Submissions
from services.gateway.tasks import StatusBook
from services.infra import principals, topics
from services.infra.clock import Clock
from services.infra.kafka import make_broker
from services.infra.logging import get_logger
from services.infra.settings import Settings
from services.infra.tls import LocalCa, mutual_tls_context
from services.infra.web import HubServer, server_certificate

SERVICE = "gateway"


class Gateway:
    def __init__(self, broker: KafkaBroker, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.settings = settings
        self.submissions = Submissions(broker, settings, registry, clock)
        self.book = StatusBook(settings.connection(principals.GATEWAY))
        self.started = False
        self.app = create_api(GatewayApi(self.submissions, self.book, TokenStore(settings.secrets),
                                         lambda: self.started))
        self.mllp = MllpListener(self.submissions, clock, settings.gateway_read_timeout_s)
        self.server: HubServer | None = None
        self.serving: asyncio.Task[None] | None = None

    def certificate(self) -> Path:
        return server_certificate(self.settings.gateway_cert_file, self.settings.secrets, self.settings.gateway_host,
                                  "the gateway", "VERWIJSHUB_GATEWAY_CERT_FILE")

    async def start(self) -> None:
        settings = self.settings
        await self.submissions.start()
        self.book.start()
        pem = str(self.certificate()) if settings.gateway_tls or settings.mllp_tls else None
        config = uvicorn.Config(self.app, host=settings.gateway_host, port=settings.gateway_port, lifespan="off",
                                ssl_certfile=pem if settings.gateway_tls else None,
                                ssl_keyfile=pem if settings.gateway_tls else None,
                                log_config=None, access_log=False, timeout_keep_alive=15,
                                timeout_graceful_shutdown=5, limit_concurrency=200)
        self.server = HubServer(config)
        self.serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.serving.done():
                raise RuntimeError(f"the gateway could not listen on {settings.gateway_host}:{settings.gateway_port}")
            await asyncio.sleep(0.05)
        mllp_port = None
        if settings.mllp_port:
            ca = LocalCa(settings.secrets)
            context = mutual_tls_context(Path(pem), ca.ca_cert) if settings.mllp_tls and pem else None
            if context is None and not self.mllp.plain_allowed:
                get_logger().warning("plain MLLP with no address allowed: every connection is refused",
                                     setting="VERWIJSHUB_MLLP_PLAIN_ALLOW")
            mllp_port = await self.mllp.start(settings.gateway_host, settings.mllp_port, context, ca.crl)
        self.started = True
        scheme = "https" if settings.gateway_tls else "http"
        get_logger().info("gateway listening", url=f"{scheme}://{settings.gateway_host}:{settings.gateway_port}",
                          mllp_port=mllp_port, mllp_tls=settings.mllp_tls)

    async def stop(self) -> None:
        self.started = False
        await self.mllp.stop()
        if self.server and self.serving:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.serving, 10)
        await self.book.stop()
        await self.submissions.stop()


class GatewayBroker(KafkaBroker):
    """The gateway's FastStream broker (its producer), which also runs the HTTPS and MLLP servers."""

    gateway: Gateway

    async def start(self) -> None:
        await super().start()
        await self.gateway.start()

    async def stop(self, *exc_info) -> None:
        await self.gateway.stop()
        await super().stop(*exc_info)


def create_gateway(settings: Settings, registry: Registry, clock: Clock) -> KafkaBroker:
    broker = make_broker(settings, SERVICE, GatewayBroker)
    broker.gateway = Gateway(broker, settings, registry, clock)
    for channel in Channel:
        broker.publisher(topics.organisation_referrals(channel, "{organisation}"), title=f"gateway:{channel}",
                         schema=bytes, description=f"Referrals the {channel} referrer organisations handed to the "
                         "gateway (HTTPS or MLLP), unchanged, keyed by the referrer's referral id, after the adapter's "
                         "and the sender check, each on its organisation's own topic.")
    return broker
