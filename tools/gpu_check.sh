#!/usr/bin/env bash
# The GPU checks of issues 14 and 22, as one script (at most ~15 minutes on one H100/H200: every stage has a
# limit):
#   1. environment (nvidia-smi, torch, CUDA);
#   2. CPU vs GPU equality of BCR-Net's forward and gradients with TF32 off (fp32, α = 40, 128×128);
#   3. tools/bench_model.py on the GPU: old vs new eager, torch.compile, CUDA graphs (compile
#      mode="reduce-overhead", measured only), fp32 and bf16 autocast — ms/step, launches (aten operators and
#      CUDA kernels), peak memory, roofline — and a short bf16-vs-fp32 training;
#   3b. the train step of every registered network at the study's shape (tools/bench_model.py --network all:
#      100 × 100 far field and image, the study's sizes, batch 32, fp32 and bf16 autocast, NAdam) — GFLOP and
#      ms per sample, fraction of the fp32 (bf16) matmul roofline measured in the same run;
#   4. DDP over NCCL with 1 process (torchrun): DDP and DDP + torch.compile equal the plain step, and a NaN
#      loss survives the all-reduce (the trainer's NaN guard relies on it);
#   5. `bcrdist train` on the GPU through torchrun (tools/bench_train.py --ranks 1 --torchrun, eager,
#      bf16-mixed);
#   6. the torch scattering solver (issue 22): a. device vs CPU far fields in float64 (≤ 1e-10) and complex64
#      against the Mie series of an absorbing disc; b. seconds per sample at the study's size (n = 100, 100
#      directions; numpy backend, torch batch 1 and 8 on the device, interleaved) and `bcrdist generate
#      --device` with one device against the same on the CPU.
# Everything printed is also kept under $OUT (default /tmp/bcrdist-gpu-check): log.txt, bench_model.json,
# bench_networks.json.
#
#     tools/gpu_check.sh                      # on a GPU machine
#     GPU_CHECK_DEVICE=cpu tools/gpu_check.sh # the same stages on the CPU at small sizes: checks the script
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-/tmp/bcrdist-gpu-check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
FAILED=()
START=$SECONDS

if [ "$DEVICE" = cuda ]; then
    SIZE=128; ALPHA=40; ROUNDS=5; STEPS=20; TRAIN_STEPS=200; TRAIN_SIZE=64; TRAIN_EPOCHS=3; BACKEND=nccl
    GEN_N=100; GEN_SAMPLES=8
    NETWORK_ARGS=(--size 100 --batch 32 --rounds 5 --steps 5)
else
    SIZE=32; ALPHA=4; ROUNDS=2; STEPS=1; TRAIN_STEPS=10; TRAIN_SIZE=32; TRAIN_EPOCHS=1; BACKEND=gloo
    GEN_N=32; GEN_SAMPLES=8
    # 48: the smallest far field the study CNN's four conv+pool blocks take
    NETWORK_ARGS=(--size 48 --alpha 4 --batch 2 --rounds 1 --steps 1 --threads 2)
fi
TORCHRUN_BIN="$(dirname "$PY")/torchrun"

# stage NAME SECONDS COMMAND...: run COMMAND (a program or one of the functions below) with a time limit,
# log it, remember a failure and go on
stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at $((SECONDS - START))s)" | tee -a "$LOG"
    timeout "$limit" bash -c '"$@"' stage "$@" 2>&1 | grep -v '^USDT' | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "=== $name FAILED (exit $rc)" | tee -a "$LOG"
        FAILED+=("$name")
    fi
}

env_report() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    fi
    "$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}, "
      f"devices {torch.cuda.device_count()}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
EOF
}

equality() {
    "$PY" - "$DEVICE" "$SIZE" "$ALPHA" <<'EOF'
import copy
import sys

import torch
from bcrdist.models import BCRNet

device, n, alpha = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
net = BCRNet((n, n), (n, n), alpha=alpha)
gen = torch.Generator().manual_seed(1)
x = torch.randn(8, n, n, generator=gen)
probe = torch.randn(8, n, n, generator=gen)


def run(model, x, probe):
    x = x.clone().requires_grad_()
    out, aux = model(x, return_aux=True)
    grads = torch.autograd.grad((out * probe).sum() + aux.square().sum(), [x, *model.parameters()])
    return [out.detach(), aux.detach(), *grads]


ref = run(net, x, probe)
# the other side: the GPU in fp32 with TF32 off; on a CPU-only check of this script, the CPU in float64
if device == "cuda":
    got = run(copy.deepcopy(net).cuda(), x.cuda(), probe.cuda())
else:
    got = run(copy.deepcopy(net).double(), x.double(), probe.double())
names = ["output", "aux", "grad input"] + [f"grad {k}" for k, _ in net.named_parameters()]
worst = max(float((g.cpu().float() - r).abs().max() / r.abs().max()) for g, r in zip(got, ref))
print(f"CPU fp32 vs {'GPU fp32 (TF32 off)' if device == 'cuda' else 'CPU fp64'}: max relative difference "
      f"{worst:.2e} over {len(names)} tensors (output, aux, every gradient)")
sys.exit(0 if worst < 1e-5 else 1)
EOF
}

ddp_check() {
    cat >"$OUT/ddp_check.py" <<'EOF'
"""DDP over one process: DDP and DDP + torch.compile give the plain step's parameters; NaN survives all_reduce."""
import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from types import SimpleNamespace

from bcrdist.models import BCRNet
from bcrdist.train.optim import make_optimizer

backend, n, alpha = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
cfg = SimpleNamespace(optim=SimpleNamespace(name="nadam", weight_decay=0.0))
torch.manual_seed(0)
base = BCRNet((n, n), (n, n), alpha=alpha, n_cnn=3, n_cnn3=3).to(device)
gen = torch.Generator().manual_seed(1)
batches = [(torch.randn(16, n, n, generator=gen).to(device), torch.randn(16, n, n, generator=gen).to(device))
           for _ in range(4)]


def train(wrap):
    net = copy.deepcopy(base)
    model = wrap(net)
    opt = make_optimizer(cfg, net.parameters(), 1e-3)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        both = torch.stack([loss.detach().double(), loss.new_zeros((), dtype=torch.float64)])
        dist.all_reduce(both)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


plain = train(lambda m: m)
for label, wrap in (("DDP", lambda m: DDP(m)), ("DDP + torch.compile", lambda m: torch.compile(DDP(m)))):
    got = train(wrap)
    worst = max(float((a - b).abs().max()) for a, b in zip(got, plain))
    print(f"{backend}, world size {dist.get_world_size()}: {label} vs plain after {len(batches)} NAdam steps: "
          f"max |Δparameter| {worst:.1e}")
    assert worst < 1e-6, label
nan = torch.tensor([float("nan"), 0.0], dtype=torch.float64, device=device)
dist.all_reduce(nan)
assert torch.isnan(nan[0]), "NaN lost in all_reduce"
print("NaN loss survives the all_reduce: yes")
dist.destroy_process_group()
EOF
    "$TORCHRUN_BIN" --standalone --nproc-per-node=1 "$OUT/ddp_check.py" "$BACKEND" "$TRAIN_SIZE" 8
}

solver_equality() {
    "$PY" - "$DEVICE" <<'EOF'
"""The torch solver on the device against the CPU: float64 far fields (≤ 1e-10 relative to the largest entry),
and complex64 against the Mie series of an absorbing disc (beside complex128's discretisation error)."""
import sys

import numpy as np
import torch

from bcrdist.config import load_config
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.mie import mie_far_field
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.scatterers import KIND_ELLIPSE, Scatterer
from bcrdist.physics.solver_torch import TorchScatteringSolver

device = sys.argv[1]
torch.set_num_threads(1)
ok = True
for name, overrides in (("study discs", []), ("strong discs", ["family.discs.contrast=[1.5,2.0]"]),
                        ("absorbing discs", ["family.absorption=[1.0]"]), ("shepp_logan", ["family.name=shepp_logan"])):
    cfg = load_config("configs/data/study_discs.yaml", GenerationConfig, overrides)
    maker = SampleMaker(cfg)
    etas = np.stack([maker.scatterer(i).contrast_raster(cfg.n, cfg.box, cfg.family.supersample) for i in range(6)])
    angles = 2 * np.pi * np.arange(cfg.Na - 1) / (cfg.Na - 1)
    far = {d: TorchScatteringSolver(cfg.n, cfg.k, angles, angles, box=cfg.box, tol=cfg.solver.tol,
                                    device=d).solve(etas)[0] for d in ("cpu", device)}
    diff = float(np.abs(far[device] - far["cpu"]).max() / np.abs(far["cpu"]).max())
    ok &= diff <= 1e-10
    print(f"torch solver, complex128, {name}: {device} vs cpu max relative difference {diff:.1e} (≤ 1e-10)")
k, a, eta0, centre = 8 * np.pi, 0.3, 0.2 * (1 + 1j), np.array([0.05, -0.03])
rec = 2 * np.pi * np.arange(32) / 32
ref = mie_far_field(k, a, eta0, centre, rec, rec[::4])
for n in (32, 64):
    disc = Scatterer("discs", np.array([[KIND_ELLIPSE, 0.2, *centre, a, a, 0.0]]), 0.45, clip=False, smooth=False,
                     absorption=1.0).contrast_raster(n, 1.0, 8)
    err = {p: np.linalg.norm(TorchScatteringSolver(n, k, rec[::4], rec, tol=1e-10 if p == "complex128" else 1e-5,
                                                   device=device, precision=p).far_field(disc) - ref)
           / np.linalg.norm(ref) for p in ("complex128", "complex64")}
    ok &= abs(err["complex64"] - err["complex128"]) < 1e-3 * err["complex128"]
    print(f"absorbing disc vs Mie on {device}, n = {n}: complex128 {err['complex128']:.3e}, complex64 "
          f"{err['complex64']:.3e} (complex64 adds {abs(err['complex64'] - err['complex128']):.1e})")
sys.exit(0 if ok else 1)
EOF
}

generate_check() {
    # seconds per sample at the study's size (n = 100, 100 directions; the CPU check: n = 32)
    local study=(--set n="$GEN_N" --set Na="$GEN_N" --set image_size="$GEN_N")
    "$PY" tools/bench_generate.py --config configs/data/study_discs.yaml "${study[@]}" --backend numpy,torch \
        --batch 1,8 --device "$DEVICE" --samples "$GEN_SAMPLES" --repeats 3 || return 1
    # a small generation with one device, against the same on the CPU (torch backend both)
    local torch_backend=(--config configs/data/demo.yaml --set samples=16 --set samples_per_shard=8
                         --set solver.backend=torch --quiet --accuracy-samples 0)
    rm -rf "$OUT/generate" "$OUT/generate-cpu"
    "$PY" -m bcrdist generate "${torch_backend[@]}" --out "$OUT/generate" --device "$DEVICE" || return 1
    "$PY" -m bcrdist generate "${torch_backend[@]}" --out "$OUT/generate-cpu" --device cpu || return 1
    "$PY" - "$OUT/generate" "$OUT/generate-cpu" <<'EOF'
import json
import sys
from pathlib import Path

import h5py
import numpy as np

far = []
for out in map(Path, sys.argv[1:]):
    shards = json.loads((out / "manifest.json").read_text())["shards"]
    far.append(np.concatenate([h5py.File(out / s["file"], "r")["farfield"][...] for s in shards]))
diff = float(np.abs(far[0] - far[1]).max() / np.abs(far[1]).max())
print(f"bcrdist generate --device: {len(far[0])} samples; far fields vs --device cpu: {diff:.1e} (complex64 storage)")
sys.exit(0 if diff < 1e-6 else 1)
EOF
}

export PY DEVICE SIZE ALPHA OUT BACKEND TRAIN_SIZE TORCHRUN_BIN GEN_N GEN_SAMPLES
export -f env_report equality ddp_check solver_equality generate_check
stage "1 environment" 20 env_report
stage "2 CPU vs GPU equality (TF32 off)" 60 equality
stage "3 train step benchmark" 290 "$PY" tools/bench_model.py --device "$DEVICE" --size "$SIZE" --alpha "$ALPHA" \
    --rounds "$ROUNDS" --steps "$STEPS" --no-old-bf16 --train-steps "$TRAIN_STEPS" --train-size "$TRAIN_SIZE" \
    --out "$OUT/bench_model.json"
stage "3b train step of every network at the study's shape" 240 "$PY" tools/bench_model.py --network all \
    --device "$DEVICE" --precision fp32,bf16 "${NETWORK_ARGS[@]}" --out "$OUT/bench_networks.json"
stage "4 DDP over $BACKEND, 1 process (torchrun)" 70 ddp_check
stage "5 bcrdist train through torchrun" 50 "$PY" tools/bench_train.py --ranks 1 --torchrun --no-compile \
    --epochs "$TRAIN_EPOCHS" --samples 512 --size "$TRAIN_SIZE" --alpha 8
stage "6a torch solver: $DEVICE vs CPU, complex64 vs Mie" 120 solver_equality
stage "6b generation on the device: s/sample at the study's size, bcrdist generate --device" 300 generate_check

echo "=== done in $((SECONDS - START))s; failed stages: ${FAILED[*]:-none}; log: $LOG" | tee -a "$LOG"
[ ${#FAILED[@]} -eq 0 ]
