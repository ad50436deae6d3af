"""How a client reaches Kafka as one principal: bootstrap, protocol, SASL mechanism, credentials, CA.

Every client the hub makes (FastStream brokers, aiokafka producers, consumers and admins, the access
manager's librdkafka admin, the configurations printed for kcat and Kafka's console tools) is configured
from one `KafkaConnection`, so there is no code path that works only against the local broker.
"""

import ssl
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from faststream.security import BaseSecurity, SASLScram256, SASLScram512

PLAINTEXT = "PLAINTEXT"
SASL_SSL = "SASL_SSL"
SCRAM_SHA_512 = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    protocol: str = SASL_SSL
    mechanism: str = SCRAM_SHA_512
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers one by one: FastStream takes a comma-separated string for a single host."""
        return self.bootstrap.split(",")

    @property
    def secured(self) -> bool:
        return self.protocol != PLAINTEXT

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker's certificate against the system's roots and the CA file, when it exists (a
        local CA not made yet fails verification at connect time, never silently trusts anything)."""
        if not self.secured:
            return None
        context = ssl.create_default_context()
        if self.ca_file and self.ca_file.is_file():
            context.load_verify_locations(cafile=str(self.ca_file))
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        if not self.secured:
            return {"bootstrap_servers": self.bootstrap}
        return {"bootstrap_servers": self.bootstrap, "security_protocol": self.protocol,
                "sasl_mechanism": self.mechanism, "sasl_plain_username": self.username,
                "sasl_plain_password": self.password, "ssl_context": self.ssl_context}

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka consumer: it sees committed records only, never those of a transaction
        that is open or was aborted (services/infra/processing.py)."""
        return {**self.client_options(), "isolation_level": "read_committed"}

    def faststream_security(self) -> BaseSecurity | None:
        if not self.secured:
            return None
        scram = SASLScram512 if self.mechanism == SCRAM_SHA_512 else SASLScram256
        return scram(username=self.username or "", password=self.password or "", ssl_context=self.ssl_context,
                     use_ssl=True)

    def librdkafka(self) -> dict[str, str]:
        """Properties for librdkafka clients: confluent-kafka's AdminClient and `kcat -F`."""
        props = {"bootstrap.servers": self.bootstrap, "security.protocol": self.protocol.lower()}
        if self.secured:
            props |= {"sasl.mechanisms": self.mechanism, "sasl.username": self.username or "",
                      "sasl.password": self.password or ""}
            if self.ca_file:
                props["ssl.ca.location"] = str(self.ca_file)
        return props

    def java(self) -> dict[str, str]:
        """Properties for Java clients, e.g. Kafka's console tools (`--command-config`)."""
        props = {"bootstrap.servers": self.bootstrap, "security.protocol": self.protocol,
                 "isolation.level": "read_committed"}  # the consumers' default reads aborted transactions too
        if self.secured:
            props |= {"sasl.mechanism": self.mechanism,
                      "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                                          f'username="{self.username}" password="{self.password}";'}
            if self.ca_file:
                props |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": str(self.ca_file)}
        return props

    def environment(self) -> dict[str, str]:
        """The `VERWIJSHUB_*` settings that make a hub process (or a test's) connect as this principal."""
        env = {"VERWIJSHUB_KAFKA_BOOTSTRAP": self.bootstrap, "VERWIJSHUB_KAFKA_SECURITY_PROTOCOL": self.protocol}
        if self.secured:
            env |= {"VERWIJSHUB_KAFKA_SASL_MECHANISM": self.mechanism,
                    "VERWIJSHUB_KAFKA_USERNAME": self.username or "",
                    "VERWIJSHUB_KAFKA_PASSWORD": self.password or ""}
            if self.ca_file:
                env["VERWIJSHUB_KAFKA_CA_FILE"] = str(self.ca_file)
        return env
