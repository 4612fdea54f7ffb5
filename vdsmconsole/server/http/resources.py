"""Routing and plain answers: the resources every request meets first.

``/RPC2`` and ``/`` take XML-RPC POSTs; ``/consoleStream/<vmId>`` takes the
streams, ``/consoleTunnel/<vmId>`` the CONNECT tunnels;
``/os-console-auth-tokens/<token>`` is a static child that ``build_site``
puts on the Root (server/tokens/connectinfo.py).  Anything else is 404; a
known path with the wrong method is 405 with ``Allow``.  Clients never see
a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import resource

from vdsmconsole.server.http.routes import stream_vm_id, tunnel_vm_id
from vdsmconsole.spec import RPC_PATH


class PlainError(resource.Resource):
    """A short text/plain error page; no HTML, no traceback."""

    isLeaf = True

    def __init__(
        self, code: int, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.headers = headers or {}

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.message.encode("utf-8") + b"\n"


NOT_FOUND = PlainError(404, "not found")


# Once a class: dir() of a resource, on every request, cost as much as
# parsing a small XML-RPC call.
_ALLOWED: dict[type, tuple[bytes, ...]] = {}


def allowed_methods(res: resource.Resource) -> list[bytes]:
    cls: type = type(res)
    if cls not in _ALLOWED:
        _ALLOWED[cls] = _allowed_of(cls)
    return list(_ALLOWED[cls])


def _allowed_of(cls: type) -> tuple[bytes, ...]:
    names = [m[7:] for m in dir(cls) if m.startswith("render_") and m[7:].isupper()]
    if "GET" not in names and "HEAD" in names:
        names.remove("HEAD")  # Resource's default HEAD only fakes a GET
    return tuple(sorted(n.encode("ascii") for n in names))


class MethodsMixin:
    """405 with Allow for every method a known path does not take.

    Twisted answers 501 for methods outside GET/HEAD/POST; our contract says
    405 with Allow for any wrong method on a known path.
    """

    def render(self, request: Any) -> Any:
        allowed = allowed_methods(self)  # type: ignore[arg-type]
        if request.method not in allowed:
            return PlainError(
                405,
                "method not allowed",
                {b"allow": b", ".join(allowed)},
            ).render(request)
        return getattr(self, "render_" + request.method.decode("ascii"))(request)


RPC_SEGMENT = RPC_PATH.strip("/").encode("ascii")


class Root(resource.Resource):
    def __init__(
        self,
        rpc: resource.Resource,
        streams: Callable[[bytes], resource.Resource] | None = None,
    ) -> None:
        super().__init__()
        self._rpc = rpc
        self.streams = streams
        self.tunnels: Callable[[bytes], resource.Resource] | None = None

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        rest = request.postpath
        if path in (b"", RPC_SEGMENT) and not rest:
            return self._rpc
        vm_id = stream_vm_id([path, *rest])
        if vm_id is not None and self.streams is not None:
            return self.streams(vm_id)
        vm_id = tunnel_vm_id([path, *rest])
        if vm_id is not None and self.tunnels is not None:
            return self.tunnels(vm_id)
        return NOT_FOUND


def answer(
    request: Any, code: int, message: str, headers: dict[bytes, bytes] | None = None
) -> bytes:
    """A short text/plain answer (for render_* to return)."""
    body = message.encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return body


def end_with(
    request: Any, code: int, message: str, headers: dict[bytes, bytes] | None = None
) -> None:
    """Answer and finish a request that is already rendering asynchronously."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    if not request.startedWriting:
        request.write(answer(request, code, message, headers))
    request.finish()
