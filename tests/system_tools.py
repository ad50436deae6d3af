"""System tools some tests need (Debian's prometheus, chromium and kcat, installed by `make tools`; the AsyncAPI
parser, installed by `make asyncapi-parser`)."""

import os
import shutil
from pathlib import Path

import pytest


def missing(what: str, how: str) -> None:
    """A clear failure, a skip only when explicitly opted out."""
    if os.environ.get("VERWIJSHUB_SKIP_SYSTEM_TOOLS") == "1":
        pytest.skip(f"{what} missing and VERWIJSHUB_SKIP_SYSTEM_TOOLS=1")
    pytest.fail(f"{what} is not installed: run {how}")


def require(tool: str) -> str:
    """The tool's path."""
    path = shutil.which(tool)
    if not path:
        missing(tool, "`make tools` (Debian packages prometheus, chromium and kcat)")
    return path


def require_installed(path: Path, what: str, how: str) -> Path:
    """A path an installation step makes (a package of npm's)."""
    if not path.exists():
        missing(what, how)
    return path
