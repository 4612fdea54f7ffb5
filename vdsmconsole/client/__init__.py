"""A client library for vdsmconsole: XML-RPC calls and console streams.

Everything goes over one mutually-authenticated TLS port, through treq on a
Twisted ``Agent`` whose TLS policy presents our client certificate, trusts
only our CA and verifies the server's name (service-identity)::

    from vdsmconsole.client import ClientCredentials, ConsoleClient

    creds = ClientCredentials.from_pki_dir(Path("/etc/pki/vdsm"))
    client = ConsoleClient("host.example", 54321, creds, reactor)
    result = await client.call("getVmStats", "vm1")   # the status dict, as is
    stream = await client.follow("vm1", on_data=sys.stdout.buffer.write, tail=4096)
    written = await client.send("vm1", b"uname -a\n")
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
  this one request is spoken by ``vdsmconsole/client/duplex.py`` over the same
  mutual TLS.  (The interactive console uses ``follow`` plus
  ``open_input``, which reconnect separately.)

Failures are ``ClientError`` subclasses whose ``str()`` is one line meant for
a user: which host could not be reached, whose certificate was refused.
"""

from vdsmconsole.client.api import EVERYTHING, Body, ConsoleClient
from vdsmconsole.client.calls import loads_response
from vdsmconsole.client.credentials import VDSM_PKI, ClientCredentials, MutualTLSPolicy
from vdsmconsole.client.errors import (
    BeyondEnd,
    ClientError,
    ConnectError,
    ConnectionLost,
    ConsoleUnavailable,
    CredentialsError,
    HTTPError,
    NoSuchConsole,
    RPCFault,
    ServerStopping,
    Timeout,
    TLSError,
)
from vdsmconsole.client.failures import describe_failure
from vdsmconsole.client.fdio import FDBodyProducer, FDReader, stdin_producer
from vdsmconsole.client.inputstream import InputStream
from vdsmconsole.client.resuming import ResumingFollow
from vdsmconsole.client.stream import Stream
from vdsmconsole.spec import DEFAULT_PORT
from vdsmconsole.xmlrpcwire import dumps_call

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
