"""How console streams end, so that a client can tell why; refusals while
the server stops.

A stream's response ends in one of two ways, and they differ on the wire:

- **Cleanly**: the last chunk (HTTP/1.1) or END_STREAM (HTTP/2), carrying
  the trailer ``X-Console-End`` (announced by a ``Trailer`` header):

  ``destroyed``  the console was destroyed; nothing more will come;
  ``down``       its guest is gone for good (a pty whose guest went away, a
                 spawned guest that exited), and everything retained from
                 the stream's start was sent;
  ``complete``   ``follow=0``: everything asked for was sent;
  ``behind``     the client fell behind everything retained: asking again
                 from the last offset received tells what was lost.

  ``wget`` and ``curl`` exit 0.

- **Cut**, when the server stops (the console comes back with it, at the
  same offsets): an HTTP/1.1 connection is closed without the last chunk;
  on HTTP/2 every open stream of the connection is reset (RST_STREAM
  CANCEL), then GOAWAY and close.  ``wget`` and ``curl`` exit non-zero, so
  a script retries; the project's client resumes.

Once the server is stopping, a request that was not in flight yet is answered
503 with ``X-Console-End: stopping`` and ``Retry-After``, and no more come on
its connection: ``Connection: close`` on HTTP/1.1, a GOAWAY on HTTP/2 (sent
at once to every HTTP/2 connection with a request in flight).  A POST to a
console whose guest is down is 503 with ``X-Console-End: down``.

Twisted writes no trailers: over HTTP/1.1 the last chunk is written here;
over HTTP/2 the connection's end of a stream becomes a HEADERS frame with the
trailers, sent in order after the stream's queued DATA.
"""

from __future__ import annotations

import contextlib
from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import H2Stream

from vdsmconsole.streamend import END_HEADER, StreamEnd

__all__ = [
    "END_HEADER",
    "StreamEnd",
    "abort_stream",
    "begin_shutdown",
    "down_headers",
    "end_stream",
    "refuse_while_stopping",
]

RETRY_AFTER = b"5"


def down_headers() -> dict[bytes, bytes]:
    """What a 503 to input for a console whose guest is down carries."""
    return {b"retry-after": RETRY_AFTER, END_HEADER: StreamEnd.DOWN.encode()}


def _gone(request: Any) -> bool:
    return bool(request.finished or getattr(request, "_disconnected", False))


def end_stream(request: Any, end: StreamEnd) -> None:
    """Finish a stream's response cleanly, saying why in the trailer."""
    if _gone(request):
        return
    if request.producer is not None:
        request.unregisterProducer()
    if not request.startedWriting:
        request.write(b"")
    value = end.value.encode("ascii")
    channel = request.channel
    if isinstance(channel, H2Stream):
        _h2_trailers(channel._conn)[channel.streamID] = [(END_HEADER.lower(), value)]
    elif request.chunked:
        channel.write(b"0\r\n%s: %s\r\n\r\n" % (END_HEADER, value))
        request.chunked = 0  # the last chunk is out: finish() adds none
    request.finish()


def abort_stream(request: Any) -> None:
    """Cut a stream (the server stops) so that no client takes it for an end."""
    if _gone(request) or request.channel is None:
        return
    channel = request.channel
    if isinstance(channel, H2Stream):
        _cut_h2(channel._conn)
    else:
        channel.loseConnection()  # unregisters the producer; no last chunk


def _h2_trailers(conn: Any) -> dict[int, list[tuple[bytes, bytes]]]:
    """The trailers to end streams of an HTTP/2 connection with, by stream id.

    Twisted ends a stream, once its queued DATA is out, with h2's
    ``end_stream`` (an empty DATA frame); for a stream given trailers that
    becomes ``send_headers(..., end_stream=True)``.  An entry whose stream
    the client reset first stays until the connection goes.
    """
    trailers: dict[int, list[tuple[bytes, bytes]]] | None = getattr(
        conn, "_consoleTrailers", None
    )
    if trailers is None:
        trailers = conn._consoleTrailers = {}
        h2conn = conn.conn
        plain_end = h2conn.end_stream

        def end_stream_with_trailers(stream_id: int) -> None:
            headers = trailers.pop(stream_id, None)
            if headers is None:
                plain_end(stream_id)
            else:
                h2conn.send_headers(stream_id, headers, end_stream=True)

        h2conn.end_stream = end_stream_with_trailers
    return trailers


def _say_goaway(conn: Any) -> None:
    """Ask an HTTP/2 client to open no more streams; its open ones go on.

    The frame is written past h2's state machine: after its own
    ``close_connection`` h2 refuses to send anything, and the calls and
    streams in flight on the connection must still be answered.
    """
    transport = conn.transport
    if getattr(conn, "_consoleGoaway", False) or transport is None:
        return
    conn._consoleGoaway = True
    h2conn = conn.conn
    frame = GoAwayFrame(
        stream_id=0,
        last_stream_id=h2conn.highest_inbound_stream_id,
        error_code=ErrorCodes.NO_ERROR,
    )
    transport.write(h2conn.data_to_send() + frame.serialize())


def _cut_h2(conn: Any) -> None:
    """Reset every open stream of an HTTP/2 connection, GOAWAY, close it."""
    transport = conn.transport
    if transport is None:
        return
    h2conn = conn.conn
    for stream_id in list(conn.streams):
        with contextlib.suppress(H2Error):  # one that h2 has closed already
            h2conn.reset_stream(stream_id, error_code=ErrorCodes.CANCEL)
    with contextlib.suppress(H2Error):
        h2conn.close_connection(error_code=ErrorCodes.NO_ERROR)
    transport.write(h2conn.data_to_send())
    transport.loseConnection()
    # As Twisted's own teardown after a GOAWAY: the streams learn now, so
    # that nothing more is queued for them.
    conn.connectionLost(Failure(ConnectionDone("the server is stopping")))


def begin_shutdown(site: Any) -> None:
    """The server starts to stop: no new requests (see the module docstring)."""
    site.stopping = True
    for request in list(site.inFlight):
        channel = request.channel
        if isinstance(channel, H2Stream):
            _say_goaway(channel._conn)
        elif channel is not None:
            channel.persistent = False


def refuse_while_stopping(request: Any) -> bool:
    """While the server stops: answer a request that was not in flight when it
    began with 503 (True); let one that was go on, as the last on its
    connection (False)."""
    channel = request.channel
    h2 = isinstance(channel, H2Stream)
    if not h2:
        channel.persistent = False
        request.setHeader(b"connection", b"close")
    if not request.cameWhileStopping:
        return False
    if h2:
        _say_goaway(channel._conn)
    body = b"the server is stopping\n"
    request.setResponseCode(503)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"retry-after", RETRY_AFTER)
    request.setHeader(END_HEADER, StreamEnd.STOPPING.value.encode("ascii"))
    request.write(body)
    request.finish()
    return True
