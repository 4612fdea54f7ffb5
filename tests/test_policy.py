"""What a console may point at (vdsmconsole/policy.py), as plain functions.

Globs, host patterns and path resolution against real files and symlinks in
tmp_path; pty checks against real ptys of this process and a fake /proc for
owners' executables and parents; the registry's restore of an entry the
configuration no longer allows.  No server, no sockets.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.fakeguest import RecordingSink
from tests.test_ptyowner import fake_process
from vdsmconsole.config import Config, ConfigError, parse_config
from vdsmconsole.console import make_console_factory
from vdsmconsole.interfaces import SourceState
from vdsmconsole.policy import (
    Endpoint,
    NoSuchSource,
    NotAllowed,
    RefusedSource,
    SourcePolicy,
    glob_regex,
)
from vdsmconsole.registry import Registry
from vdsmconsole.sources import PtyOwner, process_start
from vdsmconsole.spec import ConsoleSpec

PYTHON = os.path.realpath(sys.executable)

# -- globs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/var/lib/libvirt/qemu/**", "/var/lib/libvirt/qemu/a/b/c.sock", True),
        ("/var/lib/libvirt/qemu/**", "/var/lib/libvirt/qemux/c.sock", False),
        ("/run/*.sock", "/run/a.sock", True),
        ("/run/*.sock", "/run/a/b.sock", False),
        ("/run/?.sock", "/run/a.sock", True),
        ("/run/?.sock", "/run/ab.sock", False),
        ("/run/[ab].sock", "/run/a.sock", False),  # brackets are literal
        ("/run/[ab].sock", "/run/[ab].sock", True),
        ("**/monitor.sock", "/var/lib/libvirt/qemu/domain-1-x/monitor.sock", True),
        ("**/monitor.sock", "/run/not-monitor.sock", False),
        ("qemu-system-*", "qemu-system-x86_64", True),
        ("qemu-system-*", "qemu-img", False),
    ],
)
def test_glob_star_stays_in_a_component_and_double_star_crosses(
    pattern: str, path: str, matches: bool
) -> None:
    """``*`` and ``?`` match within one path component, ``**`` across; the
    rest is literal."""
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


# -- tcp endpoints ---------------------------------------------------------------

DEFAULT = SourcePolicy()


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("127.0.0.1", 4555, True),
        ("127.9.9.9", 1, True),
        ("::1", 65535, True),
        ("[::1]", 22, True),
        ("::ffff:127.0.0.1", 80, True),  # mapped: judged as 127.0.0.1
        ("localhost", 4555, True),
        ("LocalHost.", 4555, True),
        ("10.0.0.1", 80, False),
        ("::ffff:10.0.0.1", 80, False),
        ("0.0.0.0", 80, False),
        ("::", 80, False),
        ("fe80::1%eth0", 80, False),
        ("169.254.169.254", 80, False),  # a cloud's metadata service
        ("127.1", 80, False),  # resolves to loopback, but is no address: a name
        ("2130706433", 80, False),
        ("localhost.example.com", 80, False),
        ("docker.internal", 2375, False),
    ],
)
def test_default_tcp_endpoints_are_loopback_only(
    host: str, port: int, allowed: bool
) -> None:
    """By default only loopback addresses and the name localhost are allowed;
    numbers written other than as an address are names, and refused."""
    if allowed:
        DEFAULT.check_tcp(host, port)
    else:
        with pytest.raises(NotAllowed, match="not in \\[sources\\] tcp_endpoints"):
            DEFAULT.check_tcp(host, port)


@pytest.mark.parametrize(
    ("pattern", "host", "port", "matches"),
    [
        ("127.0.0.1:4000-4010", "127.0.0.1", 4000, True),
        ("127.0.0.1:4000-4010", "127.0.0.1", 4010, True),
        ("127.0.0.1:4000-4010", "127.0.0.1", 4011, False),
        ("127.0.0.1:4000-4010", "127.0.0.2", 4005, False),
        ("192.168.122.0/24:5000", "192.168.122.7", 5000, True),
        ("192.168.122.0/24:5000", "192.168.123.7", 5000, False),
        ("[fd00::/8]:*", "fd12::1", 9, True),
        ("[fd00::/8]:*", "fe80::1", 9, False),
        ("*.guests.lan:7000", "vm1.guests.lan", 7000, True),
        ("*.guests.lan:7000", "vm1.guests.lan.evil.com", 7000, False),
        ("*.guests.lan:7000", "10.0.0.1", 7000, False),  # a name never matches
        ("*:*", "203.0.113.9", 1, True),
    ],
)
def test_endpoint_patterns(pattern: str, host: str, port: int, matches: bool) -> None:
    """Addresses against networks, names against name globs, ports against
    a number, a range or *."""
    assert Endpoint.parse(pattern).matches(host, port) is matches


@pytest.mark.parametrize(
    "pattern",
    [
        "127.0.0.1",
        ":80",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:10-5",
        "127.0.0.1:ssh",
        "127.0.0.1:-5",
        "10.0.0.0/33:*",
        "[not-v6]:*",
        "host/name:*",
        "**:*",
    ],
)
def test_bad_endpoint_patterns_are_config_errors(pattern: str) -> None:
    """A malformed tcp_endpoints entry stops the server, naming the key."""
    with pytest.raises(ConfigError, match="^sources.tcp_endpoints: "):
        parse_config({"sources": {"tcp_endpoints": [pattern]}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("unix_paths", ["relative/**"]),
        ("unix_paths", "/run/**"),  # a string, not a list of one
        ("unix_paths", [""]),
        ("unix_denied", ["monitor.sock"]),
        ("pty_owners", ["/usr/bin/"]),
        ("pty_owners", [1]),
        ("nothing", ["x"]),
    ],
)
def test_bad_sources_values_name_the_key(key: str, value: object) -> None:
    """Each [sources] key refuses what it cannot use, naming the key."""
    with pytest.raises(ConfigError, match=f"^sources.{key}: "):
        parse_config({"sources": {key: value}})


def test_sources_section_replaces_each_default_it_sets() -> None:
    """A key set in [sources] replaces that key's default; the others stay."""
    config = parse_config({"sources": {"pty_owners": ["/usr/libexec/qemu-kvm"]}})
    assert config.pty_owners == ("/usr/libexec/qemu-kvm",)
    assert config.tcp_endpoints == Config().tcp_endpoints
    assert SourcePolicy.from_config(config).pty_owners == config.pty_owners


# -- unix sockets ------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """An allowed and an outside directory, and the policy allowing the first."""
    allowed, outside, state = (tmp_path / n for n in ("allowed", "outside", "state"))
    for d in (allowed, outside, state):
        d.mkdir()
    return {"allowed": allowed, "outside": outside, "state": state}


def socket_policy(dirs: dict[str, Path], **kw: object) -> SourcePolicy:
    return SourcePolicy(
        unix_paths=(f"{dirs['allowed']}/**",),
        state_dir=str(dirs["state"]),
        **kw,  # type: ignore[arg-type]
    )


def test_unix_socket_in_an_allowed_directory_is_allowed(dirs) -> None:
    """A path under an allowed glob (existing or not yet) and the state
    directory are allowed; anything else is not."""
    policy = socket_policy(dirs)
    policy.check_unix(f"{dirs['allowed']}/vm1/console.sock")  # not there yet
    policy.check_unix(f"{dirs['state']}/qemu.sock")
    with pytest.raises(NotAllowed, match="is not in \\[sources\\] unix_paths"):
        policy.check_unix(f"{dirs['outside']}/console.sock")
    with pytest.raises(NotAllowed):
        policy.check_unix("/run/docker.sock")


def test_unix_dot_dot_is_judged_where_it_leads(dirs) -> None:
    """``allowed/../outside/x`` is outside: the glob never sees the ``..``."""
    with pytest.raises(NotAllowed, match="that is"):
        socket_policy(dirs).check_unix(f"{dirs['allowed']}/../outside/x.sock")


def test_unix_symlink_out_of_an_allowed_directory_is_refused(dirs) -> None:
    """A link inside the allowed directory to a socket outside it: refused."""
    link = dirs["allowed"] / "innocent.sock"
    link.symlink_to(dirs["outside"] / "docker.sock")
    with pytest.raises(NotAllowed, match=str(dirs["outside"])):
        socket_policy(dirs).check_unix(str(link))


def test_unix_symlink_into_an_allowed_directory_is_refused(dirs) -> None:
    """A link outside pointing in: refused too, since whoever can change the
    link (outside) decides what each reconnect reaches."""
    link = dirs["outside"] / "link.sock"
    link.symlink_to(dirs["allowed"] / "console.sock")
    with pytest.raises(NotAllowed):
        socket_policy(dirs).check_unix(str(link))


def test_unix_denied_wins_over_allowed(dirs) -> None:
    """A qemu monitor or guest agent socket in an allowed directory is refused."""
    policy = socket_policy(dirs, unix_denied=Config().unix_denied)
    for name in ("monitor.sock", "vm.monitor", "org.qemu.guest_agent.0"):
        with pytest.raises(NotAllowed, match="unix_denied"):
            policy.check_unix(f"{dirs['allowed']}/domain-1-vm/{name}")
        with pytest.raises(NotAllowed, match="unix_denied"):
            policy.check_unix(f"{dirs['state']}/{name}")


def test_default_socket_paths_are_libvirts_not_its_control_sockets() -> None:
    """The defaults allow libvirt's and oVirt's guest console directories,
    not libvirt's own sockets nor a guest's monitor."""
    DEFAULT.check_unix("/var/lib/libvirt/qemu/channel/vm1.console.sock")
    DEFAULT.check_unix("/run/libvirt/qemu/vm1-serial0.sock")
    DEFAULT.check_unix("/var/run/ovirt-vmconsole-console/vm1.sock")
    for path in (
        "/run/libvirt/libvirt-sock",
        "/var/run/libvirt/virtqemud-sock",
        "/var/lib/libvirt/qemu/domain-1-vm1/monitor.sock",
        "/var/run/docker.sock",
        "/run/containerd/containerd.sock",
    ):
        with pytest.raises(NotAllowed):
            DEFAULT.check_unix(path)


# -- ptys --------------------------------------------------------------------------


@pytest.fixture
def pty() -> object:
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_pty_held_by_an_allowed_executable_is_allowed(pty: str) -> None:
    """A pty whose master this interpreter holds, with the interpreter allowed:
    allowed, and the check names this process as its owner."""
    owner = SourcePolicy(pty_owners=(PYTHON,)).check(ConsoleSpec("pty", path=pty))
    assert owner == PtyOwner(os.getpid(), process_start(os.getpid()) or -1)
    # By its name as well as by its full path.
    SourcePolicy(pty_owners=(os.path.basename(PYTHON),)).check_pty(pty)


def test_pty_held_by_another_executable_is_refused(pty: str) -> None:
    """The same pty under the default policy (qemu only): refused, naming the holder."""
    with pytest.raises(NotAllowed, match=f"held by pid {os.getpid()} \\('{PYTHON}'\\)"):
        DEFAULT.check_pty(pty)


@pytest.mark.parametrize(
    "path",
    ["/dev/ptmx", "/dev/pts/ptmx", "/dev/tty", "/dev/null", "/etc/passwd", "/dev/pts"],
)
def test_anything_but_dev_pts_n_is_refused(path: str) -> None:
    """ptmx, other terminals and files are no pty console, whoever holds them."""
    with pytest.raises(NotAllowed, match="must be /dev/pts/N"):
        SourcePolicy(pty_owners=("*",)).check_pty(path)


def test_pty_by_symlink_or_dot_dot_is_refused(pty: str, tmp_path: Path) -> None:
    """A link to a pty, or a path through ``..``: refused, the pty itself named."""
    link = tmp_path / "console"
    link.symlink_to(pty)
    policy = SourcePolicy(pty_owners=("*",))
    with pytest.raises(NotAllowed, match=f"symbolic link to {pty}"):
        policy.check_pty(str(link))
    with pytest.raises(NotAllowed):
        policy.check_pty("/dev/pts/../pts/" + pty.rsplit("/", 1)[1])


def test_missing_pty_is_no_such_source() -> None:
    """A /dev/pts/N that does not exist is a bad parameter, not a policy matter."""
    with pytest.raises(NoSuchSource, match="does not exist"):
        SourcePolicy(pty_owners=("*",)).check_pty("/dev/pts/999999")


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    """qemu (100) holds pts 5 by a replaced binary; a shell (300) holds pts 6
    and its child (301) pts 7; init (1) above all."""
    proc = tmp_path / "proc"
    fake_process(proc, 1, 1, {}, exe="/sbin/init")
    qemu = "/usr/bin/qemu-system-x86_64 (deleted)"
    fake_process(proc, 100, 5000, {9: ("/dev/ptmx", 5)}, ppid=1, exe=qemu)
    fake_process(proc, 300, 6000, {3: ("/dev/ptmx", 6)}, ppid=1, exe="/bin/bash")
    fake_process(proc, 301, 6100, {3: ("/dev/ptmx", 7)}, ppid=300, exe="/bin/sleep")
    return proc


def test_owner_executable_replaced_by_an_upgrade_still_matches(fake_proc) -> None:
    """/proc shows "(deleted)" after a package upgrade: still qemu."""
    SourcePolicy(proc=fake_proc).check_owner(PtyOwner(100, 5000), "/dev/pts/5")


def test_owner_full_path_pattern(fake_proc) -> None:
    """A pattern with a slash matches the whole executable path, not the name."""
    SourcePolicy(pty_owners=("/usr/bin/qemu-*",), proc=fake_proc).check_owner(
        PtyOwner(100, 5000), "/dev/pts/5"
    )
    with pytest.raises(NotAllowed):
        SourcePolicy(pty_owners=("/opt/qemu-*",), proc=fake_proc).check_owner(
            PtyOwner(100, 5000), "/dev/pts/5"
        )


def test_owner_started_by_a_spawn_console_is_allowed(fake_proc) -> None:
    """A holder that a spawn console's child is, or descends from, is allowed;
    a holder outside that tree, or unseen, is not."""
    policy = SourcePolicy(proc=fake_proc)
    policy.check_owner(PtyOwner(301, 6100), "/dev/pts/7", spawned={300})
    policy.check_owner(PtyOwner(300, 6000), "/dev/pts/6", spawned={300})
    with pytest.raises(NotAllowed, match="/bin/sleep"):
        policy.check_owner(PtyOwner(301, 6100), "/dev/pts/7", spawned={100})
    with pytest.raises(NotAllowed, match="executable unknown"):
        policy.check_owner(PtyOwner(999, 1), "/dev/pts/8", spawned={300})


def test_restored_pty_is_judged_by_a_living_owner(fake_proc) -> None:
    """On restore: a living owner's executable decides; a gone one is left to
    the source (which stays down); the path rule holds either way."""
    policy = SourcePolicy(proc=fake_proc)
    policy.check_restored(ConsoleSpec("pty", path="/dev/pts/5"), PtyOwner(100, 5000))
    policy.check_restored(ConsoleSpec("pty", path="/dev/pts/6"), PtyOwner(300, 1))
    policy.check_restored(ConsoleSpec("pty", path="/dev/pts/6"), None)
    with pytest.raises(NotAllowed, match="/bin/bash"):
        policy.check_restored(
            ConsoleSpec("pty", path="/dev/pts/6"), PtyOwner(300, 6000)
        )
    with pytest.raises(NotAllowed):
        policy.check_restored(ConsoleSpec("pty", path="/dev/ptmx"), None)


# -- a restored entry that is no longer allowed -----------------------------------


def test_refused_source_stays_down_and_says_why() -> None:
    """RefusedSource reports down with the reason, takes no input, stops at once."""
    spec = ConsoleSpec("tcp", host="10.0.0.1", port=80)
    source = RefusedSource(spec, "not allowed: x", None)
    sink = RecordingSink()
    source.start(sink)
    assert sink.states == [(SourceState.DOWN, "not allowed: x")]
    assert source.write(b"x") is False
    facts = source.describe()
    assert facts == {
        "type": "tcp",
        "host": "10.0.0.1",
        "port": 80,
        "state": "down",
        "reason": "not allowed: x",
        "lastError": "not allowed: x",
    }
    results: list[object] = []
    source.stop().addCallback(results.append)
    assert results == [None]


def test_registry_load_keeps_a_no_longer_allowed_entry_down(tmp_path: Path) -> None:
    """A narrowed [sources]: the entry is restored down with a clear lastError,
    nothing is connected, and the file keeps it (and a pty's owner) unchanged."""
    state = tmp_path / "state"
    path = state / "registry.json"
    state.mkdir()
    entries = {
        "far": {"type": "tcp", "host": "192.0.2.7", "port": 4555},
        "near": {"type": "tcp", "host": "127.0.0.1", "port": 4555},
        "tty": {
            "type": "pty",
            "path": "/dev/pts/5",
            "owner": {"pid": os.getpid(), "start": process_start(os.getpid())},
        },
    }
    path.write_text(json.dumps({"version": 1, "consoles": entries}))
    config = Config(state_dir=state)
    reactor = MemoryReactorClock()
    registry = Registry(
        path,
        make_console_factory(config, reactor),
        policy=SourcePolicy.from_config(config),
    )
    registry.load()

    far = registry.get("far").full_status()
    assert far["status"] == "down"
    assert far["source"]["lastError"] == far["reason"]
    assert far["reason"].startswith("not allowed by the configuration: tcp endpoint")
    tty = registry.get("tty").full_status()
    assert tty["status"] == "down" and f"held by pid {os.getpid()}" in tty["reason"]
    assert registry.get("near").full_status()["source"]["connections"] == 0
    # Only the allowed entry tried to connect.
    assert [c[0] for c in reactor.tcpClients] == ["127.0.0.1"]
    registry.save()
    assert json.loads(path.read_text())["consoles"] == entries
