"""SIGUSR1 writes the threads' stacks and every asyncio task's stack: which coroutine a hung start waits in."""

import signal
import subprocess
import sys
import time

from services.infra.settings import REPO_ROOT

PROGRAM = """
import asyncio
from services.hub import dump_stacks_on_sigusr1, dump_tasks_on_sigusr1

async def wait_for_godot(arrived):
    await arrived.wait()

async def main():
    dump_tasks_on_sigusr1(asyncio.get_running_loop())
    task = asyncio.create_task(wait_for_godot(asyncio.Event()), name="godot")
    print("waiting", flush=True)
    await task

dump_stacks_on_sigusr1()
asyncio.run(main())
"""


def test_sigusr1_dumps_the_threads_and_the_waiting_coroutine() -> None:
    process = subprocess.Popen([sys.executable, "-c", PROGRAM], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "waiting\n"
        process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
    finally:
        process.kill()
    stderr = process.communicate()[1]
    assert "Current thread" in stderr or "Thread 0x" in stderr  # faulthandler's thread dump
    assert "asyncio tasks" in stderr and "name='godot'" in stderr and "in wait_for_godot" in stderr
