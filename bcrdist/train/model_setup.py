"""The run's model, built from the run plan: the registered network with the constructor arguments the plan
resolved, wrapped in a `ScatteringModel` with the data fields and normalisation rule the plan chose, fitted to
the data where the network asks for it (the Born layer of a Born-based network: the run's one Born fit,
`bcrdist.train.born_fit`, on rank 0, its definition reaching every rank), and normalised with the statistics
of the training data.
"""

from __future__ import annotations

from pathlib import Path

from bcrdist.distributed.collective import on_main
from bcrdist.errors import DataError
from bcrdist.models.checkpoint import load_weights
from bcrdist.models.registry import network_class
from bcrdist.models.scattering import ScatteringModel
from bcrdist.train.born_fit import BornRequest, fit_born
from bcrdist.train.plan import ModelPlan, RunPlan


def model_from_plan(plan: ModelPlan) -> ScatteringModel:
    """The model of `plan` as constructed: not yet fitted to data (a Born layer without its definition) and
    not yet normalised."""
    net = network_class(plan.type)(**plan.config)
    return ScatteringModel(net, antipodal=plan.antipodal, use_imag=plan.use_imag, input=plan.input,
                           target=plan.target, data_input=plan.data_input, data_output=plan.data_output,
                           normalization=plan.normalization)


def check_initial_weights(plan: RunPlan) -> RunPlan:
    """`plan`, unless its model cannot take its `schedule.initial_weights` (no such file, not a checkpoint,
    weights of another network or size): then one line, before the run directory is claimed. The weights are
    loaded into the model as constructed, whose tensors are those of the fitted, normalised one (a Born
    layer's matrices are not part of its state); the trainer loads them again into the model it builds."""
    path = plan.model.initial_weights
    if not path:
        return plan
    if not Path(path).is_file():
        raise DataError(f"schedule.initial_weights: {path}: checkpoint not found")
    model = model_from_plan(plan.model)
    if path.endswith(".h5"):
        from bcrdist.models.keras import load_keras_weights
        load_keras_weights(model.net, path)
    else:
        load_weights(model, path, "schedule.initial_weights")
    return plan


def build_model(plan: ModelPlan, data, ctx) -> ScatteringModel:
    """The model of `plan` for the run's `data` (`TrainingData`) on every rank of `ctx` (on the CPU; the
    trainer moves it and broadcasts rank 0's weights)."""
    model = model_from_plan(plan)
    net = model.net
    if plan.born is not None:
        noise_model, noise = plan.born_noise
        request = dict(plan.born)
        keys = {"method": "model.type", "noise": "data.eval_noise", "noise_model": "data.eval_noise_model",
                **request.pop("keys", {})}
        definition, record = on_main(ctx, lambda: fit_born(
            data.cfg.data.path, BornRequest(**request), val_split=data.splits["val"][:data.cfg.data.n_valid],
            noise=noise, noise_model=noise_model, seed=data.cfg.seed, keys=keys))
        net.set_born(definition, record)
    norm = data.normalization()
    model.set_normalization(norm["shift"], norm["scale"], norm["out_scale"], norm["out_gain"], norm["out_bias"])
    return model
