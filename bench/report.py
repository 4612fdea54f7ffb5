"""Medians over runs, the tables, and the targets the peers set.

Targets are ratios between peers measured in the same invocation, never
absolute numbers: on a shared machine MB/s and latency swing 2-3x with the
load, while the ratios between peers run side by side hold much better.
"""

from __future__ import annotations

import statistics
from typing import Any

PEER_ORDER = ("vdsmconsole", "socat", "socat-nodelay", "websockify", "conserver", "pty")
RELAYS = ("socat", "socat-nodelay", "websockify", "conserver")
V = "vdsmconsole"


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field; booleans: true only if all are."""
    good = [r for r in runs if not r.get("failed")]
    out: dict[str, Any] = {"runs": len(runs), "failed_runs": len(runs) - len(good)}
    if not good:
        out["error"] = runs[0].get("failed") if runs else "no runs"
        return out
    keys = [k for k in good[0] if k not in ("failed",)]
    for key in keys:
        values = [r[key] for r in good if key in r and r[key] is not None]
        if not values:
            continue
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, int | float) for v in values):
            out[key] = statistics.median(values)
        else:
            out[key] = values[0]
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 100:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)


def _ordered(peers: dict[str, Any]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        base = name.partition("@")[0]
        return (PEER_ORDER.index(base) if base in PEER_ORDER else 99, name)

    return sorted(peers, key=key)


def _skip_row(name: str, width: int, note: str) -> list[str]:
    return [name, *(["-"] * (width - 2)), note]


def bulk_table(section: dict[str, Any]) -> str:
    headers = ["peer", "MB/s", "relay ms/MB", "bridge ms/MB", "total ms/MB"]
    headers += ["B/record", "RSS MB", "intact", "note"]
    rows = []
    for name in _ordered(section["peers"]):
        m = section["peers"][name]
        if "skipped" in m or "error" in m:
            rows.append(_skip_row(name, len(headers), m.get("skipped") or m["error"]))
            continue
        rows.append(
            [
                name,
                fmt(m.get("mb_per_s")),
                fmt(m.get("relay_cpu_ms_per_mb"), 2),
                fmt(m.get("bridge_cpu_ms_per_mb"), 2),
                fmt(m.get("total_cpu_ms_per_mb"), 2),
                fmt(m.get("bytes_per_tls_record"), 0),
                fmt(m.get("relay_rss_bytes", 0) / 1e6),
                f"{m.get('runs_intact', '?')}/{m['runs']} runs",
                peer_note(name),
            ]
        )
    return table(headers, rows)


def fanout_table(section: dict[str, Any]) -> str:
    headers = ["peer", "clients", "aggregate MB/s", "relay ms/MB sent"]
    headers += ["RSS MB", "runs all intact", "clients intact (worst)", "note"]
    rows = []
    for key in sorted(section["by_clients"], key=int):
        for name in _ordered(section["by_clients"][key]):
            m = section["by_clients"][key][name]
            if "skipped" in m or "error" in m:
                row = _skip_row(name, len(headers), m.get("skipped") or m["error"])
                row[1] = key
                rows.append(row)
                continue
            rows.append(
                [
                    name,
                    key,
                    fmt(m.get("aggregate_mb_per_s")),
                    fmt(m.get("relay_cpu_ms_per_delivered_mb"), 2),
                    fmt(m.get("relay_rss_bytes", 0) / 1e6),
                    f"{m.get('runs_intact', 0)}/{m['runs']}",
                    f"{m.get('worst_intact', '?')}/{key}",
                    "",
                ]
            )
    return table(headers, rows)


def latency_table(section: dict[str, Any]) -> str:
    headers = ["peer", "p50 us", "p99 us", "max us", "relay CPU us/rt", "note"]
    rows = []
    for name in _ordered(section["peers"]):
        m = section["peers"][name]
        if "skipped" in m or "error" in m:
            rows.append(_skip_row(name, len(headers), m.get("skipped") or m["error"]))
            continue
        note = peer_note(name, ONE_MORE_HOP)
        if m.get("mismatches"):
            note += f" {m['mismatches']} wrong echoes"
        rows.append(
            [
                name,
                fmt(m.get("p50_us"), 0),
                fmt(m.get("p99_us"), 0),
                fmt(m.get("max_us"), 0),
                fmt(m.get("relay_cpu_us_per_roundtrip"), 1),
                note,
            ]
        )
    return table(headers, rows)


def trickle_table(section: dict[str, Any]) -> str:
    headers = ["peer", "relay CPU %", "bridge CPU %", "total CPU %", "added p99 ms"]
    headers += ["writes/s", "delay p50 ms", "p99 ms", "max ms", "in order", "note"]
    rows = []
    # The delay a relay adds to any byte: its p99 less the bare pty's.
    base = section["peers"].get("pty", {}).get("delay_p99_ms") or 0.0
    for name in _ordered(section["peers"]):
        m = section["peers"][name]
        p99 = m.get("delay_p99_ms")
        if "skipped" in m or "error" in m:
            rows.append(_skip_row(name, len(headers), m.get("skipped") or m["error"]))
            continue
        note = peer_note(name, "writes: syscalls; delay via its console client")
        rows.append(
            [
                name,
                fmt(m.get("relay_cpu_percent"), 2),
                fmt(m.get("bridge_cpu_percent"), 2),
                fmt(m.get("total_cpu_percent"), 2),
                fmt(None if p99 is None or name == "pty" else p99 - base, 2),
                fmt(m.get("writes_per_s"), 0),
                fmt(m.get("delay_p50_ms"), 2),
                fmt(m.get("delay_p99_ms"), 2),
                fmt(m.get("delay_max_ms"), 2),
                fmt(m.get("in_order")),
                note,
            ]
        )
    return table(headers, rows)


def _pair(m: dict[str, Any], a: str, b: str) -> str:
    return f"{fmt(m.get(a), 2)} / {fmt(m.get(b), 2)}"


_SCALE_ROWS = (
    ("consoles / followers / tokens", ("consoles", "followers", "tokens"), 0, 1),
    ("followers attached", ("followers_attached",), 0, 1),
    ("graphics answering the probe", ("graphics_answering",), 0, 1),
    (
        "create / mint / attach (s)",
        ("create_seconds", "mint_seconds", "attach_seconds"),
        2,
        1,
    ),
    ("server CPU create / mint (s)", ("create_cpu_seconds", "mint_cpu_seconds"), 2, 1),
    (
        "server CPU ms per list / fullStatus (idle)",
        ("list_idle_cpu_ms", "full_idle_cpu_ms"),
        2,
        1,
    ),
    ("RSS consoles / tokens (MB)", ("rss_consoles_bytes", "rss_tokens_bytes"), 1, 1e6),
    ("RSS followers / peak (MB)", ("rss_followers_bytes", "peak_rss_bytes"), 1, 1e6),
    ("list p50/p99 idle (ms)", ("list_idle_p50_ms", "list_idle_p99_ms"), 2, 1),
    (
        "list p50/p99/max flooding (ms)",
        ("list_flood_p50_ms", "list_flood_p99_ms", "list_flood_max_ms"),
        2,
        1,
    ),
    ("fullStatus p50/p99 idle (ms)", ("full_idle_p50_ms", "full_idle_p99_ms"), 1, 1),
    (
        "fullStatus p50/p99 flooding (ms)",
        ("full_flood_p50_ms", "full_flood_p99_ms"),
        1,
        1,
    ),
    ("flood MB/s while listing", ("flood_mb_per_s_during_list",), 1, 1),
)


def scale_table(section: dict[str, Any]) -> str:
    peers = [p for p in section if p.startswith(V) and isinstance(section[p], dict)]
    if all("error" in section[p] for p in peers):
        return "; ".join(f"{p}: {section[p]['error']}" for p in peers)
    rows = []
    for label, keys, digits, unit in _SCALE_ROWS:
        row = [label]
        for p in peers:
            m = section[p]
            values = [m.get(k) for k in keys]
            row.append(
                " / ".join(
                    fmt(v / unit if v is not None else None, digits) for v in values
                )
            )
        rows.append(row)
    return table(["", *peers], rows)


TABLES = {
    "bulk": bulk_table,
    "fanout": fanout_table,
    "latency": latency_table,
    "trickle": trickle_table,
    "scale": scale_table,
}


# -- targets -------------------------------------------------------------------


def _target(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"target": name, "met": ok, "detail": detail}


def _peers_with(section: dict[str, Any], key: str) -> dict[str, float]:
    return {
        p: m[key]
        for p, m in section.get("peers", {}).items()
        if p in RELAYS and isinstance(m.get(key), int | float)
    }


ONE_MORE_HOP = "through its console client (one more hop)"


def peer_note(name: str, conserver: str = "") -> str:
    """A row's note: the bare pty is a baseline; conserver's may need one."""
    if name == "pty":
        return "no relay (baseline)"
    return conserver if name == "conserver" else ""


def _per_run(peers: dict[str, Any], a: str, b: str, key: str) -> str:
    """The spread of the run-by-run ratio a/b (the peers ran side by side)."""
    ra = [r.get(key) for r in peers.get(a, {}).get("all_runs", [])]
    rb = [r.get(key) for r in peers.get(b, {}).get("all_runs", [])]
    ratios = sorted(
        x / y
        for x, y in zip(ra, rb, strict=False)
        if isinstance(x, int | float) and isinstance(y, int | float) and y
    )
    if len(ratios) < 2:
        return ""
    return f"; run by run {ratios[0]:.2f}x-{ratios[-1]:.2f}x"


def targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bulk = scenarios.get("bulk")
    if bulk and "vdsmconsole" in bulk["peers"]:
        v = bulk["peers"]["vdsmconsole"]
        speeds = _peers_with(bulk, "mb_per_s")
        cpus = _peers_with(bulk, "total_cpu_ms_per_mb")
        if speeds and "mb_per_s" in v:
            best = max(speeds, key=lambda p: speeds[p])
            out.append(
                _target(
                    "bulk MB/s >= best peer",
                    v["mb_per_s"] >= speeds[best],
                    f"{v['mb_per_s']:.1f} vs {best} {speeds[best]:.1f} "
                    f"({v['mb_per_s'] / speeds[best]:.2f}x"
                    f"{_per_run(bulk['peers'], 'vdsmconsole', best, 'mb_per_s')})",
                )
            )
        if cpus and "total_cpu_ms_per_mb" in v:
            best = min(cpus, key=lambda p: cpus[p])
            ratio = v["total_cpu_ms_per_mb"] / cpus[best]
            out.append(
                _target(
                    "bulk CPU/MB <= 1.5x best peer's total",
                    ratio <= 1.5,
                    f"{v['total_cpu_ms_per_mb']:.2f} vs {best} {cpus[best]:.2f} "
                    f"ms/MB ({ratio:.2f}x"
                    f"{_per_run(bulk['peers'], V, best, 'total_cpu_ms_per_mb')})",
                )
            )
    fan = scenarios.get("fanout")
    if fan:
        for key, peers in fan["by_clients"].items():
            v = peers.get("vdsmconsole")
            if not v or "error" in v:
                continue
            all_intact = v.get("runs_intact") == v["runs"]
            out.append(
                _target(
                    f"fanout {key}: every client intact in every run",
                    all_intact,
                    f"{v.get('runs_intact')}/{v['runs']} runs, worst "
                    f"{v.get('worst_intact')}/{key} clients",
                )
            )
            c = peers.get("conserver")
            if key == "20" and c and "aggregate_mb_per_s" in c:
                ratio = v["aggregate_mb_per_s"] / c["aggregate_mb_per_s"]
                out.append(
                    _target(
                        "fanout 20 aggregate >= conserver",
                        ratio >= 1.0,
                        f"{v['aggregate_mb_per_s']:.1f} vs "
                        f"{c['aggregate_mb_per_s']:.1f} MB/s ({ratio:.2f}x); "
                        f"conserver intact in {c.get('runs_intact')}/{c['runs']} runs",
                    )
                )
    lat = scenarios.get("latency")
    for socat in ("socat", "socat-nodelay"):
        if not lat or "vdsmconsole" not in lat["peers"] or socat not in lat["peers"]:
            continue
        v, s = lat["peers"]["vdsmconsole"], lat["peers"][socat]
        for q in ("p50_us", "p99_us"):
            if q in v and q in s:
                ratio = v[q] / s[q]
                out.append(
                    _target(
                        f"latency {q[:3]} <= 1.5x {socat}",
                        ratio <= 1.5,
                        f"{v[q]:.0f} vs {s[q]:.0f} us ({ratio:.2f}x"
                        f"{_per_run(lat['peers'], 'vdsmconsole', socat, q)})",
                    )
                )
    tr = scenarios.get("trickle")
    if tr and "vdsmconsole" in tr["peers"]:
        v = tr["peers"]["vdsmconsole"]
        cpus = _peers_with(tr, "total_cpu_percent")
        if cpus and "total_cpu_percent" in v:
            best = min(cpus, key=lambda p: cpus[p])
            ratio = v["total_cpu_percent"] / cpus[best]
            out.append(
                _target(
                    "trickle CPU <= half the cheapest peer",
                    ratio <= 0.5,
                    f"{v['total_cpu_percent']:.2f}% vs {best} {cpus[best]:.2f}% "
                    f"({ratio:.2f}x"
                    f"{_per_run(tr['peers'], V, best, 'total_cpu_percent')})",
                )
            )
        base = tr["peers"].get("pty", {})
        q = "delay_p99_ms"
        if v.get(q) is not None:
            added = v[q] - (base.get(q) or 0.0)
            out.append(
                _target(
                    "trickle added delay of any byte (p99) <= 25 ms",
                    added <= 25.0,
                    f"{v[q]:.2f} ms, the pty alone {base.get(q) or 0:.2f} ms: "
                    f"{added:.2f} ms added (max {v.get('delay_max_ms') or 0:.2f} ms)",
                )
            )
    sc = scenarios.get("scale", {}).get("vdsmconsole")
    if sc and "error" not in sc:
        rss = max(sc.get("rss_followers_bytes", 0), sc.get("rss_after_flood_bytes", 0))
        out.append(
            _target(
                f"scale: {sc['consoles']:.0f} consoles with graphics, "
                f"{sc.get('tokens', 0):.0f} tokens, {sc['followers']:.0f} "
                "followers < 150 MB RSS",
                rss < 150e6,
                f"{rss / 1e6:.0f} MB (peak {sc.get('peak_rss_bytes', 0) / 1e6:.0f} MB)",
            )
        )
        if "list_flood_p99_ms" in sc:
            out.append(
                _target(
                    "scale: list (summary) p99 < 20 ms while a console floods",
                    sc["list_flood_p99_ms"] < 20,
                    f"{sc['list_flood_p99_ms']:.1f} ms "
                    f"(idle {sc.get('list_idle_p99_ms', 0):.1f} ms; fullStatus "
                    f"{sc.get('full_flood_p99_ms', 0):.0f} ms)",
                )
            )
        if "create_seconds" in sc:
            out.append(
                _target(
                    f"scale: {sc['consoles']:.0f} pty creates < 2 s"
                    + _from_clients(sc),
                    sc["create_seconds"] < 2.0,
                    f"{sc['create_seconds']:.2f} s",
                )
            )
    return out


def _from_clients(sc: dict[str, Any]) -> str:
    clients = sc.get("create_clients", 1)
    batch = sc.get("create_batch", 1)
    how = []
    if clients and clients > 1:
        how.append(f"{clients:.0f} connections at once")
    if batch and batch > 1:
        how.append(f"{batch:.0f} per system.multicall")
    return f" ({', '.join(how)})" if how else ""


def targets_table(items: list[dict[str, Any]]) -> str:
    verdicts = {True: "met", False: "MISSED", None: "info"}  # None: no target
    rows = [[t["target"], verdicts[t["met"]], t["detail"]] for t in items]
    return table(["target", "", "measured (medians, same run)"], rows) if rows else ""
