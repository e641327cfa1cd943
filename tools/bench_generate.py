"""Benchmark of the data generator at a data tier (default: configs/data/default.yaml, n = 64, k = 8π, Na = 64).

Seconds per sample of
  - the batched solver (GMRES on the kept angular modes of the incident fields at once; 1 and 2 torch
    threads), and the same on all Na incident directions (no compression),
  - a per-direction GMRES loop (the same solver, one incident direction per solve),
  - a dense direct solve (LU of the (S×S) Lippmann–Schwinger matrix on the S cells of η's bounding block),
with the accuracy each reaches (far field relative to the dense solve, i.e. the algebraic error) and the
discretisation error of the tier (n against 2n), then `bcrdist generate` with P = 1 and P = 2 MPI ranks.
All ratios come from this one run; the machine's load shows in the numbers, so run it on an idle machine.

    .venv/bin/python tools/bench_generate.py [--config configs/data/default.yaml] [--samples 6] [--mpi-samples 24]

Batched timings are the fastest of --repeats passes; the others run once.

With --backend numpy,torch it compares the solver backends instead (`solver.backend`, issue 22): whole samples
(`SampleMaker.many`, raster to arrays) per backend, interleaved in one process (the order alternates every
round), the median seconds per sample of --repeats rounds, the ratios to the first backend, and the largest
far-field difference to the first backend (solver outputs in float64, relative to the largest entry):

    .venv/bin/python tools/bench_generate.py --config configs/data/demo.yaml --backend numpy,torch --batch 1,8
    .venv/bin/python tools/bench_generate.py --config configs/data/study_discs.yaml --set n=100 --set Na=100 \
        --set image_size=100 --backend numpy,torch --samples 4 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from bcrdist.config import load_config
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.solver import ScatteringSolver

ROOT = Path(__file__).resolve().parents[1]

# Rank 0 prints the summary plus every rank's CPU seconds (inside generate()).
RUN_GENERATE = """
import json, sys, time
from bcrdist.config import load_config
from bcrdist.distributed.mpi import launched_by_mpi
from bcrdist.data.generate import generate
from bcrdist.physics.generation_config import GenerationConfig
cpu = time.process_time()
summary = generate(load_config(sys.argv[1], GenerationConfig, sys.argv[3:]), sys.argv[2], progress=False)
cpu = [time.process_time() - cpu]
rank = 0
if launched_by_mpi():
    from mpi4py import MPI
    rank, cpu = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.gather(cpu[0])
if rank == 0:
    print(json.dumps(dict(summary, cpu=cpu)))
"""


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CPU_SECONDS: dict[str, float] = {}  # process CPU seconds per item of the timings named by `timed(..., name=)`


def timed(fn, items, repeats: int = 1, name: str | None = None):
    """(results, seconds per item): the fastest of `repeats` passes, since other load only adds time.
    With `name`, the CPU seconds per item of that pass go to CPU_SECONDS[name] (less sensitive to other jobs)."""
    best = float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = [fn(x) for x in items]
        wall = (time.perf_counter() - start) / len(items)
        if wall < best:
            best = wall
            if name:
                CPU_SECONDS[name] = (time.process_time() - cpu) / len(items)
    return out, best


def _block_shape(eta: np.ndarray) -> tuple[int, int]:
    """Extent of the bounding block of η ≠ 0 (the solver's unknowns)."""
    rows, cols = np.flatnonzero(eta.any(axis=1)), np.flatnonzero(eta.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def dense_far_field(solver: ScatteringSolver, eta: np.ndarray) -> np.ndarray:
    """Far field (n_inc, n_rec) by LU of the dense matrix I − k² diag(η) T on η's bounding block."""
    n = solver.n
    rows, cols = np.flatnonzero(eta.any(axis=1)), np.flatnonzero(eta.any(axis=0))
    block = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    e = eta[block].ravel()
    my = block[1].stop - block[1].start
    i1, i2 = np.divmod(np.arange(e.size), my)
    t = solver.kernel.spatial[(i1[:, None] - i1[None, :]) % (2 * n), (i2[:, None] - i2[None, :]) % (2 * n)]
    a = np.eye(e.size) - solver.k ** 2 * e[:, None] * t
    inc = solver.incident.numpy().reshape(-1, n, n)[:, block[0], block[1]].reshape(len(solver.incident), -1)
    w = scipy.linalg.solve(a, (e * inc).T, overwrite_a=True, check_finite=False).T
    ff = solver.farfield_matrix.numpy().reshape(-1, n, n)[:, block[0], block[1]].reshape(-1, e.size)
    return w @ ff.T


def mpi_run(config: Path, samples: int, ranks: int, workdir: Path) -> tuple[float, float]:
    """`bcrdist generate` with `ranks` ranks: (wall seconds per sample inside generate(), CPU seconds per
    sample summed over the ranks)."""
    out = workdir / f"p{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    per_shard = max(1, samples // 8)
    cmd = [sys.executable, "-c", RUN_GENERATE, str(config), str(out), f"samples={samples}",
           f"samples_per_shard={per_shard}"]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "PMI_SIZE", "BCRDIST_MPI")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return summary["seconds"] / samples, sum(summary["cpu"]) / samples


def compare_backends(cfg: GenerationConfig, backends: list[str], batches: list[int], samples: int, rounds: int,
                     device: str) -> None:
    """Median seconds per whole sample of each (backend, batch), interleaved; ratios; far-field differences."""
    variants = [(b, n) for b in backends for n in (batches if b == "torch" else [1])]
    makers = {}
    for backend, batch in variants:
        solver = dataclasses.replace(cfg.solver, backend=backend, batch=batch)
        makers[backend, batch] = SampleMaker(dataclasses.replace(cfg, solver=solver),
                                             device if backend == "torch" else "cpu")

    def run(key):
        batch = key[1]
        return [a for first in range(0, samples, batch) for a in makers[key].many(first, min(batch, samples - first))]

    for key in variants:
        run(key)  # warm-up: kernel spectra, FFT plans, work buffers
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    for r in range(rounds):
        for key in (variants if r % 2 == 0 else variants[::-1]):
            start = time.perf_counter()
            run(key)
            times[key].append((time.perf_counter() - start) / samples)
    rasters = [makers[variants[0]].scatterer(i).contrast_raster(cfg.n, cfg.box, cfg.family.supersample)
               for i in range(samples)]
    reference = np.stack([makers[variants[0]].solver.far_field(eta) for eta in rasters])
    first = statistics.median(times[variants[0]])
    print(f"\n{'backend (whole samples, 1 thread)':36s} {'s/sample':>9s} {'× first':>8s} {'far field vs first':>19s}")
    for backend, batch in variants:
        solver = makers[backend, batch].solver
        if backend == "torch":
            far = np.concatenate([solver.solve(np.stack(rasters[i:i + batch]))[0] for i in range(0, samples, batch)])
        else:
            far = np.stack([solver.far_field(eta) for eta in rasters])
        diff = float(np.abs(far - reference).max() / np.abs(reference).max())
        t = statistics.median(times[backend, batch])
        label = f"{backend}" + (f", batch {batch}, {device}" if backend == "torch" else "")
        print(f"{label:36s} {t:9.4f} {t / first:8.3f} {diff:19.1e}")
    print(f"({samples} samples, median of {rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/data/default.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set n=100")
    parser.add_argument("--backend", default="", help="compare solver backends instead, e.g. numpy,torch")
    parser.add_argument("--batch", default="1", help="with --backend: torch batches (solver.batch), e.g. 1,8")
    parser.add_argument("--device", default="cpu", help="with --backend: the torch backend's device")
    parser.add_argument("--samples", type=int, default=6, help="samples for the solver comparison")
    parser.add_argument("--dense-samples", type=int, default=2, help="samples for the dense direct solve")
    parser.add_argument("--mpi-samples", type=int, default=24, help="samples for the P = 1, 2 runs (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of the batched timings (the fastest counts)")
    args = parser.parse_args()

    cfg = load_config(args.config, GenerationConfig, args.overrides)
    if args.backend:
        torch.set_num_threads(1)
        print(f"tier: n = {cfg.n}, k = {cfg.k_over_pi:g}π, Na = {cfg.Na}, family {cfg.family.name}, "
              f"GMRES tol {cfg.solver.tol:g}")
        compare_backends(cfg, args.backend.split(","), [int(b) for b in args.batch.split(",")], args.samples,
                         args.repeats, args.device)
        return 0
    maker = SampleMaker(cfg)
    scatterers = [maker.scatterer(i) for i in range(args.samples)]
    rasters = [s.raster(cfg.n, cfg.box, cfg.family.supersample) for s in scatterers]
    angles = 2 * np.pi * np.arange(cfg.Na) / cfg.Na
    print(f"tier: n = {cfg.n}, k = {cfg.k_over_pi:g}π, Na = {cfg.Na}, family {cfg.family.name}, "
          f"GMRES tol {cfg.solver.tol:g}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    torch.set_num_threads(1)
    maker.arrays(scatterers[0])  # warm-up: kernel spectra, FFT plans
    _, t_sample = timed(maker.arrays, scatterers, args.repeats, name="sample")
    batched, t_batched = timed(maker.solver.far_field, rasters, args.repeats)
    solved = len(maker.solver.last_iterations)
    it_batched = int(maker.solver.last_iterations.max())
    torch.set_num_threads(2)
    _, t_batched2 = timed(maker.solver.far_field, rasters, args.repeats)
    torch.set_num_threads(1)
    plain = ScatteringSolver(cfg.n, cfg.k, angles, angles, box=cfg.box, tol=cfg.solver.tol,
                             restart=cfg.solver.restart, max_iterations=cfg.solver.max_iterations, compress=False)
    uncompressed, t_plain = timed(plain.far_field, rasters, args.repeats)
    it_plain = int(plain.last_iterations.max())

    # The floor: one FFT pair per direction per iteration, at the solver's own size (η's padded block).
    spectrum = maker.solver.kernel.spectrum(*_block_shape(rasters[0]))
    buf = torch.zeros((cfg.Na, *spectrum.shape), dtype=torch.complex128)
    _, t_pair = timed(lambda _: torch.fft.ifft2(torch.fft.fft2(buf) * spectrum), range(10), args.repeats)
    t_floor = it_plain * t_pair

    singles = [ScatteringSolver(cfg.n, cfg.k, angles[a:a + 1], angles, box=cfg.box, tol=cfg.solver.tol,
                                restart=cfg.solver.restart, max_iterations=cfg.solver.max_iterations)
               for a in range(cfg.Na)]
    loop, t_loop = timed(lambda eta: np.concatenate([s.far_field(eta) for s in singles]), rasters)
    it_loop = max(int(s.last_iterations.max()) for s in singles)

    nd = min(args.dense_samples, args.samples)
    dense, t_dense = timed(lambda eta: dense_far_field(maker.solver, eta), rasters[:nd])

    def err(results):
        return max(rel(b, d) for b, d in zip(results, dense))

    rows = [
        (f"batched GMRES, {solved} angular modes, 1 thread", t_batched, err(batched), it_batched),
        ("  same, 2 threads", t_batched2, err(batched), it_batched),
        ("  same, whole sample (raster, layout, coe)", t_sample, err(batched), it_batched),
        (f"batched GMRES, all {cfg.Na} directions, 1 thread", t_plain, err(uncompressed), it_plain),
        ("per-direction GMRES loop, 1 thread", t_loop, err(loop), it_loop),
        ("dense LU direct solve (OpenBLAS threads)", t_dense, 0.0, None),
    ]

    fine = ScatteringSolver(2 * cfg.n, cfg.k, angles, angles, box=cfg.box, tol=cfg.solver.tol)
    disc = rel(batched[0], fine.far_field(scatterers[0].raster(2 * cfg.n, cfg.box, cfg.family.supersample)))

    print(f"\n{'method (far field of one sample)':46s} {'s/sample':>9s} {'× first':>8s} {'error vs dense':>15s} "
          f"{'GMRES it.':>10s}")
    for name, t, e, it in rows:
        print(f"{name:46s} {t:9.3f} {t / t_batched:8.2f} {e:15.1e} {'' if it is None else it:>10}")
    print(f"\nFFT floor (one FFT pair per direction per iteration, {it_plain} iterations, {cfg.Na} × "
          f"{spectrum.shape[0]}×{spectrum.shape[1]}): {t_floor:.3f} s/sample; all-direction solve "
          f"{t_plain / t_floor:.2f}×, angular modes {t_batched / t_floor:.2f}× that")
    print(f"discretisation error of the tier (far field at n = {cfg.n} vs n = {2 * cfg.n}, sample 0): {disc:.1e}")
    print(f"whole sample in one process, 1 thread: {t_sample:.3f} s wall, {CPU_SECONDS['sample']:.3f} s CPU "
          f"(target ≤ 0.2 s: {'met' if t_sample <= 0.2 else 'not met'})")

    if args.mpi_samples > 0:
        with tempfile.TemporaryDirectory() as tmp:
            (w1, c1), (w2, c2) = (mpi_run(Path(args.config), args.mpi_samples, p, Path(tmp)) for p in (1, 2))
        print(f"\nbcrdist generate, {args.mpi_samples} samples, 1 thread per rank (inside generate()):")
        print(f"  P = 1: {w1:.3f} s/sample wall, {c1:.3f} CPU s/sample")
        print(f"  P = 2: {w2:.3f} s/sample wall, {c2:.3f} CPU s/sample (all ranks)  speed-up {w1 / w2:.2f}×, "
              f"parallel efficiency by CPU time {c1 / c2:.2f}")
        print(f"  load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs slow P = 2 first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
