"""The XML-RPC resource driven in memory (treq's StubTreq), no sockets."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from treq.testing import StubTreq

from tests.tokenhelp import result_of
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.rpc import ConsoleRPC

URL = "https://localhost/RPC2"


class RPC:
    """Posts XML to the resource over an in-memory HTTP connection."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.resource = ConsoleRPC(context)
        self.stub = StubTreq(self.resource)

    def post(self, body: bytes) -> bytes:
        d = self.stub.post(URL, data=body, headers={"Content-Type": "text/xml"})
        self.stub.flush()
        response = result_of(d)
        assert response.code == 200
        content = self.stub.content(response)
        self.stub.flush()
        data = result_of(content)
        # No None on our wire, whatever the call.
        assert b"<nil/>" not in data
        return data

    def call(self, method: str, *params: Any) -> Any:
        body = xmlrpc.client.dumps(params, method).encode()
        return xmlrpc.client.loads(self.post(body))[0][0]


def code(result: dict) -> int:
    return result["status"]["code"]
