"""The study's data protocol (arXiv 2503.01596, issue 20): disc centres uniform in the square [−R + r, R − r]²
(`family.discs.placement: square`) and the target image at the grid nodes (`image_points: nodes`), with the
defaults' data and config hashes unchanged, the packaged `study_protocol_discs.yaml`, the Born baseline on a
nodes data set, and one-line refusals of bad values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from bcrdist.cli import main
from bcrdist.config import find_config, load_config, to_dict
from bcrdist.data.generate import generate
from bcrdist.data.splits import write_splits
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import GridInfo
from bcrdist.physics.sampling import sample_family
from generation_helpers import demo_gaussian_config, read_dataset

STUDY = find_config("configs/data/study_discs.yaml")
PROTOCOL = find_config("configs/data/study_protocol_discs.yaml")
# what the code before `placement` and `image_points` gave: study_discs.yaml's hash, the default config's with
# a non-default discs section, and a digest of study_discs' first 64 scatterers and their 16×16 rasters
STUDY_DISCS_SHA256 = "ed650aa191b376456831b87e4d50636ad226cc266ba37d83196448458bce4abd"
NON_DEFAULT_DISCS_SHA256 = "b7b98a99156610b0bfaab98d36c4e07a643648ff8d67510713f3a27d312efd4f"   # radius [0.1, 0.2]
STUDY_DISCS_SCATTERERS = "4fe908df656f02eb982cbdba85ba23c36e6bfe4bb739bdbdf956aa3ab07d2729"


def _discs(overrides: list[str], draws: int) -> tuple[GenerationConfig, list]:
    """The config and `draws` disc scatterers of study_discs.yaml with `overrides` (no solve)."""
    cfg = load_config(STUDY, GenerationConfig, overrides)
    return cfg, [sample_family(np.random.default_rng([cfg.seed, i]), "discs", cfg.family, cfg.box)
                 for i in range(draws)]


def _centres_radii(scatterers) -> np.ndarray:
    """(discs, 3): cx, cy, r of every disc of every scatterer."""
    return np.concatenate([s.primitives[:, [2, 3, 4]] for s in scatterers])


@pytest.mark.parametrize("box", [2.0, 3.0])
def test_square_placement_reaches_the_corners_and_stays_in_the_square(box):
    # one disc per draw, so the rejection of overlaps does not bias where centres fall
    one = ["family.discs.count=[1, 1]", f"box={box}"]
    cfg, square = _discs(one + ["family.discs.placement=square"], 2000)
    _, disk = _discs(one, 2000)
    big_r = cfg.family.support_radius * box
    for placement, scatterers in (("square", square), ("disk", disk)):
        c = _centres_radii(scatterers)
        outside_disk = np.hypot(c[:, 0], c[:, 1]) > big_r - c[:, 2]
        in_square = np.all(np.abs(c[:, :2]) <= (big_r - c[:, 2])[:, None], axis=1)
        assert in_square.all(), placement
        if placement == "disk":
            assert not outside_disk.any()
        else:   # uniform in a square of half-side a: the corners outside the inscribed disk are 1 − π/4 of it
            p, n = 1 - math.pi / 4, len(c)
            print(f"box {box}: {outside_disk.mean():.3f} of the centres in the corners (expected {p:.3f})")
            assert abs(outside_disk.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    # a disc in a corner is whole: its point farthest from the origin, beyond the support disk, keeps its η
    far = [(s, *s.primitives[0, 1:5]) for s in square]
    corner, value, cx, cy, r = next(f for f in far if math.hypot(f[2], f[3]) + 0.99 * f[4] > big_r)
    scale = 1 + 0.99 * r / math.hypot(cx, cy)
    assert corner(scale * cx, scale * cy) == value


def test_square_placement_keeps_discs_apart():
    gap = 0.02
    cfg, scatterers = _discs(["family.discs.placement=square", "family.discs.count=[3, 3]",
                              f"family.discs.gap={gap}"], 300)
    for s in scatterers:
        c = s.primitives[:, [2, 3, 4]]
        for i in range(len(c)):
            for j in range(i):
                assert math.hypot(*(c[i, :2] - c[j, :2])) >= c[i, 2] + c[j, 2] + gap * cfg.box


def test_defaults_keep_the_data_and_the_hash():
    cfg, default = _discs([], 64)
    explicit_cfg, explicit = _discs(["family.discs.placement=disk", "image_points=centres"], 64)
    assert cfg.sha256() == explicit_cfg.sha256() == STUDY_DISCS_SHA256
    digest = hashlib.sha256()
    for a, b in zip(default, explicit):
        assert np.array_equal(a.primitives, b.primitives)
        digest.update(np.round(a.primitives, 12).tobytes())
        digest.update(np.round(a.raster(16, cfg.box, 4), 12).tobytes())
    assert digest.hexdigest() == STUDY_DISCS_SCATTERERS
    # the new keys count once they leave their defaults, a non-default discs section keeps its hash
    hashes = {cfg.sha256(), load_config(STUDY, GenerationConfig, ["family.discs.placement=square"]).sha256(),
              load_config(STUDY, GenerationConfig, ["image_points=nodes"]).sha256()}
    assert len(hashes) == 3
    radius = load_config(None, GenerationConfig, ["family.discs.radius=[0.1, 0.2]"])
    assert radius.sha256() == NON_DEFAULT_DISCS_SHA256


def test_protocol_config_differs_from_study_discs_in_the_protocol_keys_only():
    study, protocol = to_dict(load_config(STUDY, GenerationConfig)), to_dict(load_config(PROTOCOL, GenerationConfig))
    assert protocol["image_points"] == "nodes" and protocol["family"]["discs"]["placement"] == "square"
    assert protocol["family"]["discs"]["gap"] == 0.0
    study["image_points"], study["family"]["discs"]["placement"], study["family"]["discs"]["gap"] = \
        "nodes", "square", 0.0
    assert protocol == study


def test_node_images_are_point_values_at_the_nodes(tmp_path):
    out = tmp_path / "nodes"
    assert main(["generate", "--config", str(PROTOCOL), "--out", str(out), "--quiet", "--set", "n=16",
                 "--set", "Na=8", "--set", "image_size=21", "--set", "samples=6", "--set", "samples_per_shard=6"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    grid = GridInfo.from_record(manifest["grid"])
    assert grid.image_points == "nodes" and grid.image_size == 21 and grid.image_extent == 2.0
    assert "at the nodes" in manifest["grid"]["conventions"]
    arrays = read_dataset(out)
    assert arrays["image"].shape == (6, 21, 21) and arrays["eta"].shape == (6, 16, 16)   # the solver's grid stays
    x = np.linspace(-1.0, 1.0, 21)      # the study's nodes, written out here rather than taken from bcrdist
    for image, table, count in zip(arrays["image"], arrays["primitives"], arrays["num_primitives"]):
        expected, distance = np.zeros((21, 21)), np.full((21, 21), np.inf)
        for _, value, cx, cy, r, *_ in table[:count]:
            d = np.hypot(x[:, None] - cx, x[None, :] - cy) - r
            expected[d <= 0] = value
            distance = np.minimum(distance, np.abs(d))
        away = distance > 1e-9          # nodes on a circle itself: either value is a point value
        np.testing.assert_array_equal(image[away], expected[away].astype(np.float32))
        assert (image > 0).any()


def test_born_baseline_on_a_nodes_data_set(tmp_path, capsys):
    # weak Gaussian bumps, where Born is nearly exact: a misplaced pixel grid would show in the error
    results = {}
    for points in ("centres", "nodes"):
        data = tmp_path / points
        cfg = dataclasses.replace(demo_gaussian_config((1e-3, 2e-3), 24, samples_per_shard=24), Na=17,
                                  layout="farfield", angles="endpoint", image_points=points)
        cfg.validate()
        generate(cfg, data, progress=False)
        write_splits(data, 0.5, val=6)
        assert main(["stats", str(data)]) == 0
        for method in ([], ["--method", "lsqr", "--damp", "1"]):
            out = tmp_path / f"{points}{len(method)}.json"
            assert main(["baseline", "--data", str(data), "--split", "test", *method, "--out", str(out)]) == 0
            doc = json.loads(out.read_text())
            assert doc["grid"]["image_points"] == points
            results[points, bool(method)] = doc["metrics"]["rel_l2"]["mean"]
    capsys.readouterr()
    print(results)
    assert results["nodes", False] < 0.03 and results["centres", False] < 0.03
    assert all(math.isfinite(v) for v in results.values())


@pytest.mark.parametrize("override, message", [
    ("family.discs.placement=circle", "family.discs.placement: expected one of 'disk', 'square', got 'circle'"),
    ("image_points=corners", "image_points: expected one of 'centres', 'nodes', got 'corners'"),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    assert main(["generate", "--config", str(STUDY), "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_nodes_refused_on_fan_layout(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--config", str(find_config("configs/data/demo.yaml")), "--out", str(out),
                 "--set", "image_points=nodes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_points: 'nodes' applies to layout: farfield only" in err
    assert not out.exists()
