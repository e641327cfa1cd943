"""`bcrdist import-keras WEIGHTS.h5 --config CFG.yaml --out model.pt`: a Keras BCR-Net as a bcrdist checkpoint.

The network sizes come from `--input-shape/--output-shape`, or else from the data set named by the config's
`data.path`; the architecture from its `model` section. The checkpoint loads with `bcrdist.load_model` and
`bcrdist predict`. The original fed raw (un-normalised) inputs and trained on targets divided by half their
range: pass that factor as `--output-scale` to get η in physical units.
"""

from __future__ import annotations

import argparse

from bcrdist.config import load_config, to_dict
from bcrdist.errors import BcrdistError, ConfigError
from bcrdist.fileio import one_line
from bcrdist.models.checkpoint import save_model
from bcrdist.models.bcrnet import BCRNet
from bcrdist.models.keras import load_keras_weights
from bcrdist.models.registry import NetworkIO, network_class
from bcrdist.models.scattering import ScatteringModel
from bcrdist.train.config import TrainConfig
from bcrdist.transforms import network_input_shape


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
        n_input = network_input_shape(n_input, cfg.data.use_imag)
    if network_class(cfg.model.type) is not BCRNet:
        raise ConfigError(f"{args.config}: model.type: Keras weights are the original BCR-Net's; got "
                          f"{cfg.model.type!r}")
    # the original's layout: periodic angles, polar target
    io = NetworkIO(n_input=tuple(n_input), n_output=tuple(n_output), parts="real", target_kind="polar", periodic=True)
    net = BCRNet(**BCRNet.resolve(cfg.model, io))
    model = ScatteringModel(net, antipodal=bool(cfg.data.antipodal), use_imag=bool(cfg.data.use_imag),
                            input=cfg.data.input, target=cfg.data.target, data_input=n_input, data_output=n_output)
    load_keras_weights(model.net, args.weights)
    model.out_scale.fill_(args.output_scale)
    try:
        save_model(args.out, model, config=to_dict(cfg), source=f"keras:{args.weights}")
    except OSError as exc:
        raise BcrdistError(one_line(exc)) from None
    print(f"imported {args.weights} into {args.out} "
          f"({sum(p.numel() for p in model.net.parameters()):,} parameters)")
    return 0
