"""A client library for vdsmconsole: XML-RPC calls and console streams.

Everything goes over one mutually-authenticated TLS port, through treq on a
Twisted ``Agent`` whose TLS policy presents our client certificate, trusts
only our CA and verifies the server's name (service-identity)::

    from vdsmconsole.client import ClientCredentials, ConsoleClient

    creds = ClientCredentials.from_pki_dir(Path("/etc/pki/vdsm"))
    client = ConsoleClient("host.example", 54321, creds, reactor)
    result = await client.call("getVmStats", "vm1")   # the status dict, as is
    stream = await client.follow("vm1", on_data=sys.stdout.buffer.write, tail=4096)
    written = await client.send("vm1", b"uname -a\\n")
    await client.close()

The calls:

- ``call(method, *args)``: an XML-RPC call; fires with the struct the server
  answered, ``status`` included (status codes are data, not exceptions); an
  XML-RPC Fault raises ``RPCFault``.
- ``follow(vm_id, on_data, offset=, tail=, follow=)``: ``GET
  /consoleStream/<vmId>``; fires with a ``Stream`` once the headers are in
  (its ``start_offset`` and ``lost`` come from ``X-Console-Offset`` and
  ``X-Console-Lost``); ``on_data`` then gets the bytes as they arrive, and
  ``Stream.offset`` is the absolute offset of the next byte.
- ``send(vm_id, data)``: ``POST`` a body (bytes, or any ``IBodyProducer``
  such as ``FDBodyProducer`` over a pipe, which goes out chunk by chunk as it
  is read); fires with the server's ``written`` count.
- ``open_input(vm_id)``: a ``POST`` whose body stays open: each ``write()``
  reaches the guest at once, as keystrokes must.
- ``ResumingFollow``: follows across lost connections, reconnecting with
  backoff and resuming from its last offset, reporting bytes lost.

- ``duplex(vm_id, on_data, offset=, tail=)``: ``POST ?duplex=1``, typing and
  following in one request; fires with a ``DuplexStream`` (``write()``,
  ``finish()``, ``close()``, offsets as for ``Stream``).  Twisted's
  ``Agent`` hands out a response only once the request body is complete, so
  this one request is spoken by ``vdsmconsole/duplex.py`` over the same
  mutual TLS.  (The interactive console uses ``follow`` plus
  ``open_input``, which reconnect separately.)

Failures are ``ClientError`` subclasses whose ``str()`` is one line meant for
a user: which host could not be reached, whose certificate was refused.
"""

from __future__ import annotations

import json
import os
import re
import stat
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import escape

import treq
from defusedxml.xmlrpc import DefusedExpatParser
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IConsumer,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReadDescriptor,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web import http
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgent,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from vdsmconsole.duplex import DuplexStream, open_duplex
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import END_HEADER, StreamEnd, end_of, parse_end

__all__ = [
    "DEFAULT_PORT",
    "EVERYTHING",
    "VDSM_PKI",
    "Body",
    "BeyondEnd",
    "ClientCredentials",
    "ClientError",
    "ConnectError",
    "ConnectionLost",
    "ConsoleClient",
    "ConsoleUnavailable",
    "CredentialsError",
    "FDBodyProducer",
    "FDReader",
    "HTTPError",
    "InputStream",
    "MutualTLSPolicy",
    "NoSuchConsole",
    "RPCFault",
    "ResumingFollow",
    "ServerStopping",
    "Stream",
    "TLSError",
    "Timeout",
    "describe_failure",
    "dumps_call",
    "loads_response",
    "stdin_producer",
]

DEFAULT_PORT = 54321
VDSM_PKI = Path("/etc/pki/vdsm")
READ_SIZE = 64 * 1024
INPUT_BUFFER = 1024 * 1024  # what InputStream holds while the server pushes back
INT32 = 2**31

# A tail longer than anything a server retains: "everything retained".
EVERYTHING = 2**62


# -- errors ------------------------------------------------------------------


class ClientError(Exception):
    """A failure with a one-line message for a user (``str(error)``)."""


class CredentialsError(ClientError):
    """Our own CA, certificate or key cannot be read or do not fit together."""


class ConnectError(ClientError):
    """The server could not be reached (refused, unreachable, unknown host)."""


class Timeout(ConnectError):
    """The server did not answer in time."""


class TLSError(ClientError):
    """The TLS handshake failed.

    ``side`` says whose certificate was refused when that can be told:
    ``"server"`` (ours did not trust the server's), ``"client"`` (the server
    refused ours), or ``None``.
    """

    def __init__(self, message: str, side: str | None = None) -> None:
        super().__init__(message)
        self.side = side


class ConnectionLost(ClientError):
    """An established connection went away before the answer was complete."""


class HTTPError(ClientError):
    """The server answered a status other than the expected one."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class NoSuchConsole(HTTPError):
    """404: no console with that vmId (status code 1, noVM, over RPC)."""

    status_code = 1


class BeyondEnd(HTTPError):
    """416: the requested offset is beyond the end of the console."""


class ConsoleUnavailable(HTTPError):
    """503, or a stream's end: the console's guest is down (for good)."""


class ServerStopping(HTTPError):
    """503: the server is stopping; ask again (it comes back with the consoles)."""


class RPCFault(ClientError):
    """The server answered an XML-RPC Fault (an unparseable or unknown call)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"XML-RPC fault {code}: {message}")
        self.faultCode = code
        self.faultString = message


# -- credentials -------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CredentialsError(f"cannot read {what} {path}: {e.strerror}") from None


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class ClientCredentials:
    """The CA we trust and the certificate and key we present.

    ``from_pki_dir`` reads a ``vdsmconsole pki init`` directory (the engine's
    client certificate); ``vdsm_host`` reads VDSM's own files, as vdsClient
    used the host's certificate; ``resolve`` applies flags and environment.
    """

    ca: Path
    cert: Path
    key: Path

    ENV_CA = "VDSMCONSOLE_CA"
    ENV_CERT = "VDSMCONSOLE_CERT"
    ENV_KEY = "VDSMCONSOLE_KEY"
    ENV_PKI = "VDSMCONSOLE_PKI"

    @classmethod
    def from_pki_dir(cls, root: Path) -> ClientCredentials:
        """``certs/cacert.pem``, ``certs/enginecert.pem``, ``keys/enginekey.pem``."""
        root = Path(root)
        return cls(
            root / "certs/cacert.pem",
            root / "certs/enginecert.pem",
            root / "keys/enginekey.pem",
        )

    @classmethod
    def vdsm_host(cls, root: Path = VDSM_PKI) -> ClientCredentials:
        """VDSM's host files: ``certs/vdsmcert.pem`` and ``keys/vdsmkey.pem``."""
        root = Path(root)
        return cls(
            root / "certs/cacert.pem",
            root / "certs/vdsmcert.pem",
            root / "keys/vdsmkey.pem",
        )

    @classmethod
    def resolve(
        cls,
        *,
        pki: Path | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientCredentials:
        """Pick each file; the first that applies wins.

        ``--ca/--cert/--key``, then ``--pki DIR``, then ``VDSMCONSOLE_CA``,
        ``VDSMCONSOLE_CERT``, ``VDSMCONSOLE_KEY``, then ``VDSMCONSOLE_PKI``,
        then VDSM's ``/etc/pki/vdsm`` host files.
        """
        if pki is not None:
            base = cls.from_pki_dir(pki)
        else:
            env_pki = environ.get(cls.ENV_PKI)
            base = cls.from_pki_dir(Path(env_pki)) if env_pki else cls.vdsm_host()
            base = cls(
                Path(environ.get(cls.ENV_CA) or base.ca),
                Path(environ.get(cls.ENV_CERT) or base.cert),
                Path(environ.get(cls.ENV_KEY) or base.key),
            )
        return cls(ca or base.ca, cert or base.cert, key or base.key)

    def load(self) -> tuple[Any, PrivateCertificate]:
        """The trust root and our certificate with its key, checked."""
        cas = _PEM_CERT.findall(_read(self.ca, "CA certificate"))
        if not cas:
            raise CredentialsError(f"no PEM certificate in {self.ca}")
        try:
            trust = trustRootFromCertificates([Certificate.loadPEM(c) for c in cas])
        except Exception as e:  # noqa: BLE001 - any parse error is the file's
            raise CredentialsError(f"bad CA certificate {self.ca}: {e}") from None
        cert_pem = _read(self.cert, "certificate")
        key_pem = _read(self.key, "private key")
        try:
            certificate = Certificate.loadPEM(cert_pem)
        except Exception as e:  # noqa: BLE001
            raise CredentialsError(f"bad certificate {self.cert}: {e}") from None
        try:
            key = KeyPair.load(key_pem, SSL.FILETYPE_PEM)
        except Exception as e:  # noqa: BLE001
            raise CredentialsError(f"bad private key {self.key}: {e}") from None
        try:
            mine = PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
            # Fails now, not at the first handshake, when they do not match.
            mine.options()
        except Exception:  # noqa: BLE001
            raise CredentialsError(
                f"private key {self.key} does not match certificate {self.cert}"
            ) from None
        return trust, mine


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """An ``IPolicyForHTTPS`` like ``BrowserLikePolicyForHTTPS``, with our CA.

    Verifies the server's certificate against our CA and its name against the
    host we connect to (service-identity), presents our client certificate,
    and refuses anything older than TLS 1.2.
    """

    def __init__(self, trust_root: Any, client_cert: PrivateCertificate) -> None:
        self.trust_root = trust_root
        self.client_cert = client_cert

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("ascii").strip("[]")
        return optionsForClientTLS(  # type: ignore[no-any-return]
            name,
            trustRoot=self.trust_root,
            clientCertificate=self.client_cert,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )


# -- turning low-level failures into one line ----------------------------------

# Alerts by which a server says it refused our certificate.
_CLIENT_CERT_ALERTS = (
    "unknown ca",
    "bad certificate",
    "certificate required",
    "certificate unknown",
    "certificate expired",
    "certificate revoked",
    "unsupported certificate",
    "access denied",
    "decrypt error",
)


def _reasons(reason: Failure) -> list[Failure]:
    """The innermost failures of Twisted's wrapped web client errors."""
    nested = getattr(reason.value, "reasons", None)
    if nested:
        found: list[Failure] = []
        for inner in nested:
            found.extend(_reasons(inner))
        return found
    return [reason]


def _ssl_reasons(value: SSL.Error) -> list[str]:
    texts = []
    for entry in value.args[0] if value.args and value.args[0] else []:
        if isinstance(entry, tuple) and entry:
            texts.append(str(entry[-1]))
        else:
            texts.append(str(entry))
    return texts or [str(value)]


def describe_failure(
    reason: Failure, where: str, credentials: ClientCredentials | None = None
) -> ClientError:
    """The ``ClientError`` for a failed request to ``where`` (host:port)."""
    if isinstance(reason.value, ClientError):
        return reason.value
    for inner in _reasons(reason):
        value = inner.value
        if isinstance(value, error.ConnectionRefusedError):
            return ConnectError(f"cannot connect to {where}: connection refused")
        if isinstance(value, error.DNSLookupError):
            return ConnectError(f"cannot connect to {where}: unknown host")
        if isinstance(value, error.TimeoutError):
            return Timeout(f"cannot connect to {where}: timed out")
        if isinstance(value, error.NoRouteError):
            return ConnectError(f"cannot connect to {where}: no route to host")
        if isinstance(value, VerificationError):
            return TLSError(
                f"TLS handshake with {where} failed: the server's certificate "
                f"is not valid for the name {where.rsplit(':', 1)[0]}",
                side="server",
            )
        if isinstance(value, SSL.Error):
            return _describe_ssl(value, where, credentials)
        if isinstance(value, error.ConnectError):
            detail = str(value).strip().rstrip(".") or type(value).__name__
            return ConnectError(f"cannot connect to {where}: {detail}")
    return ConnectionLost(f"connection to {where} lost: {_short(reason)}")


def _describe_ssl(
    value: SSL.Error, where: str, credentials: ClientCredentials | None
) -> TLSError:
    texts = _ssl_reasons(value)
    joined = "; ".join(texts)
    ca = f" ({credentials.ca})" if credentials else ""
    cert = f" ({credentials.cert})" if credentials else ""
    if any("certificate verify failed" in t for t in texts):
        return TLSError(
            f"TLS handshake with {where} failed: the server's certificate is "
            f"not trusted by our CA{ca}",
            side="server",
        )
    if any(alert in t for t in texts for alert in _CLIENT_CERT_ALERTS):
        return TLSError(
            f"TLS handshake with {where} failed: the server refused our client "
            f"certificate{cert} ({joined})",
            side="client",
        )
    return TLSError(f"TLS handshake with {where} failed: {joined}")


def _short(reason: Failure) -> str:
    inner = _reasons(reason)[0].value
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return text or type(inner).__name__


def _timed(
    clock: Any, d: defer.Deferred[Any], seconds: float | None, what: str
) -> defer.Deferred[Any]:
    """Cancel ``d`` after ``seconds``; the failure is then ``Timeout``."""
    if not seconds:
        return d
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        if expired and isinstance(result, Failure):
            raise Timeout(f"{what}: no answer within {seconds:g}s")
        return result

    return d.addBoth(done)


# -- XML-RPC -----------------------------------------------------------------


class _WideMarshaller(xmlrpc.client.Marshaller):
    """Marshal ints beyond 32 bits as <i8> (offsets grow past 2 GiB)."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_long(self, value: int, write: Callable[[str], Any]) -> None:
        tag = "int" if -INT32 <= value < INT32 else "i8"
        write(f"<value><{tag}>{int(value)}</{tag}></value>\n")

    dispatch[int] = dump_long  # type: ignore[assignment]


def dumps_call(method: str, args: tuple[Any, ...]) -> bytes:
    """An XML-RPC methodCall body; like ``xmlrpc.client.dumps``, with <i8>."""
    params = _WideMarshaller("utf-8", allow_none=False).dumps(args)
    return (
        "<?xml version='1.0'?>\n<methodCall>\n"
        f"<methodName>{escape(method)}</methodName>\n{params}</methodCall>\n"
    ).encode()


def loads_response(body: bytes) -> Any:
    """The one value of a methodResponse; Fault raises ``RPCFault``.

    Parsed as ``xmlrpc.client.loads`` does (base64 as ``bytes``), with DTDs
    and entity expansion refused.
    """
    unmarshaller = xmlrpc.client.Unmarshaller(use_builtin_types=True)
    parser = DefusedExpatParser(unmarshaller, forbid_dtd=True)
    try:
        parser.feed(body)
        parser.close()
        values = unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        raise RPCFault(fault.faultCode, fault.faultString) from None
    except Exception as e:  # noqa: BLE001 - the server sent something else
        raise ClientError(f"unreadable XML-RPC answer: {e}") from None
    return values[0] if len(values) == 1 else list(values)


# -- streams -----------------------------------------------------------------


class Stream:
    """One ``GET /consoleStream/<vmId>`` response being received.

    ``start_offset`` is the absolute offset of its first byte and ``lost``
    how many requested bytes were no longer retained; ``offset`` is the
    absolute offset of the next byte to come.  ``done`` fires with this
    stream when the response ends (the server finished it, or ``close()``),
    or fails with ``ConnectionLost`` if the connection broke (the server
    stopping cuts its streams so).  ``end`` then says why the server ended
    it (its ``X-Console-End`` trailer): a ``StreamEnd`` (``destroyed``,
    ``down``, ``complete``, ``behind``), or None if it did not say.
    """

    def __init__(self, vm_id: str, start_offset: int, lost: int) -> None:
        self.vm_id = vm_id
        self.start_offset = start_offset
        self.lost = lost
        self.received = 0
        self.closed = False
        self.end: StreamEnd | None = None
        self.done: defer.Deferred[Stream] = defer.Deferred()
        self._transport: Any = None

    @property
    def offset(self) -> int:
        return self.start_offset + self.received

    def close(self) -> None:
        """Stop receiving; ``done`` fires with the stream (not a failure)."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.stopProducing()


def _chunk_decoder(transport: Any) -> Any:
    """Twisted's decoder of the chunked response body now being delivered.

    Twisted's ``Agent`` parses a response's trailers but hands them to no
    one; the decoder keeps them (``_trailerHeaders``).  It is reached from
    the body's transport: the connection's ``TransportProxyProducer``, the
    TLS protocol, the HTTP/1.1 client protocol, its parser.  None when any
    step is missing (the end's reason is then unknown, as from an old server).
    """
    tls = getattr(transport, "_producer", None)
    parser = getattr(getattr(tls, "wrappedProtocol", None), "_parser", None)
    decoder = getattr(parser, "bodyDecoder", None)
    if isinstance(decoder, http._ChunkedTransferDecoder) and isinstance(
        getattr(decoder, "_trailerHeaders", None), list
    ):
        return decoder
    return None


class _StreamReceiver(Protocol):
    def __init__(
        self, stream: Stream, on_data: Callable[[bytes], object], where: str
    ) -> None:
        self.stream = stream
        self.on_data = on_data
        self.where = where
        self._decoder: Any = None

    def connectionMade(self) -> None:
        self.stream._transport = self.transport
        self._decoder = _chunk_decoder(self.transport)
        if self.stream.closed:
            self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.stream.closed:
            return
        self.stream.received += len(data)
        self.on_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        done = self.stream.done
        if done.called:
            return
        if self.stream.closed or reason.check(ResponseDone, PotentialDataLoss):
            if reason.check(ResponseDone) and self._decoder is not None:
                self.stream.end = end_of(self._decoder._trailerHeaders)
            done.callback(self.stream)
        else:
            done.errback(
                ConnectionLost(
                    f"console stream from {self.where} lost: {_short(reason)}"
                )
            )


@implementer(IPushProducer)
class FDReader:
    """Reads a file descriptor (a pipe, a tty) as the reactor says it is ready.

    Each read is at most ``READ_SIZE`` bytes of what is there, handed to
    ``on_data`` at once; end of file (or a hung-up tty) calls ``on_eof``.
    Pausing stops watching the descriptor, so a consumer that pushes back
    stops the reading.  Regular files and ``/dev/null`` cannot be watched by
    epoll: use ``FileBodyProducer`` for those (``stdin_producer`` picks).
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        on_data: Callable[[bytes], object],
        on_eof: Callable[[], object],
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.on_data = on_data
        self.on_eof = on_eof
        self.reading = False
        self.finished = False
        self._descriptor = _ReadDescriptor(self)

    def start(self) -> None:
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self._descriptor)

    def resumeProducing(self) -> None:
        if not self.reading and not self.finished:
            self.reading = True
            self.reactor.addReader(self._descriptor)

    def stopProducing(self) -> None:
        self.pauseProducing()
        self.finished = True

    def _ready(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the terminal hung up
        if data:
            self.on_data(data)
            return
        self.pauseProducing()
        self._hung_up()

    def _hung_up(self) -> None:
        if self.finished:
            return
        self.reading = False  # the reactor has dropped the descriptor already
        self.finished = True
        self.on_eof()


@implementer(IReadDescriptor)
class _ReadDescriptor:
    def __init__(self, reader: FDReader) -> None:
        self.reader = reader

    def fileno(self) -> int:
        return self.reader.fd

    def doRead(self) -> None:
        self.reader._ready()

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a pipe whose writer is gone (drained) as a hang-up,
        # not as readable: that is the end of file too.
        self.reader._hung_up()

    def logPrefix(self) -> str:
        return f"fd {self.reader.fd}"


def pollable(fd: int) -> bool:
    """Whether the reactor can watch ``fd`` (not a regular file or /dev/null)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return False
    if not stat.S_ISCHR(mode):
        return True
    return os.fstat(fd).st_rdev != os.stat(os.devnull).st_rdev


@implementer(IBodyProducer)
class FDBodyProducer:
    """A request body read from a pipe or tty as data arrives, sent chunked.

    Each read goes out as one chunk at once, so a ``send -`` fed by a slow
    program delivers every line when it is written, not at end of file.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self._consumer: Any = None  # IConsumer
        self._finished: defer.Deferred[None] = defer.Deferred()
        self._reader = FDReader(reactor, fd, self._data, self._eof)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self._reader.start()
        return self._finished

    def _data(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.write(data)

    def _eof(self) -> None:
        if not self._finished.called:
            self._finished.callback(None)

    def pauseProducing(self) -> None:
        self._reader.pauseProducing()

    def resumeProducing(self) -> None:
        self._reader.resumeProducing()

    def stopProducing(self) -> None:
        self._reader.stopProducing()


def stdin_producer(
    reactor: Any, fd: int = 0
) -> FDBodyProducer | webclient.FileBodyProducer:
    """A body producer for standard input: chunk by chunk from a pipe or tty,
    a plain ``FileBodyProducer`` for a regular file or ``/dev/null``."""
    if pollable(fd):
        return FDBodyProducer(reactor, fd)
    return webclient.FileBodyProducer(open(fd, "rb", closefd=False))  # noqa: SIM115


@implementer(IBodyProducer, IConsumer)
class InputStream:
    """A request body that stays open: each ``write()`` is sent at once.

    Created by ``ConsoleClient.open_input``.  While the connection pushes
    back (or before it is up) writes wait here, up to ``INPUT_BUFFER`` bytes;
    a push producer registered with ``registerProducer`` is paused instead
    of letting more pile up.  ``finish()`` ends the body; ``done`` fires with
    the server's ``written`` count, or fails.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, max_buffer: int = INPUT_BUFFER) -> None:
        self.max_buffer = max_buffer
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.dropped = 0
        self.paused = False
        self.stopped = False
        self.finishing = False
        self.done: defer.Deferred[int] = defer.Deferred()
        self._consumer: Any = None  # IConsumer
        self._body_done: defer.Deferred[None] = defer.Deferred()
        self._producer: Any = None  # IPushProducer

    @property
    def open(self) -> bool:
        """Whether writes can still reach the guest."""
        return not (self.stopped or self.finishing or self.done.called)

    # The caller's side
    def write(self, data: bytes) -> None:
        """Send ``data`` now, or as soon as the connection takes it."""
        if not data or not self.open:
            return
        if self._consumer is not None and not self.paused and not self.pending:
            self._consumer.write(data)
            return
        if self.pending_bytes + len(data) > self.max_buffer:
            self.dropped += len(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self._producer is not None:
            self._producer.pauseProducing()

    def finish(self) -> None:
        """End the body once what is pending has gone out."""
        self.finishing = True
        self._flush()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("InputStream takes push producers only")
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    # IBodyProducer: the HTTP client's side
    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self._flush()
        return self._body_done

    def pauseProducing(self) -> None:
        self.paused = True
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()
        if self._producer is not None and not self.pending:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self.stopped = True
        self.pending.clear()
        self.pending_bytes = 0
        if self._producer is not None:
            self._producer.stopProducing()

    def _flush(self) -> None:
        if self._consumer is None or self.stopped:
            return
        while self.pending and not self.paused:
            data = self.pending.popleft()
            self.pending_bytes -= len(data)
            self._consumer.write(data)
        if self.finishing and not self.pending and not self._body_done.called:
            self._body_done.callback(None)


# -- the client ----------------------------------------------------------------

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
        self.pool = webclient.HTTPConnectionPool(reactor, persistent=persistent)
        agent = webclient.Agent(
            reactor,
            contextFactory=MutualTLSPolicy(trust, mine),
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

    def _fail(self, reason: Failure) -> Failure:
        return Failure(describe_failure(reason, self.where, self.credentials))

    def _stream_url(self, vm_id: str) -> str:
        if not vm_id or "/" in vm_id:
            raise ValueError(f"bad vmId {vm_id!r}")
        return f"{self.base_url}/consoleStream/{vm_id}"

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
        try:
            d = self.http.post(
                f"{self.base_url}/RPC2",
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
        except ClientError:
            raise
        except Exception:  # noqa: BLE001 - described, not swallowed
            raise describe_failure(Failure(), self.where, self.credentials) from None
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
        try:
            d = self.http.get(self._stream_url(vm_id), params=params, unbuffered=True)
            response = await _timed(self.reactor, d, self.timeout, self.where)
            if response.code != 200:
                raise await self._error_for(response, vm_id)
        except ClientError:
            raise
        except Exception:  # noqa: BLE001
            raise describe_failure(Failure(), self.where, self.credentials) from None
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
        try:
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
        except ClientError:
            raise
        except Exception:  # noqa: BLE001
            raise describe_failure(Failure(), self.where, self.credentials) from None
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


# -- following across lost connections ----------------------------------------


class ResumingFollow:
    """Follow a console for as long as it exists, across lost connections.

    ``start()`` attaches (its failure is the caller's to report: nothing is
    retried before the first attach).  After that a lost or ended stream is
    re-requested with backoff (``initial_delay`` doubling to ``max_delay``)
    from the last offset received, so nothing still retained is missed and
    what is no longer retained is counted: ``on_lost(error)`` is called once
    when the connection goes (or the server stops), ``on_resumed(stream,
    lost)`` when it is back.  ``done`` fires when ``stop()`` is called, or
    fails with the error that makes resuming pointless: ``NoSuchConsole``
    (the console was destroyed), ``ConsoleUnavailable`` (its guest is gone
    for good and everything retained was received), TLS refused.
    """

    RETRIED = (ConnectError, ConnectionLost, ConsoleUnavailable, HTTPError)

    def __init__(
        self,
        client: ConsoleClient,
        vm_id: str,
        on_data: Callable[[bytes], object],
        *,
        offset: int | None = None,
        tail: int | None = None,
        on_lost: Callable[[ClientError], object] | None = None,
        on_resumed: Callable[[Stream, int], object] | None = None,
        initial_delay: float = 0.25,
        max_delay: float = 5.0,
    ) -> None:
        self.client = client
        self.vm_id = vm_id
        self.on_data = on_data
        self.first_offset = offset
        self.first_tail = tail
        self.on_lost = on_lost
        self.on_resumed = on_resumed
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self._offset: int | None = None
        self.lost = 0
        self.stream: Stream | None = None
        self.stopped = False
        self.done: defer.Deferred[None] = defer.Deferred()
        self._retry: Any = None  # IDelayedCall
        self._delay = initial_delay
        self._attempt: defer.Deferred[Stream] | None = None

    @property
    def connected(self) -> bool:
        return self.stream is not None

    @property
    def offset(self) -> int | None:
        """The absolute offset of the next byte (None before the first attach)."""
        return self.stream.offset if self.stream is not None else self._offset

    def start(self) -> defer.Deferred[Stream]:
        """Attach for the first time; fires with the stream."""
        d = self.client.follow(
            self.vm_id, self.on_data, offset=self.first_offset, tail=self.first_tail
        )
        return d.addCallback(self._attached)

    def stop(self) -> None:
        """Stop following; ``done`` fires."""
        if self.stopped:
            return
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.stream is not None:
            self.stream.close()
        if not self.done.called:
            self.done.callback(None)

    def _attached(self, stream: Stream) -> Stream:
        self.stream = stream
        self._offset = stream.start_offset
        self.lost += stream.lost
        self._delay = self.initial_delay
        stream.done.addBoth(self._ended, stream)
        return stream

    def _ended(self, result: Any, stream: Stream) -> None:
        if stream is not self.stream:
            return
        self._offset = stream.offset
        self.stream = None
        if self.stopped:
            return
        final = self._final_error(stream) if not isinstance(result, Failure) else None
        if final is not None:
            # The server said the console is gone: no resuming, no "lost".
            self.stopped = True
            if not self.done.called:
                self.done.errback(final)
            return
        reason = (
            result.value
            if isinstance(result, Failure) and isinstance(result.value, ClientError)
            else ConnectionLost(f"console stream from {self.client.where} ended")
        )
        if self.on_lost is not None:
            self.on_lost(reason)
        self._schedule(0.0)

    def _final_error(self, stream: Stream) -> ClientError | None:
        """The error a cleanly ended stream leaves to report, if it is final."""
        if stream.end is StreamEnd.DESTROYED:
            return NoSuchConsole(404, no_vm_message(self.vm_id))
        if stream.end is StreamEnd.DOWN:
            return ConsoleUnavailable(503, f"console {self.vm_id} is down")
        return None

    def _schedule(self, delay: float) -> None:
        self._retry = self.client.reactor.callLater(delay, self._reattach)

    def _reattach(self) -> None:
        self._retry = None
        expected = self.offset
        self._attempt = self.client.follow(self.vm_id, self.on_data, offset=expected)
        self._attempt.addCallbacks(
            self._reattached, self._reattach_failed, errbackArgs=(expected,)
        )

    def _reattached(self, stream: Stream) -> None:
        self._attempt = None
        if self.stopped:
            stream.close()
            return
        self._attached(stream)
        if self.on_resumed is not None:
            self.on_resumed(stream, stream.lost)

    def _reattach_failed(self, reason: Failure, expected: int | None) -> None:
        self._attempt = None
        if self.stopped:
            return
        if reason.check(BeyondEnd) and expected is not None:
            # The server has less than we saw (it lost its newest bytes in a
            # crash): go on from its end; the caller sees the smaller offset.
            self._offset = None
            self._attempt = self.client.follow(self.vm_id, self.on_data)
            self._attempt.addCallbacks(
                self._reattached, self._reattach_failed, errbackArgs=(None,)
            )
            return
        if reason.check(NoSuchConsole, TLSError, CredentialsError) or not reason.check(
            *self.RETRIED
        ):
            self.stopped = True
            if not self.done.called:
                self.done.errback(reason)
            return
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        self._schedule(delay)
