"""The client's CONNECT speaker over an in-memory transport, and the small
pure parts of ``tunnel``: the request head, refusals as the client's usual
errors, ``--listen`` and the viewer hint.

Bytes arrive in pieces of every size, as TCP may cut them.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from vdsmconsole.client.cli.args import parse_args, parse_listen
from vdsmconsole.client.cli.output import UsageError
from vdsmconsole.client.errors import (
    ConsoleUnavailable,
    HTTPError,
    NoSuchConsole,
    ServerStopping,
)
from vdsmconsole.client.tunnel import (
    MAX_HEAD,
    Tunnel,
    _TunnelProtocol,
    refusal,
    tunnel_head,
)
from vdsmconsole.client.tunnelport import viewer_hint
from vdsmconsole.status import no_vm_message

HEAD = tunnel_head("localhost", 54321, "vm1", "vnc")


class Refused(Exception):
    pass


class Exchange:
    """One protocol on a StringTransport, recording what it reports."""

    def __init__(self) -> None:
        self.protocol = _TunnelProtocol(
            HEAD,
            "vm1",
            "vnc",
            describe=lambda code, text, end: Refused(code, text, end),
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.started: list[Any] = []
        self.protocol.started.addBoth(self.started.append)

    def feed(self, data: bytes, piece: int) -> None:
        for i in range(0, len(data), piece):
            self.protocol.dataReceived(data[i : i + piece])

    @property
    def tunnel(self) -> Tunnel:
        (result,) = self.started
        assert isinstance(result, Tunnel), result
        return result

    def failure(self) -> BaseException:
        (result,) = self.started
        assert isinstance(result, Failure), result
        return result.value


def test_the_head_names_the_vm_and_protocol_and_quotes_them():
    """The request line is CONNECT to the tunnel path; odd characters are
    percent-quoted, so nothing a caller passes can split the request."""
    assert HEAD == (
        b"CONNECT /consoleTunnel/vm1?protocol=vnc HTTP/1.1\r\n"
        b"Host: localhost:54321\r\n\r\n"
    )
    odd = tunnel_head("::1", 1, "a b\r\nX: y", "vnc&x", token="t/?&")
    assert odd.split(b"\r\n")[0] == (
        b"CONNECT /consoleTunnel/a%20b%0D%0AX%3A%20y?protocol=vnc%26x&token=t%2F%3F%26"
        b" HTTP/1.1"
    )
    assert b"Host: [::1]:1\r\n" in odd


def test_connection_made_sends_the_head_only():
    """connectionMade writes the CONNECT head, nothing else."""
    assert Exchange().transport.value() == HEAD


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_200_then_raw_bytes_both_ways(piece):
    """After 200 every byte (those that came with the answer too) goes to
    on_data unchanged, and write() sends bytes unchanged; reading is paused
    until someone takes the bytes."""
    exchange = Exchange()
    answer = b"HTTP/1.1 200 Connection established\r\nX-A: b\r\n\r\nRFB 003.008\n"
    exchange.feed(answer, piece)
    tunnel = exchange.tunnel
    assert exchange.transport.producerState == "paused"
    got = bytearray()
    tunnel.on_data = got.extend
    assert exchange.transport.producerState == "producing"
    exchange.feed(b"\r\n\r\n\x00\xff", piece)
    assert bytes(got) == b"RFB 003.008\n\r\n\r\n\x00\xff"
    exchange.transport.clear()
    tunnel.write(b"HTTP/1.1 200\r\n\r\n")
    assert exchange.transport.value() == b"HTTP/1.1 200\r\n\r\n"


def test_close_and_done():
    """close() closes the connection; done fires when it is lost."""
    exchange = Exchange()
    exchange.feed(b"HTTP/1.1 200 OK\r\n\r\n", 100)
    tunnel = exchange.tunnel
    tunnel.close()
    assert exchange.transport.disconnecting
    assert not tunnel.done.called
    exchange.protocol.connectionLost(Failure(ConnectionError()))
    assert tunnel.done.called and tunnel.closed


@pytest.mark.parametrize("piece", [1, 5, 1000])
def test_a_refusal_with_a_length_is_described_with_its_text(piece):
    """A non-200 answer fails the opening with describe(code, text) once its
    Content-Length of text is in, and hangs up."""
    exchange = Exchange()
    text = b"no such VM vm1\n"
    exchange.feed(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text),
        piece,
    )
    assert exchange.failure().args == (404, text, None)
    assert exchange.transport.disconnecting


def test_a_refusal_without_a_length_ends_with_the_connection():
    """Without Content-Length the refusal's text is what came before the close."""
    exchange = Exchange()
    exchange.feed(b"HTTP/1.1 502 Bad Gateway\r\n\r\nrefused", 3)
    assert exchange.started == []
    exchange.protocol.connectionLost(Failure(ConnectionError()))
    assert exchange.failure().args == (502, b"refused", None)


def test_garbage_and_an_endless_head_are_refused():
    """Not an HTTP status line, or no end of the head within MAX_HEAD: failed."""
    exchange = Exchange()
    exchange.feed(b"SSH-2.0-OpenSSH\r\n\r\n", 100)
    assert "bad status line" in str(exchange.failure())
    exchange = Exchange()
    exchange.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6), 4096)
    assert "too long" in str(exchange.failure())
    assert exchange.transport.disconnecting


def test_lost_before_an_answer_fails_with_the_reason():
    """A connection lost before the answer fails the opening with that reason
    (the caller describes it: a refused certificate, a reset)."""
    exchange = Exchange()
    exchange.protocol.connectionLost(Failure(ConnectionResetError("reset")))
    assert isinstance(exchange.failure(), ConnectionResetError)


def test_cancelling_the_opening_aborts_the_connection():
    """A timeout (cancel) before the answer drops the connection too."""
    exchange = Exchange()
    exchange.protocol.started.cancel()
    assert exchange.transport.disconnecting


@pytest.mark.parametrize(
    ("code", "kind", "message"),
    [
        (404, NoSuchConsole, "no such VM vm1"),
        (502, ConsoleUnavailable, "no such VM vm1"),
        (503, ConsoleUnavailable, "no such VM vm1"),
        (400, HTTPError, "h:1 answered 400: no such VM vm1"),
        (403, HTTPError, "h:1 answered 403: no such VM vm1"),
    ],
)
def test_refusals_are_the_clients_usual_errors_with_the_servers_line(
    code, kind, message
):
    """Each refusal is the client's usual class with the server's first line."""
    error = refusal(code, b"no such VM vm1\nmore\n", "h:1", "vm1")
    assert type(error) is kind
    assert str(error) == message and error.code == code


def test_503_while_stopping_is_server_stopping():
    """503 with X-Console-End: stopping (from the wire) is ServerStopping; a
    503 without it (a serial guest down) is ConsoleUnavailable."""
    exchange = Exchange()
    exchange.feed(
        b"HTTP/1.1 503 Service Unavailable\r\nX-Console-End: stopping\r\n"
        b"Content-Length: 23\r\n\r\nthe server is stopping\n",
        4,
    )
    code, text, end = exchange.failure().args
    error = refusal(code, text, "h:1", "vm1", end)
    assert type(error) is ServerStopping and str(error) == "the server is stopping"


def test_a_refusal_without_text_still_says_something():
    """No text: a line of the client's own."""
    assert str(refusal(404, b"", "h:1", "vm1")) == no_vm_message("vm1")
    assert str(refusal(403, b"", "h:1", "vm1")) == "h:1 answered 403: no reason given"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5901", ("127.0.0.1", 5901)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:5901", ("0.0.0.0", 5901)),
        ("[::1]:5901", ("::1", 5901)),
        ("localhost:5902", ("localhost", 5902)),
    ],
)
def test_listen_addresses(text, expected):
    """--listen takes PORT, ADDR:PORT and [v6]:PORT."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1.2.3.4:", ":5901", "a:99999", "::1:5"])
def test_bad_listen_addresses(text):
    """Anything else is a usage error."""
    with pytest.raises(UsageError):
        parse_listen(text)


def test_the_tunnel_and_remote_console_command_lines():
    """The commands parse; --protocol is required and one of the known ones."""
    args = parse_args(["h", "tunnel", "vm1", "--protocol", "vnc"])
    assert (args.sub.vm_id, args.sub.protocol, args.sub.listen) == (
        "vm1",
        "vnc",
        ("127.0.0.1", 0),
    )
    args = parse_args(
        ["h", "remote-console", "vm1", "--protocol", "rdp", "--ttl", "5"]
        + ["--single-use", "--role", "viewer"]
    )
    assert (args.sub.ttl, args.sub.single_use, args.sub.role) == (5, True, "viewer")
    for bad in (
        ["h", "tunnel", "vm1"],
        ["h", "tunnel", "vm1", "--protocol", "telnet"],
        ["h", "remote-console", "vm1", "--protocol", "vnc", "--ttl", "0"],
        ["h", "remote-console", "vm1", "--protocol", "vnc", "--role", "admin"],
    ):
        with pytest.raises(UsageError):
            parse_args(bad)


def test_viewer_hints():
    """The printed line tells each protocol's usual viewer how to connect."""
    assert viewer_hint("vnc", "127.0.0.1", 5901) == "vncviewer 127.0.0.1::5901"
    assert viewer_hint("spice", "::1", 5) == "remote-viewer spice://[::1]:5"
    assert viewer_hint("rdp", "127.0.0.1", 5) == "xfreerdp /v:127.0.0.1:5"
    assert viewer_hint("serial", "127.0.0.1", 5) == "socat -,raw,echo=0 tcp:127.0.0.1:5"
