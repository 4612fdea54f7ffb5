"""XML-RPC calls by method and status code, and how long each took.

The one family counted as it happens (no object keeps these), with
prometheus_client's own counter and histogram, registered nowhere: the
server's collector (``collector.py``) yields them at scrape time.  ``method``
is a name the server knows, or ``unknown`` (a name not known, a body not
parsed), so a client cannot grow the label set; ``code`` is VDSM's status
code, or ``fault`` for an XML-RPC Fault.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

__all__ = ["FAULT", "UNKNOWN", "RpcCalls", "answer_code"]

UNKNOWN = "unknown"
FAULT = "fault"
# Seconds, from a millisecond call (ping, list) to a slow disk.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def answer_code(result: object) -> str:
    """The ``code`` label of an answer: its status code, or ``fault``; a
    multicall's array of answers is ``0`` (each call counts on its own)."""
    if isinstance(result, list):
        return "0"
    if isinstance(result, dict):
        status = result.get("status")
        if isinstance(status, dict):
            code = status.get("code")
            if isinstance(code, int) and not isinstance(code, bool):
                return str(code)
    return FAULT


class RpcCalls:
    """What ``ConsoleRPC`` answered, by method and code, with latencies."""

    def __init__(self) -> None:
        self.calls = Counter(
            "vdsmconsole_rpc_calls",
            "XML-RPC calls answered, by method and VDSM status code "
            "(fault: an XML-RPC Fault).",
            ["method", "code"],
            registry=None,
        )
        self.duration = Histogram(
            "vdsmconsole_rpc_duration_seconds",
            "Time from an XML-RPC call's request body to its answer.",
            ["method"],
            buckets=BUCKETS,
            registry=None,
        )

    def observe(self, method: str, result: object, seconds: float) -> None:
        self.calls.labels(method, answer_code(result)).inc()
        self.duration.labels(method).observe(max(seconds, 0.0))

    def collect(self) -> Iterator[Metric]:
        for metric in (*self.calls.collect(), *self.duration.collect()):
            # No ``_created`` series: one more per label set, which the text
            # format shows as a gauge of its own, and Prometheus has no use
            # for (it sees counter resets by itself).
            metric.samples = [
                s for s in metric.samples if not s.name.endswith("_created")
            ]
            yield metric
