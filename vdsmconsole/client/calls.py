"""The client's reading of an XML-RPC answer: faults as ``RPCFault``."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from vdsmconsole.client.errors import ClientError, RPCFault
from vdsmconsole.xmlrpcwire import parse_response


def loads_response(body: bytes) -> Any:
    """The one value of a methodResponse; Fault raises ``RPCFault``.

    Parsed as ``xmlrpc.client.loads`` does (base64 as ``bytes``), with DTDs
    and entity expansion refused.
    """
    try:
        return parse_response(body)
    except xmlrpc.client.Fault as fault:
        raise RPCFault(fault.faultCode, fault.faultString) from None
    except Exception as e:  # noqa: BLE001 - the server sent something else
        raise ClientError(f"unreadable XML-RPC answer: {e}") from None
