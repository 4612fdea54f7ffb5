"""The client's failures: each one line for a user (``str(error)``)."""

from __future__ import annotations


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
