"""A VM's graphics endpoints in the registry: create, lookups, destroy hooks,
persistence (mode 0600, passwords only there), restore, policy; no sockets.

The consoles are built on fake sources (``vdsmconsole.testing.FakeSource``);
the registry file is real, in a temporary directory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from vdsmconsole.core import registryfile
from vdsmconsole.core.console import Console
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import Ring
from vdsmconsole.graphics import GraphicsEndpoint, parse_graphics
from vdsmconsole.server.policy import SourcePolicy
from vdsmconsole.spec import ConsoleSpec, NotAllowed, SpecError
from vdsmconsole.status import Code, StatusError
from vdsmconsole.testing import UNIX_SPEC as UNIX
from vdsmconsole.testing import FakeSource

PASSWORD = "s3cret-vnc"
VNC = GraphicsEndpoint("vnc", host="127.0.0.1", port=5901, password=PASSWORD)
SPICE = GraphicsEndpoint("spice", path="/var/lib/libvirt/qemu/vm/spice.sock")
RDP = GraphicsEndpoint("rdp", host="localhost", port=3389)


def factory(vm_id: str, spec: ConsoleSpec, **_: Any) -> Console:
    return Console(vm_id, spec, FakeSource(), Ring(1024), None, Clock())


def make(path: Path | None, policy: Any = None) -> Registry:
    return Registry(path, factory, {}, policy)


def on_disk(path: Path) -> dict[str, Any]:
    """The registry the files describe: the snapshot and the journal."""
    state = registryfile.read(path)
    assert state is not None and not state.problems
    return state.as_json()


def code_of(call: Any, *args: Any) -> Code:
    with pytest.raises(StatusError) as info:
        call(*args)
    return info.value.code


def test_graphics_only_vm_is_a_vm_without_a_console(tmp_path: Path) -> None:
    """A graphics-only VM is listed and has graphics; get says noConsole."""
    registry = make(tmp_path / "registry.json")
    assert registry.create("gfx", None, graphics=(VNC, SPICE)) is None
    assert registry.ids() == ["gfx"] and len(registry) == 1
    assert registry.has_vm("gfx") and not registry.has_vm("other")
    assert registry.graphics("gfx") == (VNC, SPICE)
    assert registry.endpoint("gfx", "spice") == SPICE
    assert registry.find("gfx") is None
    assert code_of(registry.get, "gfx") == Code.NO_CONSOLE
    assert code_of(registry.endpoint, "gfx", "rdp") == Code.NO_CONSOLE


def test_console_and_graphics_share_one_vm(tmp_path: Path) -> None:
    """A VM with both: get gives the console, graphics the endpoints."""
    registry = make(tmp_path / "registry.json")
    console = registry.create("both", UNIX, graphics=[RDP])
    assert console is not None and registry.get("both") is console
    assert console.state == "connected"
    assert registry.graphics("both") == (RDP,)
    assert registry.endpoint("both", "rdp") == RDP
    registry.create("plain", UNIX)
    assert registry.graphics("plain") == ()
    assert registry.ids() == ["both", "plain"]


def test_unknown_vm_is_no_vm_everywhere(tmp_path: Path) -> None:
    """graphics, endpoint, get and destroy of an unknown vmId are noVM."""
    registry = make(tmp_path / "registry.json")
    assert code_of(registry.graphics, "nobody") == Code.NO_VM
    assert code_of(registry.endpoint, "nobody", "vnc") == Code.NO_VM
    assert code_of(registry.get, "nobody") == Code.NO_VM
    assert code_of(registry.destroy, "nobody") == Code.NO_VM


def test_neither_console_nor_graphics_is_miss_param(tmp_path: Path) -> None:
    """A VM needs a console or graphics: neither is missParam, nothing written."""
    registry = make(tmp_path / "registry.json")
    assert code_of(registry.create, "empty", None) == Code.MISS_PARAM
    assert code_of(registry.create, "two", None, None, (VNC, VNC)) == Code.MISS_PARAM
    assert registry.ids() == [] and list(tmp_path.iterdir()) == []


def test_create_of_a_registered_graphics_vm_is_exist(tmp_path: Path) -> None:
    """A vmId taken by a graphics-only VM cannot be created again (exist)."""
    registry = make(tmp_path / "registry.json")
    registry.create("gfx", None, graphics=[VNC])
    assert code_of(registry.create, "gfx", UNIX) == Code.EXIST
    assert registry.find("gfx") is None


def test_destroy_removes_graphics_and_runs_the_hooks(tmp_path: Path) -> None:
    """destroy forgets console and graphics; each destroyed hook gets the vmId,
    even after one that raises; added hooks ran at create."""
    registry = make(tmp_path / "registry.json")
    added: list[str] = []
    gone: list[str] = []
    registry.added.append(added.append)
    registry.destroyed.append(lambda vm: 1 / 0)  # type: ignore[func-returns-value]
    registry.destroyed.append(gone.append)
    registry.create("gfx", None, graphics=[VNC])
    console = registry.create("both", UNIX, graphics=[RDP])
    assert added == ["gfx", "both"]
    fired: list[object] = []
    registry.destroy("gfx").addBoth(fired.append)
    registry.destroy("both").addBoth(fired.append)
    assert fired == [None, None] and gone == ["gfx", "both"]
    assert console is not None and console.closed
    assert registry.ids() == [] and code_of(registry.graphics, "gfx") == Code.NO_VM
    assert on_disk(tmp_path / "registry.json") == {"version": 1, "consoles": {}}


def test_graphics_persist_with_the_password_in_a_0600_file(tmp_path: Path) -> None:
    """The files keep graphics (password included) and are mode 0600, even
    over a temporary file or journal a crash left with another mode."""
    path = tmp_path / "registry.json"
    journal = tmp_path / "registry.journal"
    for left in (tmp_path / "registry.json.tmp", journal):
        left.write_text("")
        os.chmod(left, 0o644)
    registry = make(path)
    registry.create("gfx", None, graphics=[VNC, SPICE])
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    registry.create("both", UNIX, graphics=[RDP])
    registry.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registry.create("more", UNIX)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["graphics"] == {
        "gfx": [
            {"type": "vnc", "host": "127.0.0.1", "port": 5901, "password": PASSWORD},
            {"type": "spice", "path": SPICE.path},
        ],
        "both": [{"type": "rdp", "host": "localhost", "port": 3389}],
    }
    assert data["consoles"] == {"both": UNIX.to_wire()}


def test_restore_brings_graphics_back(tmp_path: Path) -> None:
    """A new registry on the same file has the same VMs, graphics and
    password (the tunnel needs it); added hooks run for each VM."""
    path = tmp_path / "registry.json"
    first = make(path)
    first.create("gfx", None, graphics=[VNC, SPICE])
    first.create("both", UNIX, graphics=[RDP])
    again = make(path, SourcePolicy())
    added: list[str] = []
    again.added.append(added.append)
    again.load()
    assert again.ids() == ["both", "gfx"] and sorted(added) == ["both", "gfx"]
    assert again.graphics("gfx") == (VNC, SPICE)
    assert again.endpoint("gfx", "vnc").password == PASSWORD
    assert again.get("both").state == "connected"
    assert code_of(again.get, "gfx") == Code.NO_CONSOLE


def test_an_old_file_without_graphics_loads(tmp_path: Path) -> None:
    """A registry file from before graphics (no "graphics" key) loads as is."""
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 1, "consoles": {"old": UNIX.to_wire()}}))
    registry = make(path)
    registry.load()
    assert registry.ids() == ["old"] and registry.graphics("old") == ()


def test_a_bad_graphics_entry_is_skipped_on_restore(tmp_path: Path) -> None:
    """A malformed graphics entry is not restored; the others are."""
    path = tmp_path / "registry.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "consoles": {},
                "graphics": {
                    "bad": [{"type": "telnet", "host": "h", "port": 1}],
                    "../x": [{"type": "rdp", "host": "h", "port": 1}],
                    "good": [{"type": "rdp", "host": "localhost", "port": 3389}],
                },
            }
        )
    )
    registry = make(path)
    registry.load()
    assert registry.ids() == ["good"]


def test_restored_endpoint_no_longer_allowed_is_refused(tmp_path: Path) -> None:
    """An endpoint the narrowed policy refuses stays listed and in the file,
    but endpoint() will not hand it out (notAllowed); the others still work."""
    path = tmp_path / "registry.json"
    far = GraphicsEndpoint("rdp", host="10.1.2.3", port=3389)
    make(path).create("gfx", None, graphics=[VNC, far])
    registry = make(path, SourcePolicy())  # tcp: loopback only
    registry.load()
    assert registry.graphics("gfx") == (VNC, far)
    assert code_of(registry.endpoint, "gfx", "rdp") == Code.NOT_ALLOWED
    assert "tcp_endpoints" in registry.refusal("gfx", "rdp")
    assert registry.endpoint("gfx", "vnc") == VNC and not registry.refusal("gfx", "vnc")
    registry.create("other", UNIX)  # saves: the refused endpoint stays
    assert len(on_disk(path)["graphics"]["gfx"]) == 2


@pytest.mark.parametrize(
    ("graphics", "words"),
    [
        ([{"type": "telnet", "host": "h", "port": 1}], "graphics type"),
        (
            [
                {"type": "vnc", "host": "h", "port": 1},
                {"type": "vnc", "host": "h", "port": 2},
            ],
            "at most one vnc",
        ),
        (
            [{"type": "spice", "host": "h", "port": 1, "password": "x"}],
            "only vnc",
        ),
        ([{"type": "vnc", "path": "relative.sock"}], "absolute"),
        ([{"type": "vnc", "host": "h", "port": 0}], "port"),
        ([{"type": "vnc", "path": "/a.sock", "host": "h", "port": 1}], "either"),
        ([{"type": "vnc"}], "needs a host"),
        ({"type": "vnc"}, "array"),
    ],
)
def test_bad_graphics_are_refused(graphics: object, words: str) -> None:
    """Malformed graphics are refused with a message that says why."""
    with pytest.raises(SpecError) as info:
        parse_graphics(graphics)
    assert words in str(info.value)


def test_policy_checks_graphics_as_console_targets() -> None:
    """tcp endpoints against tcp_endpoints, socket paths against unix_paths."""
    policy = SourcePolicy()
    policy.check_graphics(VNC)
    policy.check_graphics(SPICE)
    for refused in (
        GraphicsEndpoint("rdp", host="10.0.0.1", port=3389),
        GraphicsEndpoint("vnc", path="/run/libvirt/libvirt-sock"),
        GraphicsEndpoint("vnc", path="/var/lib/libvirt/qemu/x/monitor.sock"),
    ):
        with pytest.raises(NotAllowed):
            policy.check_graphics(refused)


def test_the_file_follows_every_change_though_entries_are_kept_encoded(
    tmp_path: Path,
) -> None:
    """Each entry's JSON is made once (jsonfile.TextCache), yet after creates,
    a destroy, new graphics and a vmId created again the file says exactly
    what the registry holds, and loads back."""
    path = tmp_path / "registry.json"
    registry = make(path)
    registry.create("a", UNIX, graphics=(VNC,))
    registry.create("b", ConsoleSpec("tcp", host="127.0.0.1", port=1))
    registry.create("c", None, graphics=(SPICE,))
    registry.destroy("b")
    registry.replace_graphics("a", (RDP,))
    registry.replace_graphics("c", (VNC,))
    registry.create("b", ConsoleSpec("tcp", host="127.0.0.1", port=2))
    data = on_disk(path)
    assert data == {
        "version": 1,
        "consoles": {
            "a": UNIX.to_wire(),
            "b": {"type": "tcp", "host": "127.0.0.1", "port": 2},
        },
        "graphics": {"a": [RDP.to_persist()], "c": [VNC.to_persist()]},
    }
    registry.save()  # the snapshot alone, from the kept texts, says the same
    assert json.loads(path.read_text()) == data
    again = make(path)
    again.load()
    assert again.ids() == ["a", "b", "c"]
    assert again.graphics("a") == (RDP,) and again.graphics("c") == (VNC,)
