"""A short soak in the suite: the full 5-minute run is ``python -m tests.soak``."""

from __future__ import annotations

import os

import pytest

from tests import soak
from tests.streamhelp import DEMO_CONFIG

pytestmark = pytest.mark.e2e

DURATION = float(os.environ.get("VDSMCONSOLE_SOAK_SECONDS", "20"))


def test_short_soak(server_factory):
    """40 clients on 5 guests for 20 s: no error, bytes match, RSS and fds flat."""
    server = server_factory(DEMO_CONFIG)
    summary = soak.run(server, clients=40, guests=5, duration=DURATION)
    assert summary["errors"] == [], summary
    assert summary["mismatches"] == 0
    assert summary["byteRangesChecked"] > 50, summary
    assert summary["consoleReadRangesChecked"] > 0, summary
    assert summary["leftTokensChecked"] > 0, summary
    assert set(summary["counts"]) >= {
        "rpc",
        "follower",
        "resume",
        "writer",
        "writer-left",
        "duplex",
        "flood",
        "h2-stalled",
        "h2-errors",
    }, summary
    assert summary["rssGrowth"] < 0.10, summary
    assert summary["fdsAfter"] <= summary["fdsBefore"], summary
    assert summary["ok"]
