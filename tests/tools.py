"""What a test needs from the machine (curl, wget, tmux, a privilege...):
found, or the test is skipped (and fails under CI, where tools/test.sh
installs everything)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI=true fail, for there a missing tool or
    privilege is a broken runner, not a reason to test less."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of a tool; under CI a missing tool fails, elsewhere it skips."""
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} not found (apt-get install {package})")
