"""``ConsoleClient``: XML-RPC calls and console streams to one server.

Everything goes over one mutually-authenticated TLS port, through treq on a
Twisted ``Agent`` whose TLS policy presents our client certificate, trusts
only our CA and verifies the server's name (``credentials.MutualTLSPolicy``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IBodyProducer,
    IResponse,
)

from vdsmconsole.client.calls import loads_response
from vdsmconsole.client.credentials import ClientCredentials, MutualTLSPolicy
from vdsmconsole.client.duplex import DuplexStream, open_duplex
from vdsmconsole.client.errors import (
    BeyondEnd,
    ClientError,
    ConnectionLost,
    ConsoleUnavailable,
    HTTPError,
    NoSuchConsole,
    ServerStopping,
)
from vdsmconsole.client.failures import _short, _timed, describe_failure
from vdsmconsole.client.fdio import FDBodyProducer
from vdsmconsole.client.inputstream import InputStream
from vdsmconsole.client.stream import Stream, _StreamReceiver
from vdsmconsole.client.tunnel import Tunnel, open_tunnel, refusal
from vdsmconsole.client.tunnelport import TunnelPort
from vdsmconsole.spec import DEFAULT_PORT, RPC_PATH, STREAM_PATH
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import END_HEADER, StreamEnd, parse_end
from vdsmconsole.xmlrpcwire import dumps_call

# A tail longer than anything a server retains: "everything retained".
EVERYTHING = 2**62


# What ``send`` takes: bytes, or a body producer (mypy does not see zope's
# ``implementer``, so the project's producers are named).
Body = bytes | IBodyProducer | FDBodyProducer | InputStream | webclient.FileBodyProducer


def _header_int(response: IResponse, name: bytes, default: int = 0) -> int:
    values = response.headers.getRawHeaders(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise ClientError(f"bad {name.decode()} header {values[-1]!r}") from None


class ConsoleClient:
    """XML-RPC calls and console streams to one vdsmconsole server.

    ``host`` ``0`` means this host (``localhost``), as in vdsClient.
    ``timeout`` bounds connecting and waiting for an answer's headers
    (a stream's body may then flow for as long as it likes); ``None`` waits
    forever.  Call ``close()`` when done to drop kept-alive connections.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        pki: ClientCredentials | None = None,
        reactor: Any = None,
        *,
        timeout: float | None = 30.0,
        persistent: bool = True,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1 to 65535, not {port!r}")
        self.host = "localhost" if host in ("0", "") else host
        self.port = port
        self.credentials = pki if pki is not None else ClientCredentials.resolve()
        self.reactor = reactor
        self.timeout = timeout
        trust, mine = self.credentials.load()
        self.tls = MutualTLSPolicy(trust, mine)
        self.pool = webclient.HTTPConnectionPool(reactor, persistent=persistent)
        agent = webclient.Agent(
            reactor,
            contextFactory=self.tls,
            connectTimeout=timeout,
            pool=self.pool,
        )
        self.http = HTTPClient(cast(IAgent, agent))
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"https://{netloc}:{port}"
        self._streams: set[Stream] = set()
        self._inputs: set[InputStream] = set()

    @property
    def where(self) -> str:
        """``host:port``, as messages name the server."""
        return f"{self.host}:{self.port}"

    @contextlib.contextmanager
    def _described(self) -> Iterator[None]:
        """Any failure but a ``ClientError`` leaves as the ``ClientError``
        that describes it (``describe_failure``), in one line."""
        try:
            yield
        except ClientError:
            raise
        except Exception:  # noqa: BLE001 - described, not swallowed
            raise describe_failure(Failure(), self.where, self.credentials) from None

    def _fail(self, reason: Failure) -> Failure:
        return Failure(describe_failure(reason, self.where, self.credentials))

    def _stream_url(self, vm_id: str) -> str:
        if not vm_id or "/" in vm_id:
            raise ValueError(f"bad vmId {vm_id!r}")
        return f"{self.base_url}{STREAM_PATH}{vm_id}"

    async def _error_for(self, response: IResponse, vm_id: str) -> ClientError:
        body = await treq.content(response)
        ends = response.headers.getRawHeaders(END_HEADER) or [b""]
        return self._refusal(
            response.code, body, vm_id, response.phrase, parse_end(ends[-1])
        )

    # -- XML-RPC

    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        """Call ``method`` over XML-RPC; fires with the answer as is.

        VDSM's convention: the answer is a struct with ``status = {code,
        message}``; a non-zero code is data, not an exception.  Integers
        beyond 32 bits go out as ``<i8>``; base64 comes back as ``bytes``.
        """
        return defer.ensureDeferred(self._call(method, args))

    async def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        body = dumps_call(method, args)
        with self._described():
            d = self.http.post(
                f"{self.base_url}{RPC_PATH}",
                data=body,
                headers=Headers({b"Content-Type": [b"text/xml"]}),
                unbuffered=True,
            )
            response = await _timed(self.reactor, d, self.timeout, f"{self.where}")
            if response.code != 200:
                raise await self._error_for(response, "")
            content = await _timed(
                self.reactor, treq.content(response), self.timeout, self.where
            )
        return loads_response(content)

    # -- streams

    def follow(
        self,
        vm_id: str,
        on_data: Callable[[bytes], object],
        *,
        offset: int | None = None,
        tail: int | None = None,
        follow: bool = True,
    ) -> defer.Deferred[Stream]:
        """Stream a console's output to ``on_data``.

        Without ``offset`` or ``tail`` a follower starts at the live end, and
        ``follow=False`` returns everything retained.  ``offset=N`` starts at
        absolute offset N (the stream's ``lost`` says how much of what was
        asked for is gone; beyond the end raises ``BeyondEnd``); ``tail=N``
        starts N bytes before the end.  ``follow=False`` ends the response at
        the end of what is retained.  Fires with the ``Stream`` once the
        headers are in; unknown consoles raise ``NoSuchConsole``.
        """
        if offset is not None and tail is not None:
            raise ValueError("give offset or tail, not both")
        for name, value in (("offset", offset), ("tail", tail)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, not {value!r}")
        return defer.ensureDeferred(self._follow(vm_id, on_data, offset, tail, follow))

    async def _follow(
        self,
        vm_id: str,
        on_data: Callable[[bytes], object],
        offset: int | None,
        tail: int | None,
        follow: bool,
    ) -> Stream:
        params: dict[str, str] = {}
        if offset is not None:
            params["offset"] = str(offset)
        if tail is not None:
            params["tail"] = str(tail)
        if not follow:
            params["follow"] = "0"
        with self._described():
            d = self.http.get(self._stream_url(vm_id), params=params, unbuffered=True)
            response = await _timed(self.reactor, d, self.timeout, self.where)
            if response.code != 200:
                raise await self._error_for(response, vm_id)
        stream = Stream(
            vm_id,
            _header_int(response, b"x-console-offset"),
            _header_int(response, b"x-console-lost"),
        )
        self._streams.add(stream)
        stream.done.addBoth(self._forget_stream, stream)
        response.deliverBody(_StreamReceiver(stream, on_data, self.where))
        return stream

    def duplex(
        self,
        vm_id: str,
        on_data: Callable[[bytes], object],
        *,
        offset: int | None = None,
        tail: int | None = None,
    ) -> defer.Deferred[DuplexStream]:
        """``POST ?duplex=1``: one request that types and follows at once.

        Fires with a ``DuplexStream`` once the response's headers are in:
        ``write(data)`` sends each piece to the guest at once, ``on_data``
        gets the output from the live end (or ``offset``/``tail``, as for
        ``follow``), ``close()`` leaves.  Errors as for ``follow``.
        """
        if offset is not None and tail is not None:
            raise ValueError("give offset or tail, not both")
        params = []
        for name, value in (("offset", offset), ("tail", tail)):
            if value is not None:
                if not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"{name} must be a non-negative int, not {value!r}"
                    )
                params.append(f"&{name}={value}")
        self._stream_url(vm_id)  # validates vm_id
        policy = MutualTLSPolicy(*self.credentials.load())
        d = open_duplex(
            self.reactor,
            self.host,
            self.port,
            policy.creatorForNetloc(self.host.encode("idna"), self.port),
            vm_id,
            ("?duplex=1" + "".join(params)).encode("ascii"),
            on_data,
            describe=lambda code, body, end: self._refusal(code, body, vm_id, end=end),
            lost=lambda reason: ConnectionLost(
                f"console stream from {self.where} lost: {_short(reason)}"
            ),
            timeout=self.timeout,
        )
        d.addErrback(self._duplexFailed)
        return _timed(self.reactor, d, self.timeout, self.where)

    def _duplexFailed(self, reason: Failure) -> Failure:
        if reason.check(ClientError):
            return reason
        return self._fail(reason)

    def _refusal(
        self,
        code: int,
        body: bytes,
        vm_id: str,
        phrase: bytes = b"",
        end: StreamEnd | None = None,
    ) -> ClientError:
        """The error for a request answered ``code`` with ``body`` (and
        ``X-Console-End: end``)."""
        text = body.decode("utf-8", "replace").strip()
        if code == 404:
            return NoSuchConsole(code, no_vm_message(vm_id))
        if code == 416:
            return BeyondEnd(code, text or "offset beyond the end")
        if code == 503 and end is StreamEnd.STOPPING:
            return ServerStopping(code, f"the server at {self.where} is stopping")
        if code == 503:
            return ConsoleUnavailable(code, text or f"console {vm_id} is down")
        detail = text.splitlines()[0] if text else phrase.decode() or str(code)
        return HTTPError(code, f"{self.where} answered {code}: {detail}")

    # -- tunnels and tokens

    def tunnel(
        self,
        vm_id: str,
        protocol: str,
        *,
        token: str | None = None,
        on_data: Callable[[bytes], object] | None = None,
    ) -> defer.Deferred[Tunnel]:
        """``CONNECT /consoleTunnel/<vmId>?protocol=P``: the console as raw
        bytes both ways (``vdsmconsole/client/tunnel.py``).

        Fires with the ``Tunnel`` once the server answered 200: ``write()``,
        ``on_data`` (or given here), ``close()``, ``done``, ``splice()``.
        Refusals raise the usual classes with the server's line: 404
        ``NoSuchConsole`` (no such VM, or no such console on it), 502 and
        503 ``ConsoleUnavailable`` (the endpoint did not answer, a serial
        guest is down), 503 ``ServerStopping`` (``X-Console-End:
        stopping``), others ``HTTPError`` (400, 403).
        """
        d = open_tunnel(
            self.reactor,
            self.host,
            self.port,
            self.tls.creatorForNetloc(self.host.encode("idna"), self.port),
            vm_id,
            protocol,
            token=token,
            describe=lambda code, text, end: refusal(
                code, text, self.where, vm_id, end
            ),
            timeout=self.timeout,
        )
        d.addErrback(self._duplexFailed)
        d = _timed(self.reactor, d, self.timeout, self.where)
        if on_data is not None:

            def attach(tunnel: Tunnel) -> Tunnel:
                tunnel.on_data = on_data
                return tunnel

            d.addCallback(attach)
        return d

    def tunnel_port(
        self,
        vm_id: str,
        protocol: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        on_error: Callable[[str], object] = lambda line: None,
    ) -> TunnelPort:
        """A local port (``host:port``, 0 any free one) whose every
        connection is a tunnel of its own (``tunnelport.TunnelPort``);
        ``on_error`` gets one line per tunnel that could not be opened."""
        return TunnelPort(
            self.reactor,
            lambda: self.tunnel(vm_id, protocol, token=token),
            protocol,
            host=host,
            port=port,
            on_error=on_error,
        )

    def remote_console(
        self,
        vm_id: str,
        protocol: str,
        *,
        ttl: int | None = None,
        single_use: bool = False,
        role: str | None = None,
    ) -> defer.Deferred[Any]:
        """``remoteConsole``: a token for one console; fires with the answer
        as is (``console: {protocol, type, url, token, expires}`` and the
        status, which is data as for ``call``).  Without ``ttl`` the server's
        default (600 s); without ``role`` the caller's own."""
        params: dict[str, Any] = {}
        if ttl is not None:
            params["ttl"] = ttl
        if single_use:
            params["singleUse"] = True
        if role is not None:
            params["role"] = role
        return self.call("remoteConsole", vm_id, protocol, params)

    def _forget_stream(self, result: Any, stream: Stream) -> Any:
        self._streams.discard(stream)
        return result

    def send(self, vm_id: str, data: Body) -> defer.Deferred[int]:
        """POST ``data`` to the guest's input; fires with the bytes written.

        ``data`` is bytes, or an ``IBodyProducer`` (``FDBodyProducer``,
        ``stdin_producer``, an ``InputStream``) whose chunks reach the guest
        as they are produced.  A producer's body may take forever, so only
        bytes get the client's timeout.  A console whose guest is down
        raises ``ConsoleUnavailable``.
        """
        if isinstance(data, str):
            raise TypeError("send() takes bytes or an IBodyProducer, not str")
        return defer.ensureDeferred(self._send(vm_id, data))

    async def _send(self, vm_id: str, data: Body) -> int:
        timeout = self.timeout if isinstance(data, bytes) else None
        with self._described():
            d = self.http.post(
                self._stream_url(vm_id),
                data=cast(Any, data),
                headers=Headers({b"Content-Type": [b"application/octet-stream"]}),
                unbuffered=True,
            )
            response = await _timed(self.reactor, d, timeout, self.where)
            if response.code != 200:
                raise await self._error_for(response, vm_id)
            body = await treq.content(response)
        try:
            return int(json.loads(body)["written"])
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"unexpected answer to a send: {body[:80]!r}") from None

    def open_input(self, vm_id: str) -> InputStream:
        """Start a POST whose body stays open; see ``InputStream``."""
        stream = InputStream()
        self._inputs.add(stream)
        sent = self.send(vm_id, stream)

        def settle(result: Any) -> Any:
            self._inputs.discard(stream)
            stream.stopped = True
            if isinstance(result, Failure):
                stream.done.errback(result)
            else:
                stream.done.callback(result)
            return None

        sent.addBoth(settle)
        return stream

    def close(self) -> defer.Deferred[None]:
        """Close open streams and kept-alive connections."""
        for stream in list(self._streams):
            stream.close()
        for input_stream in list(self._inputs):
            input_stream.stopProducing()
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]
