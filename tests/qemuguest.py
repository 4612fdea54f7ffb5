"""A real, tiny Linux guest under qemu for the end-to-end tests.

Why: the server's pty, unix and tcp sources exist to follow qemu serial
consoles, and the behaviours that matter (qemu dropping output nobody reads,
a pty path that dies with its guest, a chardev socket that comes back after a
restart) only show up with the real thing.  So the tests boot Debian's cloud
kernel with a busybox initramfs that we build ourselves: no disk image, no
root filesystem, a shell prompt in about two seconds under plain TCG.

The image is built once and cached outside the repository
(``$VDSMCONSOLE_TEST_CACHE`` or ``~/.cache/vdsmconsole-tests``):

- the kernel comes from the ``.deb`` that ``linux-image-cloud-amd64`` depends
  on, fetched with ``apt-get download`` (never installed: installing would pull
  initramfs tools and upgrade parts of the host);
- the initramfs is a newc cpio archive written here, holding the host's static
  ``/bin/busybox`` (package ``busybox-static``), applet symlinks and an
  ``/init`` script that prints ``vdsmconsole-test-guest: booted`` and runs
  ``sh`` on the serial console with the prompt ``guest# ``.  Typing ``exit``
  at that prompt makes qemu exit (the guest reboots and qemu runs with
  ``-no-reboot``), which is how a test makes a guest go away from inside.

KVM is deliberately not used, even where ``/dev/kvm`` exists: TCG is slower
but behaves the same everywhere.

This is a helper module the tests import, not a test file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import wait_for
from tests.tools import unavailable

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
APT_PACKAGES = ("qemu-system-x86", "busybox-static")

BANNER = b"vdsmconsole-test-guest: booted"
PROMPT = b"guest# "
KINDS = ("pty", "unix", "tcp")

# Applets the guest gets as /bin/<name> -> busybox.
APPLETS = (
    "sh ash cat cttyhack date dd dmesg echo false head hexdump kill ls mkdir "
    "mount od poweroff printf ps reboot rm seq setsid sleep stty tail test "
    "tr true tty umount uname yes"
).split()

INIT_SCRIPT = """\
#!/bin/sh
# PID 1 of the vdsmconsole test guest.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export HOME=/root PATH=/bin TERM=vt100 PS1='guest# '
echo 'vdsmconsole-test-guest: booted'
# setsid + cttyhack: a real controlling tty, so ^C and job control work.
setsid cttyhack sh -i
echo 'vdsmconsole-test-guest: shell exited, rebooting'
# Let those last words leave the UART and reach the host's reader before
# qemu exits: the pty's hangup flushes whatever the host has not read yet,
# and reboot -f does not wait for the serial line to drain.
sleep 1
# qemu runs with -no-reboot, so this makes qemu exit.
reboot -f
"""

# Bump when the initramfs layout changes; the init script is hashed anyway.
INITRD_FORMAT = 1


class QemuGuestError(RuntimeError):
    """The guest image could not be built or qemu did not come up."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable kernel and initramfs pair."""

    kernel: Path
    initrd: Path


# --------------------------------------------------------------------------
# Building the image


def cache_dir() -> Path:
    """Where the built image lives: $VDSMCONSOLE_TEST_CACHE or ~/.cache/..."""
    env = os.environ.get("VDSMCONSOLE_TEST_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "vdsmconsole-tests"


def ensure_guest_image(cache: Path | None = None) -> GuestImage:
    """Return the cached guest image, building whatever part is missing.

    Safe against crashes (files appear by rename only when complete) and
    against concurrent builders (an flock on a lock file in the cache).
    """
    cache = cache or cache_dir()
    image = GuestImage(kernel=cache / "vmlinuz", initrd=cache / _initrd_name())
    if image.kernel.is_file() and image.initrd.is_file():
        return image  # fast path: no lock, no apt
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".build.lock", timeout=900):
        # Another process may have built it while we waited for the lock.
        if not image.initrd.is_file():
            _atomic_write(image.initrd, build_initramfs())
        if not image.kernel.is_file():
            _fetch_kernel(image.kernel)
    return image


def _initrd_name() -> str:
    digest = hashlib.sha256(
        f"{INITRD_FORMAT}\n{' '.join(APPLETS)}\n{INIT_SCRIPT}".encode()
    ).hexdigest()[:12]
    return f"initramfs-{digest}.cpio.gz"


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, waiting at most ``timeout`` s."""
    with open(path, "a+b") as f:

        def locked() -> bool:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            wait_for(locked, timeout, f"the lock on {path}")
        except AssertionError:
            raise QemuGuestError(
                f"another process holds {path} for more than {timeout}s"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _run(argv: list[str], cwd: Path | None = None) -> str:
    """Run a command, return stdout; raise QemuGuestError with its stderr."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuGuestError(f"{' '.join(argv)}: {e}") from e
    if proc.returncode != 0:
        raise QemuGuestError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


def _resolve_kernel_package() -> str:
    """The versioned linux-image-*-cloud-amd64 the metapackage depends on."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    m = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", out)
    if not m:
        raise QemuGuestError(f"no kernel dependency in apt-cache output: {out!r}")
    return m.group(1)


def _download_kernel_deb(workdir: Path) -> Path:
    package = _resolve_kernel_package()
    argv = ["apt-get", "download", "-q", package]
    if os.geteuid() == 0:
        # apt drops to the _apt user, who cannot write into our private dir.
        argv[1:1] = ["-o", "APT::Sandbox::User=root"]
    _run(argv, cwd=workdir)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise QemuGuestError(f"apt-get download {package} left no .deb")
    return debs[0]


def _fetch_kernel(dest: Path) -> None:
    """Download the cloud kernel .deb and keep only its /boot/vmlinuz-*."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise QemuGuestError("the test guest's kernel needs apt-get and dpkg-deb")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kernel-") as tmp:
        workdir = Path(tmp)
        try:
            deb = _download_kernel_deb(workdir)
        except QemuGuestError as first:
            # Usually missing package lists (a fresh container): refresh once.
            try:
                _run(["apt-get", "update", "-q"])
            except QemuGuestError as e:
                raise QemuGuestError(f"{first}; then {e}") from e
            deb = _download_kernel_deb(workdir)
        kernel = _extract_vmlinuz(deb)
        _atomic_write(dest, kernel)
        (dest.parent / "vmlinuz.source").write_text(deb.name + "\n")


def _extract_vmlinuz(deb: Path) -> bytes:
    """Stream the .deb's data tarball and return ./boot/vmlinuz-*."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    kernel = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isfile() and re.fullmatch(r"boot/vmlinuz-[^/]+", name):
                    f = tar.extractfile(member)
                    assert f is not None
                    kernel = f.read()
                    break
    finally:
        proc.stdout.close()
        proc.kill()  # we may stop reading early
        proc.wait()
    if not kernel:
        raise QemuGuestError(f"no boot/vmlinuz-* in {deb.name}")
    return kernel


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a PT_INTERP header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        order = "<" if head[5] == 1 else ">"
        phoff = struct.unpack_from(order + "Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader the guest lacks
            return False
    return True


def _busybox_bytes() -> bytes:
    if not BUSYBOX.is_file():
        raise QemuGuestError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    if not _is_static_elf(BUSYBOX):
        raise QemuGuestError(
            f"{BUSYBOX} is dynamically linked and cannot run in the initramfs: "
            "apt-get install busybox-static"
        )
    return BUSYBOX.read_bytes()


class _Cpio:
    """A minimal writer of the "newc" cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0,  # ino, mode, uid, gid
            2 if mode & 0o040000 else 1, 0, len(data),  # nlink, mtime, size
            0, 0, rdev[0], rdev[1],  # dev major/minor, rdev major/minor
            len(encoded), 0,  # namesize, check
        )  # fmt: skip
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._write_padded(header + encoded)
        self._write_padded(data)

    def _write_padded(self, data: bytes) -> None:
        self._out.write(data)
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def build_initramfs() -> bytes:
    """The gzip'd newc initramfs: busybox, applet links, /init."""
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "root", "tmp"):
        archive.directory(d)
    # The kernel opens /dev/console for init's stdio before /init runs.
    archive.chardev("dev/console", 5, 1)
    archive.file("bin/busybox", _busybox_bytes(), 0o755)
    for applet in APPLETS:
        archive.symlink(f"bin/{applet}", "busybox")
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------------
# QMP


class QMPClient:
    """A small synchronous QMP client over a unix socket (JSON lines)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        try:
            self._sock.connect(str(path))
            greeting = self._read_message()
            if "QMP" not in greeting:
                raise QemuGuestError(f"not a QMP greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QemuGuestError("QMP connection closed by qemu")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its "return" value."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read_message()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QemuGuestError(f"QMP {command}: {reply['error']}")
            elif "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self._sock.close()


# --------------------------------------------------------------------------
# Running a guest


def free_tcp_port() -> int:
    """A loopback port that was free a moment ago (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QemuGuest:
    """One qemu process booting ``image`` with one serial console.

    ``kind`` is how the console is exposed: ``pty``, ``unix`` (a chardev
    socket server at a fixed path) or ``tcp`` (a chardev socket server on a
    loopback port).  Socket paths, the qemu log and the QMP socket live in
    ``workdir``.
    """

    def __init__(self, image: GuestImage, kind: str, workdir: Path) -> None:
        if kind not in KINDS:
            raise ValueError(f"console kind must be one of {KINDS}, not {kind!r}")
        self.image = image
        self.kind = kind
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "qemu.log"
        # sun_path holds 108 bytes; deep pytest tmp dirs can exceed that.
        self._short_dir: Path | None = None
        sockdir = self.workdir
        if len(str(sockdir / "console.sock")) > 100:
            self._short_dir = Path(tempfile.mkdtemp(prefix="vdsmc-qemu-"))
            sockdir = self._short_dir
        self.qmp_path = sockdir / "qmp.sock"
        self.socket_path = sockdir / "console.sock"
        self.port = free_tcp_port() if kind == "tcp" else 0
        self.pty_path = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMPClient | None = None

    @property
    def pid(self) -> int | None:
        """The qemu process id while it has not been reaped, else None."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def console(self) -> dict[str, Any]:
        """The console as the server's create() takes it."""
        if self.kind == "pty":
            if not self.pty_path:
                raise QemuGuestError("the pty path is known only once started")
            return {"type": "pty", "path": self.pty_path}
        if self.kind == "unix":
            return {"type": "unix", "path": str(self.socket_path)}
        return {"type": "tcp", "host": "127.0.0.1", "port": self.port}

    def argv(self, paused: bool = False) -> list[str]:
        """The qemu command line."""
        if self.kind == "pty":
            chardev = "pty,id=ser0"
        elif self.kind == "unix":
            chardev = f"socket,id=ser0,path={self.socket_path},server=on,wait=off"
        else:
            chardev = (
                f"socket,id=ser0,host=127.0.0.1,port={self.port},server=on,wait=off"
            )
        argv = [
            QEMU,
            "-accel", "tcg",  # never KVM: see the module docstring
            "-nodefaults", "-display", "none", "-no-reboot",
            "-m", "128",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", chardev,
            "-serial", "chardev:ser0",
        ]  # fmt: skip
        if paused:
            argv.append("-S")
        return argv

    def start(self, paused: bool = False, timeout: float = 30.0) -> None:
        """Start qemu and return once QMP answers (and the pty is known).

        With ``paused`` the CPU does not run until ``cont()``, so a reader can
        attach first: qemu discards serial output that nobody reads.
        """
        if self.pid is not None:
            raise QemuGuestError(f"qemu already running as pid {self.pid}")
        for attempt in range(3):
            try:
                self._start_once(paused, timeout)
                return
            except QemuGuestError as e:
                # Another process may have taken our tcp port since we chose it.
                if self.kind != "tcp" or "Address already in use" not in str(e):
                    raise
                if attempt == 2:
                    raise
                self.port = free_tcp_port()

    def _start_once(self, paused: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.qmp_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()  # a stale socket would look ready
        with open(self.log_path, "ab") as log:
            log.write(f"=== {' '.join(self.argv(paused))}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv(paused),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # keep ^C on pytest from reaching it
            )
        try:
            self._qmp = self._connect_qmp(deadline)
            if self.kind == "pty":
                self.pty_path = self._query_pty()
        except BaseException:
            self._kill()
            raise

    def _connect_qmp(self, deadline: float) -> QMPClient:
        """Poll for the QMP socket until qemu answers, dies or time runs out."""
        proc = self._proc
        assert proc is not None

        def connected() -> QMPClient | None:
            if proc.poll() is not None:
                raise QemuGuestError(
                    f"qemu exited {proc.returncode} at startup: {self.log_tail()}"
                )
            try:
                return QMPClient(self.qmp_path, timeout=10.0)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise
            return None

        try:
            client: QMPClient = wait_for(
                connected, max(0.0, deadline - time.monotonic()), "QMP from qemu"
            )
        except AssertionError:
            raise QemuGuestError(f"no QMP from qemu: {self.log_tail()}") from None
        return client

    def _query_pty(self) -> str:
        for dev in self.qmp("query-chardev"):
            if dev.get("label") == "ser0":
                filename: str = dev["filename"]
                if filename.startswith("pty:"):
                    return filename.removeprefix("pty:")
        raise QemuGuestError("query-chardev shows no pty for ser0")

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command on the running qemu."""
        if self._qmp is None:
            raise QemuGuestError("qemu is not running")
        return self._qmp.execute(command, **arguments)

    def cont(self) -> None:
        """Let a guest started with ``paused=True`` run."""
        self.qmp("cont")

    def wait(self, timeout: float) -> int:
        """Wait for qemu to exit on its own (e.g. after ``exit`` in the guest)."""
        if self._proc is None:
            raise QemuGuestError("qemu was never started")
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuGuestError(f"qemu still running after {timeout}s") from None
        self._close_qmp()
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM qemu, SIGKILL it after ``timeout``; idempotent."""
        self._kill(timeout)
        if self._short_dir is not None:  # start() would make it again
            shutil.rmtree(self._short_dir, ignore_errors=True)

    def restart(self, paused: bool = False, timeout: float = 30.0) -> None:
        """Stop and start again on the same socket path / port.

        A pty guest comes back on a new pty: the old path is gone for good.
        """
        self._kill()
        self.start(paused=paused, timeout=timeout)

    def _kill(self, timeout: float = 5.0) -> None:
        self._close_qmp()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # By pid, as the brief asks; the Popen is still unreaped, so the pid
        # cannot have been reused yet.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of qemu's stdout/stderr, for error messages."""
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"<QemuGuest {self.kind} pid={self.pid} workdir={self.workdir}>"


# --------------------------------------------------------------------------
# pytest glue


def require_qemu() -> None:
    """Skip (fail when CI=true) unless qemu and a static busybox are here."""
    missing = []
    if not shutil.which(QEMU):
        missing.append(QEMU)
    if not BUSYBOX.is_file() or not _is_static_elf(BUSYBOX):
        missing.append(f"static {BUSYBOX}")
    if missing:
        unavailable(
            f"needs {' and '.join(missing)}: apt-get install {' '.join(APT_PACKAGES)}"
        )


class QemuGuestPool:
    """Starts guests and guarantees every one of them is killed on close()."""

    def __init__(self, workdir: Path, image: GuestImage) -> None:
        self.workdir = Path(workdir)
        self.image = image
        self.guests: list[QemuGuest] = []

    def start(
        self, kind: str, paused: bool = False, timeout: float = 30.0
    ) -> QemuGuest:
        """Start a guest with a console of ``kind`` in its own subdirectory."""
        guest = QemuGuest(
            self.image, kind, self.workdir / f"guest{len(self.guests)}-{kind}"
        )
        self.guests.append(guest)  # before start(): cleanup covers failures
        guest.start(paused=paused, timeout=timeout)
        return guest

    def close(self) -> None:
        """Stop every guest; keep going if one of them misbehaves."""
        errors = []
        for guest in self.guests:
            try:
                guest.stop()
            except Exception as e:  # noqa: BLE001 - stop the others regardless
                errors.append(f"{guest!r}: {e}")
        if errors:
            raise QemuGuestError("; ".join(errors))

    def __enter__(self) -> QemuGuestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qemu_guest_pool(workdir: Path) -> Iterator[QemuGuestPool]:
    """Fixture body: skip if qemu is unavailable, yield a pool, stop all guests.

    Wrap it in a fixture of your own (``yield from qemu_guest_pool(tmp_path)``)
    or import the ready-made ``qemu_guests`` fixture below.
    """
    require_qemu()
    try:
        image = ensure_guest_image()
    except QemuGuestError as e:
        unavailable(f"cannot build the test guest image: {e}")
    with QemuGuestPool(workdir, image) as pool:
        yield pool


@pytest.fixture
def qemu_guests(tmp_path: Path) -> Iterator[QemuGuestPool]:
    """A QemuGuestPool for one test: ``qemu_guests.start("unix", paused=True)``.

    Every guest is stopped at teardown, whether the test passed or not.  From a
    conftest: ``from qemuguest import qemu_guests  # noqa: F401``, or
    ``pytest_plugins = ["qemuguest"]``.
    """
    yield from qemu_guest_pool(tmp_path)
