"""The tools a test runs (curl, wget, tmux...): found on PATH, or the test is
skipped (and fails under CI, where tools/test.sh installs them all)."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, package: str) -> str:
    """The path of a tool; under CI a missing tool fails, elsewhere it skips."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found (apt-get install {package})"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
