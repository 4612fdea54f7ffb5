"""The client's response head reader (client/responsehead.py): recorded bytes
in, a head out, as the tunnel and the duplex stream feed it."""

from __future__ import annotations

import pytest

from vdsmconsole.client.responsehead import (
    MAX_HEAD,
    BadHead,
    HeadReader,
    ResponseHead,
    parse_head,
)

REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 27\r\n"
    b"X-Console-End: down\r\n"
    b"\r\n"
    b"the console of vm1 is down\n"
)


def test_status_line_and_headers():
    """Code, reason and headers (names lower-cased) are read; the body is the rest."""
    head, rest = HeadReader().receive(REFUSAL) or (None, b"")
    assert head == ResponseHead(
        503,
        "Service Unavailable",
        {
            b"content-type": b"text/plain",
            b"content-length": b"27",
            b"x-console-end": b"down",
        },
    )
    assert head.header(b"X-Console-End") == b"down"
    assert head.content_length == 27
    assert rest == b"the console of vm1 is down\n"


def test_no_reason_no_headers_no_length():
    """A bare status line is a head; a missing or non-numeric length is None."""
    assert parse_head(b"HTTP/1.1 200") == ResponseHead(200)
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x").content_length is None
    assert parse_head(b"HTTP/1.0 404 Not Found").header(b"missing", b"-") == b"-"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_a_head_split_across_reads(size):
    """Fed in pieces of any size, the head comes out once, with what followed."""
    reader = HeadReader()
    results = []
    for i in range(0, len(REFUSAL), size):
        got = reader.receive(REFUSAL[i : i + size])
        if got is not None:
            results.append(got)
            rest = REFUSAL[i + size :]
            break
    [(head, first)] = results
    assert head.code == 503 and head.content_length == 27
    assert first + rest == b"the console of vm1 is down\n"
    assert reader.head is head


def test_nothing_until_the_blank_line():
    """Headers without the blank line after them are not a head yet."""
    reader = HeadReader()
    assert reader.receive(b"HTTP/1.1 200 OK\r\nX-Console-Offset: 5\r\n") is None
    assert reader.receive(b"\r") is None
    got = reader.receive(b"\n")
    assert got is not None and got[0].header(b"x-console-offset") == b"5"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"garbage\r\n\r\n", "bad status line"),
        (b"SSH-2.0-OpenSSH_9.2 200\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 20x Nope\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 Long\r\n\r\n", "bad status line"),
        (b"\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6), "too long"),
    ],
)
def test_a_malformed_head_is_refused(data, message):
    """Not a status line, a header line without a name, or no end within the
    limit: BadHead (a ValueError) naming what is wrong."""
    with pytest.raises(BadHead, match=message):
        HeadReader().receive(data)


def test_too_long_is_seen_before_the_end_arrives():
    """A head growing past the limit is refused before its blank line comes."""
    reader = HeadReader(limit=100)
    assert reader.receive(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(BadHead, match="too long"):
        reader.receive(b"X-Filler: " + b"x" * 100)


def test_nothing_taken_after_the_head():
    """Once the head is read the bytes are the caller's: the reader refuses more."""
    reader = HeadReader()
    assert reader.receive(b"HTTP/1.1 200 OK\r\n\r\n") is not None
    with pytest.raises(ValueError, match="caller's"):
        reader.receive(b"more")
