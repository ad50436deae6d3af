"""Settings from `VERWIJSHUB_*` environment variables (documented in the README)."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.infra.connection import PLAINTEXT, SASL_SSL, KafkaConnection
from services.infra.secrets import credential_file, migrate_legacy_credentials, principal_of, read_credential
from services.infra.secrets import pseudonym_key as stored_pseudonym_key
from services.infra.topics import TopicClass

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package is installed from (editable install): deploy/ and schemas/ live here."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VERWIJSHUB_", extra="ignore")

    kafka_bootstrap: str | None = Field(
        default=None,
        description="Bootstrap servers of an existing cluster; unset: the embedded local Kafka.",
    )
    kafka_host: str = Field(default="127.0.0.1", description="Address the embedded Kafka listens on.")
    kafka_port: int = Field(default=9092, description="Client port of the embedded Kafka.")
    kafka_controller_port: int = Field(default=9093, description="Controller port of the embedded Kafka.")
    kafka_brokers: int = Field(default=1, ge=1, le=5, description="Nodes of the embedded Kafka (`kafka start "
                               "--brokers 3`): node i listens on KAFKA_PORT + 2i and KAFKA_CONTROLLER_PORT + 2i.")
    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "verwijshub",
        description="Embedded Kafka's data, pid file and logs (kept between runs of `up`).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "verwijshub",
        description="Maven repository holding the Kafka jars (outside the work tree).",
    )
    partitions: int = Field(default=6, ge=1, description="Partitions of each topic the hub creates.")
    replication_factor: int | None = Field(default=None, ge=1, description="Replication of each topic the hub "
                                           "creates; unset: min(3, KAFKA_BROKERS) (3 in production).")
    kafka_security_protocol: Literal["SASL_SSL", "PLAINTEXT"] = Field(
        default=SASL_SSL, description="SASL_SSL (the default, also of the embedded Kafka); PLAINTEXT only for "
        "debugging: the embedded Kafka then runs without authentication or ACLs, and `up` warns.")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism of the client listener.")
    kafka_username: str | None = Field(default=None, description="The principal this process connects as; "
                                       "unset: each service, command and tool its own, with passwords from the "
                                       "secrets directory.")
    kafka_password: SecretStr | None = Field(default=None, description="Password of VERWIJSHUB_KAFKA_USERNAME.")
    kafka_credential_file: Path | None = Field(
        default=None, description="This process's own credential: one principal's password file "
        "(`<secrets>/credentials/<principal>.password`); the process connects as that principal and reads no "
        "other password. `up` gives each service its own; unset: the file of the principal asked for.")
    kafka_ca_file: Path | None = Field(default=None, description="CA certificate(s) that sign the brokers' "
                                       "certificates; unset: the local CA in the secrets directory.")
    kafka_client_config: Path | None = Field(
        default=None, description="A file of these settings (as `verwijshub access client-config --format env` "
        "writes it); variables set in the environment win.")
    kafka_max_reauth_s: float = Field(default=3600.0, ge=0, description="The embedded Kafka's "
                                      "`connections.max.reauth.ms`: how long a SASL session lives before the "
                                      "client must authenticate again, so that a rotated password or a deleted "
                                      "user cuts a live connection off within this time; 0: never. An hour: "
                                      "aiokafka cannot re-authenticate, so each session's end is a reconnect of "
                                      "every connection of the hub. One node only: three run without (their "
                                      "transactions stalled with it).")
    secrets_dir: Path | None = Field(default=None, description="The local CA, the principals' passwords and the "
                                     "generated pseudonym key (mode 0700); unset: `<data dir>/secrets`.")
    access_read_grace_days: int = Field(default=30, ge=0, description="A stopped provider loses write on its "
                                        "feedback topic at once and read of its handovers this many days later.")
    indication_max_days: int = Field(default=1096, gt=0, description="The longest indication the region issues "
                                     "(three years, a leap day included): a provider's `indication-started` ending "
                                     "later is refused (INDICATION_INVALID), as rule 2 would keep the youth with it "
                                     "that long.")
    retention_inbound_days: float = Field(default=14, gt=0, description="Inbound and normalised referrals: "
                                          "processed in seconds; kept two weeks for replays and investigation.")
    retention_handovers_days: float = Field(default=90, gt=0, description="Handover topics: a recipient offline "
                                            "for weeks loses nothing.")
    retention_feedback_days: float = Field(default=30, gt=0, description="Recipients' feedback: read by the hub "
                                           "within seconds; a month for investigation.")
    retention_status_days: float = Field(default=90, gt=0, description="Referrers' status topics: a referrer "
                                         "offline for weeks loses nothing.")
    retention_dead_letters_days: float = Field(default=90, gt=0, description="Dead letters: time to fix and "
                                               "re-process; they hold raw personal data, so not longer.")
    retention_alerts_days: float = Field(default=90, gt=0, description="Alerts for operations and WIJ management.")
    retention_decisions_days: float = Field(default=365, gt=0, description="Routing decisions, the audit trail: "
                                            "a year, as the municipality's monitoring looks back a year.")
    pseudonym_key: SecretStr | None = Field(
        default=None, description="HMAC key for youth pseudonyms; unset: a random 32-byte key generated on first "
        "use and kept in the secrets directory (0600).")
    registry_dir: Path = Field(
        default=REPO_ROOT / "deploy" / "registry",
        description="Directory of registry files (teams, postcodes, providers, products, channels).",
    )
    max_message_bytes: int = Field(default=1024 * 1024, description="Largest inbound referral accepted.")
    log_level: str = Field(default="INFO", description="Log level of the services.")
    log_file: Path | None = Field(default=None, description="Also write the JSON log lines to this file.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of a service process's metrics endpoint.")
    metrics_port: int = Field(default=9300, ge=0, description="Port of /metrics, /healthz and /readyz of a service "
                              "process; `up` serves all its services' on it, merged from their processes; 0: no endpoint.")
    liberation_day: Literal["lustrum", "always", "never"] = Field(
        default="lustrum", description="Whether Liberation Day (5 May) stops the contact clock: in lustrum "
        "years (2025, 2030), every year, or never.")
    good_friday: Literal["working", "holiday"] = Field(
        default="working", description="Whether Good Friday stops the contact clock: a working day as the "
        "Algemene termijnenwet counts deadlines, or a holiday where the team's collective agreement gives it off.")
    start_timeout_s: float = Field(default=180.0, gt=0, description="How long a start may wait for any one "
                                   "thing (the broker answering, a topic read to its end, a service started); "
                                   "passed: the process exits non-zero, naming what it waited for.")
    fetch_wait_ms: int = Field(default=500, ge=0, description="How long the broker may hold a service's fetch "
                               "with nothing new (Kafka's fetch.max.wait.ms). An arriving record ends a waiting "
                               "fetch, so this costs no latency; lower costs idle CPU (measured idle, `up`, warm "
                               "broker, aiokafka clients: 50 ms cost the hub and the broker 30 CPU-seconds a "
                               "minute, 500 ms 8).")
    commit_interval_ms: int = Field(default=20, ge=0, description="How long a processing service gathers "
                                    "records after the first before it commits them in one transaction (Kafka "
                                    "Streams' commit.interval.ms): one transaction carries the referrals of that "
                                    "time, so at a steady rate the commit markers per referral fall; a referral "
                                    "waits this much longer. 0: what one fetch returned.")
    notifier_tick_seconds: float = Field(default=1.0, gt=0, description="How often the notifier looks for "
                                         "contact clocks and reminders that came due.")
    dlq_auto_retries: int = Field(default=3, ge=0, description="How often a dead letter of a transient cause "
                                  "(PRODUCT_UNKNOWN) is replayed by itself, after each `registry publish`; 0: never.")
    dlq_pending_alert_hours: float = Field(default=24, gt=0, description="A dead letter pending longer than this "
                                           "raises DeadLetterWaiting (24 h stands for one working day: the 5-day "
                                           "contact promise starts only when a referral gets through).")
    clock_file: Path | None = Field(default=None, description="Tests and demos only: read 'now' from this file "
                                    "(an ISO 8601 time with offset), so time can be moved; unset: the system clock.")
    gateway_host: str = Field(default="127.0.0.1", description="Address the referrer gateway (HTTPS and MLLP) "
                              "listens on.")
    gateway_port: int = Field(default=8443, ge=0, description="HTTPS port of the referrer gateway.")
    gateway_tls: bool = Field(default=True, description="HTTPS (the default) or, for debugging behind a "
                              "TLS-terminating proxy only, plain HTTP.")
    gateway_cert_file: Path | None = Field(default=None, description="PEM with the gateway's private key and "
                                           "certificate chain; unset: a certificate for VERWIJSHUB_GATEWAY_HOST "
                                           "from the local CA.")
    gateway_rate_per_minute: int = Field(default=600, ge=1, description="Requests a referrer may make per "
                                         "minute (a burst of as many); more are answered 429 with Retry-After.")
    gateway_kafka_timeout_s: float = Field(default=5.0, gt=0, description="How long the gateway waits for Kafka "
                                           "to confirm a write (acks=all) before it answers 503 or AR.")
    gateway_read_timeout_s: float = Field(default=10.0, gt=0, description="How long a referrer may take to send "
                                          "its request body or MLLP frame.")
    mllp_port: int = Field(default=2575, ge=0, description="Port of the gateway's MLLP listener (HL7 v2); 0: none.")
    recipients_host: str = Field(default="127.0.0.1", description="Address the recipient API (HTTPS, FHIR R4) "
                                 "listens on.")
    recipients_port: int = Field(default=8444, ge=0, description="HTTPS port of the recipient API.")
    recipients_tls: bool = Field(default=True, description="HTTPS (the default) or, for debugging behind a "
                                 "TLS-terminating proxy only, plain HTTP.")
    recipients_cert_file: Path | None = Field(default=None, description="PEM with the recipient API's private key "
                                              "and certificate chain; unset: a certificate for "
                                              "VERWIJSHUB_RECIPIENTS_HOST from the local CA.")
    recipients_keep_closed_days: float = Field(default=7.0, ge=0, description="How long a completed or rejected "
                                               "Task stays readable (and its last update answerable again) before "
                                               "the recipient API forgets it.")
    recipients_hook_ca_file: Path | None = Field(default=None, description="CA certificate(s) a recipient's "
                                                 "Subscription rest-hook certificate is verified against; unset: the "
                                                 "system's trust store and the local CA.")
    recipients_hook_retry_max_s: float = Field(default=300.0, gt=0, description="The longest wait between two "
                                               "attempts at a Subscription notification the hook did not take "
                                               "(doubling from 1 s).")
    recipients_public_url: str | None = Field(default=None, description="The recipient API's base as recipients "
                                              "reach it (the references in notifications); unset: "
                                              "https://<RECIPIENTS_HOST>:<RECIPIENTS_PORT>/fhir.")
    recipients_update_timeout_s: float = Field(default=15.0, gt=0, description="How long a Task update waits for "
                                               "Kafka to store its feedback before it is answered 503.")
    mllp_tls: bool = Field(default=True, description="MLLP over mutual TLS: each sender presents a client "
                           "certificate from `verwijshub access certificate` (the hub's CA), whose organisation binds "
                           "the referrers it may send as. false: plain MLLP, only from MLLP_PLAIN_ALLOW.")
    mllp_plain_allow: str = Field(default="", description="With MLLP_TLS=false, the only addresses plain MLLP "
                                  "is taken from, each bound to its referrer organisation: `network=organisation` "
                                  "pairs, comma-separated (`10.20.0.0/16=umcg,127.0.0.1=martini`); any other "
                                  "address is refused. Empty: every plain connection is refused.")
    mllp_max_connections: int = Field(default=50, ge=1, description="MLLP connections open at once; one more is "
                                      "closed at once.")
    mllp_rate_per_minute: int = Field(default=600, ge=1, description="MLLP messages one referrer organisation may "
                                      "send per minute (a burst of as many); more are answered AR with "
                                      "RATE_LIMITED and not written.")
    analytics_db: Path | None = Field(default=None, description="The analytics store (DuckDB file) the analytics "
                                      "sink writes and `verwijshub report` reads; unset: `<data dir>/analytics.duckdb`.")

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the configured cluster, or the embedded broker."""
        return self.kafka_bootstrap or ",".join(f"{self.kafka_host}:{self.kafka_port + 2 * i}"
                                                for i in range(self.kafka_brokers))

    @property
    def secured(self) -> bool:
        """SASL_SSL with ACLs (the default), not the PLAINTEXT debugging mode."""
        return self.kafka_security_protocol != PLAINTEXT

    @property
    def replication(self) -> int:
        return self.replication_factor or min(3, self.kafka_brokers)

    @property
    def secrets(self) -> Path:
        return self.secrets_dir or self.data_dir / "secrets"

    def connection(self, principal: str) -> KafkaConnection:
        """How this process connects as `principal` (or as VERWIJSHUB_KAFKA_USERNAME when that is set)."""
        if not self.secured:
            return KafkaConnection(self.bootstrap, PLAINTEXT)
        username, password = self._credential(principal)
        return KafkaConnection(self.bootstrap, SASL_SSL, self.kafka_sasl_mechanism, username, password,
                               self.kafka_ca_file or self.secrets / "ca.pem")

    def _credential(self, principal: str) -> tuple[str, str]:
        """Who this process connects as and its password, from one credential alone: the username and password
        set, else the credential file given, else `principal`'s file in the secrets directory."""
        if self.kafka_username and self.kafka_password:
            return self.kafka_username, self.kafka_password.get_secret_value()
        if self.kafka_credential_file:
            return principal_of(self.kafka_credential_file), read_credential(self.kafka_credential_file)
        username = self.kafka_username or principal
        migrate_legacy_credentials(self.secrets)  # a data directory of an earlier version
        return username, read_credential(credential_file(self.secrets, username))

    def retention_days(self, kind: TopicClass) -> float | None:
        """How long records of a topic class live; None: compacted, kept while their key lives."""
        if kind is TopicClass.INTERNAL:
            return None
        return getattr(self, f"retention_{kind.value.replace('-', '_')}_days")

    def youth_pseudonym_key(self) -> str:
        """The pseudonym key in force (generated on first use; the old public default refused)."""
        configured = self.pseudonym_key.get_secret_value() if self.pseudonym_key else None
        return stored_pseudonym_key(self.secrets, configured)


@lru_cache
def get_settings() -> Settings:
    client_config = os.environ.get("VERWIJSHUB_KAFKA_CLIENT_CONFIG")
    return Settings(_env_file=client_config) if client_config else Settings()
