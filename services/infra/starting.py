"""Waits during start that are never silent: each says what it waits for every few seconds, and gives up at its
deadline naming it (a hung start once left only an empty log and an idle event loop's thread dump)."""

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from services.infra.logging import get_logger
from services.infra.settings import get_settings

T = TypeVar("T")
PROGRESS_EVERY_S = 5.0


class StartTimeout(TimeoutError):
    """A wait during start passed its deadline; the message names what was waited for."""


async def waiting_for(what: str, awaitable: Awaitable[T], timeout_s: float | None = None) -> T:
    """`awaitable`'s result, logging "waiting" (`for`, `elapsed_s`) every PROGRESS_EVERY_S and "ready" when it is
    done; StartTimeout after `timeout_s` (default VERWIJSHUB_START_TIMEOUT_S; the awaitable is cancelled)."""
    timeout_s = get_settings().start_timeout_s if timeout_s is None else timeout_s
    log = get_logger()
    started = time.monotonic()
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            left = timeout_s - (time.monotonic() - started)
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(PROGRESS_EVERY_S, left)))
            elapsed_s = round(time.monotonic() - started, 1)
            if done:
                result = task.result()
                log.info("ready", **{"for": what}, elapsed_s=elapsed_s)
                return result
            if elapsed_s >= timeout_s:
                log.error("start timed out", **{"for": what}, elapsed_s=elapsed_s)
                raise StartTimeout(f"not ready: still waiting for {what} after {timeout_s:.0f}s "
                                   "(VERWIJSHUB_START_TIMEOUT_S)")
            log.info("waiting", **{"for": what}, elapsed_s=elapsed_s)
    finally:
        task.cancel()
