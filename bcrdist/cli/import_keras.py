"""`bcrdist import-keras WEIGHTS.h5 --config CFG.yaml --out model.pt`: a Keras BCR-Net as a bcrdist checkpoint.

The network sizes come from `--input-shape/--output-shape`, or else from the data set named by the config's
`data.path`; the architecture from its `model` section. The checkpoint loads with `bcrdist.load_model` and
`bcrdist predict`. The original fed raw (un-normalised) inputs and trained on targets divided by half their
range: pass that factor as `--output-scale` to get η in physical units.
"""

from __future__ import annotations

import argparse

from bcrdist import __version__
from bcrdist.models.keras import load_keras_weights
from bcrdist.config import load_config, to_dict
from bcrdist.errors import ConfigError
from bcrdist.models.scattering import ScatteringModel
from bcrdist.models.checkpoint import atomic_save, model_state
from bcrdist.train.config import TrainConfig


def add_import_keras_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="HDF5 file written by the original's model.save_weights(...)")
    p.add_argument("--config", required=True, help="training config whose model section matches the Keras model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--input-shape", type=int, nargs=2, metavar=("NS", "ND"))
    p.add_argument("--output-shape", type=int, nargs=2, metavar=("NT", "NR"))
    p.add_argument("--output-scale", type=float, default=1.0, help="the targets' normalisation factor")


def run_import_keras(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, TrainConfig, args.overrides)
    if args.input_shape and args.output_shape:
        n_input, n_output = tuple(args.input_shape), tuple(args.output_shape)
    else:
        from bcrdist.data.format import read_manifest

        manifest = read_manifest(cfg.data.path)
        try:
            n_input, n_output = manifest.datasets["measure"].shape, manifest.datasets["coe"].shape
        except KeyError as exc:
            raise ConfigError(f"{manifest.path}: no dataset {exc} to size the network; pass --input-shape "
                              "and --output-shape") from None
        if cfg.data.use_imag:
            n_input = (n_input[0], 2 * n_input[1])
    m = cfg.model
    net = {"n_input": tuple(n_input), "n_output": tuple(n_output), "alpha": m.alpha, "n_cnn": m.n_cnn,
           "n_cnn3": m.n_cnn3, "w_comp": m.w_comp, "levels": m.levels}
    model = ScatteringModel(net, antipodal=cfg.data.antipodal, use_imag=cfg.data.use_imag)
    load_keras_weights(model.net, args.weights)
    model.out_scale.fill_(args.output_scale)
    atomic_save({"format": "bcrdist-checkpoint-1", "version": __version__, "model": model_state(model),
                 "model_config": model.extra_config(), "config": to_dict(cfg),
                 "source": f"keras:{args.weights}"}, args.out)
    print(f"imported {args.weights} into {args.out} "
          f"({sum(p.numel() for p in model.net.parameters()):,} parameters)")
    return 0
