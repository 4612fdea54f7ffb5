"""Console tokens never reach the access log: the target is redacted first."""

from __future__ import annotations

import pytest

from vdsmconsole.server.http.accesslog import access_log_line
from vdsmconsole.server.http.redact import redact_target

TOKEN = "Tk_" + "a" * 40


@pytest.mark.parametrize(
    "target,expected",
    [
        (f"/os-console-auth-tokens/{TOKEN}", "/os-console-auth-tokens/***"),
        (f"/os-console-auth-tokens/{TOKEN}/x?y=1", "/os-console-auth-tokens/***?y=1"),
        (f"/%6Fs-console-auth-tokens/{TOKEN}", "/%6Fs-console-auth-tokens/***"),
        (
            f"/consoleTunnel/vm1?protocol=vnc&token={TOKEN}",
            "/consoleTunnel/vm1?protocol=vnc&token=***",
        ),
        (f"/websockify?t%6Fken={TOKEN}&a=b", "/websockify?t%6Fken=***&a=b"),
        (f"/x?token={TOKEN}&token={TOKEN}", "/x?token=***&token=***"),
        ("/os-console-auth-tokens", "/os-console-auth-tokens"),
        (
            "/consoleStream/vm1?offset=5&tokens=1",
            "/consoleStream/vm1?offset=5&tokens=1",
        ),
        ("/RPC2", "/RPC2"),
    ],
)
def test_tokens_are_redacted_from_targets(target, expected):
    """The connect-info segment and token values become ***; nothing else changes."""
    assert redact_target(target.encode()) == expected.encode()


class _Request:
    method = b"GET"
    clientproto = b"HTTP/2"
    code = 200
    sentLength = 10
    uri = f"/os-console-auth-tokens/{TOKEN}".encode()

    def getHeader(self, name):
        return None

    def getClientAddress(self):
        class Address:
            host = "127.0.0.1"

        return Address()


def test_the_access_log_line_has_no_token():
    """The access log line of a connect-info request shows *** for the token."""
    line = access_log_line("[01/Dec/2026:00:00:00 +0000]", _Request())
    assert TOKEN not in line
    assert '"GET /os-console-auth-tokens/*** HTTP/2" 200' in line
