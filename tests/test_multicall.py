"""system.multicall: many calls in one request, each as if it came alone,
and the registry synced to disk once for all of them."""

from __future__ import annotations

import os
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from tests.rpchelp import RPC, code
from tests.tokenhelp import result_of
from vdsmconsole.core.registry import Registry
from vdsmconsole.server.authz import Permission
from vdsmconsole.server.config import Config
from vdsmconsole.server.multicall import (
    BAD_CALL,
    MAX_CALLS,
    SLICE_SECONDS,
    parse_calls,
    run_calls,
)
from vdsmconsole.server.service import build_context, make_console_factory
from vdsmconsole.status import Code

VNC = {"type": "vnc", "host": "127.0.0.1", "port": 5900}


def graphics_vm(vm_id: str) -> dict[str, Any]:
    """A VM with only a VNC endpoint: created without a console to start."""
    return {"vmId": vm_id, "graphics": [VNC]}


def call(name: str, *params: Any) -> dict[str, Any]:
    return {"methodName": name, "params": list(params)}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state")


@pytest.fixture
def context(config: Config):
    return build_context(config, Clock())


@pytest.fixture
def rpc(context) -> RPC:
    return RPC(context)


@pytest.fixture
def syncs(monkeypatch) -> list[int]:
    """Every fdatasync the process makes, by descriptor."""
    made: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        made.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    return made


def multicall(rpc: RPC, *calls: dict[str, Any]) -> list[Any]:
    return rpc.call("system.multicall", list(calls))


def reloaded(config: Config) -> list[str]:
    """The vmIds a server starting on this state directory would restore."""
    registry = Registry(
        config.state_dir / "registry.json", make_console_factory(config, Clock())
    )
    registry.load()
    return registry.ids()


def test_answers_each_call_in_order_as_python_reads_them(rpc):
    """[result] for each call, read back by xmlrpc.client's MultiCall reader."""
    answers = multicall(
        rpc, call("create", graphics_vm("vm1")), call("list"), call("ping")
    )
    created, listed, pinged = xmlrpc.client.MultiCallIterator(answers)
    assert code(created) == 0
    assert created["vmList"][0]["vmId"] == "vm1"
    assert [vm["vmId"] for vm in listed["vmList"]] == ["vm1"]
    assert pinged == {"status": {"code": 0, "message": "Done"}}


def test_a_burst_of_creates_is_synced_once_and_survives_a_restart(rpc, config, syncs):
    """100 creates in one request: one disk sync, not 100; all restored."""
    ids = [f"vm{i}" for i in range(100)]
    multicall(rpc, call("create", graphics_vm(ids[0])))  # the journal exists
    syncs.clear()
    answers = multicall(rpc, *(call("create", graphics_vm(v)) for v in ids[1:]))
    assert [code(a[0]) for a in answers] == [0] * 99
    assert len(syncs) == 1
    assert sorted(reloaded(config)) == sorted(ids)


def test_single_creates_are_each_synced_before_they_answer(rpc, syncs):
    """Outside a multicall, nothing changes: a sync per create."""
    rpc.call("create", graphics_vm("vm0"))
    syncs.clear()
    for vm_id in ("vm1", "vm2", "vm3"):
        assert code(rpc.call("create", graphics_vm(vm_id))) == 0
    assert len(syncs) == 3


def test_a_multicall_that_changes_nothing_syncs_nothing(rpc, syncs):
    rpc.call("create", graphics_vm("vm0"))
    syncs.clear()
    multicall(rpc, call("ping"), call("list", True))
    assert syncs == []


def test_one_call_failing_leaves_the_others_alone(rpc, context):
    """Status codes stay in their answers; faults become fault structs."""
    answers = multicall(
        rpc,
        call("create", graphics_vm("vm1")),
        call("create", graphics_vm("vm1")),  # exists
        call("noSuchMethod"),
        "not a struct",
        {"params": []},
        call("system.multicall", []),
        {"methodName": "ping", "params": "not an array"},
        call("destroy", "vm1"),
        call("create", graphics_vm("vm2")),
    )
    assert code(answers[0][0]) == 0
    assert code(answers[1][0]) == 4
    assert answers[2] == {
        "faultCode": 8001,
        "faultString": "procedure noSuchMethod not found",
    }
    for fault in answers[3:7]:
        assert fault["faultCode"] == BAD_CALL
    assert "nested" in answers[5]["faultString"]
    assert code(answers[7][0]) == 0
    assert code(answers[8][0]) == 0
    assert context.registry.ids() == ["vm2"]


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("ping",),
        ({"methodName": "ping"},),
        ([], []),
        ([call("ping")] * (MAX_CALLS + 1),),
    ],
)
def test_a_malformed_multicall_is_one_fault(rpc, args):
    """Not one array of at most MAX_CALLS calls: a Fault, nothing run."""
    with pytest.raises(xmlrpc.client.Fault):
        rpc.call("system.multicall", *args)


def test_each_call_is_authorized_on_its_own(rpc, context):
    """A caller who may only read: its create is refused, its list answered."""

    class ReadOnly:
        def allows(self, identity: object, permission: Permission) -> bool:
            return permission == Permission.READ

    context.authz = ReadOnly()
    audited: list[tuple[str, dict]] = []
    context.audit.listeners.append(
        lambda event, fields: audited.append((event, fields))
    )
    refused, listed = multicall(rpc, call("create", graphics_vm("vm1")), call("list"))
    assert code(refused[0]) == Code.DENIED
    assert code(listed[0]) == 0
    assert context.registry.ids() == []
    assert audited == [("denied", {"method": "create"})]


def test_each_call_is_counted_under_its_own_name(rpc, context):
    multicall(rpc, call("ping"), call("ping"), call("noSuchMethod"))
    counts = {
        (s.labels["method"], s.labels["code"]): s.value
        for metric in rpc.resource.calls.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert counts[("ping", "0")] == 2
    assert counts[("system.multicall", "0")] == 1
    assert counts[("unknown", "fault")] == 1


def test_a_journal_that_cannot_sync_is_replaced_by_a_snapshot(rpc, config, monkeypatch):
    """The held changes still reach the disk before the answer."""
    from vdsmconsole.core import registryfile

    def broken(self: registryfile.Journal) -> None:
        raise OSError(5, "Input/output error")

    rpc.call("create", graphics_vm("vm0"))
    monkeypatch.setattr(registryfile.Journal, "sync", broken)
    answers = multicall(rpc, call("create", graphics_vm("vm1")))
    assert code(answers[0][0]) == 0
    monkeypatch.undo()
    journal = config.state_dir / "registry.journal"
    assert journal.read_bytes() == b""  # all in the snapshot now
    assert sorted(reloaded(config)) == ["vm0", "vm1"]


def test_a_disk_that_refuses_everything_is_a_fault_that_says_so(rpc, monkeypatch):
    from vdsmconsole.core import registryfile

    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    rpc.call("create", graphics_vm("vm0"))
    monkeypatch.setattr(registryfile.Journal, "sync", broken)
    monkeypatch.setattr(registryfile, "write_snapshot", broken)
    errors: list[dict] = []
    globalLogPublisher.addObserver(errors.append)
    try:
        with pytest.raises(xmlrpc.client.Fault) as fault:
            multicall(rpc, call("create", graphics_vm("vm1")))
    finally:
        globalLogPublisher.removeObserver(errors.append)
    assert "may not survive a restart" in fault.value.faultString
    assert any(e.get("log_level").name == "error" for e in errors)


def test_introspection_names_and_describes_it(rpc):
    assert "system.multicall" in rpc.call("system.listMethods")
    assert rpc.call("system.methodSignature", "system.multicall") == [
        ["array", "array"]
    ]
    assert "in order" in rpc.call("system.methodHelp", "system.multicall")


def test_parse_calls_keeps_order_and_marks_bad_elements():
    calls = parse_calls(([call("ping"), 7, call("list", True)],))
    assert calls[0] == ("ping", ())
    assert calls[2] == ("list", (True,))
    assert isinstance(calls[1], xmlrpc.client.Fault)


def test_a_long_multicall_gives_the_reactor_back_between_slices():
    """Calls that take 0.6 of a slice each: a reactor turn after every two,
    so other clients are served meanwhile; the answers stay in order."""
    timer = Clock()  # the time the calls take
    turns: list[Any] = []  # what waits for the reactor's next turn

    class Reactor:
        seconds = timer.seconds

        def callLater(self, delay: float, f: Any, *args: Any) -> Any:
            assert delay == 0
            turns.append(lambda: f(*args))
            return timer.callLater(3600, lambda: None)  # cancel()-able

    ran: list[str] = []

    def slow(name: str, params: tuple[Any, ...]) -> Any:
        ran.append(name)
        timer.advance(SLICE_SECONDS * 0.6)
        return defer.succeed({"status": {"code": 0}, "name": name})

    calls = parse_calls(([call(f"c{i}") for i in range(5)],))
    d = run_calls(calls, slow, Reactor())
    assert ran == ["c0", "c1"] and not d.called
    turns.pop(0)()
    assert ran == ["c0", "c1", "c2", "c3"] and not d.called
    turns.pop(0)()
    assert not turns
    assert [a[0]["name"] for a in result_of(d)] == [f"c{i}" for i in range(5)]


@pytest.fixture
def token_writes(monkeypatch) -> list[int]:
    """Every write of the token file, by the number of tokens written."""
    from vdsmconsole.server.tokens import store

    made: list[int] = []
    real = store.save_records

    def counted(path: Path, tokens: str) -> None:
        made.append(tokens.count('"vmId"'))
        real(path, tokens)

    monkeypatch.setattr(store, "save_records", counted)
    return made


def test_a_burst_of_mints_writes_the_token_file_once(rpc, context, token_writes):
    """Tokens minted in one request: one write holding them all; each works."""
    multicall(rpc, *(call("create", graphics_vm(f"vm{i}")) for i in range(20)))
    answers = multicall(
        rpc, *(call("remoteConsole", f"vm{i}", "vnc") for i in range(20))
    )
    tokens = [a[0]["console"]["token"] for a in answers]
    assert token_writes == [20]
    for i, token in enumerate(tokens):
        grant = context.tokens.lookup(token)
        assert grant is not None and grant.vm_id == f"vm{i}"
    again = build_context(context.config, Clock()).tokens
    again.load()
    assert all(again.lookup(token) is not None for token in tokens)


def test_single_mints_each_write_the_file(rpc, token_writes):
    rpc.call("create", graphics_vm("vm1"))
    for _ in range(3):
        assert code(rpc.call("remoteConsole", "vm1", "vnc")) == 0
    assert token_writes == [1, 2, 3]


def test_tokens_a_burst_cannot_record_are_dropped_and_never_sent(
    rpc, context, monkeypatch
):
    from vdsmconsole.server.tokens import store

    rpc.call("create", graphics_vm("vm1"))
    kept = rpc.call("remoteConsole", "vm1", "vnc")["console"]["token"]

    def broken(path: Path, tokens: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_records", broken)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        multicall(rpc, call("remoteConsole", "vm1", "vnc"))
    assert "tokens this request minted were dropped" in fault.value.faultString
    assert "Traceback" not in fault.value.faultString
    assert len(context.tokens) == 1 and context.tokens.lookup(kept) is not None
