"""The `bcrdist` command line: one subcommand per job, each in a module of `bcrdist.cli`.

Each entry of `SUBCOMMANDS` names the module that provides `add_<name>_arguments(parser)` and
`run_<name>(args) -> int` (name with `-` written `_`).
Modules are imported only when their subcommand runs, so `bcrdist --help` stays fast. User errors
(`BcrdistError`, `ValueError`, missing files) print one line and exit with status 2; a rank of a distributed
run that stopped answering (`HangError`) one line and status 1; set BCRDIST_TRACEBACK=1 to see the traceback
instead. A misspelt command or flag gets the closest one as a suggestion, a bare `key=value` the hint to write
`--set key=value`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from bcrdist.errors import BcrdistError, HangError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bcrdist.cli.demo", "the whole pipeline on a small default: generate, train with 2 processes, evaluate"),
    "train": ("bcrdist.cli.train", "train BCR-Net (one rank; launch with torchrun, srun or mpiexec)"),
    "evaluate": ("bcrdist.cli.evaluate", "exact metrics, predictions and plots of a checkpoint on a split"),
    "predict": ("bcrdist.cli.predict", "predict η from measurements with a trained checkpoint"),
    "submit": ("bcrdist.cli.submit", "submit training jobs or sweeps to Slurm (or run locally) with submitit"),
    "jobs": ("bcrdist.cli.jobs", "the jobs bcrdist submit recorded in a run directory, their state; --cancel"),
    "slurm-scripts": ("bcrdist.cli.slurm_scripts", "write the sbatch scripts that ship with bcrdist into a folder"),
    "import-keras": ("bcrdist.cli.import_keras", "convert a Keras save_weights file into a bcrdist checkpoint"),
    "export": ("bcrdist.cli.export", "write a checkpoint's model as portable weights: model.safetensors + model.json"),
    "generate": ("bcrdist.cli.generate", "generate a training data set with the forward scattering solver"),
    "shard": ("bcrdist.cli.data", "convert an original HDF5 data file into a sharded data set"),
    "verify": ("bcrdist.cli.data", "check a sharded data set: checksums, shapes, dtypes, NaN/inf, splits"),
    "merge": ("bcrdist.cli.data", "write a sharded data set back into one HDF5 file (original layout)"),
    "split": ("bcrdist.cli.data", "write train/val/test split files for a sharded data set"),
    "stats": ("bcrdist.cli.data", "compute per-field min/max/mean/std and store them in the manifest"),
    "baseline": ("bcrdist.cli.baseline", "Tikhonov-regularised Born inversion baseline on a split"),
    "matrix": ("bcrdist.cli.matrix", "an accuracy matrix from one spec: its steps here or as Slurm jobs, then its "
                                     "section of docs/results.md"),
    "config": ("bcrdist.cli.config", "list the config keys (type, default, meaning); write the reference tables"),
}


class CommandParser(argparse.ArgumentParser):
    """argparse that says what an unrecognised argument probably meant: the closest option string
    (`--epochs` → '--epoch'), or `--set key=value` for a Hydra-style bare `key=value`."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._hints(extras)}")
        return parsed

    def _check_value(self, action, value):
        """An invalid choice names the closest valid one (Python < 3.14 argparse only lists them)."""
        if action.choices is not None and value not in action.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
            if close:
                choices = ", ".join(map(repr, action.choices))
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r} (did you mean {close[0]!r}? choose from {choices})")
        super()._check_value(action, value)

    def _option_strings(self) -> list[str]:
        """Every option of this parser and of its subcommands' parsers."""
        found, parsers = [], [self]
        while parsers:
            parser = parsers.pop()
            for action in parser._actions:
                found.extend(action.option_strings)
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
        return list(dict.fromkeys(found))

    def _hints(self, extras: list[str]) -> str:
        options = self._option_strings()
        hints = []
        for arg in extras:
            name = arg.split("=", 1)[0]
            if arg.startswith("-"):
                close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
                if close:
                    hints.append(f"'{name}': did you mean '{close[0]}'?")
            elif "=" in arg and name.replace(".", "").replace("_", "").isalnum() and "--set" in options:
                hints.append(f"config keys are set with --set: use --set {arg}")
        return f" ({'; '.join(hints)})" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    from bcrdist import __version__

    parser = CommandParser(prog="bcrdist", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bcrdist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def error_line(text: str) -> None:
    """One line to stderr in one write: the ranks of a job share one stream, and a message written in two
    pieces (text, then newline) interleaves with another rank's."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        parser.error(f"unknown command '{argv[0]}' ({hint}commands: {', '.join(SUBCOMMANDS)})")
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub = CommandParser(prog=f"bcrdist {name}", description=SUBCOMMANDS[name][1])
    fn = name.replace("-", "_")
    getattr(module, f"add_{fn}_arguments")(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(getattr(module, f"run_{fn}")(args) or 0)
    except HangError as exc:
        # a rank that stopped answering: one line, status 1 (not the user-error status 2)
        if os.environ.get("BCRDIST_TRACEBACK"):
            raise
        error_line(f"bcrdist {name}: error: {exc}")
        return 1
    except (BcrdistError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("BCRDIST_TRACEBACK"):
            raise
        error_line(f"bcrdist {name}: error: {exc}")
        return 2
    except OSError as exc:
        # a failing disk or file system (ENOSPC, EIO, EACCES): the message names the file; status 1, not the
        # user-error status 2, because the command itself was right
        if os.environ.get("BCRDIST_TRACEBACK"):
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        error_line(f"bcrdist {name}: error: {where}{exc.strerror or exc}")
        return 1
