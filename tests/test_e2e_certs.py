"""Client certificates refused, CRLs, SIGHUP reloads and expiry, on the real port.

Each test that changes certificates works on its own copy of the session PKI;
every server is stopped by pid when its test (or module) ends, even on failure.
"""

from __future__ import annotations

import datetime
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.serverproc import (
    LISTENING,
    ServerProcess,
    client_context,
    serve_flags,
    wait_for,
)
from tests.streamhelp import DEMO_CONFIG, create_demo, type_into
from vdsmconsole import pki as pkimod
from vdsmconsole.pki import Issued, PkiPaths

pytestmark = pytest.mark.e2e

DAY = datetime.timedelta(days=1)
PING = (
    b"<?xml version='1.0'?><methodCall><methodName>ping</methodName>"
    b"<params></params></methodCall>"
)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def replace_file(path: Path, data: bytes) -> None:
    """Write a file the way an operator's tooling should: whole, then rename."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class OwnPki:
    """A private copy of the session PKI, with the CA key to issue more."""

    paths: PkiPaths
    ca: Issued

    @property
    def crl(self) -> Path:
        return self.paths.root / "certs/crl.pem"

    def client(self, name: str, **kwargs) -> tuple[Path, Path, Issued]:
        issued = pkimod.issue(self.ca, name, **{"client": True, **kwargs})
        return self.write(name, issued)

    def write(self, name: str, issued: Issued) -> tuple[Path, Path, Issued]:
        cert, key = self.paths.root / f"{name}.pem", self.paths.root / f"{name}.key"
        pkimod.write_public(cert, issued.cert_pem())
        pkimod.write_private(key, issued.key_pem())
        return cert, key, issued

    def write_crl(self, revoked: list[Issued]) -> Path:
        crl = pkimod.make_crl(self.ca, [r.cert for r in revoked])
        replace_file(self.crl, pkimod.crl_pem(crl))
        return self.crl

    def renew_server(self, **kwargs) -> Issued:
        renewed = pkimod.issue(
            self.ca, "localhost", sans=["localhost", "127.0.0.1"], server=True, **kwargs
        )
        replace_file(self.paths.server_key, renewed.key_pem())
        replace_file(self.paths.server_cert, renewed.cert_pem())
        return renewed


def copy_pki(source: PkiPaths, root: Path) -> OwnPki:
    shutil.copytree(source.root, root)
    paths = PkiPaths(root)
    return OwnPki(paths, pkimod.load_issued(paths.ca_cert, paths.ca_key))


@pytest.fixture
def own_pki(tmp_path: Path, pki: PkiPaths) -> OwnPki:
    return copy_pki(pki, tmp_path / "pki")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers on a given PKI; each is stopped by pid when the test ends."""
    started: list[ServerProcess] = []

    def start_server(paths: PkiPaths, config_text: str = "") -> ServerProcess:
        server = ServerProcess(paths, tmp_path / f"server{len(started)}", config_text)
        started.append(server)
        return server.start()

    yield start_server
    for server in started:
        server.stop()


def crl_config(path: Path, extra: str = "") -> str:
    return f'[tls]\ncrl = "{path}"\n{extra}'


# -- talking to the server as a given client --------------------------------------


def context_for(pki: PkiPaths, cert: Path, key: Path) -> ssl.SSLContext:
    return client_context(pki, cert, key)


def exchange(server: ServerProcess, context: ssl.SSLContext) -> tuple[int, bytes]:
    """Send a ping over a fresh connection: (client port, reply, b"" if refused)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    port = sock.getsockname()[1]
    head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PING)
    reply = b""
    try:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            # With TLS 1.3 the server judges the client certificate after the
            # client thinks the handshake is done: a refusal shows on read.
            tls.sendall(head + PING)
            while chunk := tls.recv(65536):
                reply += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    return port, reply


def served(reply: bytes) -> bool:
    return reply.startswith(b"HTTP/1.1 200") and b"<name>code</name>" in reply


def handshake_lines(server: ServerProcess, port: int) -> list[str]:
    needle = f"TLS handshake with 127.0.0.1:{port} failed"
    return [line for line in server.log().splitlines() if needle in line]


def log_lines(server: ServerProcess, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if needle in line]


def assert_refused_once(server: ServerProcess, port: int, reason: str) -> str:
    """The refusal of the client at ``port``: one log line naming the reason."""
    wait_for(lambda: handshake_lines(server, port), 10, "the refusal's log line")
    # The server still serves good clients; by then a second line would show.
    assert server.rpc().ping()["status"]["code"] == 0
    lines = handshake_lines(server, port)
    assert len(lines) == 1, lines
    assert reason in lines[0], lines[0]
    assert "Traceback" not in server.log()
    return lines[0]


def lines_at_least(server: ServerProcess, needle: str, n: int) -> list[str] | None:
    lines = log_lines(server, needle)
    return lines if len(lines) >= n else None


def peer_der(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate a new connection to ``port`` is shown, DER."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(sock, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(issued: Issued) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return issued.cert.public_bytes(Encoding.DER)


# -- refusals, one server for all of them -----------------------------------------


@dataclass
class Refusing:
    server: ServerProcess
    clients: dict[str, ssl.SSLContext]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory, pki: PkiPaths) -> Iterator:
    """A server with a CRL, and client certificates it must refuse (and one good)."""
    own = copy_pki(pki, tmp_path_factory.mktemp("refusing") / "pki")
    now = utcnow()
    made = {
        "expired": own.client(
            "expired", not_before=now - 30 * DAY, not_after=now - DAY
        ),
        "not_yet_valid": own.client(
            "not_yet_valid", not_before=now + DAY, not_after=now + 30 * DAY
        ),
        "other_ca": own.write(
            "other_ca",
            pkimod.issue(pkimod.make_ca("some other CA"), "other_ca", client=True),
        ),
        "revoked": own.client("revoked"),
        "server_as_client": own.client("server_as_client", client=False, server=True),
        "good": own.client("good"),
    }
    own.write_crl([made["revoked"][2]])
    server = ServerProcess(
        own.paths, tmp_path_factory.mktemp("refusing-server"), crl_config(own.crl)
    )
    try:
        server.start()
        clients = {
            name: context_for(own.paths, cert, key)
            for name, (cert, key, _) in made.items()
        }
        yield Refusing(server, clients)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "case,reason",
    [
        ("expired", "client certificate 'expired' expired at "),
        ("not_yet_valid", "client certificate 'not_yet_valid' is not valid before "),
        (
            "other_ca",
            "client certificate 'other_ca' is not signed by the configured CA "
            "(issuer 'some other CA')",
        ),
        ("revoked", "client certificate 'revoked' is revoked (listed in the CRL)"),
        (
            "server_as_client",
            "client certificate 'server_as_client' is not for client use "
            "(its extendedKeyUsage lacks clientAuth)",
        ),
    ],
)
def test_refused_client_certificate_one_line(refusing, case, reason):
    """Each bad client certificate is refused with one line naming the peer and why."""
    port, reply = exchange(refusing.server, refusing.clients[case])
    assert reply == b"", f"server answered a refused client: {reply!r}"
    assert_refused_once(refusing.server, port, reason)


def test_good_client_served_with_crl(refusing):
    """A valid client that the CRL does not list is served next to the refused."""
    _port, reply = exchange(refusing.server, refusing.clients["good"])
    assert served(reply), reply


def test_capabilities_report_certificate_days_left(refusing):
    """getVdsCapabilities: days left, notAfter, CRL and usage; no expiry warning."""
    tls = refusing.server.rpc().getVdsCapabilities()["info"]["tls"]
    cert = x509.load_pem_x509_certificate(refusing.server.pki.server_cert.read_bytes())
    left = cert.not_valid_after_utc - utcnow()
    assert tls["certificateDaysLeft"] in (left.days - 1, left.days)
    assert tls["certificateNotAfter"] == cert.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert tls["crlChecked"] is True
    assert tls["clientUsageRequired"] is True
    assert not log_lines(refusing.server, "expires in")


def test_server_certificate_as_client_allowed_when_configured(own_pki, start):
    """require_client_usage = false lets a serverAuth-only certificate in."""
    cert, key, _ = own_pki.client("peerhost", client=False, server=True)
    server = start(own_pki.paths, "[tls]\nrequire_client_usage = false\n")
    _port, reply = exchange(server, context_for(own_pki.paths, cert, key))
    assert served(reply), reply
    tls = server.rpc().getVdsCapabilities()["info"]["tls"]
    assert tls["clientUsageRequired"] is False
    assert tls["crlChecked"] is False


# -- CRL changes -----------------------------------------------------------------


def test_crl_replaced_is_noticed_without_restart(own_pki, start):
    """A CRL file replaced under a running server revokes a client: no restart."""
    cert, key, victim = own_pki.client("victim")
    context = context_for(own_pki.paths, cert, key)
    server = start(own_pki.paths, crl_config(own_pki.write_crl([])))
    assert served(exchange(server, context)[1])

    own_pki.write_crl([victim])

    # The server looks at the file at most once a second, as clients arrive.
    def refused() -> int | None:
        port, reply = exchange(server, context)
        return None if reply else port

    port = wait_for(refused, 10, "the victim to be refused")
    assert_refused_once(server, port, "client certificate 'victim' is revoked")
    reloads = log_lines(server, "TLS reloaded (CRL file changed)")
    assert len(reloads) == 1, reloads
    assert "CRL with 1 revoked" in reloads[0]


def test_crl_replaced_then_sighup(own_pki, start):
    """SIGHUP reloads a replaced CRL at once: the next connection is refused."""
    cert, key, victim = own_pki.client("victim")
    context = context_for(own_pki.paths, cert, key)
    server = start(own_pki.paths, crl_config(own_pki.write_crl([])))
    assert served(exchange(server, context)[1])

    own_pki.write_crl([victim])
    server.signal(signal.SIGHUP)
    wait_for(lambda: log_lines(server, "TLS reloaded (SIGHUP)"), 10, "the reload")

    port, reply = exchange(server, context)
    assert reply == b""
    assert_refused_once(server, port, "client certificate 'victim' is revoked")
    assert len(log_lines(server, "TLS reloaded")) == 1


# -- SIGHUP with a renewed server certificate ------------------------------------------


def read_until(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    """Read a chunked streaming body until ``marker`` shows (socket timeout: 10 s)."""
    data = b""
    while marker not in data:
        chunk = response.read1(65536)
        assert chunk, f"the stream ended before {marker!r}: {data[-200:]!r}"
        data += chunk
    return data


def test_sighup_renews_certificate_and_streams_keep_flowing(own_pki, start):
    """SIGHUP: new connections see the renewed certificate, a follower keeps going."""
    server = start(own_pki.paths, DEMO_CONFIG)
    create_demo(server, "vm1")
    follower = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(own_pki.paths), timeout=10
    )
    follower.request("GET", "/consoleStream/vm1")
    response = follower.getresponse()
    assert response.status == 200
    assert follower.sock is not None
    old = follower.sock.getpeercert(binary_form=True)
    type_into(server, "vm1", "echo before-reload\r")
    read_until(response, b"before-reload\r\n")

    renewed = own_pki.renew_server(not_after=utcnow() + 400 * DAY)
    server.signal(signal.SIGHUP)
    serial = f"serial {renewed.cert.serial_number:x} "
    line = wait_for(lambda: log_lines(server, "TLS reloaded (SIGHUP)"), 10)[0]
    assert serial in line, line

    assert peer_der(server.port, client_context(own_pki.paths)) == der(renewed) != old
    tls = server.rpc().getVdsCapabilities()["info"]["tls"]
    assert tls["certificateDaysLeft"] == 399
    # The stream that started under the old certificate is still live.
    type_into(server, "vm1", "echo after-reload\r")
    read_until(response, b"after-reload\r\n")
    assert follower.sock.getpeercert(binary_form=True) == old
    follower.close()
    assert "Traceback" not in server.log()


# -- a reload that fails keeps the old context ------------------------------------


def test_bad_files_at_reload_keep_the_old_context(own_pki, start):
    """Each unusable file at SIGHUP: one log line, the old certificate keeps serving."""
    paths = own_pki.paths
    server = start(paths, crl_config(own_pki.write_crl([])))
    engine = client_context(paths)  # made now: one breakage removes the CA file
    before = peer_der(server.port, engine)
    other = pkimod.make_ca("some other CA")
    breakages = {
        "garbage certificate": (paths.server_cert, b"not a certificate\n"),
        "key of another certificate": (
            paths.server_key,
            pkimod.issue(own_pki.ca, "other").key_pem(),
        ),
        "missing CA": (paths.ca_cert, None),
        "CRL of another CA": (own_pki.crl, pkimod.crl_pem(pkimod.make_crl(other))),
        "garbage CRL": (own_pki.crl, b"-----BEGIN X509 CRL-----\nxx\n"),
    }
    for count, (what, (path, data)) in enumerate(breakages.items(), start=1):
        saved = path.read_bytes()
        if data is None:
            path.unlink()
        else:
            replace_file(path, data)
        server.signal(signal.SIGHUP)
        failed = wait_for(
            lambda n=count: lines_at_least(server, "TLS reload (SIGHUP) failed", n),
            10,
            f"the failure line for {what}",
        )
        assert len(failed) == count, (what, failed)
        assert str(path) in failed[-1], (what, failed[-1])
        assert peer_der(server.port, engine) == before, what
        assert served(exchange(server, engine)[1]), what
        replace_file(path, saved)
    assert not log_lines(server, "TLS reloaded")
    assert "Traceback" not in server.log()
    # Once the files are good again, a reload works.
    server.signal(signal.SIGHUP)
    wait_for(lambda: log_lines(server, "TLS reloaded (SIGHUP)"), 10, "a good reload")


# -- expiry --------------------------------------------------------------------------


def test_expiry_warning_and_days_left(own_pki, start):
    """A server certificate 5 days from expiry: a warning at start, 5 days reported."""
    renewed = own_pki.renew_server(
        not_after=utcnow() + 5 * DAY + datetime.timedelta(hours=1)
    )
    server = start(own_pki.paths)
    line = wait_for(lambda: log_lines(server, "expires in"), 10, "the warning")[0]
    assert "server certificate" in line and "expires in 5 days" in line, line
    assert str(own_pki.paths.server_cert) in line
    tls = server.rpc().getVdsCapabilities()["info"]["tls"]
    assert tls["certificateDaysLeft"] == 5
    assert tls["certificateNotAfter"] == renewed.cert.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    # A renewal with SIGHUP: the next reload no longer warns.
    own_pki.renew_server()
    server.signal(signal.SIGHUP)
    wait_for(lambda: log_lines(server, "TLS reloaded (SIGHUP)"), 10, "the reload")
    assert len(log_lines(server, "expires in")) == 1
    assert server.rpc().getVdsCapabilities()["info"]["tls"]["certificateDaysLeft"] > 800


# -- the twistd plugin ---------------------------------------------------------------


def twistd_argv(*flags: str) -> tuple[list[str], dict[str, str]]:
    """``twistd -n vdsmconsole FLAGS`` from this source tree, and its environment."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    # From a source tree, twisted.plugins finds the plugin via the repository.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo), env.get("PYTHONPATH")) if p
    )
    args = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "vdsmconsole",
        *flags,
    ]
    return args, env


def test_twistd_plugin_port_taken_is_one_line_and_exit_2(own_pki, tmp_path):
    """Under twistd, a port that cannot listen is one line and exit 2, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = serve_flags(own_pki.paths.root, tmp_path / "state")
        args, env = twistd_argv(*flags, "--port", str(port))
        result = subprocess.run(
            args,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert f"cannot listen on 127.0.0.1:{port}".encode() in out
    assert b"Traceback" not in out


def test_twistd_plugin_reloads_on_sighup(own_pki, tmp_path):
    """Under twistd, SIGHUP reloads too: new connections see the renewed certificate."""
    log_path = tmp_path / "twistd.log"
    args, env = twistd_argv(*serve_flags(own_pki.paths.root, tmp_path / "state"))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env,
        )
    try:

        def listening() -> int | None:
            assert process.poll() is None, log_path.read_text()
            found = LISTENING.search(log_path.read_bytes())
            return int(found.group(1)) if found else None

        port = wait_for(listening, 20, "twistd to listen")
        renewed = own_pki.renew_server()
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: b"TLS reloaded (SIGHUP)" in log_path.read_bytes(), 10)
        assert peer_der(port, client_context(own_pki.paths)) == der(renewed)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait(10)
