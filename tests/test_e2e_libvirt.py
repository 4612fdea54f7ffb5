"""libvirt discovery against a real libvirtd: a TCG domain booting the test
guest's kernel and initramfs, with a pty serial and VNC.  Its console
appears within 2 s of ``virsh start``, wget follows its boot; ``virsh
destroy`` makes it down; a new start attaches the new pty and the same wget
carries on at growing offsets; ``virsh undefine`` removes it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid as uuidmod
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemuguest import PROMPT, ensure_guest_image
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import stats, type_into, wget_follow
from tests.tools import require_tool, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

URI = "qemu:///system"
IMAGES = Path("/var/lib/libvirt/images")


def virsh(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {result.stderr}")
    return result.stdout


def answers() -> bool:
    return (
        subprocess.run(
            ["virsh", "-c", URI, "uri"], capture_output=True, timeout=30
        ).returncode
        == 0
    )


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class Daemons:
    """virtlogd and libvirtd started by the suite (``owned``), stopped and
    started again by pid; or ones that answered already (not touched)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.owned = False

    def pid(self, daemon: str) -> int:
        return int((self.directory / f"{daemon}.pid").read_text())

    def start(self, *daemons: str) -> None:
        self.owned = True
        for daemon in daemons:
            _run(daemon, "-d", "-p", str(self.directory / f"{daemon}.pid"))
        wait_for(answers, 30, "libvirtd to answer")

    def stop(self, *daemons: str) -> None:
        for daemon in daemons:
            try:
                os.kill(self.pid(daemon), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        if "libvirtd" in daemons:
            wait_for(lambda: not answers(), 30, "libvirtd to stop")


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory) -> Iterator[Daemons]:
    """libvirtd (and virtlogd) as root, as MACHINE-NOTES say: the qemu user
    and groups, its directories; started here unless one answers already,
    and then stopped by pid at the end."""
    for tool, package in (
        ("libvirtd", "libvirt-daemon-driver-qemu"),
        ("virtlogd", "libvirt-daemon"),
        ("virsh", "libvirt-clients"),
    ):
        require_tool(tool, package)
    if os.geteuid() != 0:
        unavailable("libvirtd for these tests runs as root")
    daemons = Daemons(tmp_path_factory.mktemp("libvirtd"))
    if not answers():
        for group in ("kvm", "libvirt-qemu"):
            if subprocess.run(
                ["getent", "group", group], capture_output=True
            ).returncode:
                _run("groupadd", "-r", group)
        if subprocess.run(
            ["getent", "passwd", "libvirt-qemu"], capture_output=True
        ).returncode:
            _run(
                "useradd", "-r", "-g", "libvirt-qemu", "-G", "kvm",
                "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", "libvirt-qemu",
            )  # fmt: skip
        for directory in ("/var/log/libvirt", "/var/lib/libvirt/qemu", "/run/libvirt"):
            Path(directory).mkdir(parents=True, exist_ok=True)
        daemons.start("virtlogd", "libvirtd")
    yield daemons
    if daemons.owned:
        daemons.stop("libvirtd", "virtlogd")


@pytest.fixture
def domain(libvirtd, tmp_path) -> Iterator[tuple[str, str]]:
    """A defined (not started) TCG domain; (name, uuid); undefined at the end."""
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    image = ensure_guest_image()
    name = f"vdsmconsole-test-{uuidmod.uuid4().hex[:8]}"
    uuid = str(uuidmod.uuid4())
    where = IMAGES / name  # qemu runs as libvirt-qemu: not under /root
    where.mkdir(parents=True)
    for source in (image.kernel, image.initrd):
        shutil.copy(source, where / source.name)
        (where / source.name).chmod(0o644)
    where.chmod(0o755)
    xml = tmp_path / "domain.xml"
    xml.write_text(f"""<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{where / image.kernel.name}</kernel>
    <initrd>{where / image.initrd.name}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>
  </devices>
</domain>""")
    virsh("define", str(xml))
    yield name, uuid
    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)
    shutil.rmtree(where, ignore_errors=True)


def listed(server: ServerProcess) -> dict[str, str]:
    reply = server.rpc().list()
    return {vm["vmId"]: vm["status"] for vm in reply["vmList"]}


def test_a_domain_through_its_life(domain, server_factory, readers, tmp_path):
    """start: in list within 2 s, wget follows the boot; destroy: down;
    start again: the new pty is attached and the same wget carries on at
    growing offsets; undefine: gone."""
    name, uuid = domain
    server = server_factory(f'[libvirt]\nuri = "{URI}"\n')
    wait_for(lambda: "libvirt qemu:///system: connected" in server.log(), 10, "connect")
    virsh("start", name)
    wait_for(lambda: uuid in listed(server), 2, "the domain in list within 2 s")
    (entry,) = server.rpc().list(False, [uuid])["vmList"]
    assert entry["name"] == name  # the domain's name, as an alias
    graphics = server.rpc().list(True, [uuid])["vmList"][0]["graphics"]
    assert [g["type"] for g in graphics] == ["vnc"]
    follower = wget_follow(
        server, f"/consoleStream/{uuid}?offset=0", readers, tmp_path / "wget.out"
    )
    wait_for(lambda: PROMPT in follower.data(), 60, "the guest's prompt via wget")
    first_end = stats(server, uuid)["nextOffset"]
    virsh("destroy", name)
    wait_for(lambda: listed(server).get(uuid) == "down", 10, "down")
    assert follower.running(), "wget stopped while the domain was down"
    seen = len(follower.data())
    virsh("start", name)
    wait_for(lambda: follower.data().count(PROMPT) >= 2, 60, "the second boot via wget")
    assert len(follower.data()) > seen and follower.running()
    assert stats(server, uuid)["nextOffset"] > first_end
    assert listed(server)[uuid] == "connected"
    virsh("destroy", name)
    virsh("undefine", name)
    wait_for(lambda: uuid not in listed(server), 10, "the VM to go")


def test_a_lost_libvirtd_is_retried_and_consoles_keep_streaming(
    libvirtd, domain, server_factory, readers, tmp_path
):
    """libvirtd stops: the console keeps streaming (typed input echoes to
    the follower); libvirtd back: the server connects again by itself."""
    if not libvirtd.owned:
        pytest.skip("libvirtd was running before the suite: not ours to stop")
    name, uuid = domain
    server = server_factory(
        f'[libvirt]\nuri = "{URI}"\n[console]\nreconnect_max = 1.0\n'
    )
    connected = "libvirt qemu:///system: connected"
    wait_for(lambda: connected in server.log(), 10, "connect")
    virsh("start", name)
    wait_for(lambda: uuid in listed(server), 2, "the domain in list")
    follower = wget_follow(
        server, f"/consoleStream/{uuid}?offset=0", readers, tmp_path / "wget.out"
    )
    wait_for(lambda: PROMPT in follower.data(), 60, "the guest's prompt")
    libvirtd.stop("libvirtd")
    wait_for(lambda: "consoles keep streaming" in server.log(), 30, "the loss")
    type_into(server, uuid, "echo still-here\r")
    wait_for(lambda: b"still-here\r\n" in follower.data(), 30, "the echo")
    libvirtd.start("libvirtd")
    wait_for(lambda: server.log().count(connected) == 2, 30, "the reconnection")
    assert listed(server)[uuid] == "connected"
