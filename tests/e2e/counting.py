"""A toy processor for the runtime's process-level tests, run as its own OS process (so a test can freeze it):

    python -m tests.e2e.counting <run> <instance> [--freeze-on VALUE]

It counts records per key: each input gives one output on `<run>.out` with the key's running count, and the count
as state on `<run>.state`. Connected as the admin principal of the broker in the VERWIJSHUB_* environment. With
`--freeze-on`, the instance stops itself (SIGSTOP) while it handles that value, inside its transaction's work."""

import argparse
import asyncio
import json
import os
import signal

from services.infra import principals
from services.infra.kafka import Outbound, Record, outbound
from services.infra.logging import configure_logging
from services.infra.processing import Processor, Runtime
from services.infra.settings import Settings


class Counting(Processor):
    service = "counting-test"

    def __init__(self, run: str, freeze_on: bytes | None) -> None:
        self.run, self.freeze_on = run, freeze_on
        self.inputs, self.state_topic = rf"{run}\.in", f"{run}.state"
        self.counts: dict[int, dict[str, int]] = {}

    async def load(self, partition: int, state: list[Record]) -> None:
        self.counts[partition] = {r.key.decode(): int(r.value) for r in state if r.key and r.value}

    def unload(self, partition: int) -> None:
        self.counts.pop(partition, None)

    async def handle(self, record: Record) -> list[Outbound]:
        if self.freeze_on is not None and record.value == self.freeze_on:
            self.freeze_on = None
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen here, until the test sends SIGCONT
        key = record.key.decode()
        count = self.counts[record.partition].get(key, 0) + 1
        value = json.dumps({"key": key, "count": count, "value": record.value.decode()}).encode()
        self.counts[record.partition][key] = count
        return [outbound(f"{self.run}.out", value, key, schema="test/1"),
                outbound(self.state_topic, str(count).encode(), key, schema="test/1", partition=record.partition)]


async def main(run: str, instance: str, freeze_on: str | None) -> None:
    settings = Settings()
    runtime = Runtime(Counting(run, freeze_on.encode() if freeze_on else None), settings,
                      kafka=settings.connection(principals.ADMIN))
    await runtime.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runtime.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("instance")
    parser.add_argument("--freeze-on")
    arguments = parser.parse_args()
    configure_logging(f"counting-{arguments.instance}", "INFO", None)
    asyncio.run(main(arguments.run, arguments.instance, arguments.freeze_on))
