"""`bcrdist.train.process_setup.keep_freed_memory` (`runtime.host_memory`): with it, a process that runs train
steps of the study's CNN (activations of 73 MB) reuses the pages of the previous steps — counted as minor page
faults by the kernel, in a fresh process each — and computes the same bits; without it (the C library's
defaults) every step faults its large activations in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STEPS = r"""
import json, resource, sys
import torch
from bcrdist.models.study_cnn import CNN
from bcrdist.train.process_setup import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
net = CNN((64, 128), (64, 64))                       # first activation (16, 296, 62, 62): 73 MB
opt = torch.optim.Adam(net.parameters(), 1e-3)
x, y = torch.randn(16, 64, 128), torch.randn(16, 64, 64)
def step():
    opt.zero_grad()
    loss = ((net(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()
losses = [step() for _ in range(2)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
losses += [step() for _ in range(3)]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults, "losses": losses,
                  "weights": float(sum(p.double().sum() for p in net.parameters()))}))
"""


def _steps(mode: str) -> dict:
    run = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults_and_changes_no_bit():
    release, keep = _steps("release"), _steps("keep")
    assert keep["applied"] is True                                     # glibc, as on every Linux machine here
    # three steps of 4 × 73 MB activations and more: ~400k faults of 4 KiB pages with the defaults
    assert release["faults"] > 100_000
    assert keep["faults"] < release["faults"] / 20
    assert keep["losses"] == release["losses"] and keep["weights"] == release["weights"]


def test_bench_tool_at_a_tiny_size():
    """tools/bench_host_memory.py: both settings in fresh processes; only the output's form is checked."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_host_memory.py"
    run = subprocess.run([sys.executable, str(tool), "--network", "cnn", "--size", "48", "--batch", "2",
                          "--rounds", "1", "--steps", "1", "--threads", "1"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("cnn ")).split()
    assert float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("×") and row[-1] == "GB"
    assert "did not take effect" not in run.stdout
    bad = subprocess.run([sys.executable, str(tool), "--network", "cnnn"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--network" in bad.stderr
