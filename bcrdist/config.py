"""Typed configuration: YAML files loaded into (nested) dataclasses, validated on load.

Every config section is a dataclass; `load_config(path, cls, overrides)` reads the YAML, applies
`key.sub=value` overrides (values parsed as YAML scalars), rejects unknown keys (with the closest known key as
a suggestion) and wrong types with a `ConfigError` naming the file and the dotted key (an unknown key or a
bad value that an override gave names the override, `--set KEY=VALUE`), and returns the dataclass instance.

Each field is declared with `setting(default, help=..., low=..., high=...)` (or `section(Cls, help=...)` for
a nested section): the one-line meaning and the range of a number live there once, the loader checks every
number against its range (a float must also be finite: inf and NaN are refused everywhere), and
`config_keys(cls)` lists every key with its type and range, default and meaning for `bcrdist config keys` and
for the tables of docs/configuration.md (`bcrdist.config_reference`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bcrdist.errors import ConfigError, shown

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (PyYAML follows YAML 1.1, where it is a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number may take: `low`/`high` bounds (None: unbounded), each included unless `*_open`.
    `what` names the number inside a compound value ('lr multiplier' of a stage)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""

    def __contains__(self, x: float) -> bool:
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def text(self) -> str:
        """`> 0`, `≥ 1`, `< 1`, `in (0, 0.5]`, or '' when unbounded."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{_number(lo)}, {_number(hi)}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '≥'} {_number(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '≤'} {_number(hi)}"
        return ""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def setting(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
            low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            items: tuple[Range, ...] | None = None) -> Any:
    """A config field with its one-line meaning and, for numbers, its range:
    `lr: float = setting(1e-3, help="...", low=0, low_open=True)` (> 0). The range applies to every number
    of the value (both of a `[min, max]` pair); `items` instead gives one Range per position of the value's
    fixed-length lists (`[batch multiplier, lr multiplier]` stages)."""
    metadata: dict[str, Any] = {"help": help}
    if items is not None:
        metadata["range"] = tuple(items)
    elif low is not None or high is not None:
        metadata["range"] = Range(low, high, low_open, high_open)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def section(cls: type, *, help: str) -> Any:
    """A nested config section (the dataclass `cls` with its own defaults) with its one-line meaning."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its dotted name, type and default as a YAML file writes them, and its meaning."""

    name: str
    type: str
    default: str
    help: str
    is_section: bool = False


def _walk(cls: type, where: str = ""):
    """(dotted name, field, annotation) of every field of `cls`, a section before its own fields."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{where}{f.name}"
        yield name, f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], f"{name}.")


def type_text(tp: Any, bounds: Range | tuple[Range, ...] | None = None) -> str:
    """An annotation as a YAML user reads it, with the range `bounds` declared for its numbers (`setting`):
    `int ≥ 1 or null`, `{nadam, adamw}`, `[float ≥ 0, float ≥ 0]`, `list of [int ≥ 1, float > 0]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_text(a, bounds) for a in args)
    if origin is typing.Literal:
        return "{" + ", ".join(str(a) for a in args) + "}"
    if dataclasses.is_dataclass(tp):
        return "section"
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(type_text(a, _item_range(bounds, i)) for i, a in enumerate(args)) + "]"
        return f"list of {type_text(args[0], bounds) if args else 'any'}"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is Any:
        return "any"
    if tp in (int, float) and isinstance(bounds, Range) and bounds.text():
        return f"{_type_name(tp)} {bounds.text()}"
    return _type_name(tp)


def _item_range(bounds: Range | tuple[Range, ...] | None, i: int) -> Range | None:
    """The range of position i of a fixed-length list: its own (`items=`) or the value's single range."""
    return bounds[i] if isinstance(bounds, tuple) else bounds


def value_text(value: Any) -> str:
    """A default as YAML writes it: `null`, `true`, `[1.0, 1.0]`, `0.001`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def config_keys(cls: type, prefix: str = "") -> list[Key]:
    """Every key of the config dataclass `cls` in declaration order, each section before its keys; with
    `prefix` only the keys that start with it (`schedule`, `schedule.ep`). A field declared without a meaning
    (`setting(..., help=...)`) is a TypeError: every key is documented."""
    keys = []
    for name, f, tp in _walk(cls):
        if not name.startswith(prefix):
            continue
        meaning = f.metadata.get("help", "")
        if not meaning.strip() or "\n" in meaning:
            raise TypeError(f"config key '{name}' ({cls.__name__}): declare it with setting(..., help='one line')")
        if dataclasses.is_dataclass(tp):
            keys.append(Key(name, "section", "", meaning, is_section=True))
            continue
        if f.default is not dataclasses.MISSING:
            default = value_text(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = value_text(f.default_factory())
        else:
            default = "required"
        keys.append(Key(name, type_text(tp, f.metadata.get("range")), default, meaning))
    return keys


def closest_key(cls: type, name: str) -> str | None:
    """The key of `cls` a misspelt or misplaced dotted `name` most likely meant: the key with the same last
    part ('epochs' → 'schedule.epochs'), else the closest dotted key, else the key with the closest last
    part (difflib's similarity ≥ 0.6)."""
    keys = [k for k, _, _ in _walk(cls)]
    leaf = name.rpartition(".")[2]
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves: dict[str, str] = {}
    for k in keys:
        leaves.setdefault(k.rpartition(".")[2], k)
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _OutOfRange(ConfigError):
    """A number of the right type outside its range: a union reports it rather than trying its other types."""


def _check_number(value: int | float, bounds: Range | None, where: str, nullable: bool) -> None:
    """`value` (int or float, already converted) is finite and inside `bounds`; else one line naming `where`."""
    if (isinstance(value, int) or math.isfinite(value)) and (bounds is None or value in bounds):
        return
    what = f"{bounds.what} " if bounds is not None and bounds.what else ""
    limits = bounds.text() if bounds is not None else ""
    if limits.startswith("in "):
        expected = f"lie {limits}{' or be null' if nullable else ''}"
    else:
        kind = "an integer" if isinstance(value, int) else "a finite number"
        expected = f"be {kind}{' ' + limits if limits else ''}{' or null' if nullable else ''}"
    raise _OutOfRange(f"{where}: {what}must {expected}, got {shown(value)}")


def _coerce(value: Any, tp: Any, where: str, bounds: Range | tuple[Range, ...] | None = None,
            nullable: bool = False) -> Any:
    """Check `value` against the annotation `tp` (and convert int→float, list→tuple, dict→dataclass); every
    float must be finite and every number inside `bounds` (one Range for all, or one per tuple position)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _bounded(value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, bounds, nullable=type(None) in args)
            except _OutOfRange:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_text(tp)}, got {shown(value)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and str(value).lower() in choices:
            value = str(value).lower()      # YAML reads `compile: false` as a bool
        elif isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"    # and, being YAML 1.1, `wandb: off` too
        elif isinstance(value, int) and str(value) in choices:
            value = str(value)              # and `precision: 32` as an int
        if value not in choices:
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: expected one of {choices}, got {shown(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            out = []
            for i, (v, a) in enumerate(zip(value, args)):
                item_bounds = _item_range(bounds, i)
                # a named position ('lr multiplier') is reported at the list's own key
                at = where if item_bounds is not None and item_bounds.what else f"{where}[{i}]"
                out.append(_coerce(v, a, at, item_bounds))
            return tuple(out)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]", bounds) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return dict(_bounded(value, where))
    if isinstance(bounds, tuple):
        raise TypeError(f"{where}: setting(items=...) gives the ranges of a fixed-length list's positions")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        try:
            number = float(value)
        except OverflowError:           # an integer beyond the float range
            number = math.inf
        _check_number(number, bounds, where, nullable)
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        _check_number(value, bounds, where, nullable)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")
    return _bounded(value, where)


# the most values an untyped config value (a bare `dict` such as `model.options`, or `Any`) may hold, counted
# as its YAML aliases expand: a file of a few hundred bytes can otherwise stand for billions of them, which
# printing or saving the config would build
MAX_UNTYPED_VALUES = 100_000


def _bounded(value: Any, where: str) -> Any:
    """`value`, unless it holds more than MAX_UNTYPED_VALUES keys and values once expanded (a YAML alias bomb,
    or a list that contains itself): then a ConfigError naming `where`. Looks at no more than that many."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_UNTYPED_VALUES:
            raise ConfigError(f"{where}: more than {MAX_UNTYPED_VALUES:,} values once its YAML aliases are "
                              f"expanded (or a value that contains itself)")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return value


def check_ranges(obj: Any, where: str = "") -> None:
    """Check every number of the config dataclass `obj` (not of its sections) against its declared range, as
    loading does; `where` is its dotted key. A section's `validate()` calls it for configs built in code."""
    hints = typing.get_type_hints(type(obj))
    parent = f"{where}." if where else ""
    for f in dataclasses.fields(obj):
        if not dataclasses.is_dataclass(hints[f.name]):
            _coerce(getattr(obj, f.name), hints[f.name], f"{parent}{f.name}", f.metadata.get("range"))


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys, wrong types, non-finite floats and numbers
    outside their declared ranges, then run its `validate()`; `where` is the dotted section name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    parent = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields), key=str)      # YAML keys need not be strings
    if unknown:
        name, value = unknown[0], data[unknown[0]]
        dotted = name
        while isinstance(value, dict) and value:    # {'schedul': {'epochs': 3}} → 'schedul.epochs'
            sub = next(iter(value))
            dotted, value = f"{dotted}.{sub}", value[sub]
        guess = closest_key(cls, dotted)
        hint = f"did you mean '{parent}{guess}'? " if guess else ""
        raise ConfigError(f"unknown key '{parent}{name}' ({hint}known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{parent}{name}", fields[name].metadata.get("range"))
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required key '{parent}{missing[0]}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()      # the rules across keys; its messages name the full dotted key
    return obj


def apply_overrides(data: dict, overrides: list[str] | None, where: str) -> dict:
    """Apply `a.b=value` strings to a nested mapping; values are parsed as YAML scalars/lists."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{where}: override {shown(item)} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"{where}: override {shown(item)}: value is not valid YAML ({reason})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: override {shown(item)}: '{part}' is not a section")
        node[parts[-1]] = value
    return data


def check_override_keys(cls: type, overrides: list[str] | None) -> None:
    """Refuse an override `KEY=VALUE` whose KEY dataclass `cls` does not have, in one line that names the
    override (`--set KEY=VALUE`), not the config file it would otherwise be blamed on. Keys below a mapping
    (`model.options.width`) are the mapping's owner's to check."""
    for item in overrides or []:
        if "=" not in item:
            continue        # apply_overrides says what is wrong with it
        key = item.split("=", 1)[0].strip()
        section, parent = cls, ""
        for part in key.split("."):
            hints = typing.get_type_hints(section)
            names = [f.name for f in dataclasses.fields(section)]
            if part not in names:
                guess = closest_key(cls, key)
                hint = f"did you mean '{guess}'? " if guess else ""
                raise ConfigError(f"--set {item}: unknown key '{parent}{part}' ({hint}known keys: "
                                  f"{', '.join(sorted(names))})")
            if not dataclasses.is_dataclass(hints[part]):
                break
            section, parent = hints[part], f"{parent}{part}."


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(path: str | Path) -> Path:
    """`path` if it exists; else the packaged config of that name, so the documented `configs/demo.yaml`
    (or `demo.yaml`, `configs/data/demo.yaml`) works from any directory and from an installed wheel."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    packaged = PACKAGED_CONFIGS.joinpath(*parts) if parts else PACKAGED_CONFIGS
    if packaged.is_file():
        return packaged
    known = sorted(str(p.relative_to(PACKAGED_CONFIGS)) for p in PACKAGED_CONFIGS.rglob("*.yaml"))
    raise ConfigError(f"{path}: config file not found, here or among bcrdist's configs ({', '.join(known)})")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file, bad syntax or a non-mapping top level is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{line}: {getattr(exc, 'problem', exc)}") from None
    except (ValueError, RecursionError) as exc:
        # an integer of thousands of digits (Python refuses to convert it), nesting deeper than the parser's stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise ConfigError(f"{path}: unreadable YAML: {reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(path: str | Path | None, cls: type[T], overrides: list[str] | None = None, *,
                packaged: bool = True) -> T:
    """Load YAML file `path` (or nothing) plus `overrides` into dataclass `cls`, validated. `packaged`: a path
    not found here is looked up among bcrdist's packaged training and data-generation configs (`find_config`);
    False for other kinds of file (a site's Slurm config), whose absence is one line naming it."""
    if path is not None and packaged:
        path = find_config(path)
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    check_override_keys(cls, overrides)
    apply_overrides(data, overrides, "--set")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        override = override_blamed(str(exc), overrides)
        raise ConfigError(f"{f'--set {override}' if override else source}: {exc}") from None


# the dotted key a loader message is about: 'schedule.epochs: …', 'family.count[0]: …', "unknown key 'a.b' …"
_MESSAGE_KEY = re.compile(r"^(?:(?:unknown|missing required) key ')?([A-Za-z_][\w-]*(?:\.[\w-]+)*)(?:\[\d+\])*[':]")


def override_blamed(message: str, overrides: list[str] | None) -> str | None:
    """The override `KEY=VALUE` (the last one, as it wins) that gave the value the loader's `message` is about:
    KEY is the message's key or a section above it; None when the value came from the config file."""
    match = _MESSAGE_KEY.match(message)
    if match is None:
        return None
    key = match.group(1)
    for item in reversed(overrides or []):
        if "=" in item:
            name = item.split("=", 1)[0].strip()
            if key == name or key.startswith(name + "."):
                return item
    return None


def to_dict(obj: Any) -> dict:
    """Dataclass → plain mapping (tuples as lists) suitable for YAML/JSON."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)
