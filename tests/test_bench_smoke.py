"""The benchmark keeps working: every scenario at tiny sizes, results sane.

Nothing here judges a timing (the machine's load decides those); only that
each scenario runs end to end against the real server (and socat, and the
other peers when installed) and that its structured results add up:
checksums intact, every round trip and trickle record accounted for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.clients import HttpFramer, Sink, WsFramer
from bench.payload import bulk_blocks, bulk_sha256, record, start_marker, sync_marker
from bench.report import median_of_runs, targets
from bench.scenarios import percentile
from tests.tools import IN_CI, require_tool

ROOT = Path(__file__).resolve().parent.parent


def _peers() -> list[str]:
    peers = ["vdsmconsole"]
    if IN_CI:
        require_tool("socat", "socat")  # tools/test.sh installs it
    if shutil.which("socat"):
        peers.append("socat")
    if shutil.which("websockify") and shutil.which("socat"):
        peers.append("websockify")
    if shutil.which("conserver") and shutil.which("console"):
        peers.append("conserver")
    return peers


@pytest.mark.e2e
def test_every_scenario_runs_and_adds_up(tmp_path: Path) -> None:
    """python -m bench all at tiny sizes: every run intact and fully counted."""
    peers = _peers()
    out = tmp_path / "bench.json"
    size, clients, roundtrips, seconds, consoles = 200_000, 3, 50, 0.5, 5
    argv = [
        sys.executable,
        "-m",
        "bench",
        "all",
        "--runs=1",
        f"--size={size}",
        f"--clients={clients}",
        f"--roundtrips={roundtrips}",
        f"--seconds={seconds}",
        f"--consoles={consoles}",
        "--list-calls=10",
        f"--peers={','.join(peers)}",
        "--no-install",
        "--quiet",
        f"--json={out}",
    ]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== targets" in done.stdout
    result = json.loads(out.read_text())

    machine = result["machine"]
    assert machine["cpu"] and machine["nproc"] >= 1
    assert len(result["load_before"]) == 3 and len(result["load_after"]) == 3
    scenarios = result["scenarios"]
    assert set(scenarios) == {
        *("bulk", "fanout", "latency", "trickle", "echo", "scale"),
        *("ws-bulk", "ws-latency", "ws-trickle", "tunnel-bulk"),
    }

    bulk = scenarios["bulk"]["peers"]
    for peer in [*peers, "pty"]:
        m = bulk[peer]
        assert m["failed_runs"] == 0, m
        assert m["runs_intact"] == 1, m
        assert m["size"] == size and m["mb_per_s"] > 0
        assert len(m["all_runs"][0]["load_before"]) == 3
    assert bulk["vdsmconsole"]["relay_cpu_ns"] > 0

    fanout = scenarios["fanout"]["by_clients"][str(clients)]
    assert fanout["vdsmconsole"]["worst_intact"] == clients
    assert fanout["vdsmconsole"]["runs_intact"] == 1
    for peer in ("socat", "websockify"):
        if peer in peers:
            assert "not supported" in fanout[peer]["skipped"]
    if "conserver" in peers:
        assert fanout["conserver"]["failed_runs"] == 0

    latency = scenarios["latency"]["peers"]
    for peer in [*peers, "pty"]:
        m = latency[peer]
        assert m["failed_runs"] == 0, m
        assert m["roundtrips"] == roundtrips and m["mismatches"] == 0
        assert 0 < m["p50_us"] <= m["p99_us"] <= m["max_us"]

    trickle = scenarios["trickle"]["peers"]
    for peer in [*peers, "pty"]:
        m = trickle[peer]
        assert m["failed_runs"] == 0, m
        assert m["records_received"] == m["records_sent"] == int(seconds * 1000)
        assert m["in_order"] is True
        assert m["delay_p50_ms"] <= m["delay_p99_ms"] <= m["delay_max_ms"]
    assert trickle["vdsmconsole"]["writes_per_s"] > 0

    echo = scenarios["echo"]["peers"]
    for peer in [*peers, "pty"]:
        m = echo[peer]
        assert m["failed_runs"] == 0, m
        assert m["keys"] > 0 and m["lost"] == 0 and m["stray_letters"] == 0, m
        assert 0 < m["echo_p50_us"] <= m["echo_p99_us"] <= m["echo_max_us"]

    scale = scenarios["scale"]["vdsmconsole"]
    assert scale["failed_runs"] == 0, scale
    assert scale["followers_attached"] == consoles
    assert scale["readers_of_console0"] >= 1
    assert scale["rss_followers_bytes"] > 0
    assert scale["list_flood_p99_ms"] > 0

    ws_peers = [p for p in ("vdsmconsole", "websockify") if p in peers]
    tunnel_peers = [p for p in ("vdsmconsole", "socat") if p in peers]
    for name, family in (("ws-bulk", ws_peers), ("tunnel-bulk", tunnel_peers)):
        assert set(scenarios[name]["peers"]) == set(family)
        for peer in family:
            m = scenarios[name]["peers"][peer]
            assert m["failed_runs"] == 0, m
            assert m["runs_intact"] == 1 and m["mb_per_s"] > 0, m
            # a relay's child per connection is counted too (websockify, socat)
            assert m["relay_cpu_ns"] > 0, m
    for peer in ws_peers:
        m = scenarios["ws-latency"]["peers"][peer]
        assert m["failed_runs"] == 0, m
        assert m["roundtrips"] == roundtrips and m["mismatches"] == 0
        m = scenarios["ws-trickle"]["peers"][peer]
        assert m["failed_runs"] == 0, m
        assert m["records_received"] == m["records_sent"] == int(seconds * 1000)
        assert m["in_order"] is True

    names = {t["target"] for t in result["targets"]}
    assert any(n.startswith("bulk") for n in names)
    assert any(n.startswith("scale") for n in names)


@pytest.mark.e2e
def test_scale_creates_in_multicall_batches(tmp_path: Path) -> None:
    """scale --create-batch: every console created and token minted, 2 per
    request (the last 1)."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", "scale", "--runs=1", "--consoles=5"]
    argv += ["--list-calls=5", "--create-batch=2", "--peers=vdsmconsole"]
    argv += ["--no-install", "--quiet", f"--json={out}"]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    scale = result["scenarios"]["scale"]["vdsmconsole"]
    assert scale["failed_runs"] == 0, scale
    assert scale["followers_attached"] == 5 and scale["create_batch"] == 2
    assert scale["tokens"] == 5 and scale["mint_seconds"] > 0
    names = {t["target"] for t in result["targets"]}
    assert "scale: 5 pty creates < 2 s (2 per system.multicall)" in names


def test_bulk_payload_is_exact_and_checksummed() -> None:
    """The bulk payload has exactly the size asked for, in numbered lines."""
    data = b"".join(bulk_blocks(200_001))
    assert len(data) == 200_001
    assert data.startswith(b"0000000000 ") and data[80:91] == b"0000000001 "
    assert bulk_sha256(200_001) == __import__("hashlib").sha256(data).hexdigest()


def test_sink_skips_to_the_start_marker_across_pieces() -> None:
    """Banners, sync markers and a split start marker come before the payload."""
    payload = b"".join(bulk_blocks(1000))
    stream = b"[banner]" + sync_marker("n1") + start_marker("n1") + payload + b"x"
    sink = Sink("bulk", "n1", "n1", 1000, 0)
    for i in range(0, len(stream), 7):
        sink.feed([stream[i : i + 7]], i)
    assert sink.synced and sink.done
    assert sink.digest.hexdigest() == bulk_sha256(1000)
    assert sink.extra == 1


def test_sink_counts_trickle_records() -> None:
    """Trickle records split anywhere are counted, in order, once each."""
    stream = start_marker("t") + b"".join(record(i) for i in range(10))
    sink = Sink("trickle", "t", "t", 0, 10)
    for i in range(0, len(stream), 5):
        sink.feed([stream[i : i + 5]], i)
    assert sink.done
    assert [seq for seq, _ in sink.arrivals] == list(range(10))


def test_http_framer_decodes_chunks_split_anywhere() -> None:
    """Chunked bodies come out whole whatever the read boundaries."""
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    for step in (1, 2, 3, 7, len(wire)):
        framer = HttpFramer("/consoleStream/x")
        out = b"".join(
            b"".join(framer.feed(wire[i : i + step])) for i in range(0, len(wire), step)
        )
        assert out == b"hello world" and framer.ended


def test_ws_framer_decodes_frames_and_masks_its_own() -> None:
    """Server frames of every length form decode; our frames are masked."""
    body = b"x" * 70_000
    frames = (
        b"\x82\x03abc"
        + b"\x82\x7e"
        + (300).to_bytes(2, "big")
        + body[:300]
        + b"\x82\x7f"
        + (70_000).to_bytes(8, "big")
        + body
    )
    framer = WsFramer()
    wire = b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + frames
    out = b"".join(
        b"".join(framer.feed(wire[i : i + 4096])) for i in range(0, len(wire), 4096)
    )
    assert out == b"abc" + body[:300] + body
    frame = framer.encode(b"hi")
    assert frame[0] == 0x82 and frame[1] == 0x80 | 2
    mask = frame[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == b"hi"


def test_medians_and_targets_compare_peers_of_one_run() -> None:
    """Medians over runs feed ratio targets between peers of the same run."""
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile([1, 2, 3, 4, 100], 99) == 100
    runs = [{"mb_per_s": 10.0, "ok": True}, {"mb_per_s": 30.0, "ok": True}]
    assert median_of_runs(runs)["mb_per_s"] == 20.0
    assert median_of_runs(runs)["ok"] is True
    scenarios = {
        "bulk": {
            "peers": {
                "vdsmconsole": {"mb_per_s": 80.0, "total_cpu_ms_per_mb": 7.0},
                "socat": {"mb_per_s": 70.0, "total_cpu_ms_per_mb": 5.0},
            }
        }
    }
    met = {t["target"]: t["met"] for t in targets(scenarios)}
    assert met == {
        "bulk MB/s >= best peer": True,
        "bulk CPU/MB <= 1.5x best peer's total": True,
    }
