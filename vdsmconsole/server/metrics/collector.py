"""The server's Prometheus collector: read at scrape time from the objects
that already count.

Consoles count their bytes, followers and writers (``core/console.py``);
the connection limits and the port's TLS factory count refusals
(``server/connlimits.py``, ``server/tls/connection.py``); the token store
knows its tokens, the site its open tunnels; the audit trail's listener
(``events.py``) counts what passes through it and ``RpcCalls`` the RPC
answers.  A scrape reads them all, so nothing is counted twice and nothing
is kept in step by hand.

Label sets are bounded: ``vm_id`` series exist for at most
``[metrics] console_series`` consoles (the first registered; the rest are in
the server-wide totals only, and ``vdsmconsole_console_series_omitted``
says how many), every other label takes values from a fixed set.  Totals
stay monotonic when a console is destroyed: its counts move to the
``retired`` sum the moment it leaves the registry (``Registry.removed``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from vdsmconsole import __version__
from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.server.metrics.events import PROTOCOLS, EventCounts
from vdsmconsole.server.metrics.rpccalls import RpcCalls
from vdsmconsole.spec import GRAPHICS_TYPES

__all__ = ["CONNECTION_REFUSALS", "TLS_REFUSALS", "ServerCollector"]

# The reason label of vdsmconsole_tls_refusals_total (tls/verify.py's kinds,
# tls/connection.py's failure_kind): all of them, at 0 until one happens.
TLS_REFUSALS = (
    "unknown_ca",
    "certificate_expired",
    "certificate_not_yet_valid",
    "certificate_revoked",
    "not_for_clients",
    "crl_unusable",
    "certificate_invalid",
    "no_certificate",
    "tls_error",
    "closed",
)
# connlimits' refusal kinds -> the reason label of
# vdsmconsole_connections_refused_total.
CONNECTION_REFUSALS = {
    "address": "address_limit",
    "identity": "identity_limit",
    "silent": "no_request",
    "reserve": "descriptor_reserve",
    "reserve-full": "descriptor_reserve_full",
}
# (metric suffix, Console attribute, help)
_CONSOLE_BYTES = (
    ("output", "bytes_in", "Bytes read from the guest's serial console."),
    ("input", "bytes_out", "Bytes of input written to the guest."),
    ("lost", "lost_to_slow_readers", "Bytes skipped by followers too slow."),
)


class ServerCollector(Collector):
    """Everything ``/metrics`` shows but the process's own facts."""

    def __init__(
        self,
        context: Any,
        site: Any,
        rpc_calls: RpcCalls,
        events: EventCounts,
        console_series: int,
    ) -> None:
        self.context = context
        self.site = site
        self.rpc_calls = rpc_calls
        self.events = events
        self.console_series = console_series
        self.port_factory: Any = None  # the port's LimitedTLSFactory
        self.retired: Counter[str] = Counter()  # counts of destroyed consoles
        context.registry.removed.append(self.retire)

    def retire(self, console: Console) -> None:
        """A destroyed console leaves: its counts stay in the totals."""
        for name, attribute, _help in _CONSOLE_BYTES:
            self.retired[name] += getattr(console, attribute)

    def describe(self) -> Iterable[Metric]:
        return ()  # no collect() at registration: the registry is not loaded

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "vdsmconsole_build_info", "The server's version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield from self._consoles()
        yield from self._graphics()
        yield from self._connections()
        yield from self._tokens()
        yield from self._tunnels()
        yield from self._sessions()
        yield from self.rpc_calls.collect()
        events = CounterMetricFamily(
            "vdsmconsole_audit_events",
            "Audit log records written, by event.",
            labels=["event"],
        )
        for event, count in sorted(self.events.events.items()):
            events.add_metric([event], count)
        yield events

    def _consoles(self) -> Iterator[Metric]:
        registry = self.context.registry
        consoles = registry.consoles()
        vms = GaugeMetricFamily("vdsmconsole_vms", "VMs registered.")
        vms.add_metric([], len(registry))
        yield vms
        states = GaugeMetricFamily(
            "vdsmconsole_consoles", "Serial consoles by state.", labels=["state"]
        )
        by_state = Counter(str(console.state) for console in consoles)
        for state in SourceState:
            states.add_metric([state.value], by_state[state.value])
        yield states
        listed = consoles[: self.console_series]
        omitted = GaugeMetricFamily(
            "vdsmconsole_console_series_omitted",
            "Consoles beyond [metrics] console_series: in the totals only.",
        )
        omitted.add_metric([], len(consoles) - len(listed))
        yield omitted
        for name, attribute, text in _CONSOLE_BYTES:
            per = CounterMetricFamily(
                f"vdsmconsole_console_{name}_bytes", text, labels=["vm_id"]
            )
            for console in listed:
                per.add_metric([console.vm_id], getattr(console, attribute))
            yield per
            total = CounterMetricFamily(
                f"vdsmconsole_{name}_bytes",
                f"{text[:-1]}, all consoles (destroyed ones too).",
            )
            live = sum(getattr(console, attribute) for console in consoles)
            total.add_metric([], live + self.retired[name])
            yield total
        for name, attribute, text in (
            ("followers", "readers", "Clients following the console's output."),
            ("writers", "writers", "Clients sending input to the console."),
        ):
            now = GaugeMetricFamily(
                f"vdsmconsole_console_{name}", text, labels=["vm_id"]
            )
            for console in listed:
                now.add_metric([console.vm_id], getattr(console, attribute))
            yield now
            all_now = GaugeMetricFamily(f"vdsmconsole_{name}", f"{text} All consoles.")
            all_now.add_metric([], sum(getattr(c, attribute) for c in consoles))
            yield all_now

    def _graphics(self) -> Iterator[Metric]:
        registry, probe = self.context.registry, self.context.graphics_probe
        endpoints = GaugeMetricFamily(
            "vdsmconsole_graphics_endpoints",
            "Graphics endpoints registered, by type.",
            labels=["type"],
        )
        answering = GaugeMetricFamily(
            "vdsmconsole_graphics_endpoints_answering",
            "Graphics endpoints that answered their last probe, by type.",
            labels=["type"],
        )
        count: Counter[str] = Counter()
        answers: Counter[str] = Counter()
        for vm_id in registry.ids():
            for endpoint in registry.graphics(vm_id):
                count[endpoint.type] += 1
                if probe is not None and probe.answers(vm_id, endpoint):
                    answers[endpoint.type] += 1
        for kind in GRAPHICS_TYPES:
            endpoints.add_metric([kind], count[kind])
            answering.add_metric([kind], answers[kind])
        yield endpoints
        yield answering

    def _connections(self) -> Iterator[Metric]:
        tls = self.context.tls
        if tls is not None:
            expiry = GaugeMetricFamily(
                "vdsmconsole_tls_certificate_expiry_timestamp_seconds",
                "When the server certificate in use expires (Unix time).",
            )
            expiry.add_metric([], tls.current.not_after.timestamp())
            yield expiry
        factory = self.port_factory
        if factory is None:
            return
        limits = factory.limits
        open_now = GaugeMetricFamily(
            "vdsmconsole_connections", "Connections open on the TLS port."
        )
        open_now.add_metric([], max(limits.connections - limits.closing, 0))
        yield open_now
        tls = CounterMetricFamily(
            "vdsmconsole_tls_refusals",
            "TLS handshakes that failed on the port, by reason.",
            labels=["reason"],
        )
        for reason in TLS_REFUSALS:
            tls.add_metric([reason], factory.handshakeFailures[reason])
        yield tls
        refused = CounterMetricFamily(
            "vdsmconsole_connections_refused",
            "Connections refused or closed by the connection limits, by reason.",
            labels=["reason"],
        )
        for kind, reason in CONNECTION_REFUSALS.items():
            refused.add_metric([reason], limits.refusals.counts[kind])
        yield refused

    def _tokens(self) -> Iterator[Metric]:
        events = self.events
        tokens = GaugeMetricFamily(
            "vdsmconsole_tokens", "Console tokens stored (not yet pruned)."
        )
        tokens.add_metric([], len(self.context.tokens))
        yield tokens
        for name, counts, label, text in (
            ("minted", events.tokens_minted, "protocol", "minted (remoteConsole)"),
            ("used", events.tokens_used, "via", "used, by where"),
            ("refused", events.tokens_refused, "via", "refused, by where"),
        ):
            family = CounterMetricFamily(
                f"vdsmconsole_tokens_{name}",
                f"Console tokens {text}.",
                labels=[label],
            )
            values = PROTOCOLS if label == "protocol" else sorted(counts)
            for value in values:
                family.add_metric([value], counts[value])
            yield family

    def _sessions(self) -> Iterator[Metric]:
        events = self.events
        opened = CounterMetricFamily(
            "vdsmconsole_sessions_opened",
            "Console streams and websockets opened, by mode.",
            labels=["mode"],
        )
        open_now = GaugeMetricFamily(
            "vdsmconsole_sessions",
            "Console streams and websockets open, by mode.",
            labels=["mode"],
        )
        for mode in sorted(events.sessions_opened):
            count = events.sessions_opened[mode]
            opened.add_metric([mode], count)
            open_now.add_metric([mode], count - events.sessions_closed[mode])
        moved = CounterMetricFamily(
            "vdsmconsole_session_bytes",
            "Bytes of console streams and websockets that ended, by mode and "
            "direction (to_client: output, to_guest: input).",
            labels=["mode", "direction"],
        )
        for (mode, direction), count in sorted(events.ended_session_bytes.items()):
            moved.add_metric([mode, direction], count)
        yield opened
        yield open_now
        yield moved

    def _tunnels(self) -> Iterator[Metric]:
        events = self.events
        live = list(getattr(self.site, "tunnels", ()))
        by_protocol = Counter(events.protocol(t.grant.protocol) for t in live)
        open_now = GaugeMetricFamily(
            "vdsmconsole_tunnels", "Tunnels open, by protocol.", labels=["protocol"]
        )
        opened = CounterMetricFamily(
            "vdsmconsole_tunnels_opened",
            "Tunnels opened, by protocol.",
            labels=["protocol"],
        )
        moved = CounterMetricFamily(
            "vdsmconsole_tunnel_bytes",
            "Bytes through tunnels, by protocol and direction.",
            labels=["protocol", "direction"],
        )
        carried = Counter(events.closed_tunnel_bytes)
        for tunnel in live:
            protocol = events.protocol(tunnel.grant.protocol)
            carried[protocol, "to_viewer"] += tunnel.link.sent
            carried[protocol, "from_viewer"] += tunnel.link.received
        for protocol in PROTOCOLS:
            open_now.add_metric([protocol], by_protocol[protocol])
            opened.add_metric([protocol], events.tunnels_opened[protocol])
            for direction in ("to_viewer", "from_viewer"):
                moved.add_metric([protocol, direction], carried[protocol, direction])
        yield open_now
        yield opened
        yield moved
