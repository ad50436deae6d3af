"""The embedded local broker: a real Apache Kafka (KRaft, one combined broker+controller node).

Its jars come from Maven Central through `deploy/kafka/pom.xml` into a Maven repository outside the
work tree; it runs on the machine's Java 17. Used by `verwijshub up` and `verwijshub kafka ...`, and
by the test fixtures (free ports, throwaway directory) when no other broker is configured.
"""

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.infra import principals
from services.infra.connection import PLAINTEXT, SASL_SSL, SCRAM_SHA_512, KafkaConnection
from services.infra.kafka import wait_until_ready
from services.infra.secrets import CredentialStore, write_private
from services.infra.settings import REPO_ROOT, Settings
from services.infra.tls import LocalCa

POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, formatted or started; the message says what to look at."""


def resolve_classpath(cache_dir: Path) -> str:
    """The broker's classpath; the first call per pom version runs Maven, later calls read the cache."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    classpath_file = cache_dir / f"kafka-classpath-{digest}.txt"
    if not classpath_file.is_file():
        if shutil.which("mvn") is None:
            raise LocalKafkaError("Maven (mvn) is needed to fetch the Kafka jars; install it and retry.")
        cache_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:build-classpath",
             f"-Dmdep.outputFile={classpath_file}", f"-Dmaven.repo.local={cache_dir / 'm2'}"],
            capture_output=True, text=True, check=False)
        if result.returncode != 0 or not classpath_file.is_file():
            raise LocalKafkaError(f"mvn could not resolve the Kafka jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    classpath = classpath_file.read_text().strip()
    if not all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
        classpath_file.unlink()
        return resolve_classpath(cache_dir)
    return classpath


@dataclass(frozen=True)
class LocalKafka:
    data_dir: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "1g"
    secrets_dir: Path | None = None
    """Where the local CA and the passwords live; None: `<data_dir>/secrets`."""
    secured: bool = True
    """SASL_SSL with SCRAM and ACLs; False only for debugging (PLAINTEXT, no authorizer)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalKafka":
        return cls(data_dir=settings.data_dir / "kafka", cache_dir=settings.cache_dir, host=settings.kafka_host,
                   port=settings.kafka_port, controller_port=settings.kafka_controller_port,
                   secrets_dir=settings.secrets, secured=settings.kafka_security_protocol != PLAINTEXT)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def secrets(self) -> Path:
        return self.secrets_dir or self.data_dir / "secrets"

    @property
    def ca(self) -> LocalCa:
        return LocalCa(self.secrets)

    def admin_connection(self) -> KafkaConnection:
        """The admin principal (the only super user), whose SCRAM credential is made at format time."""
        if not self.secured:
            return KafkaConnection(self.bootstrap, PLAINTEXT)
        (password,) = CredentialStore(self.secrets).ensure([principals.ADMIN]).values()
        return KafkaConnection(self.bootstrap, SASL_SSL, SCRAM_SHA_512, principals.ADMIN, password,
                               self.ca.ca_cert)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    def pid(self) -> int | None:
        """The broker's process id if it runs, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            self.pid_file.unlink(missing_ok=True)
            return None

    def properties(self) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
            "controller.listener.names=CONTROLLER",
            *(self._secured_listeners() if self.secured else [
                f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"]),
            f"log.dirs={self.data_dir / 'data'}",
            "num.partitions=6",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            f"auto.create.topics.enable={'false' if self.secured else 'true'}",
            "",
        ])

    def _secured_listeners(self) -> list[str]:
        """Clients on SASL_SSL with SCRAM-SHA-512, the controller on SASL_SSL with a static PLAIN credential
        (SCRAM credentials live in the metadata the controller serves, so it cannot use them itself); both
        as the admin principal, the only super user; the KRaft authorizer denies whatever no ACL allows."""
        admin = self.admin_connection()
        scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{admin.username}" password="{admin.password}";')
        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{admin.username}" password="{admin.password}" '
                 f'user_{admin.username}="{admin.password}";')
        return [
            f"listeners=CLIENTS://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=CLIENTS://{self.host}:{self.port}",
            "listener.security.protocol.map=CLIENTS:SASL_SSL,CONTROLLER:SASL_SSL",
            "inter.broker.listener.name=CLIENTS",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            "listener.name.clients.sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"listener.name.clients.scram-sha-512.sasl.jaas.config={scram}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.ca.broker_pem(self.host)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca.ca_cert}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{principals.ADMIN}",
        ]

    def _java(self, classpath: str, *args: str) -> list[str]:
        return ["java", "-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", classpath, *args]

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the broker unless it runs already, and wait until it answers."""
        if self.pid() is None:
            classpath = resolve_classpath(self.cache_dir)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.secured:
                self.ca.ensure(self.host)
            config = self.data_dir / "server.properties"
            write_private(config, self.properties().encode())  # it holds the admin's password
            if not (self.data_dir / "data" / "meta.properties").is_file():
                self._format(classpath, config)
            with self.log_file.open("ab") as log:
                process = subprocess.Popen(self._java(classpath, "kafka.Kafka", str(config)), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            self.pid_file.write_text(str(process.pid))
        try:
            asyncio.run(wait_until_ready(self.admin_connection(), timeout_s))
        except TimeoutError as exc:
            tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            self.stop()
            raise LocalKafkaError(f"{exc}\n--- {self.log_file} (tail) ---\n{tail}") from exc

    def _format(self, classpath: str, config: Path) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: an id led by "-" reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        scram = []
        if self.secured:
            admin = self.admin_connection()
            scram = ["--add-scram", f"SCRAM-SHA-512=[name={admin.username},password={admin.password}]"]
        result = subprocess.run(self._java(classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                                           "-c", str(config), *scram), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if self.secured:
                output = output.replace(self.admin_connection().password or "", "***")
            raise LocalKafkaError(f"formatting the Kafka storage failed:\n{output}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout_s`); False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
