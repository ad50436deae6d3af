"""What a part of the hub writes, declared once where it writes it: the records and the AsyncAPI document follow.

An `Output` names a topic, or a family of topics with `{parameters}` (`handovers.wij.{team}.v1`), the message and
why. Its `record` builds each record of that kind (through `kafka.outbound`, the one way to build a record), so a
service cannot write to a topic it did not declare, and schemas/generate.py documents the same declarations (each
runtime service's `Processor.writes`, the admin commands' `WRITES`), so the contract cannot leave a topic out.
"""

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from faststream.kafka import KafkaBroker

from schemas.referral import Channel
from services.infra.kafka import JSON, Outbound, outbound

PARAMETERS: dict[str, dict[str, Any]] = {
    "team": {"description": "A WIJ team's id (`deploy/registry/teams.json`)."},
    "agb": {"description": "A provider's AGB code (`deploy/registry/providers.json`)."},
    "channel": {"description": "A referrer channel.", "enum": [channel.value for channel in Channel]},
    "organisation": {"description": "A referrer organisation's id (`deploy/registry/referrers.json`)."},
}
"""Every parameter a topic family is named with, as AsyncAPI's Parameter Object."""
PARAMETER = re.compile(r"\{(\w+)\}")


@functools.cache  # a handful of addresses, asked for every record written
def address_pattern(address: str) -> re.Pattern[str]:
    """The topic names an address stands for: each `{parameter}` one name segment."""
    return re.compile(PARAMETER.sub(r"[^.]+", re.escape(address).replace(r"\{", "{").replace(r"\}", "}")))


@dataclass(frozen=True)
class Output:
    """One kind of record a part of the hub writes. `message` is the payload's model (its `SCHEMA` is the `schema`
    header unless `schema` says otherwise); a record's value may also be that message already encoded (bytes)."""

    name: str
    address: str
    message: type
    description: str
    schema: str | None = None
    content_type: str = JSON

    @property
    def schema_header(self) -> str:
        return self.schema or self.message.SCHEMA

    @property
    def pattern(self) -> re.Pattern[str]:
        return address_pattern(self.address)

    def record(self, message: Any, key: str | bytes | None, *, topic: str | None = None, **options: Any) -> Outbound:
        """The record of `message` on `topic` (the address itself when it names one topic); `options` as `outbound`
        takes them (a message put back as its sender wrote it keeps its own `schema` and `content_type`)."""
        topic = topic or self.address
        if not self.pattern.fullmatch(topic) or not isinstance(message, (bytes, self.message)):
            raise AssertionError(f"{self.name} writes {self.message.__name__} to {self.address}, not "
                                 f"{type(message).__name__} to {topic}")
        return outbound(topic, message, key, **{"schema": self.schema_header, "content_type": self.content_type,
                                                **options})


def output_for(topic: str, outputs: Iterable[Output]) -> Output:
    """The output whose address stands for `topic`."""
    return next(output for output in outputs if output.pattern.fullmatch(topic))


def declare(broker: KafkaBroker, prefix: str, outputs: Iterable[Output]) -> None:
    """The outputs as publishers of a documentation-only broker, titled `<prefix>:<name>`."""
    for output in outputs:
        broker.publisher(output.address, title=f"{prefix}:{output.name}", schema=output.message,
                         description=output.description)
