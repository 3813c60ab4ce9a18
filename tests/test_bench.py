"""
The benchmark (bench/run.py) runs end to end at a tiny scale: it starts the real
server, drives loads A and D, stops everything and reports every figure.  Only
the shape of the report and the message counts are checked, never timings: those
depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args, timeout: float) -> subprocess.CompletedProcess:
    """Run bench/<script>.py from this checkout with C{args}; its output, as text."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


FIGURES = {
    "subscribers",
    "not_streaming",
    "deliveries",
    "deliveries_per_s",
    "cpu_us_per_delivery",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "rss_per_conn_kib",
    "lost",
    "headers_all_s",
    "last_delivery_ms",
    "stop_reason",
}


@pytest.mark.parametrize("loader", ["python", "sseload"])
@pytest.mark.timeout(60)
def test_bench_tiny_run(tmp_path, loader, request):
    if loader == "sseload":
        request.getfixturevalue("sseload")  # builds it when missing
    out = tmp_path / "bench.json"
    run = bench(
        "run",
        "--scale",
        "0.01",
        "--loads",
        "A,D",
        "--loader",
        loader,
        "--json",
        str(out),
        timeout=50,
    )
    assert run.returncode == 0, run.stderr
    assert "A many messages" in run.stdout and "D burst" in run.stdout, run.stdout

    report = json.loads(out.read_text())
    assert report["loader"] == loader
    assert {"commit", "scale", "machine", "pinning", "loads"} <= report.keys()
    assert [load["load"] for load in report["loads"]] == ["A", "D"]
    for load in report["loads"]:
        figures = load["figures"]
        assert FIGURES <= figures.keys(), load["load"]
        assert figures["stop_reason"] == "complete", load["notes"]
        assert figures["lost"] == 0, load["notes"]
        assert figures["not_streaming"] == 0, load["notes"]
        assert figures["deliveries"] > 0
        assert load["server"]["log_problems"] == []
        assert "met" in load["targets"]["lost"]
    a, d = report["loads"]
    assert a["parameters"] == {
        "subscribers": 10,
        "messages": 200,
        "rate": 2000,
        "src_ips": 1,
        "hold_s": None,
    }
    assert a["figures"]["deliveries"] == 200  # each of 10 gets its channel's 20
    assert d["figures"]["deliveries"] == d["parameters"]["subscribers"] == 190


@pytest.mark.timeout(60)
def test_bench_runs_each_load_several_times(tmp_path, sseload):
    """--runs 2: each load twice, the table shows medians, each run is kept."""
    out = tmp_path / "bench.json"
    run = bench(
        "run",
        "--scale",
        "0.01",
        "--loads",
        "D",
        "--runs",
        "2",
        "--json",
        str(out),
        timeout=50,
    )
    assert run.returncode == 0, run.stderr
    (load,) = json.loads(out.read_text())["loads"]
    assert len(load["runs"]) == 2
    assert [r["deliveries"] for r in load["runs"]] == [190, 190]
    assert load["figures"]["deliveries"] == 190
    assert load["figures"]["lost"] == 0
    assert "D: medians of 2 runs; last deliv ms, lost, not_streaming in each run: " in (
        run.stdout
    )


@pytest.mark.timeout(60)
def test_floor_bench_tiny_run(tmp_path, sseload):
    """bench/run.py --server floor: the C floor server, built, measured, stopped."""
    out = tmp_path / "floor.json"
    run = bench(
        "run",
        "--server",
        "floor",
        "--scale",
        "0.01",
        "--loads",
        "A,D",
        "--json",
        str(out),
        timeout=50,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("floor (bench/floor, minimal C epoll server)")

    report = json.loads(out.read_text())
    assert report["server"] == "floor"
    a, d = report["loads"]
    for load in (a, d):
        assert load["figures"]["lost"] == 0, load["notes"]
        assert load["figures"]["stop_reason"] == "complete", load["notes"]
        assert load["server"]["log_problems"] == []
    assert a["figures"]["deliveries"] == 200
    assert d["figures"]["deliveries"] == 190


@pytest.mark.timeout(120)
def test_cluster_bench_tiny_run(tmp_path, sseload):
    """bench/cluster.py: load B standalone, with --redis, with --workers 2."""
    out = tmp_path / "cluster.json"
    run = bench(
        "cluster", "--runs", "1", "--scale", "0.01", "--json", str(out), timeout=110
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["runs"]] == ["standalone", "redis", "workers 2"]
    for result in report["runs"]:
        # 100 subscribers on 10 channels, 10 messages, each to 10 of them.
        assert result["lost"] == 0, result
        assert result["log_problems"] == [], result
    assert [row["config"] for row in report["summary"]] == [
        "standalone",
        "redis",
        "workers 2",
    ]
    assert "Redis adds ms/event" in run.stdout


@pytest.mark.timeout(120)
def test_cluster_bench_burst(tmp_path, sseload):
    """bench/cluster.py --load D: one broadcast, with the time to its last delivery."""
    out = tmp_path / "cluster.json"
    run = bench(
        "cluster",
        "--runs",
        "1",
        "--scale",
        "0.01",
        "--load",
        "D",
        "--configs",
        "standalone,workers 2",
        "--json",
        str(out),
        timeout=110,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("load D at scale 0.01: 190 subscribers")
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["runs"]] == ["standalone", "workers 2"]
    for result in report["runs"]:
        assert result["lost"] == 0, result
        assert result["last_delivery_ms"] > 0, result
        assert result["log_problems"] == [], result
