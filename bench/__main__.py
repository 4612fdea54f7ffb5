"""``python -m bench [all|bulk|fanout|latency|trickle|echo|scale|ws-bulk|...]``.

Runs vdsmconsole and its peers (socat, websockify, conserver, and the bare
pty as a baseline) against the same fake guest with the same clients,
interleaving the peers run by run so that they share the machine's mood,
then prints a table per scenario, the targets, and writes everything to
``bench/results/<scenario>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import echo, machine, report, scenarios, wsbench
from bench import scale as bench_scale
from bench.install import MissingPeer, ensure_peers
from bench.peers import PEER_CLASSES, PEERS, server_config, unsupported

SCENARIOS = (
    *("bulk", "fanout", "latency", "trickle", "echo", "scale"),
    *wsbench.SCENARIOS,
)
report.TABLES["echo"] = echo.echo_table
RESULTS = Path(__file__).resolve().parent / "results"


def size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1000)."""
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    value = int(float(number) * scale)
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenario", nargs="?", default="all", choices=("all", *SCENARIOS))
    p.add_argument("--size", type=size, default=50 * 10**6, help="bulk bytes (50M)")
    p.add_argument(
        "--fanout-size", type=size, help="bytes per fan-out client (default --size)"
    )
    p.add_argument("--clients", default="20,100", help="fan-out client counts (20,100)")
    p.add_argument("--roundtrips", type=int, default=2000, help="latency (2000)")
    p.add_argument("--seconds", type=float, default=10.0, help="trickle (10)")
    p.add_argument("--interval-ms", type=float, default=1.0, help="trickle (1)")
    p.add_argument("--consoles", type=int, default=1000, help="scale (1000)")
    p.add_argument("--followers", type=int, help="scale (default --consoles)")
    p.add_argument("--list-calls", type=int, default=200, help="scale (200)")
    p.add_argument(
        "--create-clients",
        type=int,
        default=1,
        help="scale: connections the creates are spread over (1)",
    )
    p.add_argument(
        "--create-batch",
        type=int,
        default=1,
        help="scale: creates, and token mints, per system.multicall request "
        "(1: a request each)",
    )
    p.add_argument("--runs", type=int, default=5, help="runs per peer (5)")
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated, of {', '.join(PEERS)} (default all)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="leave out the bare-pty row"
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="skip peers that are not installed instead of installing them",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the vdsmconsole of another checkout DIR, as peer "
        "vdsmconsole@LABEL (before/after comparisons; repeatable)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--profile", type=Path, help="profile vdsmconsole into DIR")
    p.add_argument(
        "--profile-tool", choices=("py-spy", "perf", "cprofile"), default="py-spy"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    args.peer_list = [x for x in args.peers.split(",") if x]
    for name in args.peer_list:
        if name not in PEER_CLASSES or name == "pty":
            p.error(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    args.variants = {}
    for item in args.variant:
        label, _, where = item.partition("=")
        root = Path(where).resolve()
        if not label or not (root / "vdsmconsole" / "__init__.py").exists():
            p.error(f"--variant {item!r}: want LABEL=DIR, DIR a vdsmconsole checkout")
        args.variants[label] = root
    args.client_counts = [int(x) for x in args.clients.split(",") if x]
    args.fanout_size = args.fanout_size or args.size
    args.followers = args.followers or args.consoles
    return args


class Runner:
    def __init__(self, args: argparse.Namespace, skipped: dict[str, str]) -> None:
        self.args = args
        self.skipped = skipped
        self.session = scenarios.Session(
            keep=args.keep,
            profile_dir=args.profile,
            profile_tool=args.profile_tool,
            variants=args.variants,
        )

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def peers_for(self, scenario: str) -> list[str]:
        peers = list(self.args.peer_list)
        if "vdsmconsole" in peers:
            at = peers.index("vdsmconsole") + 1
            peers[at:at] = [f"vdsmconsole@{label}" for label in self.args.variants]
        baselined = ("bulk", "latency", "trickle", "echo")
        if scenario in baselined and not self.args.no_baseline:
            peers.append("pty")
        return peers

    def repeat(
        self, scenario: str, label: str, fn: Callable[[str], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run ``fn(peer)`` for every peer, ``--runs`` times, interleaved."""
        peers = self.peers_for(scenario)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
        notes: dict[str, str] = {}
        for p in peers:
            why = self.skipped.get(p) or unsupported(p, scenario)
            if why:
                notes[p] = why
        active = [p for p in peers if p not in notes]
        for i in range(self.args.runs):
            order = (
                active[i % len(active) :] + active[: i % len(active)] if active else []
            )
            for peer in order:
                load = machine.loadavg()
                t0 = time.monotonic()
                try:
                    result = fn(peer)
                except Exception as e:  # noqa: BLE001 - one failed run is a result
                    result = {"failed": f"{type(e).__name__}: {e}"}
                    self.say(traceback.format_exc(limit=3))
                result["load_before"] = load
                result["load_after"] = machine.loadavg()
                runs[peer].append(result)
                self.say(
                    f"  {label} run {i + 1}/{self.args.runs} {peer}: "
                    f"{self._brief(result)} ({time.monotonic() - t0:.1f}s)"
                )
        out: dict[str, Any] = {}
        for p in peers:
            if p in notes:
                out[p] = {"skipped": notes[p]}
                continue
            summary = report.median_of_runs(runs[p])
            good = [r for r in runs[p] if not r.get("failed")]
            if good and "intact" in good[0]:
                summary["runs_intact"] = sum(
                    1 for r in good if r["intact"] == r["clients"]
                )
                summary["worst_intact"] = min(r["intact"] for r in good)
                if len(good) < len(runs[p]):
                    summary["worst_intact"] = 0
            summary["all_runs"] = runs[p]
            out[p] = summary
        return out

    @staticmethod
    def _brief(r: dict[str, Any]) -> str:
        if r.get("failed"):
            return "FAILED " + r["failed"][:200]
        keys = (
            "mb_per_s",
            "aggregate_mb_per_s",
            "total_cpu_ms_per_mb",
            "intact",
            "p50_us",
            "p99_us",
            "total_cpu_percent",
            "delay_p99_ms",
            "delay_max_ms",
            "echo_p99_us",
        )
        return ", ".join(
            f"{k}={r[k]:.3g}" if isinstance(r[k], float) else f"{k}={r[k]}"
            for k in keys
            if k in r
        )

    # -- scenarios -----------------------------------------------------------

    def bulk(self) -> dict[str, Any]:
        a = self.args
        self.say(f"bulk: {a.size} bytes to one client")
        peers = self.repeat(
            "bulk", "bulk", lambda p: scenarios.bulk(self.session, p, a.size)
        )
        return {"size": a.size, "peers": peers}

    def fanout(self) -> dict[str, Any]:
        a = self.args
        by: dict[str, Any] = {}
        for n in a.client_counts:
            self.say(f"fanout: {a.fanout_size} bytes to {n} clients")
            by[str(n)] = self.repeat(
                "fanout",
                f"fanout{n}",
                lambda p, n=n: scenarios.bulk(self.session, p, a.fanout_size, n),
            )
        return {"size": a.fanout_size, "by_clients": by}

    def latency(self) -> dict[str, Any]:
        a = self.args
        self.say(f"latency: {a.roundtrips} one-byte round trips")
        peers = self.repeat(
            "latency",
            "latency",
            lambda p: scenarios.latency(self.session, p, a.roundtrips),
        )
        return {"roundtrips": a.roundtrips, "peers": peers}

    def trickle(self) -> dict[str, Any]:
        a = self.args
        self.say(f"trickle: 8 bytes every {a.interval_ms} ms for {a.seconds} s")
        peers = self.repeat(
            "trickle",
            "trickle",
            lambda p: scenarios.trickle(self.session, p, a.seconds, a.interval_ms),
        )
        return {"seconds": a.seconds, "interval_ms": a.interval_ms, "peers": peers}

    def echo(self) -> dict[str, Any]:
        a = self.args
        self.say(
            f"echo: keys typed into a {a.interval_ms} ms trickle for {a.seconds} s"
        )
        peers = self.repeat(
            "echo",
            "echo",
            lambda p: echo.echo(self.session, p, a.seconds, a.interval_ms),
        )
        return {"seconds": a.seconds, "interval_ms": a.interval_ms, "peers": peers}

    def scale(self) -> dict[str, Any]:
        a = self.args
        self.say(
            f"scale: {a.consoles} consoles with a VNC endpoint and a token each, "
            f"{a.followers} idle followers"
        )
        peers = [p for p in self.peers_for("scale") if p.startswith("vdsmconsole")]
        if not peers:
            return {"vdsmconsole": {"error": "vdsmconsole not among --peers"}}
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
        for i in range(a.runs):
            for peer in peers[i % len(peers) :] + peers[: i % len(peers)]:
                load = machine.loadavg()
                try:
                    result = bench_scale.scale(
                        self.session,
                        peer,
                        a.consoles,
                        a.followers,
                        a.list_calls,
                        create_clients=a.create_clients,
                        create_batch=a.create_batch,
                    )
                except Exception as e:  # noqa: BLE001 - reported as the result
                    result = {"failed": f"{type(e).__name__}: {e}"}
                    self.say(traceback.format_exc(limit=3))
                result["load_before"] = load
                result["load_after"] = machine.loadavg()
                runs[peer].append(result)
                self.say(f"  scale run {i + 1} {peer}: {self._brief_scale(result)}")
        out: dict[str, Any] = {"note": "no peer has an RPC list"}
        for peer, results in runs.items():
            out[peer] = report.median_of_runs(results)
            out[peer]["all_runs"] = results
        return out

    @staticmethod
    def _brief_scale(r: dict[str, Any]) -> str:
        if r.get("failed"):
            return "FAILED " + r["failed"]
        return (
            f"create={r.get('create_seconds', 0):.1f}s "
            f"mint={r.get('mint_seconds', 0):.1f}s "
            f"rss={r.get('rss_followers_bytes', 0) / 1e6:.0f}MB "
            f"list p99 idle={r.get('list_idle_p99_ms', 0):.1f}ms "
            f"flooding={r.get('list_flood_p99_ms', 0):.1f}ms "
            f"full={r.get('full_flood_p99_ms', 0):.0f}ms"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        skipped = ensure_peers(args.peer_list, install=not args.no_install)
    except MissingPeer as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    wanted = SCENARIOS if args.scenario == "all" else (args.scenario,)
    runner = Runner(args, skipped)
    result: dict[str, Any] = {
        "command": "python -m bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine.machine_facts(),
        "load_before": machine.loadavg(),
        "runs": args.runs,
        "vdsmconsole_config": server_config(None),
        "skipped_peers": skipped,
        "scenarios": {},
    }
    try:
        for name in wanted:
            started = time.monotonic()
            if name in wsbench.SCENARIOS:
                section = wsbench.run(runner, name)
            else:
                section = getattr(runner, name)()
            section["load_after"] = machine.loadavg()
            section["seconds"] = time.monotonic() - started
            result["scenarios"][name] = section
    finally:
        runner.session.close()
    result["load_after"] = machine.loadavg()
    result["targets"] = report.targets(result["scenarios"])
    result["targets"] += echo.targets(result["scenarios"])
    result["targets"] += wsbench.targets(result["scenarios"])
    print(render(result))
    path = (
        args.json or RESULTS / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nresults: {path}")
    return 0


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['openssl']}",
        f"load average before {result['load_before']}, after {result['load_after']}; "
        f"medians of {result['runs']} runs",
    ]
    for name, section in result["scenarios"].items():
        table = {**report.TABLES, **wsbench.TABLES}[name]
        lines += ["", f"== {name}", table(section)]
    if result["targets"]:
        lines += ["", "== targets", report.targets_table(result["targets"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
