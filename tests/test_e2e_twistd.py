"""``twistd -n vdsmconsole ...`` runs the same server as ``vdsmconsole serve``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import LISTENING, client_context, serve_flags, wait_for
from vdsmconsole.pki import PkiPaths

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
FIND_PLUGIN = (
    "from twisted.application.service import IServiceMaker\n"
    "from twisted.plugin import getPlugins\n"
    "print(' '.join(p.tapname for p in getPlugins(IServiceMaker)))\n"
)


def twistd() -> list[str]:
    """The twistd of the interpreter running the tests."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def plugin_names(env: dict[str, str], cwd: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", FIND_PLUGIN],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


@pytest.fixture(scope="module")
def twistd_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which twistd finds the vdsmconsole plugin.

    Installed into site-packages, twisted/plugins/vdsmconsole_plugin.py is on
    Twisted's plugin path already.  Run from a source tree it is not, until
    the repository root is on PYTHONPATH (twisted.plugins then looks in the
    repository's twisted/plugins too).
    """
    neutral = tmp_path_factory.mktemp("neutral")
    env = dict(os.environ)
    if "vdsmconsole" not in plugin_names(env, neutral):
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
        assert "vdsmconsole" in plugin_names(env, neutral)
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started by a test; each is killed by pid when the test ends."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_twistd_serves_and_stops_on_sigterm(tmp_path, pki, twistd_env, processes):
    """twistd -n vdsmconsole: the log names the port, ping works, SIGTERM stops it."""
    config = tmp_path / "vdsmconsole.conf"
    config.write_text("[console]\nring_bytes = 65536\n")
    log_path = tmp_path / "twistd.log"
    args = [
        *twistd(),
        "-n",
        "--pidfile=",
        "vdsmconsole",
        *serve_flags(pki.root, tmp_path / "state", config),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=twistd_env,
        )
    processes.append(process)

    def listening() -> int | None:
        if process.poll() is not None:
            raise AssertionError(
                f"twistd exited with {process.returncode}:\n{log_path.read_text()}"
            )
        found = LISTENING.search(log_path.read_bytes())
        return int(found.group(1)) if found else None

    port = wait_for(listening, 20, "twistd to listen")
    assert f"vdsmconsole listening on 127.0.0.1:{port}" in log_path.read_text()

    proxy = xmlrpc.client.ServerProxy(
        f"https://127.0.0.1:{port}/RPC2", context=client_context(pki)
    )
    assert proxy.ping() == {"status": {"code": 0, "message": "Done"}}
    info = proxy.getVdsCapabilities()["info"]
    assert info["port"] == port
    assert info["ringBytes"] == 65536  # the --config file was read
    assert (tmp_path / "state").is_dir()

    process.send_signal(signal.SIGTERM)
    # twistd shuts down cleanly, then re-raises the signal that stopped it
    # (twisted.scripts.twistd.run -> app._exitWithSignal), so its status is
    # "killed by SIGTERM", which systemd counts as a clean stop.  That the
    # stop was graceful shows in the log: the service's and twistd's last words.
    assert process.wait(10) == -signal.SIGTERM
    log_text = log_path.read_text()
    assert "vdsmconsole stopped" in log_text
    assert "Server Shut Down." in log_text
    assert "Traceback" not in log_text


@pytest.mark.parametrize("case", ["bad-config", "missing-cert"])
def test_twistd_bad_setup_is_one_line_exit_2(tmp_path, pki, twistd_env, case):
    """A bad configuration or a missing certificate: one line on stderr, exit 2."""
    root = tmp_path / "pki"
    shutil.copytree(pki.root, root)
    config = tmp_path / "vdsmconsole.conf"
    config.write_text("")
    needle = ""
    if case == "bad-config":
        config.write_text("[console]\nring_bytes = -1\n")
        needle = "console.ring_bytes"
    else:
        PkiPaths(root).server_cert.unlink()
        needle = str(PkiPaths(root).server_cert)
    result = subprocess.run(
        [
            *twistd(),
            "-n",
            "--pidfile=",
            "vdsmconsole",
            *serve_flags(root, tmp_path / "state", config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=twistd_env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
