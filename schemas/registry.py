"""The registry the hub routes by: WIJ teams, the postcode table, providers, products, channel join dates.

A change of a provider's state or a contract is a registry change, published to `registry.v1`,
never a code change.
"""

from datetime import date, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.referral import Channel


class WijTeam(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    name: str
    central_entrance: bool = Field(default=False, description="The team that takes postcodes mapped to no team.")


class Provider(BaseModel):
    model_config = ConfigDict(frozen=True)

    agb: str = Field(pattern=r"^\d{8}$")
    name: str
    products: frozenset[str]
    accepting: bool = True
    stopped_on: date | None = None


class Product(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(pattern=r"^[0-9A-Z]{5}$")
    name: str
    bjh_from: date | None = Field(default=None, description="From this date WIJ (BJH) delivers it; none: never.")
    open_house_until: date | None = Field(default=None, description="The Open House is open for it before this date.")


class ChannelJoin(BaseModel):
    model_config = ConfigDict(frozen=True)

    channel: Channel
    joins_bjh_on: date


class ReferrerOrganisation(BaseModel):
    """A referrer organisation (a GP practice, a hospital, a GI, a GGD, a court) of one channel: its own Kafka
    principal (`referrer-<id>`), its own inbound topic (`referrals.<channel>.<id>.v1`), its own gateway token and,
    on the specialist channel, its own MLLP client certificate. `senders` are the referrer identifiers its messages
    may name (the practitioner's or specialist's AGB, a GI's AGB, a GGD doctor's AGB or BIG, a court's issuer id):
    `services/access/senders.py` refuses any other (SENDER_NOT_ALLOWED)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$", max_length=40, description="Names its principal and topic.")
    channel: Channel
    name: str
    agb: str | None = Field(default=None, pattern=r"^\d{8}$", description="The organisation's own AGB code.")
    ura: str | None = Field(default=None, pattern=r"^\d{8}$", description="Its URA number, where known.")
    senders: frozenset[str] = Field(min_length=1, description="Referrer identifiers its messages may name.")


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str = Field(description="Content hash of the registry files it was loaded from.")
    teams: dict[str, WijTeam]
    postcodes: dict[str, str | None] = Field(description="PC4 in the municipality -> team id (None: no team).")
    providers: dict[str, Provider]
    products: dict[str, Product]
    channels: dict[Channel, ChannelJoin]
    referrers: dict[str, ReferrerOrganisation] = Field(default_factory=dict, description="Referrer organisations "
                                                       "by id (`referrers.json`).")

    def central_entrance(self) -> WijTeam:
        return next(team for team in self.teams.values() if team.central_entrance)


REGISTRY_KEY = b"registry"


class RegistrySnapshot(BaseModel):
    """The value on the compacted `registry.v1` (key `registry`): the registry files as published.
    Readers build the `Registry` with `services.infra.registry_files.registry_from_contents(files)`,
    so the topic and the files are read by one and the same validation."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.RegistrySnapshot/1"
    """The `schema` header of this message on Kafka."""

    version: str
    files: dict[str, str]
    published_at: datetime
