"""A stream's query and where it starts: parse_stream_query and resolve_start.

Pure functions: the query's arguments as Twisted hands them (bytes to lists
of bytes) in, a ``StreamQuery`` or a ``QueryError`` (400) out; the start
offset and the bytes already gone, or ``BeyondEnd`` (416).
"""

from __future__ import annotations

import pytest

from vdsmconsole.server.streams.query import (
    BeyondEnd,
    QueryError,
    StreamQuery,
    parse_stream_query,
    resolve_start,
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, StreamQuery()),
        ({b"offset": [b"0"]}, StreamQuery(offset=0)),
        (
            {b"offset": [b"12345678901234567890"]},
            StreamQuery(offset=12345678901234567890),
        ),
        ({b"tail": [b"4096"]}, StreamQuery(tail=4096)),
        ({b"follow": [b"0"]}, StreamQuery(follow=False)),
        ({b"follow": [b"1"], b"duplex": [b"1"]}, StreamQuery(duplex=True)),
        (
            {b"tail": [b"10"], b"follow": [b"0"]},
            StreamQuery(tail=10, follow=False),
        ),
    ],
)
def test_parse_accepts_the_contracts_parameters(args, expected):
    """offset, tail, follow and duplex parse to their values; none means live."""
    assert parse_stream_query(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({b"offset": [b"-1"]}, "offset must be a non-negative integer"),
        ({b"offset": [b"1e3"]}, "offset must be a non-negative integer"),
        ({b"offset": [b""]}, "offset must be a non-negative integer"),
        ({b"offset": [b"1", b"2"]}, "offset must be a non-negative integer"),
        ({b"tail": [b"1" * 21]}, "tail must be a non-negative integer"),
        ({b"offset": [b"1"], b"tail": [b"2"]}, "give offset or tail, not both"),
        ({b"follow": [b"yes"]}, "follow must be 0 or 1"),
        ({b"duplex": [b"2"]}, "duplex must be 0 or 1"),
        ({b"Offset": [b"1"]}, "unknown parameter 'Offset'"),
        ({b"\xff": [b"1"]}, "unknown parameter '\ufffd'"),
    ],
)
def test_parse_refuses_what_is_malformed(args, message):
    """A malformed, repeated, conflicting or unknown parameter is a QueryError
    whose message names it (the 400's body)."""
    with pytest.raises(QueryError) as info:
        parse_stream_query(args)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("query", "first", "end", "expected"),
    [
        (StreamQuery(), 100, 500, (500, 0)),  # live: from the end
        (StreamQuery(follow=False), 100, 500, (100, 0)),  # everything retained
        (StreamQuery(offset=300), 100, 500, (300, 0)),
        (StreamQuery(offset=500), 100, 500, (500, 0)),  # the end itself is fine
        (StreamQuery(offset=40), 100, 500, (100, 60)),  # older than retained
        (StreamQuery(tail=50), 100, 500, (450, 0)),
        (StreamQuery(tail=10_000), 100, 500, (100, 0)),  # more than retained
        (StreamQuery(tail=0), 100, 500, (500, 0)),
    ],
)
def test_resolve_start(query, first, end, expected):
    """Where a stream starts and how many asked-for bytes are already gone."""
    assert resolve_start(query, first, end) == expected


def test_offset_beyond_the_end_is_beyond_end():
    """An offset past the end is BeyondEnd (416), naming both numbers."""
    with pytest.raises(BeyondEnd, match="offset 501 is beyond the end 500"):
        resolve_start(StreamQuery(offset=501), 100, 500)
