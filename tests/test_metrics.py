"""The metrics without sockets: the collector reads consoles, refusals,
tokens, tunnels and RPC answers at scrape time; totals stay monotonic when a
console goes; label sets stay bounded whatever the input."""

from __future__ import annotations

import xmlrpc.client
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from OpenSSL import SSL
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from vdsmconsole import __version__
from vdsmconsole.core.console import Console
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import Ring
from vdsmconsole.server.config import Config, ConfigError, load_config, parse_config
from vdsmconsole.server.metrics.collector import TLS_REFUSALS
from vdsmconsole.server.metrics.events import MAX_VALUES, OTHER, EventCounts
from vdsmconsole.server.metrics.rpccalls import answer_code
from vdsmconsole.server.rpc import ConsoleRPC
from vdsmconsole.server.service import build_context, build_site
from vdsmconsole.server.tls.connection import failure_kind
from vdsmconsole.server.tls.verify import refusal_kind
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.testing import UNIX_SPEC, FakeSource


class Consoles:
    """A console factory on FakeSources the test drives."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sources: dict[str, FakeSource] = {}

    def __call__(self, vm_id: str, spec: ConsoleSpec, **_: object) -> Console:
        source = self.sources[vm_id] = FakeSource(self.clock)
        return Console(vm_id, spec, source, Ring(4096), None, self.clock)


def samples(registry) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


@pytest.fixture
def server(tmp_path: Path):
    """A context and site as the service builds them, consoles on fakes."""
    clock = Clock()
    config = Config(state_dir=tmp_path / "state", metrics_console_series=2)
    context = build_context(config, clock)
    consoles = Consoles(clock)
    context.registry = Registry(None, consoles)
    site = build_site(context)
    # The port's factory as connlimits and tls/connection.py count into it.
    factory = SimpleNamespace(
        limits=SimpleNamespace(
            connections=3, closing=1, refusals=SimpleNamespace(counts=Counter())
        ),
        handshakeFailures=Counter(),
    )
    context.metrics.watch_port(factory)
    return SimpleNamespace(
        context=context, site=site, consoles=consoles, factory=factory, clock=clock
    )


def test_console_counts_per_console_and_in_total(server):
    """Bytes out of and into each console, lost bytes, followers and writers,
    per vm_id and summed; consoles by state."""
    registry = server.context.registry
    vm1 = registry.create("vm1", UNIX_SPEC)
    registry.create("vm2", UNIX_SPEC)
    server.consoles.sources["vm1"].emit(b"hello")
    server.consoles.sources["vm2"].emit(b"abc")
    vm1.write(b"ls\r")
    vm1.count_lost(7)
    server.consoles.sources["vm2"].set_state(FakeSource().state, "gone")
    found = samples(server.context.metrics.registry)
    assert value(found, "vdsmconsole_console_output_bytes_total", vm_id="vm1") == 5
    assert value(found, "vdsmconsole_console_input_bytes_total", vm_id="vm1") == 3
    assert value(found, "vdsmconsole_console_lost_bytes_total", vm_id="vm1") == 7
    assert value(found, "vdsmconsole_output_bytes_total") == 8
    assert value(found, "vdsmconsole_consoles", state="connected") == 1
    assert value(found, "vdsmconsole_consoles", state="down") == 1
    assert value(found, "vdsmconsole_consoles", state="reconnecting") == 0
    assert value(found, "vdsmconsole_vms") == 2
    assert value(found, "vdsmconsole_console_followers", vm_id="vm1") == 0
    assert value(found, "vdsmconsole_connections") == 2
    assert value(found, "vdsmconsole_build_info", version=__version__) == 1


def test_totals_survive_a_destroyed_console(server):
    """A destroyed console's series goes, its bytes stay in the totals."""
    registry = server.context.registry
    registry.create("vm1", UNIX_SPEC)
    server.consoles.sources["vm1"].emit(b"x" * 100)
    before = samples(server.context.metrics.registry)
    registry.destroy("vm1")
    after = samples(server.context.metrics.registry)
    assert ("vdsmconsole_console_output_bytes_total", (("vm_id", "vm1"),)) in before
    assert ("vdsmconsole_console_output_bytes_total", (("vm_id", "vm1"),)) not in after
    assert value(after, "vdsmconsole_output_bytes_total") == 100
    registry.create("vm1", UNIX_SPEC)
    server.consoles.sources["vm1"].emit(b"y" * 10)
    again = samples(server.context.metrics.registry)
    assert value(again, "vdsmconsole_output_bytes_total") == 110


def test_per_console_series_are_capped(server):
    """Beyond console_series consoles (2 here), the first registered keep
    their series, the others are in the totals and counted as omitted."""
    registry = server.context.registry
    for vm_id in ("vm-c", "vm-a", "vm-b"):
        registry.create(vm_id, UNIX_SPEC)
        server.consoles.sources[vm_id].emit(b"1234")
    found = samples(server.context.metrics.registry)
    labelled = {
        dict(labels)["vm_id"]
        for name, labels in found
        if name == "vdsmconsole_console_output_bytes_total"
    }
    assert labelled == {"vm-c", "vm-a"}
    assert value(found, "vdsmconsole_console_series_omitted") == 1
    assert value(found, "vdsmconsole_output_bytes_total") == 12


def test_refusals_by_reason_all_present(server):
    """TLS and connection-limit refusals by reason, every reason shown (0
    until it happens) so that alerts see a series."""
    server.factory.handshakeFailures["unknown_ca"] += 2
    server.factory.limits.refusals.counts["reserve-full"] += 1
    found = samples(server.context.metrics.registry)
    assert value(found, "vdsmconsole_tls_refusals_total", reason="unknown_ca") == 2
    assert value(found, "vdsmconsole_tls_refusals_total", reason="no_certificate") == 0
    refused = "vdsmconsole_connections_refused_total"
    assert value(found, refused, reason="descriptor_reserve_full") == 1
    assert value(found, refused, reason="address_limit") == 0


class OpenTunnel:
    """What the collector reads of an open tunnel (tunnels/tunnel.py)."""

    grant = SimpleNamespace(protocol="vnc")

    def __init__(self) -> None:
        self.link = SimpleNamespace(sent=10, received=4)


def test_tokens_and_tunnels_from_the_audit_trail(server):
    """Mints, uses and refusals counted from the audit records; a tunnel's
    bytes count while it is open and stay counted after it closed."""
    audit = server.context.audit
    audit.record("tokenMint", "engine", protocol="serial", tokenId="t")
    audit.record("tokenUse", "engine", via="connectInfo", protocol="serial")
    audit.record("tokenRefused", "engine", via="tunnel", reason="expired")
    tunnel = OpenTunnel()
    audit.record("tunnel-open", "engine", protocol="vnc")
    server.site.tunnels.add(tunnel)
    found = samples(server.context.metrics.registry)
    assert value(found, "vdsmconsole_tokens_minted_total", protocol="serial") == 1
    assert value(found, "vdsmconsole_tokens_used_total", via="connectInfo") == 1
    assert value(found, "vdsmconsole_tokens_refused_total", via="tunnel") == 1
    assert value(found, "vdsmconsole_tunnels", protocol="vnc") == 1
    moved = "vdsmconsole_tunnel_bytes_total"
    assert value(found, moved, protocol="vnc", direction="to_viewer") == 10
    tunnel.link.sent = 25
    server.site.tunnels.discard(tunnel)
    audit.record(
        "tunnel-close", "engine", protocol="vnc", bytesToViewer=25, bytesFromViewer=4
    )
    found = samples(server.context.metrics.registry)
    assert value(found, "vdsmconsole_tunnels", protocol="vnc") == 0
    assert value(found, "vdsmconsole_tunnels_opened_total", protocol="vnc") == 1
    assert value(found, moved, protocol="vnc", direction="to_viewer") == 25
    assert value(found, moved, protocol="vnc", direction="from_viewer") == 4
    assert value(found, "vdsmconsole_audit_events_total", event="tokenMint") == 1


def test_sessions_from_attach_and_detach(server):
    """Streams and websockets by mode: opened, open now, and the bytes of
    those that ended, from the audit log's attach and detach."""
    audit = server.context.audit
    audit.record("attach", "engine", vmId="vm1", mode="follow", offset=0)
    audit.record("attach", "engine", vmId="vm1", mode="websocket", offset=0)
    audit.record(
        "detach", "engine", vmId="vm1", mode="websocket", bytesSent=100, bytesWritten=7
    )
    found = samples(server.context.metrics.registry)
    assert value(found, "vdsmconsole_sessions", mode="follow") == 1
    assert value(found, "vdsmconsole_sessions", mode="websocket") == 0
    assert value(found, "vdsmconsole_sessions_opened_total", mode="websocket") == 1
    moved = "vdsmconsole_session_bytes_total"
    assert value(found, moved, mode="websocket", direction="to_client") == 100
    assert value(found, moved, mode="websocket", direction="to_guest") == 7


def test_label_values_are_bounded():
    """Label values come from a fixed set or a capped set of words: odd or
    endless values become ``other``."""
    counts = EventCounts()
    counts("tokenMint", {"protocol": "telnet"})
    counts("tokenUse", {"via": "a b\nc"})
    for n in range(MAX_VALUES + 10):
        counts("tokenRefused", {"via": f"via{n}"})
    for n in range(MAX_VALUES + 10):
        counts(f"event{n}", {})
    assert counts.tokens_minted == {OTHER: 1}
    assert counts.tokens_used == {OTHER: 1}
    assert len(counts.tokens_refused) == MAX_VALUES + 1
    assert counts.tokens_refused[OTHER] == 10
    assert len(counts.events) <= MAX_VALUES + 1


@pytest.mark.parametrize(
    ("result", "code"),
    [
        ({"status": {"code": 0, "message": "Done"}}, "0"),
        ({"status": {"code": 1, "message": "noVM"}}, "1"),
        (xmlrpc.client.Fault(8001, "no such method"), "fault"),
        ({"status": {"code": True}}, "fault"),
        ([[{"status": {"code": 1}}], {"faultCode": 8001}], "0"),  # multicall
    ],
)
def test_answer_code(result, code):
    """The code label: VDSM's status code, or ``fault``."""
    assert answer_code(result) == code


def test_rpc_calls_by_method_and_code_with_latency(server):
    """Each answer counts under its method and code, and its time from body
    to answer (on the reactor's clock) lands in the histogram; a method the
    server does not know is ``unknown``, never the name the client sent."""
    rpc = ConsoleRPC(server.context)
    stub = StubTreq(rpc)

    def call(method: str, *params: object) -> None:
        body = xmlrpc.client.dumps(params, method).encode()
        stub.post("https://localhost/RPC2", data=body)
        stub.flush()

    call("ping")
    call("getVmStats", "nosuchvm")
    call("made-up-method-name")
    found = {}
    for family in rpc.calls.collect():
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    calls = "vdsmconsole_rpc_calls_total"
    assert value(found, calls, method="ping", code="0") == 1
    assert value(found, calls, method="getVmStats", code="1") == 1
    assert value(found, calls, method="unknown", code="fault") == 1
    assert not any("made-up" in str(labels) for _, labels in found)
    count = "vdsmconsole_rpc_duration_seconds_count"
    assert value(found, count, method="ping") == 1
    bucket = "vdsmconsole_rpc_duration_seconds_bucket"
    assert value(found, bucket, method="ping", le="0.001") == 1


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[metrics]\nbind = '0.0.0.0'\n", "metrics.bind: must be a loopback"),
        ("[metrics]\nbind = 'localhost'\n", "metrics.bind: must be a loopback"),
        ("[metrics]\nport = 70000\n", "metrics.port: must be 0-65535"),
        ("[metrics]\nconsole_series = -1\n", "metrics.console_series"),
    ],
)
def test_metrics_config_checks(tmp_path, text, error):
    """The plain listener binds only to loopback; port and cap in range."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(path)


def test_metrics_listener_is_off_by_default():
    """No [metrics] port: no plain listener; ::1 is loopback too."""
    assert Config().metrics_port == 0
    config = parse_config({"metrics": {"bind": "::1", "port": 9722}})
    assert (config.metrics_bind, config.metrics_port) == ("::1", 9722)


@pytest.mark.parametrize(
    ("errnum", "kind"),
    [
        (SSL.X509VerificationCodes.ERR_CERT_HAS_EXPIRED, "certificate_expired"),
        (SSL.X509VerificationCodes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT, "unknown_ca"),
        (SSL.X509VerificationCodes.ERR_CERT_REVOKED, "certificate_revoked"),
        (SSL.X509VerificationCodes.ERR_INVALID_PURPOSE, "not_for_clients"),
        (SSL.X509VerificationCodes.ERR_CRL_HAS_EXPIRED, "crl_unusable"),
        (9999, "certificate_invalid"),
    ],
)
def test_refusal_kinds(errnum, kind):
    """OpenSSL's verdicts fall into a fixed set of reasons, all of which the
    collector shows."""
    assert refusal_kind(errnum) == kind
    assert kind in TLS_REFUSALS


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (
            SSL.Error([("SSL routines", "", "peer did not return a certificate")]),
            "no_certificate",
        ),
        (SSL.Error([("SSL routines", "", "unsupported protocol")]), "tls_error"),
        (ConnectionDone(), "closed"),
    ],
)
def test_failure_kinds(reason, kind):
    """A handshake that failed without a verdict: no certificate, another TLS
    error, or closed before the end."""
    assert failure_kind(None, Failure(reason)) == kind
    assert failure_kind("unknown_ca", Failure(reason)) == "unknown_ca"
    assert kind in TLS_REFUSALS
