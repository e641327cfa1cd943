"""`bcrdist demo`: the whole pipeline on a small built-in default, each step a real command.

1. generate the data set (`bcrdist generate`, under `mpiexec -n NPROC` when mpi4py and mpiexec are installed;
   resumes if present),
2. statistics and, when the data set has none yet, splits (`bcrdist stats`, `bcrdist split`; the steps are
   numbered as they run, 1/6 … 6/6 with the splits step, 1/5 … 5/5 without),
3. train with NPROC processes (`torchrun --standalone --nproc-per-node NPROC -m bcrdist train ... --resume auto`),
4. evaluate on the test split with plots (`bcrdist evaluate`),
5. the linear Born-inversion baseline on the same split (`bcrdist baseline`),
then print where the plots and results are and the errors reached. Every command is printed before it runs;
commands are launched by the rule `bcrdist matrix` uses as well (`bcrdist.launch.steps`: this environment's
`bcrdist`, `torchrun` and `mpiexec`, so the same interpreter runs every step).
The configs come with the package (`find_config`), so the demo runs from an installed wheel anywhere;
`--dir DIR` puts the data and the run directory inside DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bcrdist.config import find_config, load_config
from bcrdist.errors import BcrdistError
from bcrdist.launch.steps import launch_prefix, run_command, shown
from bcrdist.train.config import TrainConfig

class StepFailed(BcrdistError):
    """A pipeline step exited non-zero."""


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml",
                   help="training config (default configs/demo.yaml; a path not found here is looked up in "
                        "bcrdist's packaged configs)")
    p.add_argument("--data-config", default="configs/data/demo.yaml",
                   help="data-generation config (default configs/data/demo.yaml, looked up the same way)")
    p.add_argument("--dir", metavar="DIR",
                   help="put the data set and the run inside DIR (the config's relative data.path and run_dir "
                        "are taken in DIR; default: the current directory)")
    p.add_argument("--nproc", type=int, default=2, help="processes for generation and training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override (repeatable)")
    p.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data config override, e.g. --data-set samples=256 (repeatable)")
    p.add_argument("--val", type=int, default=128, help="validation samples taken from the training part")


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}\n$ {shown(cmd)}", flush=True)
    t0 = time.time()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    status = run_command(cmd, env)
    if status != 0:
        raise StepFailed(f"step '{title}' failed with exit status {status}: {shown(cmd)}")
    print(f"   ({time.time() - t0:.0f} s)", flush=True)


def _inside(directory: str | None, path: str) -> Path:
    return Path(directory) / path if directory and not Path(path).is_absolute() else Path(path)


def run_demo(args: argparse.Namespace) -> int:
    config, data_config = find_config(args.config), find_config(args.data_config)
    cfg = load_config(config, TrainConfig, args.overrides)
    data, run_dir = _inside(args.dir, cfg.data.path), _inside(args.dir, cfg.run_dir)
    overrides = list(args.overrides) + ([f"data.path={data}", f"run_dir={run_dir}"] if args.dir else [])
    py = launch_prefix("stats", 1)
    t0 = time.time()
    # the splits step runs only when the data set has none yet: the steps are numbered as they run
    write_splits = not (data / "splits" / "train.json").is_file()
    total = 6 if write_splits else 5
    numbers = iter(range(1, total + 1))

    def numbered(title: str) -> str:
        return f"{next(numbers)}/{total} {title}"

    gen = launch_prefix("generate", args.nproc) + ["generate", "--config", str(data_config), "--out", str(data)]
    gen += [a for kv in args.data_overrides for a in ("--set", kv)]
    step(numbered("generate the data set"), gen)
    step(numbered("statistics"), py + ["stats", str(data)])
    if write_splits:
        step(numbered("splits"), py + ["split", str(data), "--percent", "0.8", "--val", str(args.val)])

    train = launch_prefix("train", args.nproc) + ["train", "--config", str(config), "--resume", "auto"]
    train += [a for kv in overrides for a in ("--set", kv)]
    step(numbered(f"train BCR-Net with {args.nproc} processes"), train)

    eval_dir = run_dir / "eval-test"
    step(numbered("evaluate on the test split"),
         py + ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--data", str(data),
               "--split", "test", "--out", str(eval_dir)])
    baseline_json = run_dir / "born_baseline.json"
    step(numbered("Born-inversion baseline on the test split"),
         py + ["baseline", "--data", str(data), "--split", "test", "--out", str(baseline_json)])

    bcr = json.loads((eval_dir / "metrics.json").read_text())["metrics"]["weighted"]["mean"]
    born = json.loads(baseline_json.read_text())["metrics"]["weighted"]["mean"]
    print(f"\nDemo finished in {time.time() - t0:.0f} s.")
    print(f"  test radius-weighted relative error: BCR-Net {bcr:.4f}, Born baseline {born:.4f}")
    print(f"  results:  {run_dir / 'results.json'}, {eval_dir / 'metrics.json'}, {baseline_json}")
    print(f"  plots:    {eval_dir / 'samples.png'}, {eval_dir / 'error_histogram.png'}, "
          f"{eval_dir / 'training_curves.png'}")
    print(f"  model:    {run_dir / 'checkpoints' / 'best.pt'}  (bcrdist.load_model(...).predict_eta(measure))")
    return 0
