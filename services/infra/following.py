"""The one way a service follows a topic beside its inputs (its registry, its ledger): from the start, then live.

No consumer group: every instance reads every partition, committed records only. `ready` is set once what was on
the topics when following began has been read (or when they do not exist yet: nothing to read). A failure (the
broker away) starts over from the beginning, so `apply` must be idempotent; it must also never raise.
"""

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.infra.connection import KafkaConnection
from services.infra.kafka import partitions_of
from services.infra.logging import get_logger

ABSENT_RETRY_S = 5.0
"""How often topics that do not exist yet are looked for again."""


async def follow(kafka: KafkaConnection, names: list[str], apply: Callable[[ConsumerRecord], None],
                 ready: asyncio.Event, client_id: str) -> None:
    """Apply every record of `names` in order, for ever (until cancelled)."""
    log = get_logger()
    while True:
        consumer = AIOKafkaConsumer(**kafka.consumer_options(), enable_auto_commit=False, client_id=client_id)
        try:
            await consumer.start()
            partitions = await partitions_of(kafka, names)
            if not partitions:  # `up`, `access sync` and `registry publish` create them
                ready.set()
                await asyncio.sleep(ABSENT_RETRY_S)
                continue
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            behind = {tp for tp, end in ends.items() if end > 0}
            while True:
                if not behind:
                    ready.set()
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        apply(record)
                # every partition, not only those that gave records: a read_committed position passes the
                # transaction markers at a topic's end in a fetch that returns no record at all
                behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("following failed: starting over", topics=names, error_type=type(exc).__name__)
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
