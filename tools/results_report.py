#!/usr/bin/env python
"""Accuracy tables for docs/results.md: a trained BCR-Net vs the Born baseline, in and out of distribution.

    python tools/results_report.py --checkpoint RUN/checkpoints/best.pt --data DATA \\
        [--split test] [--val-split val] [--noise 0,1,5,10] \\
        [--ood-config shapes=configs/data/demo_shapes.yaml --ood-config shepp_logan=configs/data/demo_shepp.yaml] \\
        [--ood NAME=DIR] [--work DIR] [--title "Demo tier"]

For every noise level it runs `bcrdist evaluate` (BCR-Net) and `bcrdist baseline` (Tikhonov-regularised Born
inversion, λ chosen on DATA's validation split at the same noise level) on DATA's test split. Each
out-of-distribution set — an existing data set (`--ood NAME=DIR`) or one generated here from a data config
(`--ood-config NAME=CONFIG`, written to WORK/data-NAME; `bcrdist generate` resumes, so re-running costs nothing)
— is evaluated whole (split 'all') at the `--ood-noise` levels, the baseline's λ again chosen on DATA's
validation split (neither method sees the test family). Every command is printed, exactly as run, before it
runs; the Markdown tables (with the commands) go to stdout and WORK/results.md, everything to WORK/results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def bcrdist_command() -> list[str]:
    """How to call the CLI: `bcrdist` when the one on PATH belongs to this Python's environment, else
    `python -m bcrdist` with this interpreter (so the commands printed are exactly the ones run)."""
    exe = shutil.which("bcrdist")
    if exe and Path(exe).absolute().parent == Path(sys.executable).absolute().parent:
        return ["bcrdist"]
    return [sys.executable, "-m", "bcrdist"]


class Runner:
    def __init__(self, dry_run: bool = False):
        self.base = bcrdist_command()
        self.commands: list[str] = []
        self.dry_run = dry_run

    def __call__(self, *args: str) -> str:
        cmd = self.base + [str(a) for a in args]
        text = shlex.join(cmd)
        self.commands.append(text)
        print(f"$ {text}", flush=True)
        if not self.dry_run:
            subprocess.run(cmd, check=True)
        return text


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"results_report: {what} must be NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def parse_levels(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"results_report: noise levels must be comma-separated numbers, got {text!r}") from None


def family_of(data: str) -> str:
    try:
        manifest = json.loads((Path(data) / "manifest.json").read_text())
        return manifest["provenance"]["config"]["family"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def run_info(checkpoint: str) -> dict:
    """The checkpoint's sha256 and, when the run folder has them, its config file and training summary."""
    path = Path(checkpoint)
    info = {"checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None}
    run_dir = path.resolve().parent.parent
    if (run_dir / "config.yaml").is_file():
        info["run_config"] = str(run_dir / "config.yaml")
    try:
        res = json.loads((run_dir / "results.json").read_text())
        info["training"] = {key: res.get(key) for key in ("parameters", "world_size", "epochs", "steps",
                                                           "best_epoch", "n_train", "wall_time_s")}
    except (OSError, ValueError):
        pass
    return info


def evaluate_pair(run: Runner, work: Path, tag: str, checkpoint: str, data: str, split: str, noise: float,
                  val_data: str, val_split: str, plots: int) -> dict:
    """Run BCR-Net's evaluation and the baseline on one (data, split, noise); returns both metrics."""
    label = f"{tag}-noise{noise:g}"
    eval_dir = work / f"eval-{label}"
    base_json = work / f"baseline-{label}.json"
    cmd_eval = run("evaluate", "--checkpoint", checkpoint, "--data", data, "--split", split, "--noise", f"{noise:g}",
                   "--out", eval_dir, "--plots", str(plots))
    cmd_base = run("baseline", "--data", data, "--split", split, "--val-data", val_data, "--val-split", val_split,
                   "--noise", f"{noise:g}", "--out", base_json)
    if run.dry_run:
        return {"noise": noise, "commands": [cmd_eval, cmd_base]}
    bcr = json.loads((eval_dir / "metrics.json").read_text())
    base = json.loads(base_json.read_text())
    return {"noise": noise, "data": data, "split": split, "family": family_of(data),
            "bcrnet": bcr["metrics"], "baseline": base["metrics"], "lambda": base["lambda"],
            "lambda_relative": base["lambda_relative"], "baseline_val_weighted": base.get("val_weighted"),
            "eval_dir": str(eval_dir), "baseline_json": str(base_json), "commands": [cmd_eval, cmd_base]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(doc: dict) -> str:
    lines = [f"## {doc['title']}", ""]
    lines += [f"Checkpoint `{doc['checkpoint']}`, data `{doc['data']}` (split `{doc['split']}`, "
              f"λ of the baseline chosen on split `{doc['val_split']}` of the same data at each noise level); "
              f"made {doc['date']}."]
    info = doc.get("run", {})
    extra = []
    if info.get("checkpoint_sha256"):
        extra.append(f"checkpoint sha256 `{info['checkpoint_sha256'][:16]}…`")
    if info.get("run_config"):
        extra.append(f"run config `{info['run_config']}`")
    t = info.get("training") or {}
    if t.get("parameters"):
        extra.append(f"{t['parameters']} parameters, {t.get('n_train')} training samples, {t.get('epochs')} "
                     f"epochs on {t.get('world_size')} process(es), {t.get('wall_time_s') or 0:.0f} s")
    if extra:
        lines += ["Run: " + "; ".join(extra) + "."]
    lines += [""]
    head = ("| {key} | samples | BCR-Net weighted | Born weighted | BCR-Net rel. L2 | Born rel. L2 | "
            "BCR-Net PSNR | Born PSNR | Born λ/σ_max² |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

    def row(first: str, r: dict) -> str:
        b, z = r["bcrnet"], r["baseline"]
        return (f"| {first} | {b['weighted']['count']} | {_pct(b['weighted']['mean'])} | "
                f"{_pct(z['weighted']['mean'])} | {_pct(b['rel_l2']['mean'])} | {_pct(z['rel_l2']['mean'])} | "
                f"{b['psnr']['mean']:.1f} dB | {z['psnr']['mean']:.1f} dB | {r['lambda_relative']:.2g} |")

    lines += ["### In distribution: noise", "", head.format(key="noise"), sep]
    lines += [row(f"{r['noise']:g} %", r) for r in doc["in_distribution"]]
    if doc["out_of_distribution"]:
        lines += ["", "### Out of distribution (trained on the data above, tested on other families)", "",
                  head.format(key="test set (family, noise)"), sep]
        lines += [row(f"{r['name']} ({r['family']}, {r['noise']:g} %)", r) for r in doc["out_of_distribution"]]
    lines += ["", "Means over the samples; weighted = radius-weighted relative error (w_j = 2j + 1), rel. L2 = "
              "unweighted relative L2 error, PSNR in BCR-Net's training units (pixel max 2). Made by", "",
              "```", doc["report_command"], "```", "", "which ran, in order:", "", "```"]
    lines += doc["commands"] + ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="trained BCR-Net checkpoint (RUN/checkpoints/best.pt)")
    p.add_argument("--data", required=True, help="the in-distribution data set the checkpoint was trained on")
    p.add_argument("--split", default="test", help="in-distribution test split (default test)")
    p.add_argument("--val-split", default="val", help="split of --data that chooses the baseline's λ (default val)")
    p.add_argument("--noise", default="0,1,5,10", help="noise levels in percent (default 0,1,5,10)")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=DIR",
                   help="an existing out-of-distribution data set (evaluated on split 'all')")
    p.add_argument("--ood-config", action="append", default=[], metavar="NAME=CONFIG",
                   help="generate an out-of-distribution set from this data config into WORK/data-NAME")
    p.add_argument("--ood-noise", default="0", help="noise levels for the out-of-distribution sets (default 0)")
    p.add_argument("--work", default="runs/results-report", help="folder for evaluations, generated sets and the "
                                                            "report (default runs/results-report)")
    p.add_argument("--title", default="Results", help="heading of the Markdown section")
    p.add_argument("--plots", type=int, default=4, help="samples plotted by each `bcrdist evaluate`")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = p.parse_args(argv)
    report_command = shlex.join(["python", "tools/results_report.py", *(sys.argv[1:] if argv is None else argv)])

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(args.dry_run)
    start = time.monotonic()
    ood = parse_pairs(args.ood, "--ood")
    for name, config in parse_pairs(args.ood_config, "--ood-config").items():
        out = work / f"data-{name}"
        run("generate", "--config", config, "--out", out, "--quiet")
        ood[name] = str(out)

    doc = {"title": args.title, "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
           "val_split": args.val_split, "date": time.strftime("%Y-%m-%d"), "in_distribution": [],
           "out_of_distribution": [], "run": run_info(args.checkpoint), "report_command": report_command}
    for noise in parse_levels(args.noise):
        doc["in_distribution"].append(evaluate_pair(run, work, "id", args.checkpoint, args.data, args.split, noise,
                                                    args.data, args.val_split, args.plots))
    for name, data in ood.items():
        for noise in parse_levels(args.ood_noise):
            r = evaluate_pair(run, work, f"ood-{name}", args.checkpoint, data, "all", noise, args.data,
                              args.val_split, args.plots)
            r["name"] = name
            doc["out_of_distribution"].append(r)
    doc["commands"] = run.commands
    doc["seconds"] = time.monotonic() - start
    if args.dry_run:
        return 0
    text = markdown(doc)
    (work / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (work / "results.md").write_text(text)
    print()
    print(text)
    print(f"results_report: {work / 'results.md'} and {work / 'results.json'} ({doc['seconds']:.0f} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
