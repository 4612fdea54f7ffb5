"""/metrics on the real server: promtool finds nothing to complain about in a
real scrape, the counters move as a client streams and types, a viewer may
scrape over HTTP/1.1 and HTTP/2, a certificate the CA did not sign may not
(and is counted), and the plain loopback listener serves the same."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.connecthelp import TunnelSocket
from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import (
    DEMO_CONFIG,
    create_demo,
    curl_base,
    type_into,
    wget_follow,
)
from tests.tools import require_tool
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e

ROLES = """
[authorization]
engine = "admin"
watcher = "viewer"
"""


@pytest.fixture
def metrics_server(server_factory, issue_client) -> Iterator[ServerProcess]:
    """A server with a demo guest, roles, and the plain listener on a port
    held free until the server listens."""
    held = free_port()
    config = f"{DEMO_CONFIG}{ROLES}\n[metrics]\nport = {held.port}\n"
    try:
        server = server_factory(config)
    finally:
        held.release()
    server.metrics_port = held.port  # type: ignore[attr-defined]
    create_demo(server, "vm1")
    yield server


def scrape(server: ServerProcess, cert: tuple[Path, Path] | None = None) -> str:
    """GET /metrics over TLS with ``cert`` (the engine's by default)."""
    context = client_context(server.pki, *(cert or ()))
    with urllib.request.urlopen(  # noqa: S310 - a https URL of the test server
        server.url("/metrics"), context=context, timeout=10
    ) as answer:
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text: str) -> None:
    """``promtool check metrics`` on a scrape: exit 0 and not one remark
    (it prints lint problems, such as a counter without _total, and exits 1)."""
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_scrape_passes_promtool_and_counters_move(metrics_server, readers, tmp_path):
    """A real scrape passes promtool; typing moves the console's input and
    output bytes and the consoleWrite count; a follower shows while it
    follows; a tunnel counts as open, then its bytes stay counted."""
    server = metrics_server
    before = scrape(server)
    promtool_check(before)
    assert value(before, "vdsmconsole_consoles", state="connected") == 1
    expiry = value(before, "vdsmconsole_tls_certificate_expiry_timestamp_seconds")
    assert expiry > time.time() + 300 * 86400  # pki init: years ahead
    follower = wget_follow(server, "/consoleStream/vm1", readers, tmp_path / "wget.out")
    followers = "vdsmconsole_console_followers"
    wait_for(lambda: value(scrape(server), followers, vm_id="vm1") == 1, 10, "wget")
    assert value(scrape(server), "vdsmconsole_sessions", mode="follow") == 1
    line = "echo metrics-marker\r"
    type_into(server, "vm1", line)
    wait_for(lambda: b"metrics-marker\r\n" in follower.data(), 10, "the echo")
    tunnel = TunnelSocket(server, "vm1", "serial")
    assert tunnel.status == 200, tunnel.head
    during = scrape(server)
    assert value(during, "vdsmconsole_tunnels", protocol="serial") == 1
    tunnel.close()
    wait_for(
        lambda: value(scrape(server), "vdsmconsole_tunnels", protocol="serial") == 0,
        10,
        "the tunnel to close",
    )
    after = scrape(server)
    promtool_check(after)
    for name, labels in (
        ("vdsmconsole_console_input_bytes_total", {"vm_id": "vm1"}),
        ("vdsmconsole_input_bytes_total", {}),
    ):
        grown = value(after, name, **labels) - value(before, name, **labels)
        assert grown == len(line), name
    output = "vdsmconsole_console_output_bytes_total"
    assert value(after, output, vm_id="vm1") >= value(before, output, vm_id="vm1") + 19
    calls = "vdsmconsole_rpc_calls_total"
    assert value(after, calls, method="consoleWrite", code="0") == 1
    assert (
        value(after, "vdsmconsole_rpc_duration_seconds_count", method="consoleWrite")
        == 1
    )
    assert value(after, "vdsmconsole_tunnels_opened_total", protocol="serial") == 1
    assert value(after, "vdsmconsole_writers") == 0


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_a_viewer_may_scrape(metrics_server, issue_client, version):
    """A viewer's certificate scrapes /metrics, over HTTP/2 and HTTP/1.1."""
    require_tool("curl", "curl")
    cert, key = issue_client("watcher", "watcher")
    base = curl_base(metrics_server)
    base[base.index("--cert") + 1] = str(cert)
    base[base.index("--key") + 1] = str(key)
    result = subprocess.run(
        [
            *base,
            version,
            "-w",
            "\n%{http_version} %{http_code}",
            metrics_server.url("/metrics"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == ("2 200" if version == "--http2" else "1.1 200"), result.stderr
    assert "vdsmconsole_build_info" in body


def test_no_role_no_metrics(metrics_server, issue_client):
    """A certificate of the CA that no role names is answered 403."""
    cert, key = issue_client("stranger", "stranger")
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(metrics_server, (cert, key))
    assert refused.value.code == 403


def test_a_certificate_from_another_ca_may_not_scrape(metrics_server, odd_certs):
    """A client certificate the CA did not sign fails the handshake, and the
    refusal is counted by reason."""
    server = metrics_server
    cert, key = odd_certs["other_ca"]
    reason = "vdsmconsole_tls_refusals_total"
    before = value(scrape(server), reason, reason="unknown_ca")
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        scrape(server, (cert, key))
    wait_for(
        lambda: value(scrape(server), reason, reason="unknown_ca") == before + 1,
        10,
        "the refusal to count",
    )


def test_plain_listener_on_loopback(metrics_server):
    """``[metrics] port`` serves /metrics over plain HTTP on 127.0.0.1 (and
    nothing else), promtool-clean; the TLS port is not reachable in plain."""
    port = metrics_server.metrics_port
    with urllib.request.urlopen(  # noqa: S310 - the test's loopback listener
        f"http://127.0.0.1:{port}/metrics", timeout=10
    ) as answer:
        text = answer.read().decode()
    promtool_check(text)
    assert value(text, "vdsmconsole_vms") == 1
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/RPC2", timeout=10)  # noqa: S310
    assert missing.value.code == 404
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.getpeername()[0] == "127.0.0.1"


OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.rst"


def literal_block_after(text: str, intro: str) -> str:
    """The indented ``::`` block that follows the paragraph ``intro`` starts."""
    rest = text[text.index(intro) :]
    rest = rest[rest.index("::\n") + 3 :]
    lines = []
    for line in rest.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def test_docs_list_exactly_the_metrics(metrics_server):
    """docs/operations.rst's table names every family a scrape has (but the
    process's own) and no other, with its type."""
    text = OPERATIONS.read_text(encoding="utf-8")
    documented = {}
    for name, kind in re.findall(r"^``(vdsmconsole_\w+)``\s+(\w+)", text, re.MULTILINE):
        base = name.removesuffix("_total") if kind == "counter" else name
        documented[base] = "histogram" if kind == "histo" else kind
    scraped = {
        family.name: family.type
        for family in text_string_to_metric_families(scrape(metrics_server))
        if family.name.startswith("vdsmconsole_")
    }
    assert scraped == documented


def test_alert_rules_in_the_docs_load(tmp_path):
    """``promtool check rules`` accepts the alert rules docs/operations.rst
    offers."""
    promtool = require_tool("promtool", "prometheus")
    rules = tmp_path / "vdsmconsole.rules.yml"
    rules.write_text(
        literal_block_after(OPERATIONS.read_text(encoding="utf-8"), "Alert rules")
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout
