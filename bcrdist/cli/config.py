"""`bcrdist config keys [PREFIX] [--data]`: every config key with its type, default and one-line meaning
(the training config, or with `--data` the data-generation config of `bcrdist generate`);
`bcrdist config networks`: the registered networks (`model.type`), their config sections and what they read;
`bcrdist config reference [--write PATH | --check PATH]`: the key tables of docs/configuration.md, made from
the same declarations (`bcrdist.config.setting`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcrdist.config import Key, closest_key, config_keys
from bcrdist.errors import ConfigError


def config_tables() -> dict[str, type]:
    """The configs docs/configuration.md tables, by the name of their `<!-- keys:NAME -->` block."""
    from bcrdist.launch.matrix_spec import Spec
    from bcrdist.physics.generation_config import GenerationConfig
    from bcrdist.train.config import TrainConfig

    return {"train": TrainConfig, "data": GenerationConfig, "matrix": Spec}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys = sub.add_parser("keys", help="list config keys with type, default and meaning",
                          description="List config keys with type, default and meaning (set them in the YAML "
                                      "file or with --set KEY=VALUE).")
    keys.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                      help="only the keys starting with PREFIX, e.g. schedule or data.no")
    keys.add_argument("--data", action="store_true",
                      help="the data-generation config (bcrdist generate) instead of the training config")
    sub.add_parser("networks", help="list the registered networks (model.type)",
                   description="List the networks model.type can name: their config section, the input they need, "
                               "the targets they predict, and a one-line summary.")
    ref = sub.add_parser("reference", help="the key tables of docs/configuration.md",
                         description="Print the key tables of docs/configuration.md, or rewrite/check them in a "
                                     "file between its <!-- keys:NAME --> and <!-- /keys:NAME --> lines.")
    what = ref.add_mutually_exclusive_group()
    what.add_argument("--write", metavar="PATH", help="regenerate the tables of PATH in place (prose kept)")
    what.add_argument("--check", metavar="PATH", help="exit 1 if the tables of PATH are out of date")


def format_keys(keys: list[Key]) -> str:
    """One line per key, columns aligned: key, type, default, meaning (a section shows only its meaning)."""
    width = [max(len(getattr(k, col)) for k in keys) for col in ("name", "type", "default")]
    lines = []
    for k in keys:
        if k.is_section:
            lines.append(f"{k.name + ':':<{sum(width) + 4}}  {k.help}")
        else:
            lines.append(f"{k.name:<{width[0]}}  {k.type:<{width[1]}}  {k.default:<{width[2]}}  {k.help}")
    return "\n".join(lines)


def _keys(args: argparse.Namespace) -> int:
    tables = config_tables()
    name, other = ("data", "train") if args.data else ("train", "data")
    keys = config_keys(tables[name], args.prefix)
    if not keys:
        what = "data-generation" if args.data else "training"
        message = f"no {what} config key starts with '{args.prefix}'"
        if config_keys(tables[other], args.prefix):
            flag = "without --data" if args.data else "with --data"
            message += f"; the {'training' if args.data else 'data-generation'} config has some ({flag})"
        elif (guess := closest_key(tables[name], args.prefix)) is not None:
            message += f" (did you mean '{guess}'?)"
        raise ConfigError(message)
    print(format_keys(keys))
    return 0


def _reference(args: argparse.Namespace) -> int:
    from bcrdist.config_reference import markdown_table, update_reference
    from bcrdist.fileio import atomic_write_bytes

    tables = config_tables()
    target = args.write or args.check
    if target is None:
        for name, cls in tables.items():
            print(f"<!-- keys:{name} -->\n{markdown_table(cls)}<!-- /keys:{name} -->\n")
        return 0
    path = Path(target)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    text = path.read_text()
    new = update_reference(text, tables, str(path))
    if args.check:
        if new != text:
            print(f"bcrdist config reference: {path} is out of date; run "
                  f"`bcrdist config reference --write {path}`", file=sys.stderr)
            return 1
        print(f"{path}: up to date")
        return 0
    if new != text:
        atomic_write_bytes(path, new.encode())
    print(f"{path}: {'tables rewritten' if new != text else 'up to date'}")
    return 0


def _networks(args: argparse.Namespace) -> int:
    from bcrdist.models import network_class, network_names

    rows = []
    for name in network_names():
        cls = network_class(name)
        section = ("model" if cls.config_section == "" else
                   f"model.{cls.config_section}" if cls.config_section else "model.options")
        rows.append((name, section, f"input {cls.input_parts}", "/".join(cls.targets), cls.summary))
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, width)) + "  " + row[4])
    return 0


def run_config(args: argparse.Namespace) -> int:
    return {"keys": _keys, "networks": _networks, "reference": _reference}[args.action](args)
