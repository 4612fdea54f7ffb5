"""HTTP/1.1 rules checked once a request's headers are in, before its body.

Pure: headers in, a refusal (status and a short message) or None out.
Twisted serves an HTTP/1.1 request without ``Host`` and answers
``Expect: 100-continue`` with ``100 Continue`` before it knows whether it
will take the body; here

- HTTP/1.1 with no ``Host`` or more than one is 400 (RFC 9112, 3.2);
- a body announced (``Content-Length``) beyond the cap, with
  ``Expect: 100-continue``, is 413 at once: the client has not sent it yet
  and need not.  Without ``Expect`` the body is already on its way; it is
  read and dropped, then answered 413, so that closing the connection does
  not reset it before the client reads the answer.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

__all__ = ["header_refusal"]


def expects_continue(version: bytes, headers: Headers) -> bool:
    """Whether the client waits for ``100 Continue`` before its body."""
    expect = headers.getRawHeaders(b"expect") or ()
    return (
        version == b"HTTP/1.1"
        and len(expect) > 0
        and expect[0].strip().lower() == b"100-continue"
    )


def header_refusal(
    version: bytes, headers: Headers, length: int | None, body_cap: int | None
) -> tuple[int, str] | None:
    """Why a request must be refused now, or None.

    ``length`` is the announced body length (None: chunked), ``body_cap`` the
    most the target takes (None: no cap, as for console streams).
    """
    if version == b"HTTP/1.1" and len(headers.getRawHeaders(b"host") or ()) != 1:
        return 400, "an HTTP/1.1 request needs exactly one Host header"
    if (
        body_cap is not None
        and length is not None
        and length > body_cap
        and expects_continue(version, headers)
    ):
        return 413, "request body too large"
    return None
