"""A stream's query and where it starts: pure, no Twisted."""

from __future__ import annotations

from dataclasses import dataclass


class QueryError(ValueError):
    """A stream query parameter is malformed (400)."""


@dataclass(frozen=True)
class StreamQuery:
    offset: int | None = None
    tail: int | None = None
    follow: bool = True
    duplex: bool = False


def _non_negative(name: str, values: list[bytes]) -> int:
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 20:
        raise QueryError(f"{name} must be a non-negative integer")
    return int(values[0])


def _flag(name: str, values: list[bytes]) -> bool:
    if len(values) != 1 or values[0] not in (b"0", b"1"):
        raise QueryError(f"{name} must be 0 or 1")
    return values[0] == b"1"


def parse_stream_query(args: dict[bytes, list[bytes]]) -> StreamQuery:
    unknown = set(args) - {b"offset", b"tail", b"follow", b"duplex"}
    if unknown:
        name = sorted(unknown)[0].decode("utf-8", "replace")
        raise QueryError(f"unknown parameter {name!r}")
    offset = _non_negative("offset", args[b"offset"]) if b"offset" in args else None
    tail = _non_negative("tail", args[b"tail"]) if b"tail" in args else None
    if offset is not None and tail is not None:
        raise QueryError("give offset or tail, not both")
    follow = _flag("follow", args[b"follow"]) if b"follow" in args else True
    duplex = _flag("duplex", args[b"duplex"]) if b"duplex" in args else False
    return StreamQuery(offset=offset, tail=tail, follow=follow, duplex=duplex)


class BeyondEnd(ValueError):
    """The requested offset is past the end of the console (416)."""


def resolve_start(query: StreamQuery, first: int, end: int) -> tuple[int, int]:
    """Where a stream starts, and how many requested bytes are already gone."""
    if query.offset is not None:
        if query.offset > end:
            raise BeyondEnd(f"offset {query.offset} is beyond the end {end}")
        if query.offset < first:
            return first, first - query.offset
        return query.offset, 0
    if query.tail is not None:
        return max(first, end - query.tail), 0
    if not query.follow:
        return first, 0
    return end, 0
