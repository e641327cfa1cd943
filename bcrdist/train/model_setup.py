"""The run's model, built from the run plan: the registered network with the constructor arguments the plan
resolved, wrapped in a `ScatteringModel` with the data fields and normalisation rule the plan chose, fitted to
the data where the network asks for it (the Born layer of a Born-based network: the run's one Born fit,
`bcrdist.train.born_fit`, on rank 0, its definition reaching every rank), and normalised with the statistics
of the training data.
"""

from __future__ import annotations

from bcrdist.distributed.collective import on_main
from bcrdist.models.registry import network_class
from bcrdist.models.scattering import ScatteringModel
from bcrdist.train.born_fit import BornRequest, fit_born
from bcrdist.train.plan import ModelPlan


def model_from_plan(plan: ModelPlan) -> ScatteringModel:
    """The model of `plan` as constructed: not yet fitted to data (a Born layer without its definition) and
    not yet normalised."""
    net = network_class(plan.type)(**plan.config)
    return ScatteringModel(net, antipodal=plan.antipodal, use_imag=plan.use_imag, input=plan.input,
                           target=plan.target, data_input=plan.data_input, data_output=plan.data_output,
                           normalization=plan.normalization)


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
