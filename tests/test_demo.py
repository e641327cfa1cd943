"""The README's first command at a reduced size: `bcrdist demo` generates, trains with 2 processes,
evaluates, runs the Born baseline and plots."""

from __future__ import annotations

import json

from train_helpers import bcrdist


def test_demo_pipeline_end_to_end(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    r = bcrdist("demo", "--set", f"run_dir={run}", "--set", f"data.path={data}",
                "--set", "schedule.epochs=2", "--set", "schedule.pretrain_stages=[[1, 1.0], [2, 0.5]]",
                "--set", "schedule.finetune_stages=[[2, 0.5]]", "--set", "data.n_valid=32",
                "--data-set", "samples=192", "--data-set", "samples_per_shard=64", "--val", "32", timeout=600)
    assert "Demo finished" in r.stdout and "Born baseline" in r.stdout
    # issue 21: each step numbered once (the splits step came out as a second "2/5")
    titles = [line[3:].split(" ", 1)[0] for line in r.stdout.splitlines() if line.startswith("== ")]
    assert titles == [f"{i}/6" for i in range(1, 7)], r.stdout
    for path in (data / "manifest.json", data / "splits" / "test.json", run / "results.json",
                 run / "checkpoints" / "best.pt", run / "eval-test" / "metrics.json",
                 run / "eval-test" / "samples.png", run / "eval-test" / "error_histogram.png",
                 run / "eval-test" / "training_curves.png", run / "born_baseline.json"):
        assert path.is_file(), path
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = float(rows[0]["val_error"])
    assert min(float(r["val_error"]) for r in rows) < start
    log = (run / "train.log").read_text()
    assert "2 rank(s) via torchrun" in log and "freed host memory: kept for reuse" in log
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["num_samples"] == 192
