"""The configuration reference: every key's type, default and meaning declared once (`bcrdist.config.setting`),
tabled in docs/configuration.md (`bcrdist.config_reference`) and listed by `bcrdist config keys`."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from bcrdist.cli import main
from bcrdist.cli.config import config_tables
from bcrdist.config import (Range, config_keys, load_config, parse_yaml, section, setting, to_dict, type_text,
                            value_text)
from bcrdist.config_reference import markdown_table, update_reference
from bcrdist.errors import ConfigError
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.train.config import TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<type>.*?) \| `(?P<default>[^`]*)` \| (?P<help>.*) \|$")
SECTION_ROW = re.compile(r"^\| \*\*(?P<key>[^*]+)\*\* \| section \| \| (?P<help>.*) \|$")


def leaf_fields(cls, where=""):
    """(dotted key, field, annotation) of every field, walked here with dataclasses alone."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{where}{f.name}", f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], f"{where}{f.name}.")


def docs_rows(block: str):
    """The key rows and section rows of the table between `<!-- keys:BLOCK` and `<!-- /keys:BLOCK -->`."""
    text = DOCS.read_text()
    start = text.index(f"<!-- keys:{block} ")
    table = text[start:text.index(f"<!-- /keys:{block} -->", start)]
    rows, sections = {}, {}
    for line in table.splitlines():
        if m := ROW.match(line):
            rows[m["key"]] = m
        elif m := SECTION_ROW.match(line):
            sections[m["key"]] = m
    return rows, sections


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_docs_tables_are_generated_from_the_dataclasses():
    text = DOCS.read_text()
    assert update_reference(text, config_tables(), str(DOCS)) == text, \
        "docs/configuration.md is out of date: run `bcrdist config reference --write docs/configuration.md`"


@pytest.mark.parametrize("block, cls", [("train", TrainConfig), ("data", GenerationConfig)])
def test_every_field_its_default_and_meaning_are_in_the_docs(block, cls):
    """Read back from the Markdown, independently of the generator: one row per field with its default
    (parsed as YAML) and its declared one-line meaning, and no row for a key that does not exist."""
    rows, sections = docs_rows(block)
    keys, section_keys = set(), set()
    for key, f, tp in leaf_fields(cls):
        meaning = f.metadata.get("help", "")
        assert meaning and "\n" not in meaning, f"{key}: declare it with setting(..., help='one line')"
        cell = meaning.replace("|", "\\|")
        if dataclasses.is_dataclass(tp):
            assert key in sections and sections[key]["help"] == cell, key
            section_keys.add(key)
            continue
        assert key in rows, f"{key} missing from docs/configuration.md"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parsed = parse_yaml(rows[key]["default"].replace("\\|", "|"))
        if isinstance(default, str):
            # as the loader reads the cell: YAML makes the choice `32` an int and (YAML 1.1) `off` false
            parsed = to_dict(load_config(None, cls, [f"{key}={rows[key]['default']}"]))
            for part in key.split("."):
                parsed = parsed[part]
        assert plain(parsed) == plain(default), (key, parsed, default)
        assert rows[key]["help"] == cell, key
        keys.add(key)
    assert set(rows) == keys and set(sections) == section_keys


def test_a_new_field_without_a_meaning_fails_and_with_one_changes_the_table():
    @dataclass
    class Bare:
        kept: int = setting(1, help="documented")
        forgotten: int = 2

    with pytest.raises(TypeError, match="forgotten"):
        config_keys(Bare)

    @dataclass
    class Grown(TrainConfig):
        extra: float = setting(0.5, help="a key added later")

    text = DOCS.read_text()
    grown = update_reference(text, {**config_tables(), "train": Grown})
    assert grown != text and "| `extra` | float | `0.5` | a key added later |" in grown


def test_update_keeps_the_prose_and_names_bad_blocks():
    @dataclass
    class Small:
        a: int = setting(3, help="first")
        inner: Inner2 = section(Inner2, help="a section")

    text = ("# Title\n\nprose before\n\n<!-- keys:small anything here -->\nstale table\n<!-- /keys:small -->\n"
            "\nprose after\n")
    new = update_reference(text, {"small": Small})
    assert new == ("# Title\n\nprose before\n\n<!-- keys:small anything here -->\n"
                   "| key | type | default | meaning |\n|---|---|---|---|\n| `a` | int | `3` | first |\n"
                   "| **inner** | section | | a section |\n| `inner.mode` | {x, y} | `x` | a \\| b |\n"
                   "<!-- /keys:small -->\n\nprose after\n")
    assert update_reference(new, {"small": Small}) == new
    with pytest.raises(ConfigError, match="keys:other"):
        update_reference(text, {"small": Small, "other": Small}, "doc.md")
    with pytest.raises(ConfigError, match="keys:small.*names no config"):
        update_reference(text, {"other": Small}, "doc.md")


@dataclass
class Inner2:
    mode: Literal["x", "y"] = setting("x", help="a | b")


@pytest.mark.parametrize("tp, text", [
    (int, "int"), (float | None, "float or null"), (Literal["nadam", "adamw"], "{nadam, adamw}"),
    (tuple[float, float], "[float, float]"), (list[tuple[int, float]] | None, "list of [int, float] or null"),
    (tuple[int, ...], "list of int"), (dict, "mapping"), (str, "str"), (bool, "bool"),
])
def test_type_text(tp, text):
    assert type_text(tp) == text


@pytest.mark.parametrize("tp, bounds, text", [
    (float, Range(low=0, low_open=True), "float > 0"), (int, Range(low=1), "int ≥ 1"),
    (int | None, Range(low=1), "int ≥ 1 or null"), (float, Range(high=1, high_open=True), "float < 1"),
    (float, Range(0, 1, low_open=True, high_open=True), "float in (0, 1)"), (float, Range(0, 0.5), "float in [0, 0.5]"),
    (float | None, Range(0, 0.5, low_open=True), "float in (0, 0.5] or null"), (float, Range(), "float"),
    (tuple[float, float], Range(low=0), "[float ≥ 0, float ≥ 0]"),
    (list[tuple[int, float]] | None, (Range(low=1), Range(low=0, low_open=True)),
     "list of [int ≥ 1, float > 0] or null"),
    (str, Range(low=0), "str"),
])
def test_type_text_shows_the_range(tp, bounds, text):
    assert type_text(tp, bounds) == text


@pytest.mark.parametrize("block, cls", [("train", TrainConfig), ("data", GenerationConfig)])
def test_every_numeric_key_shows_its_range_in_the_docs(block, cls):
    """Read back from the Markdown: the type cell of each number carries the range text of its declaration."""
    rows, _ = docs_rows(block)
    for key, f, tp in leaf_fields(cls):
        bounds = f.metadata.get("range")
        if bounds is None:
            continue
        for b in bounds if isinstance(bounds, tuple) else (bounds,):
            assert b.text() and b.text() in rows[key]["type"], (key, rows[key]["type"], b.text())


def test_config_keys_shows_the_ranges(capsys):
    assert main(["config", "keys", "optim.lr"]) == 0
    assert re.match(r"^optim\.lr +float > 0 +0\.001 +base learning rate", capsys.readouterr().out)
    assert main(["config", "keys", "schedule.pretrain_stages"]) == 0
    assert "list of [int ≥ 1, float > 0] or null" in capsys.readouterr().out
    assert main(["config", "keys", "--data", "family.support_radius"]) == 0
    assert "float in (0, 0.5]" in capsys.readouterr().out


@pytest.mark.parametrize("value, text", [
    (None, "null"), (True, "true"), (False, "false"), (1e-3, "0.001"), (1e-8, "1e-08"), (40, "40"),
    ((1.0, 1.0), "[1.0, 1.0]"), ([(1, 0.5)], "[[1, 0.5]]"), ("runs/bcrnet", "runs/bcrnet"),
])
def test_value_text_reads_back_as_the_value(value, text):
    assert value_text(value) == text
    assert plain(parse_yaml(text)) == plain(value)


# ------------------------------------------------------------------------------------ bcrdist config
def test_config_keys_lists_type_default_and_meaning(capsys):
    assert main(["config", "keys", "schedule.ep"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and re.match(r"^schedule\.epochs +int ≥ 1 +40 +the original's `--epoch`", out[0]), out
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == len(config_keys(TrainConfig))
    assert any(line.startswith("model:") and "any registered one" in line for line in out)
    assert main(["config", "keys", "--data", "solver"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in out] == ["solver:", "solver.tol", "solver.restart", "solver.max_iterations",
                                              "solver.backend", "solver.precision", "solver.batch"]
    assert "1e-08" in out[1]


def test_config_keys_unknown_prefix_is_one_line_with_a_hint(capsys):
    assert main(["config", "keys", "schedul.epoch"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 'schedule.epochs'?" in err, err
    assert main(["config", "keys", "family"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["config", "keys", "--data", "schedule"]) == 2
    assert "without --data" in capsys.readouterr().err


def test_config_reference_check_and_write(tmp_path, capsys):
    copy = tmp_path / "configuration.md"
    copy.write_text(DOCS.read_text())
    assert main(["config", "reference", "--check", str(copy)]) == 0
    row = "| `seed` | int in [0, 4294967295] | `0` |"
    stale = DOCS.read_text().replace(row, row.replace("`0`", "`1`"))
    assert stale != DOCS.read_text()
    copy.write_text(stale + "\nprose added at the end\n")
    assert main(["config", "reference", "--check", str(copy)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["config", "reference", "--write", str(copy)]) == 0
    assert copy.read_text() == DOCS.read_text() + "\nprose added at the end\n"
    assert main(["config", "reference", "--check", str(tmp_path / "missing.md")]) == 2
    assert main(["config", "reference"]) == 0
    out = capsys.readouterr().out
    assert markdown_table(TrainConfig) in out and markdown_table(GenerationConfig) in out
