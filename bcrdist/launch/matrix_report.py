"""The results of an accuracy matrix: the errors of every method, seed and condition read from the steps'
outputs, the Markdown section (set-up, runs, one table of errors with the verdict "beats Born" per row, the
plots, the commands), and its place in a results file between the spec's markers.

With several seeds a method's cell is the mean over seeds of its mean error on the test set, ± the standard
deviation over seeds.
"""

from __future__ import annotations

import io
import shlex
import time
from pathlib import Path

import yaml

from bcrdist.data.discretisation import describe
from bcrdist.fileio import atomic_write_bytes, atomic_write_json, json_safe
from bcrdist.launch.matrix import Matrix, MatrixError, _g
from bcrdist.launch.matrix_spec import Spec
from bcrdist.launch.outputs import read_json
from bcrdist.paired import compare_seeds, over_seeds

VERDICT_RULE = ("Beats Born: for each seed, the Wilcoxon signed-rank test (two-sided, level 0.05) of the "
                "per-sample differences between the best network (lowest mean error) and the best Born on the same "
                "test samples; \"yes\" when the network is significantly better, \"no\" when Born is, else \"tie\"; "
                "over seeds \"yes\" (\"no\") only when every seed says so (`bcrdist.paired`).")

METRICS = {"rel_l2": "rel. L2", "rel_l1": "rel. L1", "weighted": "weighted"}


def _read(path: Path) -> dict:
    doc, problem = read_json(path)
    if problem:
        raise MatrixError(problem)
    return doc


def collect(matrix: Matrix) -> dict:
    """Per (method, condition): each seed's mean of every metric and its samples' count; the runs' facts; the
    data's facts."""
    spec = matrix.spec
    errors: dict[str, dict[str, dict]] = {}
    for m in spec.methods:
        errors[m.name] = {}
        for c in matrix.conditions:
            seeds = []
            for run in matrix.runs_of(m):
                path = matrix.output(m, c, run)
                doc = _read(path)
                found = doc.get("metrics", {})
                row = {"seed": None if run is None else run.seed, "path": str(path)}
                for metric in spec.metrics:
                    if metric not in found:
                        raise MatrixError(f"metrics: {metric!r} is not in {path} (it has {sorted(found)}; "
                                          f"'weighted' exists on polar targets only)")
                    row[metric] = found[metric]["mean"]
                row["count"] = found[spec.metrics[0]]["count"]
                if "lambda_relative" in doc:
                    row["lambda_relative"] = doc["lambda_relative"]
                seeds.append(row)
            cell = {"seeds": seeds, "count": seeds[0]["count"]}
            for metric in spec.metrics:
                spread = over_seeds([r[metric] for r in seeds])
                cell[metric] = spread["mean"]
                cell[f"{metric}_sd"] = spread["std"] if spread["count"] > 1 else None
            errors[m.name][c.key] = cell
    runs = {}
    for run in matrix.runs:
        if not run.trained and (run.path is None or not (run.path / "results.json").is_file()):
            runs[run.key] = {"checkpoint": str(run.checkpoint)}
            continue
        res = _read(run.path / "results.json")
        runs[run.key] = {k: res.get(k) for k in ("parameters", "n_train", "epochs", "steps", "world_size",
                                                 "wall_time_s", "stop_reason")}
        runs[run.key]["seed"] = run.seed if run.seed is not None else _config_seed(run.path)
        runs[run.key]["type"] = (res.get("model") or {}).get("type", "bcrnet")
    manifest = _read(matrix.train_data / "manifest.json")
    sizes = {name: _read(matrix.train_data / "splits" / f"{name}.json")["num_samples"]
             for name in ("train", "val", "test")}
    test_sets = {c.key: _read(c.data / "manifest.json")["num_samples"] for c in matrix.conditions
                 if c.group != "noise"}
    return {"errors": errors, "runs": runs, "data": {
        "num_samples": manifest["num_samples"], "config": manifest.get("provenance", {}).get("config", {}),
        "grid": manifest.get("grid"), "splits": sizes, "discretisation": manifest.get("discretisation")},
        "test_sets": test_sets}


def _config_seed(run: Path) -> int | str:
    """The seed a run was trained with (its RUN/config.yaml), '–' when it does not say."""
    try:
        seed = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("seed")
    except (OSError, yaml.YAMLError):
        seed = None
    return seed if isinstance(seed, int) else "–"


def verdicts(matrix: Matrix, facts: dict) -> list[dict | None]:
    """Per condition: does the best network (lowest mean of the first metric over its seeds) beat the best
    Born? Each seed's per-sample errors against Born's on the same samples, a paired Wilcoxon signed-rank test
    (`bcrdist.paired`), and the overall intersection–union verdict; None without a network and a Born."""
    spec, metric = matrix.spec, matrix.spec.metrics[0]
    nets = [m for m in spec.methods if m.kind == "network"]
    borns = [m for m in spec.methods if m.kind == "born"]
    out = []
    for c in matrix.conditions:
        if not nets or not borns:
            out.append(None)
            continue
        row = {m.name: facts["errors"][m.name][c.key] for m in spec.methods}
        net = min(nets, key=lambda m: row[m.name][metric])
        ref = min(borns, key=lambda m: row[m.name][metric])
        born_samples = _samples(row[ref.name]["seeds"][0]["path"])
        pairs = {r["seed"]: (_samples(r["path"]), born_samples) for r in row[net.name]["seeds"]}
        result = compare_seeds(pairs, metric, names=(net.label, ref.label))
        out.append({"network": net.name, "network_label": net.label, "born": ref.name, "overall": result.verdict,
                    "per_seed": [c.verdict for c in result.per_seed.values()], "test": result.record()})
    return out


def _samples(path: str) -> dict:
    samples = _read(Path(path)).get("samples")
    if not isinstance(samples, dict):
        raise MatrixError(f"{path}: no per-sample errors (\"samples\"): it was written by an older bcrdist; delete "
                          f"it and rerun the matrix to score again")
    return samples


def _mins(seconds) -> str:
    return "–" if seconds is None else (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min")


def data_facts(matrix: Matrix, facts: dict) -> str:
    spec, d = matrix.spec, facts["data"]
    cfg, grid = d["config"], d["grid"] or {}
    target = (f"a {cfg.get('image_size')}×{cfg.get('image_size')} image" if grid.get("target") == "cartesian"
              else f"a {cfg.get('Na')}×{cfg.get('Nr')} polar target")
    if spec.data.path is None:
        sets = [a for s in spec.data.set for a in ("--set", s)]
        gen = f"`{shlex.join(['bcrdist', 'generate', '--config', spec.data.config, *sets])}`"
    else:
        gen = f"`{spec.data.path}` (given)"
    family = cfg.get("family", {})
    text = (f"Training data {gen}: {d['num_samples']} samples of the `{family.get('name')}` family "
            f"(absorption {family.get('absorption', [0.0])}), n = {cfg.get('n')}, box {cfg.get('box')}, "
            f"k = {3.141592653589793 * cfg.get('k_over_pi', 0):.4g} (k/π = {cfg.get('k_over_pi')}), "
            f"Na = {cfg.get('Na')} directions ({cfg.get('angles', 'periodic')} grid, {cfg.get('layout', 'polar')} "
            f"layout), {target}; split train {d['splits']['train']} / val {d['splits']['val']} / test "
            f"{d['splits']['test']}" + (f" (`bcrdist split --percent {_g(spec.data.percent)} --val {spec.data.val}`)."
                                         if spec.data.path is None else " (its own splits)."))
    accuracy = d.get("discretisation")
    if accuracy:
        text += f" The data's own accuracy: {describe(accuracy)}."
    sets = []
    if spec.absorption.levels:
        sets.append(f"absorbing sets (the training config with `--set family.absorption=[α]`, "
                    f"{spec.absorption.samples} samples each, seed {spec.absorption.seed})")
    for name, config in spec.ood.families.items():
        sets.append(f"{name} (`{config}`, {facts['test_sets'][f'ood-{name}']} samples)")
    if sets:
        text += (" Test sets beyond the test split, each evaluated whole at noise 0: " + "; ".join(sets) +
                 (f" (overrides {', '.join(spec.ood.set)})" if spec.ood.set else "") + ".")
    borns = [m for m in spec.methods if m.kind == "born"]
    if any("lsqr" not in m.args for m in borns):
        text += (" Born (Tikhonov): Tikhonov-regularised Born inversion (`bcrdist baseline`), λ chosen on the "
                 "training data's validation split at the row's noise level.")
    if any("lsqr" in m.args for m in borns):
        text += (" Born (LSQR): the study's damped least squares on its Born matrix (`bcrdist baseline --method "
                 "lsqr --damp D`), a fixed damping.")
    if borns:
        text += " The extra test sets are used neither in training nor in choosing λ or a model."
    return text


def _cell(cell: dict, metric: str) -> str:
    sd = cell[f"{metric}_sd"]
    return f"{100 * cell[metric]:.1f} %" if sd is None else f"{100 * cell[metric]:.1f} ± {100 * sd:.1f} %"


def markdown(matrix: Matrix, facts: dict, commands: list[str], figures: dict[str, str], tool_command: str) -> str:
    spec = matrix.spec
    lines = [f"## {spec.title}", ""]
    if spec.intro.strip():
        lines += [spec.intro.strip(), ""]
    lines += [data_facts(matrix, facts) + f" Made {time.strftime('%Y-%m-%d')}.", ""]
    lines += ["| method | kind | training | seed | parameters | training samples | epochs | steps | processes | "
              "training time |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in spec.methods:
        if m.kind == "born":
            command = shlex.join(["bcrdist", "baseline", *m.args])
            lines.append(f"| {m.label} | born | `{command}` | – | – | – | – | – | – | – |")
            continue
        train = shlex.join([str(m.config), *(a for s in m.set for a in ("--set", s))])
        for run in matrix.runs_of(m):
            r = facts["runs"][run.key]
            if "parameters" not in r:
                lines.append(f"| {m.label} | given | `{run.checkpoint}` | – | – | – | – | – | – | – |")
                continue
            lines.append(f"| {m.label} | {r['type']} | `{train}` | {r['seed']} | {r['parameters']:,} | {r['n_train']} "
                         f"| {r['epochs']} | {r['steps']} | {r['world_size']} | {_mins(r['wall_time_s'])} |")
    errors = facts["errors"]
    verdicts = facts["verdicts"]
    head = ["condition", "samples"] + [f"{m.label} {METRICS[k]}" for m in spec.methods for k in spec.metrics]
    judged = bool(verdicts) and verdicts[0] is not None
    seeded = any(len(matrix.runs_of(m)) > 1 for m in spec.methods)
    if judged:
        head += ["best network", "beats Born"] + (["per seed"] if seeded else [])
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for c, verdict in zip(matrix.conditions, verdicts):
        cells = [c.label, str(errors[spec.methods[0].name][c.key]["count"])]
        cells += [_cell(errors[m.name][c.key], k) for m in spec.methods for k in spec.metrics]
        if judged:
            cells += [verdict["network_label"], verdict["overall"]]
            if seeded:
                cells.append(" ".join(verdict["per_seed"]))
        lines.append("| " + " | ".join(cells) + " |")
    if judged:
        lost = [f"{c.label} ({v['overall']})" for c, v in zip(matrix.conditions, verdicts) if v["overall"] != "yes"]
        wins = sum(v["overall"] == "yes" for v in verdicts)
        lines += ["", (f"Means over the samples of each test set" + (", then mean ± standard deviation over the "
                       "seeds" if seeded else "") + f". {VERDICT_RULE} The best network beats Born in {wins} of "
                       f"{len(verdicts)} rows") + (f"; it does not in: {'; '.join(lost)}." if lost else ".")]
    lines += [""] + [f"![{what}]({path})" for what, path in figures.items()]
    if spec.notes.strip():
        lines += ["", spec.notes.strip()]
    lines += ["", "Made by", "", "```", tool_command, "```", "", "which ran, in order (a rerun skips the steps "
              "whose outputs are complete):", "", "```", *commands, "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots
def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_group(matrix: Matrix, facts: dict, group: str, path: Path) -> bool:
    """Error per method against the noise level or absorption level (lines) or per family (bars), one panel
    per metric; False when the spec has no condition of the group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = matrix.spec
    conds = [c for c in matrix.conditions if c.group == group]
    if not conds:
        return False
    fig, axes = plt.subplots(1, len(spec.metrics), figsize=(4.6 * len(spec.metrics), 3.6), squeeze=False)
    xs = list(range(len(conds)))
    width = 0.8 / len(spec.methods)
    borns = [m.name for m in spec.methods if m.kind == "born"]
    # the Born baselines in greys and dashes, one shade each; the networks in matplotlib's colours
    greys = {name: str(0.55 * i / max(len(borns) - 1, 1)) for i, name in enumerate(borns)}
    dashes = {name: ("--", ":", "-.")[i % 3] for i, name in enumerate(borns)}
    for ax, metric in zip(axes[0], spec.metrics):
        for i, m in enumerate(spec.methods):
            cells = [facts["errors"][m.name][c.key] for c in conds]
            ys = [100 * cell[metric] for cell in cells]
            # the spread over seeds as error bars (none for a single run or for Born)
            spread = [100 * (cell[f"{metric}_sd"] or 0.0) for cell in cells] if len(matrix.runs_of(m)) > 1 else None
            style = {"color": greys[m.name], "linestyle": dashes[m.name]} if m.kind == "born" else {}
            if group == "ood":
                ax.bar([x + (i - (len(spec.methods) - 1) / 2) * width for x in xs], ys, width, label=m.label,
                       yerr=spread, capsize=2, **({"color": greys[m.name]} if m.kind == "born" else {}))
            else:
                at = [c.value for c in conds] if group == "noise" else xs
                ax.errorbar(at, ys, yerr=spread, marker="o", capsize=3, label=m.label, **style)
        if group == "ood":
            ax.set_xticks(xs, [str(c.value) for c in conds], rotation=20)
        elif group == "absorption":
            ax.set_xticks(xs, [_g(c.value) for c in conds])
        ax.set_xlabel({"noise": f"{spec.noise.model or 'fan'} noise level (%)", "absorption": "absorption α",
                       "ood": "test family (noise 0)"}[group])
        ax.set_ylabel(f"mean {METRICS[metric]} error (%)" + (" ± sd over seeds" if len(matrix.runs) >
                                                                            len({r.method.name for r in matrix.runs})
                                                                            else ""))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # beside the panels: with many methods a legend inside would hide bars
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{spec.title}: " + {"noise": "in distribution", "absorption": "absorbing scatterers",
                                      "ood": "other test families"}[group], fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- the section
def replace_section(results: Path, name: str, body: str) -> None:
    """Put `body` between the spec's markers in `results` (appended when absent), atomically; nothing else in
    the file changes."""
    start, end = f"<!-- matrix: {name} -->", f"<!-- /matrix: {name} -->"
    text = results.read_text(encoding="utf-8") if results.exists() else ""
    i, j = text.find(start), text.find(end)
    if text.count(start) > 1 or text.count(end) > 1 or (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise MatrixError(f"{results}: expected the markers '{start}' and '{end}' once each, in that order")
    section = f"{start}\n{body}{end}"
    if i < 0:
        new = text + ("" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n")
        new += section + "\n"
    else:
        new = text[:i] + section + text[j + len(end):]
    atomic_write_bytes(results, new.encode("utf-8"))




def write_results(matrix: Matrix, results: Path, commands: list[str], tool_command: str, spec_path: str) -> list[str]:
    """Collect, judge, plot and write the spec's section of `results` (and WORK/matrix-results.json); the
    figures' paths relative to the results file."""
    spec = matrix.spec
    facts = collect(matrix)
    facts["verdicts"] = verdicts(matrix, facts)
    figures = {}
    for group in ("noise", "absorption", "ood"):
        path = results.parent / "figures" / f"{spec.name}-{group}.png"
        if plot_group(matrix, facts, group, path):
            figures[f"{spec.title}: {group}"] = str(Path(path).relative_to(results.parent))
    body = markdown(matrix, facts, commands, figures, tool_command)
    atomic_write_json(matrix.work / "matrix-results.json", json_safe({"spec": spec_path, **facts}))
    replace_section(results, spec.name, body)
    return list(figures.values())
