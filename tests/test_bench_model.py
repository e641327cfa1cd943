"""`tools/bench_model.py --network`: the train step of registered networks at a tiny size prints, per network,
its parameters, GFLOP per sample, ms per sample and the fraction of the roofline measured in the same run, and
profiles one step; an unknown network is one line and exit 2. Only the output's form is checked, never a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "bench_model.py"
COLUMNS = ["network", "precision", "parameters", "input", "GFLOP/sample", "ms/sample", "min–max", "samples/s", "GFLOP/s",
           "roofline"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def test_networks_at_a_tiny_size(tmp_path):
    # 48: the smallest size the study CNN's four conv+pool blocks take (a 48 × 96 far field)
    out = tmp_path / "bench.json"
    run = _run("--network", "bcrnet,cnn", "--size", "48", "--alpha", "4", "--batch", "2", "--rounds", "1",
               "--steps", "1", "--threads", "1", "--device", "cpu", "--precision", "fp32,bf16", "--profile", "3",
               "--out", str(out))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("network "))
    assert header.split() == COLUMNS
    for name, shape in (("bcrnet", "48×48"), ("cnn", "48×96")):  # BCR-Net reads Re F, the others Re and Im
        rows = [line.split() for line in lines if line.startswith(name + " ") and "operators" not in line]
        assert [row[1] for row in rows] == ["fp32", "bf16"]
        for row in rows:
            assert row[3] == shape and row[-1].endswith("%")
            assert float(row[4]) > 0 and float(row[5]) > 0
        assert rows[0][4] == rows[1][4]                      # the same operations counted for both precisions
        for precision in ("fp32", "bf16"):
            assert f"{name} ({precision}): top 3 operators" in run.stdout
    assert "fp32 matmul roofline" in run.stdout and "bf16 matmul roofline" in run.stdout
    result = json.loads(out.read_text())["devices"][0]
    assert [(r["network"], r["precision"]) for r in result["rows"]] == [
        ("bcrnet", "fp32"), ("bcrnet", "bf16"), ("cnn", "fp32"), ("cnn", "bf16")]
    assert all(0 < r["roofline"] and r["gflop_per_sample"] > 0 for r in result["rows"])
    assert [len(result["profiles"][n]) for n in ("bcrnet fp32", "cnn bf16")] == [3, 3]


def test_unknown_network_is_one_line():
    run = _run("--network", "cnnn", "--device", "cpu")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--network" in run.stderr and "cnn" in run.stderr


def test_unknown_precision_is_one_line():
    run = _run("--network", "cnn", "--precision", "fp16", "--device", "cpu")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--precision" in run.stderr and "fp16" in run.stderr
