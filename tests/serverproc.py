"""Run the real server as a child process on loopback, and stop it by pid.

Used by the end-to-end tests: the server is started exactly as an operator
would (``python -m vdsmconsole serve``), its log goes to a file the tests can
read, and the fixture that started it kills it by pid even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdsmconsole.pki import PkiPaths
from vdsmconsole.server.policy import DEFAULT_PTY_OWNERS, DEFAULT_UNIX_PATHS

_pause = threading.Event()  # never set: wait(t) is a poll interval
LISTENING = re.compile(rb"vdsmconsole listening on [^:\s]+:(\d+)")


def suite_sources() -> str:
    """The [sources] section of every test server: the defaults (qemu's ptys,
    libvirt's sockets, loopback TCP) plus what the suite's own guests use,
    allowed explicitly: ptys held by this interpreter (vdsmconsole.testing and
    the helpers of test_ptyowner hold the master in a Python process) and
    sockets under the temporary directory (qemu chardevs of tests.qemuguest,
    tmp_path)."""
    unix = [*DEFAULT_UNIX_PATHS, os.path.realpath(tempfile.gettempdir()) + "/**"]
    owners = [*DEFAULT_PTY_OWNERS, os.path.realpath(sys.executable)]
    return (
        "[sources]\n"
        f"unix_paths = {json.dumps(unix)}\n"
        f"pty_owners = {json.dumps(owners)}\n"
    )


def with_test_sources(config_text: str) -> str:
    """``config_text`` with suite_sources() added, unless it has its own."""
    if re.search(r"^\[sources\]", config_text, re.MULTILINE):
        return config_text
    return f"{config_text.rstrip()}\n\n{suite_sources()}".lstrip()


def serve_flags(
    pki_root: Path, state_dir: Path, config: Path | None = None, port: int = 0
) -> list[str]:
    """What every server a test starts is given: its PKI, state directory and
    (maybe) configuration file, listening on loopback only."""
    return [
        *(["--config", str(config)] if config is not None else []),
        "--pki",
        str(pki_root),
        "--state-dir",
        str(state_dir),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
    ]


REPO = Path(__file__).resolve().parent.parent


def run_to_exit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m vdsmconsole ARGS`` run to its exit (a start that must
    fail): its status, stdout and stderr as text; no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "vdsmconsole", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=False,
    )


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        _pause.wait(delay)  # the poll interval, bounded by the deadline above
        delay = min(delay * 2, 0.1)


def wait_for_progress(
    condition: Callable[[], Any],
    progress: Callable[[], Any],
    stall: float = 60.0,
    what: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail only when
    ``progress()`` has not changed for ``stall`` seconds.

    For long transfers (a 20 MB flood to 50 followers) whose speed is the
    machine's load, not the behaviour under test: a fixed deadline is either
    too tight on a busy 2-core machine or too slow to catch a hang.
    """
    last = progress()
    deadline = time.monotonic() + stall
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        now = progress()
        if now != last:
            last, deadline = now, time.monotonic() + stall
        elif time.monotonic() > deadline:
            raise AssertionError(
                f"no progress for {stall}s waiting for {what} (at {last!r})"
            )
        _pause.wait(delay)  # the poll interval, bounded by the deadline above
        delay = min(delay * 2, 0.1)


def client_context(pki: PkiPaths, cert: Path | None = None, key: Path | None = None):
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(cert or pki.client_cert), str(key or pki.client_key))
    return context


@dataclass
class ServerProcess:
    pki: PkiPaths
    workdir: Path
    config_text: str = ""
    extra_args: list[str] = field(default_factory=list)
    # (soft, hard) RLIMIT_NOFILE for the server, as systemd would set it.
    nofile: tuple[int, int] | None = None
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    # What runs "serve": the server itself, or a test harness around it.
    launcher: tuple[str, ...] = ("-m", "vdsmconsole")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 20.0, port: int = 0) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "vdsmconsole.conf"
        config.write_text(with_test_sources(self.config_text))
        limits = []
        if self.nofile is not None:
            limits = ["prlimit", "--nofile={}:{}".format(*self.nofile), "--"]
        args = [
            *limits,
            sys.executable,
            *self.launcher,
            "serve",
            *serve_flags(self.pki.root, self.state_dir, config, port or self.port),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        offset = log.tell()
        self.process = subprocess.Popen(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

        def listening() -> int | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.log()}"
                )
            found = LISTENING.search(self.log_path.read_bytes()[offset:])
            return int(found.group(1)) if found else None

        self.port = wait_for(listening, timeout, "the server to listen")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def audit(self) -> list[dict[str, Any]]:
        """The records of ``<state_dir>/audit.log``, oldest first."""
        try:
            text = (self.state_dir / "audit.log").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines()]

    def url(self, path: str = "/RPC2") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def rpc(self, **kwargs: Any) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(
            self.url(), context=client_context(self.pki), **kwargs
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL by pid after a deadline; safe to call twice."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


PING_BODY = (
    b"<?xml version='1.0'?><methodCall><methodName>ping</methodName>"
    b"<params></params></methodCall>"
)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def curl_rpc(
    curl: str, server: ServerProcess, version: str, body: bytes
) -> tuple[bytes, str]:
    """POST ``body`` to /RPC2 with curl (``--http2`` or ``--http1.1``) and
    the engine's certificate: the answer, and the HTTP version curl used."""
    pki = server.pki
    result = subprocess.run(
        [curl, "-sS", version, "--cacert", str(pki.ca_cert)]
        + ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        + ["-H", "Content-Type: text/xml", "--data-binary", "@-"]
        + ["-w", "\n%{http_version}", server.url("/RPC2")],
        input=body,
        capture_output=True,
        timeout=30,
        check=True,
    )
    answer, _, used = result.stdout.rpartition(b"\n")
    return answer, used.decode()
