"""The XML-RPC resource at ``POST /RPC2`` (and ``POST /`` for old clients).

VDSM's conventions: every call answers a struct with ``status`` and a payload
key; failures are status codes, never Faults (a Fault only for a call the
server cannot parse or a method it does not know).  No ``None`` on the wire.

Offsets and byte counters outgrow XML-RPC's 32-bit ``<int>`` on a console
that runs for months, so integers beyond it go out as ``<i8>`` (which Python's
``xmlrpc.client`` and most other clients read), and offsets are accepted as
integers or decimal strings.
"""

from __future__ import annotations

import functools
import inspect
import xmlrpc.client as xmlrpclib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server, xmlrpc

from vdsmconsole import __version__
from vdsmconsole.core.ring import OffsetBeyondEnd
from vdsmconsole.graphics import parse_graphics
from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import rpc_permission
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import MethodsMixin
from vdsmconsole.server.metrics.rpccalls import UNKNOWN, RpcCalls
from vdsmconsole.server.multicall import Introspection, parse_calls, run_calls
from vdsmconsole.server.tokens import methods as tokens
from vdsmconsole.server.vmview import full_status, stats, summary, summary_xml
from vdsmconsole.spec import (
    DEFAULT_READ_BYTES,
    SOURCE_TYPES,
    NoSuchSource,
    NotAllowed,
    SpecError,
    method_signatures,
    parse_console_spec,
    validate_vm_id,
)
from vdsmconsole.status import Code, StatusError, failure, success
from vdsmconsole.xmlrpcwire import dumps_response, safe_loads

log = Logger(namespace="vdsmconsole.rpc")

MAX_READ_BYTES = 1024 * 1024
# The most vmIds one list() may name: an answer is then at most the
# registry's size, whatever the request repeats (duplicates collapse).
MAX_LIST_IDS = 4096


def as_offset(value: object, name: str) -> int:
    """An absolute offset or byte count: an int or decimal string, >= 0."""
    if (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and len(value) < 20
    ):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StatusError(Code.MISS_PARAM, f"{name} must be a non-negative integer")
    return value


def as_vm_id(value: object) -> str:
    try:
        return validate_vm_id(value)
    except SpecError as e:
        raise StatusError(Code.MISS_PARAM, str(e)) from None


def rpc_method(
    *, with_request: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn StatusError into a status dict and anything else into code 16.

    The traceback of an unexpected error goes to the server log only.  The
    introspection signature comes from ``spec.METHODS``, by the wire name.
    """

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        arguments = inspect.signature(method)
        signature = method_signatures(method.__name__.removeprefix("xmlrpc_"))

        @functools.wraps(method)
        def wrapper(self: ConsoleRPC, *args: Any) -> defer.Deferred[Any]:
            try:
                arguments.bind(self, *args)
            except TypeError as e:
                # Wrong number of arguments: the caller's mistake, not ours.
                return defer.succeed(failure(StatusError(Code.MISS_PARAM, str(e))))
            d = defer.maybeDeferred(method, self, *args)

            def on_error(reason: Failure) -> dict[str, Any]:
                if isinstance(reason.value, StatusError):
                    return failure(reason.value)
                log.failure("RPC {name} failed", reason, name=method.__name__)
                return failure(StatusError(Code.UNEXPECTED))

            # No wire_safe pass: dumps_response leaves None out as it does.
            d.addErrback(on_error)
            return d

        wrapper.signature = signature  # type: ignore[attr-defined]
        wrapper.withRequest = with_request  # type: ignore[attr-defined]
        return wrapper

    return decorate


class ConsoleRPC(MethodsMixin, xmlrpc.XMLRPC):
    """VDSM-shaped management calls over the console registry."""

    def __init__(self, context: ServerContext) -> None:
        super().__init__(allowNone=False, useDateTime=False)
        self.context = context
        self.calls = RpcCalls()  # what /metrics shows of the calls
        self.putSubHandler("system", Introspection(self))

    # -- transport -------------------------------------------------------

    def render_POST(self, request: Any) -> object:
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        started = self.context.reactor.seconds()
        try:
            args, name = safe_loads(request.content.read())
            if not name:
                raise ValueError("no methodName")
        except Exception as e:  # noqa: BLE001 - any parse error is the caller's
            fault = xmlrpc.Fault(self.FAILURE, f"Can't deserialize input: {e}")
            self.calls.observe(UNKNOWN, fault, self.context.reactor.seconds() - started)
            self._cbRender(fault, request)
            return server.NOT_DONE_YET
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        d = self._call(request, name, args, started)
        d.addCallback(self._cbRender, request, gone)
        return server.NOT_DONE_YET

    def _call(
        self, request: Any, name: str, args: tuple[Any, ...], started: float
    ) -> defer.Deferred[Any]:
        """One call, checked (method, permission, arguments) and counted:
        fires with its result, a status dict or a Fault, never fails."""
        try:
            function = self.lookupProcedure(name)
        except xmlrpc.Fault as f:
            return self._counted(UNKNOWN, started, f)  # no client-made label
        identity = identity_of(request)
        if not self.context.authz.allows(identity, rpc_permission(name)):
            self.context.audit.record("denied", identity, method=name)
            denied = StatusError(Code.DENIED, f"{identity} may not call {name}")
            return self._counted(name, started, failure(denied))
        if not hasattr(function, "withRequest"):
            # Twisted's system.* introspection takes method names and raises
            # on anything else (a traceback in the log): a Fault here instead.
            problem = _bad_introspection_args(function, args)
            if problem:
                fault = xmlrpc.Fault(self.FAILURE, f"bad arguments: {problem}")
                return self._counted(name, started, fault)
        if getattr(function, "withRequest", False):
            d = defer.maybeDeferred(function, request, *args)
        else:
            d = defer.maybeDeferred(function, *args)
        d.addErrback(self._ebRender)
        return d.addCallback(self._count, name, started)

    def _counted(self, method: str, started: float, result: Any) -> defer.Deferred[Any]:
        return defer.succeed(self._count(result, method, started))

    def _count(self, result: Any, method: str, started: float) -> Any:
        """What /metrics shows: the method, its answer's code, time taken."""
        self.calls.observe(method, result, self.context.reactor.seconds() - started)
        return result

    def multicall(self, request: Any, args: tuple[Any, ...]) -> defer.Deferred[Any]:
        """``system.multicall``: each call as if it came alone, in order.

        What the calls change in the registry and the console tokens is
        written to disk once, before the answer, not once a call: a host's
        VMs registered in one request cost one disk sync, their tokens one
        write of the token file.  (Only while a call runs at once: one that
        goes on later, a create waiting for a destroy, syncs its own.)"""
        calls = parse_calls(args)  # or a Fault for the request as a whole
        registry, tokens = self.context.registry, self.context.tokens

        def call_one(name: str, params: tuple[Any, ...]) -> defer.Deferred[Any]:
            with registry.batch(), tokens.batch():
                return self._call(request, name, params, self.context.reactor.seconds())

        d = run_calls(calls, call_one, self.context.reactor)
        return d.addCallback(self._synced)

    def _synced(self, answers: list[Any]) -> Any:
        """The answers, once what their calls changed is on disk; or a Fault."""
        for what, sync, then in (
            (
                "the registry",
                self.context.registry.sync,
                "this request's changes may not survive a restart",
            ),
            (
                "console tokens",
                self.context.tokens.sync,
                "the tokens this request minted were dropped",
            ),
        ):
            try:
                sync()
            except OSError as e:
                log.error("cannot persist {what}: {err}", what=what, err=e)
                return xmlrpc.Fault(
                    self.FAILURE, f"cannot persist {what}: {e.strerror}; {then}"
                )
        return answers

    def _cbRender(
        self, result: Any, request: Any, responseFailed: object = None
    ) -> None:
        if responseFailed:
            return
        try:
            content = dumps_response(result)
        except Exception as e:  # noqa: BLE001
            log.failure("cannot marshal RPC result")
            content = dumps_response(
                xmlrpc.Fault(self.FAILURE, f"Can't serialize output: {e}")
            )
        request.setHeader(b"content-length", b"%d" % len(content))
        request.write(content)
        request.finish()

    # -- methods ------------------------------------------------------------

    @rpc_method()
    def xmlrpc_ping(self) -> dict[str, Any]:
        """Answer status Done: the server is up."""
        return success()

    @rpc_method()
    def xmlrpc_getVdsCapabilities(self) -> dict[str, Any]:
        """Facts about this server: version, port, TLS, sources, retention."""
        config = self.context.config
        tls = self.context.tls  # certificate days left, CRL, client usage
        info = {
            "version": __version__,
            "software": "vdsmconsole",
            "port": self.context.port,
            "tls": {
                "minimumVersion": "TLSv1.2",
                "clientCertificateRequired": True,
                "alpn": ["h2", "http/1.1"],
                **(tls.capabilities() if tls is not None else {}),
            },
            "sourceTypes": list(SOURCE_TYPES),
            "spawnCommands": sorted(config.spawn_commands),
            "ringBytes": config.ring_bytes,
            "logFileBytes": config.log_file_bytes,
            "logKeepFiles": config.log_keep_files,
            "rpcMaxBody": config.rpc_max_body,
        }
        return success(info=info)

    @rpc_method()
    def xmlrpc_list(
        self, fullStatus: bool = False, vmList: list[str] | None = None
    ) -> dict[str, Any]:
        """List consoles: {vmId, status} each, or everything with fullStatus."""
        registry = self.context.registry
        if vmList is not None and not isinstance(vmList, list):
            raise StatusError(Code.MISS_PARAM, "vmList must be an array of vmIds")
        if vmList and len(vmList) > MAX_LIST_IDS:
            raise StatusError(
                Code.MISS_PARAM,
                f"vmList may name at most {MAX_LIST_IDS} vmIds, not {len(vmList)}",
            )
        # Each console once, in the order first asked for.
        wanted = registry.ids() if not vmList else dict.fromkeys(map(as_vm_id, vmList))
        show: Callable[..., Any] = full_status if fullStatus else summary
        if not fullStatus and self.context.libvirt is None:
            show = summary_xml  # marshalled once per console state
        probe = self.context.graphics_probe
        entries = [show(registry, probe, vm_id) for vm_id in wanted]
        shown = [e for e in entries if e is not None]
        if self.context.libvirt is not None:
            for entry in shown:  # a libvirt domain's name, as an alias
                name = self.context.libvirt.alias(entry["vmId"])
                if name:
                    entry["name"] = name
        return success(vmList=shown)

    @rpc_method(with_request=True)
    def xmlrpc_create(self, request: Any, params: object) -> Any:
        """Register a VM: {vmId, console?: {type, ...}, graphics?: [...]}."""
        if not isinstance(params, dict):
            raise StatusError(Code.MISS_PARAM, "params must be a struct")
        vm_id = as_vm_id(params.get("vmId"))
        if self.context.libvirt is not None:
            self.context.libvirt.refuse_by_hand(vm_id, "change")
        try:
            graphics = parse_graphics(params.get("graphics"))
            spec = None
            if "console" in params or not graphics:
                spec = parse_console_spec(
                    params.get("console"), self.context.config.spawn_commands
                )
        except SpecError as e:
            raise StatusError(Code.MISS_PARAM, str(e)) from None
        registry = self.context.registry
        # What the audit log says was asked for: never a password.
        asked: dict[str, Any] = {"vmId": vm_id}
        if spec is not None:
            asked["console"] = spec.to_wire()
        if graphics:
            asked["graphics"] = [e.public() for e in graphics]
        try:
            owner = None
            if spec is not None:
                owner = self.context.policy.check(spec, registry.spawned_pids())
            for endpoint in graphics:
                self.context.policy.check_graphics(endpoint)
        except (NotAllowed, NoSuchSource) as e:
            self.context.audit.record(
                "refused", identity_of(request), method="create", reason=str(e), **asked
            )
            kind = Code.NOT_ALLOWED if isinstance(e, NotAllowed) else Code.MISS_PARAM
            raise StatusError(kind, str(e)) from None

        def create(_: object) -> dict[str, Any]:
            registry.create(vm_id, spec, owner=owner, graphics=graphics)
            self.context.audit.record("create", identity_of(request), **asked)
            probe = self.context.graphics_probe
            return success(vmList=[full_status(registry, probe, vm_id)])

        # A console of this vmId that a destroy is still stopping must be
        # gone first (they would share its log and offsets): wait for it.
        return registry.when_free(vm_id).addCallback(create)

    @rpc_method(with_request=True)
    def xmlrpc_destroy(self, request: Any, vmId: object) -> Any:
        """Unregister a console (a spawned guest is stopped)."""
        vm_id = as_vm_id(vmId)
        if self.context.libvirt is not None:
            self.context.libvirt.refuse_by_hand(vm_id, "stop or undefine")
        d = self.context.registry.destroy(vm_id)
        self.context.audit.record("destroy", identity_of(request), vmId=vm_id)
        return d.addCallback(lambda _: success())

    @rpc_method()
    def xmlrpc_getVmStats(self, vmId: object) -> dict[str, Any]:
        """Counters and state of one console."""
        vm_id = as_vm_id(vmId)
        probe = self.context.graphics_probe
        return success(statsList=[stats(self.context.registry, probe, vm_id)])

    @rpc_method()
    def xmlrpc_getAllVmStats(self) -> dict[str, Any]:
        """Counters and state of every console."""
        registry = self.context.registry
        probe = self.context.graphics_probe
        return success(statsList=[stats(registry, probe, v) for v in registry.ids()])

    @rpc_method()
    def xmlrpc_consoleRead(
        self, vmId: object, offset: object = 0, maxBytes: object = DEFAULT_READ_BYTES
    ) -> dict[str, Any]:
        """Read retained output from an absolute offset; lost says what was missed."""
        console = self.context.registry.get(as_vm_id(vmId))
        start = as_offset(offset, "offset")
        limit = as_offset(maxBytes, "maxBytes")
        if limit == 0:
            raise StatusError(Code.MISS_PARAM, "maxBytes must be positive")
        try:
            result = console.read(start, min(limit, MAX_READ_BYTES))
        except OffsetBeyondEnd as e:
            # The caller's offset is wrong (not yet written): a bad parameter,
            # not an internal error with a traceback in the log.
            raise StatusError(Code.MISS_PARAM, str(e)) from None
        return success(
            data=xmlrpclib.Binary(result.data),
            offset=result.offset,
            nextOffset=result.offset + len(result.data),
            lost=result.lost,
        )

    @rpc_method(with_request=True)
    def xmlrpc_consoleWrite(self, request: Any, vmId: object, data: object) -> Any:
        """Send input to the guest: a Binary, or a string sent as UTF-8."""
        console = self.context.registry.get(as_vm_id(vmId))
        if isinstance(data, xmlrpclib.Binary):
            payload = data.data
        elif isinstance(data, str):
            payload = data.encode("utf-8")
        else:
            raise StatusError(Code.MISS_PARAM, "data must be base64 or a string")
        written = console.write_all(payload)
        self.context.audit.record(
            "consoleWrite", identity_of(request), vmId=console.vm_id, bytes=len(payload)
        )
        return defer.maybeDeferred(lambda: written).addCallback(
            lambda n: success(written=n)
        )

    # -- remote consoles: console tokens (bodies in server/tokens/methods.py) --

    @rpc_method(with_request=True)
    def xmlrpc_remoteConsole(
        self, request: Any, vmId: object, protocol: object, params: object = None
    ) -> dict[str, Any]:
        """A console token for a VM's serial, vnc, spice or rdp console."""
        return tokens.remote_console(self.context, request, vmId, protocol, params)

    @rpc_method(with_request=True)
    def xmlrpc_revokeConsoleTokens(self, request: Any, vmId: object) -> dict[str, Any]:
        """Revoke every live console token of a VM."""
        return tokens.revoke_console_tokens(self.context, request, vmId)

    @rpc_method(with_request=True)
    def xmlrpc_consoleConnectInfo(self, request: Any, token: object) -> dict[str, Any]:
        """Connect info of a console token (Nova's os-console-auth-tokens)."""
        return tokens.console_connect_info(self.context, request, token)


def _bad_introspection_args(function: Any, args: tuple[Any, ...]) -> str:
    """Why args do not fit a system.* method (method names), or ""."""
    try:
        inspect.signature(function).bind(*args)
    except TypeError as e:
        return str(e)
    if not all(isinstance(a, str) for a in args):
        return "method names must be strings"
    return ""
