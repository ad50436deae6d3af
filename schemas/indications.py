"""Running indications: a youth's formal decision of need for a product with a provider, until an end date.

Kept on the compacted `indications.v1` (key: youth pseudonym); routing keeps referrals with the
provider of a running indication (rule 2); the notifier reminds providers before the end date.
"""

from datetime import date
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Indication(BaseModel):
    model_config = ConfigDict(frozen=True)

    pseudonym: str = Field(description="Youth pseudonym (HMAC of the BSN); the BSN itself is not kept here.")
    product: str
    provider_agb: str = Field(pattern=r"^\d{8}$")
    start: date
    end: date
    referral_id: str | None = Field(default=None, description="The hub referral it came from, when known "
                                    "(feedback); imported indications have none.")
    rerouted_on: date | None = Field(default=None, description="Set when its provider stopped and the hub "
                                     "sent the youth to WIJ, so that this happens once.")

    def running_on(self, day: date) -> bool:
        return self.start <= day <= self.end


class YouthIndications(BaseModel):
    """The value on `indications.v1`: all of one youth's indications, since compaction keeps one record
    per key (the pseudonym). An empty list is written as a tombstone."""

    model_config = ConfigDict(frozen=True)
    SCHEMA: ClassVar[str] = "verwijshub.YouthIndications/1"
    """The `schema` header of this message on Kafka."""

    pseudonym: str
    indications: list[Indication]
