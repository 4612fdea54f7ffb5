"""``system.multicall``: many XML-RPC calls in one request.

The de facto standard that xmlrpc-c, Apache XML-RPC and Python's
``xmlrpc.client.MultiCall`` speak: one parameter, an array of
``{methodName, params}`` structs; the answer, an array holding ``[result]``
for each call that ran, or a fault struct ``{faultCode, faultString}`` for
one that could not.  An engine that registers a host's VMs sends them in one
request, so TLS, HTTP and the wait for the answer are paid once, not once a
VM.

Each call is checked and run as if it came alone (authorization, audit,
metrics), one after the other in the order given: a ``create`` and a
``remoteConsole`` of the same VM may share a request.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, task
from twisted.web.xmlrpc import Fault, XMLRPCIntrospection

MULTICALL = "system.multicall"
#: The most calls one request may carry; the request's size is bounded too.
MAX_CALLS = 4096
#: The code of the server's other faults for a call it cannot take
#: (Twisted's ``XMLRPC.FAILURE``): an element that is not ``{methodName:
#: str, params: array}``, or a multicall's own parameter that is wrong.
BAD_CALL = BAD_PARAMS = 8002
#: A multicall gives the reactor back once its calls have run this long, so
#: a request of thousands of calls never stalls other clients' streams.
SLICE_SECONDS = 0.01

Call = tuple[str, tuple[Any, ...]]


def parse_calls(args: tuple[Any, ...]) -> list[Call | Fault]:
    """The calls a multicall's arguments name, or a Fault in place of each
    malformed one.  Raises Fault when the argument is not an array of at
    most ``MAX_CALLS`` elements (the request as a whole is wrong)."""
    if len(args) != 1 or not isinstance(args[0], list):
        raise Fault(BAD_PARAMS, f"{MULTICALL} takes one array of calls")
    calls = args[0]
    if len(calls) > MAX_CALLS:
        raise Fault(
            BAD_PARAMS, f"{MULTICALL} takes at most {MAX_CALLS} calls, not {len(calls)}"
        )
    return [_parse_call(call) for call in calls]


def _parse_call(call: object) -> Call | Fault:
    if not isinstance(call, dict):
        return Fault(BAD_CALL, "a call must be a struct {methodName, params}")
    name = call.get("methodName")
    params = call.get("params", [])
    if not isinstance(name, str) or not name:
        return Fault(BAD_CALL, "a call needs a methodName string")
    if not isinstance(params, list):
        return Fault(BAD_CALL, f"{name}: params must be an array")
    if name == MULTICALL:
        return Fault(BAD_CALL, f"{MULTICALL} may not be nested")
    return name, tuple(params)


def fault_struct(fault: Fault) -> dict[str, Any]:
    return {"faultCode": fault.faultCode, "faultString": str(fault.faultString)}


def run_calls(
    calls: list[Call | Fault],
    call_one: Callable[[str, tuple[Any, ...]], Any],
    clock: Any,
) -> defer.Deferred[list[Any]]:
    """Run the calls in order, each once the one before has answered; fire
    with their answers.  ``call_one(name, params)`` gives a Deferred that
    fires with the call's result or a Fault, never fails.  After each
    ``SLICE_SECONDS`` of running, the next call waits a turn of ``clock``
    (the reactor: ``seconds`` and ``callLater``)."""

    @defer.inlineCallbacks
    def run() -> Generator[Any, Any, list[Any]]:
        answers: list[Any] = []
        since = clock.seconds()
        for call in calls:
            if clock.seconds() - since >= SLICE_SECONDS:
                yield task.deferLater(clock, 0, lambda: None)
                since = clock.seconds()
            if isinstance(call, Fault):
                answers.append(fault_struct(call))
                continue
            result = yield call_one(*call)
            answers.append(
                fault_struct(result) if isinstance(result, Fault) else [result]
            )
        return answers

    return run()


class Introspection(XMLRPCIntrospection):
    """Twisted's ``system.*`` methods, and ``system.multicall``."""

    def xmlrpc_multicall(self, request: Any, *args: Any) -> Any:
        """Run many calls in one request: [{methodName, params}, ...] ->
        [[result] or {faultCode, faultString}, ...], in order."""
        return self._xmlrpc_parent.multicall(request, args)

    xmlrpc_multicall.withRequest = True  # type: ignore[attr-defined]
    xmlrpc_multicall.signature = [["array", "array"]]  # type: ignore[attr-defined]
