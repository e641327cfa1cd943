"""`bcrdist train --config CFG.yaml [--set key=value ...] [--resume auto]`, also accepting the original
script's flags (mapped onto config keys; see `ORIGINAL_FLAGS` and the README).

Runs one rank: launch several with torchrun, srun or mpiexec (the launcher is detected).
"""

from __future__ import annotations

import argparse
import os

import yaml

from bcrdist.config import load_config, to_dict
from bcrdist.errors import ConfigError
from bcrdist.train.config import TrainConfig


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see docs/configuration.md); defaults apply without it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set schedule.epochs=5 (repeatable)")
    p.add_argument("--resume", help="'auto' to continue from RUN/checkpoints/last.pt when present, or a path")
    p.add_argument("--print", dest="print_key", metavar="KEY",
                   help="validate the config, print the resolved value of KEY (e.g. run_dir, or 'all') and exit")
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


def original_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The original flags as `key=value` overrides (applied before --set)."""
    from bcrdist.data.splits import parse_fraction

    simple = {"epoch": "schedule.epochs", "alpha": "model.alpha", "n_cnn": "model.n_cnn",
              "n_cnn3": "model.n_cnn3", "noise": "data.noise", "lr": "optim.lr",
              "batch_size": "schedule.batch_size", "w_comp": "model.w_comp",
              "initialvalue": "schedule.initial_weights"}
    out = [f"{key}={getattr(args, flag)}" for flag, key in simple.items() if getattr(args, flag) is not None]
    if args.percent is not None:
        out.append(f"data.percent={parse_fraction(args.percent)}")
    if args.data_path or args.input_prefix:
        out.append(f"data.path={os.path.join(args.data_path or 'data', args.input_prefix or 'scafullV1N4')}")
    if args.log_path or args.output_suffix:
        name = (f"S2d{args.input_prefix or 'run'}Nc{args.n_cnn or 6}Al{args.alpha or 40}"
                f"Ns{args.noise or 0:g}{args.output_suffix or ''}")
        out.append(f"run_dir={os.path.join(args.log_path or 'logs', name)}")
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = original_flag_overrides(args) + list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    return load_config(args.config, TrainConfig, overrides)


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_key:
        value = to_dict(cfg)
        if args.print_key != "all":
            for part in args.print_key.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise ConfigError(f"--print: no config key {args.print_key!r}")
                value = value[part]
        print(yaml.safe_dump(value, sort_keys=False).strip() if isinstance(value, (dict, list)) else value)
        return 0
    from bcrdist.train.trainer import train

    result = train(cfg)
    return 0 if result.get("status") != "failed" else 1
