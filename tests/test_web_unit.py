"""The web listener's pure parts: the Origin rule and token redaction."""

from __future__ import annotations

import pytest

from vdsmconsole.server.http.redact import redact_target
from vdsmconsole.server.web.origin import normal_origin, origin_allowed

HOST = b"console.example:6100"


@pytest.mark.parametrize(
    "origin,allowed,ok",
    [
        (b"https://console.example:6100", (), True),
        (b"https://CONSOLE.example:6100", (), True),
        (b"http://console.example:6100", (), False),  # not the listener's scheme
        (b"https://console.example", (), False),  # another port
        (b"https://evil.example", (), False),
        (b"https://console.example:6100.evil.example", (), False),
        (b"null", (), False),
        (b"https://engine.example", ("https://engine.example",), True),
        (b"https://engine.example:443", ("https://engine.example",), True),
        (b"https://console.example:6100", ("https://engine.example",), False),
        (b"https://user@console.example:6100", (), False),
        (b"https://console.example:6100/path", (), False),
    ],
)
def test_origin_rule(origin, allowed, ok):
    """Only the listener's own origin, or the listed ones, may open a websocket."""
    assert origin_allowed(origin, HOST, allowed) is ok


def test_no_origin_is_not_allowed_by_the_rule():
    """A request without Origin is never allowed by the rule (callers decide)."""
    assert not origin_allowed(None, HOST, ())


@pytest.mark.parametrize(
    "bad", ["engine.example", "ftp://x", "https://", "https://a/b"]
)
def test_configured_origins_must_be_origins(bad):
    """What allowed_origins takes: scheme://host[:port], nothing else."""
    assert normal_origin(bad) is None


@pytest.mark.parametrize(
    "uri,logged",
    [
        (b"/console/serial?token=SECRET", b"/console/serial?token=***"),
        (
            b"/websockify?offset=3&token=SECRET&tail=",
            b"/websockify?offset=3&token=***&tail=",
        ),
        (b"/x?%74oken=SECRET", b"/x?%74oken=***"),
        (
            b"https://h:6100/console/vnc?token=SECRET",
            b"https://h:6100/console/vnc?token=***",
        ),
        (b"/consoleStream/vm1?offset=5", b"/consoleStream/vm1?offset=5"),
        (b"/RPC2", b"/RPC2"),
    ],
)
def test_access_log_never_shows_a_token(uri, logged):
    """A token in a target or a Referer is left out of the access log, however
    it is spelled."""
    assert redact_target(uri) == logged
