"""System tools some tests need (Debian's prometheus, chromium and kcat, installed by `make tools`)."""

import os
import shutil

import pytest


def require(tool: str) -> str:
    """The tool's path; a clear failure when it is missing, a skip only when explicitly opted out."""
    path = shutil.which(tool)
    if path:
        return path
    if os.environ.get("VERWIJSHUB_SKIP_SYSTEM_TOOLS") == "1":
        pytest.skip(f"{tool} missing and VERWIJSHUB_SKIP_SYSTEM_TOOLS=1")
    pytest.fail(f"{tool} is not installed: run `make tools` (Debian packages prometheus, chromium and kcat)")
