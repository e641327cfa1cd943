"""`bcrdist train --config CFG.yaml [--set key=value ...] [--resume auto | --restart]`, also accepting the
original script's flags (mapped onto config keys; see `ORIGINAL_FLAGS` and the README).

Runs one rank: launch several with torchrun, srun or mpiexec (the launcher is detected), or with `--nproc N`
on this machine, which starts torchrun's agent itself and keeps the exit statuses below (a plain torchrun
ends every signal or failure in its own traceback and status 1; `bcrdist.launch.torchrun`).

A run directory holds one run (`bcrdist.train.run_dir`): training into one that holds a run needs
`--resume auto` (continue it; a finished run is reported complete and left as it is) or `--restart` (rename
it to RUN.old-YYYYmmdd-HHMMSS and start over; nothing is deleted), and a second training into a directory in
use is refused. Exit status:

    0    trained to the end, the run was already complete, or a Slurm/submitit requeue took over
    1    the run failed in another way (its message says why)
    2    a user error: config, data, run directory, a failed write (disk full), training diverged — one line
    130  Ctrl-C: last.pt saved at the next step (a second Ctrl-C aborts at once)
    140  SIGUSR2 and 143 SIGTERM (128 + the signal's number) when no requeue followed: outside Slurm, or the
         requeue failed; last.pt is saved, continue with --resume auto
"""

from __future__ import annotations

import argparse
import os

import yaml

from bcrdist.cli.main import error_line
from bcrdist.config import closest_key, load_config, to_dict
from bcrdist.errors import BcrdistError, ConfigError
from bcrdist.train.config import TrainConfig

EPILOG = """\
a run directory holds one run: train into one that holds a run with --resume auto (continue it; a finished
run is reported complete, exit 0) or --restart (renames it to RUN.old-YYYYmmdd-HHMMSS; nothing is deleted).
exit status: 0 done (or complete, or requeued by Slurm/submitit); 2 user error (one line); 130 Ctrl-C
(last.pt saved); 140 SIGUSR2, 143 SIGTERM without a requeue (last.pt saved; continue with --resume auto)."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", help="YAML config (see docs/configuration.md); defaults apply without it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set schedule.epochs=5 (repeatable; list them with "
                        "`bcrdist config keys`)")
    p.add_argument("--resume", metavar="auto|PATH", help="'auto' to continue the run in run_dir from RUN/checkpoints/last.pt when "
                   "present (a finished run is reported complete), or a checkpoint path")
    p.add_argument("--restart", action="store_true",
                   help="run_dir holds a run: rename it to RUN.old-YYYYmmdd-HHMMSS (nothing is deleted) and start "
                        "over in an empty run_dir")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine: starts torchrun's agent itself, forwards Ctrl-C "
                        "and SIGTERM to it, and exits with the workers' status (130, 143 after a signal; see "
                        "bcrdist.launch.torchrun)")
    p.add_argument("--print", dest="print_key", metavar="KEY|all",
                   help="validate the config, print the resolved value of KEY (a key such as schedule.epochs, a "
                        "section such as schedule as YAML, or 'all' for the whole config) and exit without training")
    orig = p.add_argument_group("the original scatteringInv.py flags")
    orig.add_argument("--epoch", type=int)
    orig.add_argument("--alpha", type=int)
    orig.add_argument("--n-cnn", type=int)
    orig.add_argument("--n-cnn3", type=int)
    orig.add_argument("--noise", type=float)
    orig.add_argument("--lr", type=float)
    orig.add_argument("--batch-size", type=int)
    orig.add_argument("--percent", type=str, help="train fraction, a number or a quotient like 4/5")
    orig.add_argument("--initialvalue", help="weights to fine-tune from (a bcrdist checkpoint or Keras .h5)")
    orig.add_argument("--w-comp", type=int)
    orig.add_argument("--data-path", help="folder holding the data set named by --input-prefix")
    orig.add_argument("--input-prefix", help="data-set directory name inside --data-path")
    orig.add_argument("--log-path", help="folder for the run directory")
    orig.add_argument("--output-suffix", help="suffix of the run directory name")
    orig.add_argument("--verbose", type=int, help="accepted for compatibility; logging is always line-based")
    orig.add_argument("--port", action="store_true",
                      help="the PyTorch port's defaults for these flags and its data (far field → image): input "
                           "prefix merged_data, batch size 16, percent .3/.4, loss weights 0.5/0.5, the real part of "
                           "`farfield` → `image`, no antipodal preprocessing (see the README)")


# `--port`: the PyTorch port's defaults where they differ from Fan's (its L = ⌊log2 Ns⌋ − 4 is, at its 100
# directions, the 2 levels bcrdist's default chooses for Ns = 100)
PORT_DEFAULTS = {"schedule.batch_size": 16, "schedule.loss_weights": "[0.5, 0.5]", "data.input": "farfield",
                 "data.target": "image", "data.use_imag": "false", "data.antipodal": "false"}


def original_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The original flags as `key=value` overrides (applied before --set); with `--port` on the port's
    defaults (`PORT_DEFAULTS`, prefix merged_data, percent .3/.4)."""
    from bcrdist.data.splits import parse_fraction

    simple = {"epoch": "schedule.epochs", "alpha": "model.alpha", "n_cnn": "model.n_cnn",
              "n_cnn3": "model.n_cnn3", "noise": "data.noise", "lr": "optim.lr",
              "batch_size": "schedule.batch_size", "w_comp": "model.w_comp",
              "initialvalue": "schedule.initial_weights"}
    port = getattr(args, "port", False)
    out = [f"{key}={value}" for key, value in PORT_DEFAULTS.items()] if port else []
    out += [f"{key}={getattr(args, flag)}" for flag, key in simple.items() if getattr(args, flag) is not None]
    if args.percent is not None or port:
        out.append(f"data.percent={parse_fraction(args.percent or '.3/.4')}")
    prefix = args.input_prefix or ("merged_data" if port else "scafullV1N4")
    if args.data_path or args.input_prefix or port:
        out.append(f"data.path={os.path.join(args.data_path or 'data', prefix)}")
    if args.log_path or args.output_suffix:
        name = (f"S2d{args.input_prefix or 'run'}Nc{args.n_cnn or 6}Al{args.alpha or 40}"
                f"Ns{args.noise or 0:g}{args.output_suffix or ''}")
        out.append(f"run_dir={os.path.join(args.log_path or 'logs', name)}")
    return out


def worker_args(args: argparse.Namespace) -> list[str]:
    """The `bcrdist train` arguments every rank of `--nproc` gets: the config, every override (the original
    flags as theirs), --resume, --restart."""
    out = ["--config", args.config] if args.config else []
    for override in original_flag_overrides(args) + list(args.overrides):
        out += ["--set", override]
    out += ["--resume", args.resume] if args.resume else []
    return out + (["--restart"] if args.restart else [])


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = original_flag_overrides(args) + list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    return load_config(args.config, TrainConfig, overrides)


def exit_status(result: dict) -> int:
    """The process's exit status for what `train` returned (see the module docstring)."""
    from bcrdist.train.preemption import exit_code

    status = result.get("status")
    if status in ("preempted", "interrupted"):
        return 0 if result.get("requeued") else exit_code(result["signal"])
    return 1 if status == "failed" else 0


def run_nproc(args: argparse.Namespace) -> int:
    """`--nproc N`: this process starts torchrun's agent for N ranks (the config was validated here already)."""
    from bcrdist.distributed.launch_env import detect_environment
    from bcrdist.launch.torchrun import run_torchrun

    if args.nproc < 1:
        raise ConfigError(f"--nproc: must be ≥ 1, got {args.nproc}")
    launcher = detect_environment().method
    if launcher != "single":
        raise ConfigError(f"--nproc starts its own torchrun, but this process is already a rank ({launcher}): "
                          f"leave out --nproc, or the launcher")
    return run_torchrun(args.nproc, worker_args(args))


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_key:
        value = to_dict(cfg)
        if args.print_key != "all":
            for part in args.print_key.split("."):
                if not isinstance(value, dict) or part not in value:
                    guess = closest_key(TrainConfig, args.print_key)
                    raise ConfigError(f"--print: no config key {args.print_key!r}"
                                      + (f" (did you mean '{guess}'?)" if guess else ""))
                value = value[part]
        print(yaml.safe_dump(value, sort_keys=False).strip() if isinstance(value, (dict, list)) else value)
        return 0
    if args.nproc is not None:
        return run_nproc(args)
    from bcrdist.fileio import one_line
    from bcrdist.train.trainer import train

    try:
        result = train(cfg, restart=args.restart)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (reading the data, building the model, the final evaluation)
        last = os.path.join(cfg.run_dir, "checkpoints", "last.pt")
        saved = f"{last} holds the last saved state" if os.path.isfile(last) else "nothing was saved"
        error_line(f"bcrdist train: interrupted (Ctrl-C) outside the training loop; {saved}")
        return 130
    except FileNotFoundError:
        raise
    except OSError as exc:
        # a write the trainer does not wrap (train.log, metrics.jsonl): one line with the errno's meaning
        text = one_line(exc)
        raise BcrdistError(text if exc.filename else f"{cfg.run_dir}: writing the run's files failed: {text}") \
            from None
    if result.get("message") and result.get("status") != "complete":
        error_line(f"bcrdist train: {result['message']}")
    return exit_status(result)
