"""Server CPU per XML-RPC call, this tree against others, interleaved.

``python -m bench.rpccost [--calls 1000] [--rounds 3] [--variant LABEL=DIR]``
starts the server of each tree in turn, makes ``--calls`` calls of each of
``ping``, ``list`` (empty) and ``getVdsCapabilities`` over one kept-alive
connection with ``xmlrpc.client``, and prints the server's CPU time per call
(``/proc`` schedstat of its process), the median of ``--rounds`` rounds:
what a request costs the server whatever the method does.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.peers import VdsmConsole, cpu_ns, make_peer
from bench.scenarios import Session

METHODS = ("ping", "list", "getVdsCapabilities")


def per_call_ms(peer: VdsmConsole, calls: int) -> dict[str, float]:
    proc = peer.serve()
    try:
        rpc = peer.rpc()
        rpc.ping()  # connected and handshaken first
        out = {}
        for method in METHODS:
            before = cpu_ns(proc.pid)
            for _ in range(calls):
                getattr(rpc, method)()
            after = cpu_ns(proc.pid)
            assert before is not None and after is not None
            out[method] = (after[0] - before[0]) / 1e6 / calls
        return out
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rpccost")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"vdsmconsole": None}
    for item in args.variant:
        label, _, directory = item.partition("=")
        trees[f"vdsmconsole@{label}"] = Path(directory).resolve()
    session = Session()
    seen: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for name, root in trees.items():
            workdir = session.run_dir(f"rpccost-{round_}-{name.replace('@', '-')}")
            peer = make_peer("vdsmconsole", workdir, session.pki)
            assert isinstance(peer, VdsmConsole)
            peer.root = root
            for method, ms in per_call_ms(peer, args.calls).items():
                seen.setdefault((name, method), []).append(ms)
    print(f"server CPU per call (ms), median of {args.rounds} rounds of {args.calls}")
    print(f"{'':24}" + "".join(f"{m:>20}" for m in METHODS))
    for name in trees:
        cells = "".join(f"{statistics.median(seen[(name, m)]):>20.3f}" for m in METHODS)
        print(f"{name:24}{cells}")


if __name__ == "__main__":
    main()
