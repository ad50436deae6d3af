"""Settings from `VERWIJSHUB_*` environment variables (documented in the README)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "verwijshub",
        description="Embedded Kafka's data, pid file and logs (kept between runs of `up`).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "verwijshub",
        description="Maven repository holding the Kafka jars (outside the work tree).",
    )
    partitions: int = Field(default=6, ge=1, description="Partitions of each topic the hub creates.")
    replication_factor: int = Field(default=1, ge=1, description="Replication of each topic the hub creates.")
    pseudonym_key: SecretStr = Field(
        default=SecretStr("local-development-key-change-me"),
        description="HMAC key for youth pseudonyms; set a secret one in any real deployment.",
    )
    registry_dir: Path = Field(
        default=REPO_ROOT / "deploy" / "registry",
        description="Directory of registry files (teams, postcodes, providers, products, channels).",
    )
    max_message_bytes: int = Field(default=1024 * 1024, description="Largest inbound referral accepted.")
    log_level: str = Field(default="INFO", description="Log level of the services.")
    log_file: Path | None = Field(default=None, description="Also write the JSON log lines to this file.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of a service process's metrics endpoint.")
    metrics_port: int = Field(default=9300, ge=0, description="Port of /metrics, /healthz and /readyz of a service "
                              "process (`up` serves all three services on it); 0: no endpoint.")
    liberation_day: Literal["lustrum", "always", "never"] = Field(
        default="lustrum", description="Whether Liberation Day (5 May) stops the contact clock: in lustrum "
        "years (2025, 2030), every year, or never.")
    notifier_tick_seconds: float = Field(default=1.0, gt=0, description="How often the notifier looks for "
                                         "contact clocks and reminders that came due.")
    clock_file: Path | None = Field(default=None, description="Tests and demos only: read 'now' from this file "
                                    "(an ISO 8601 time with offset), so time can be moved; unset: the system clock.")

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the configured cluster, or the embedded broker."""
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    good_friday: Literal["working", "holiday"] = Field(
        default="working", description="Whether Good Friday stops the contact clock: a working day as the "
        "Algemene termijnenwet counts deadlines, or a holiday where the team's collective agreement gives it off.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
