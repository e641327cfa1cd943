"""BCR-Net (or BCNN) together with the data transforms it was trained with, for training and inference.

`ScatteringModel` holds the network (`model.type`: `bcrnet`, `bcrdist.models.bcrnet.BCRNet`, or `bcnn`,
`bcrdist.models.bcnn.BCNN`, which undoes the input normalisation in its Born layer) and, as buffers (so they
travel in every checkpoint), the input normalisation (per detector channel: x ← (x − shift)/scale) and the
output scale (targets were divided by it for training, the original's "half range"). `forward` works in
training units; `predict_eta` takes raw `measure` arrays and returns η in physical units, assembling the network input as training did
(`bcrdist.transforms.network_input`). `ScatteringModel.from_config` builds one from a training config's
`model` and `data` sections and the data shapes (the trainer and `bcrdist import-keras`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.errors import ConfigError
from bcrdist.transforms import network_input
from bcrdist.models.bcnn import BCNN
from bcrdist.models.bcrnet import BCRNet, default_levels

MODEL_TYPES = {"bcrnet": BCRNet, "bcnn": BCNN}


def resolve_levels(ns: int, levels: int | None, padded: bool) -> int:
    """Wavelet levels for an angle axis of Ns: `levels` when Ns is divisible by 2^levels; null = ⌊log2 Ns⌋ − 2
    (the original's), lowered until 2^L divides Ns (100 → 2, as the port). ConfigError naming `model.levels`
    (or `model.pad_to`) for a size BCR-Net cannot take."""
    where = "model.pad_to" if padded else "model.levels"
    if levels is not None:
        if ns % 2 ** levels:
            raise ConfigError(f"{where}: Ns={ns} is not divisible by 2^levels = {2 ** levels}; lower model.levels "
                              f"or set model.pad_to to a multiple of {2 ** levels}")
        return levels
    level = default_levels(ns)
    while level >= 1 and ns % 2 ** level:
        level -= 1
    if level < 1:
        raise ConfigError(f"{where}: Ns={ns} is odd, BCR-Net needs an angle axis divisible by 2 at least; set "
                          f"model.pad_to to an even size (e.g. [{-(-ns // 4) * 4}, W])")
    return level


class ScatteringModel(nn.Module):
    """(B, Ns, Nd') preprocessed network input → (B, Nt, Nr) normalised target (and the auxiliary head).

    Nd' = Nd, or 2·Nd when a second part is concatenated (`use_imag`). With padding (`net.n_input` larger than
    `data_input`), the normalised input is zero-padded after its last angle and detector to `net.n_input` and
    the network's output cropped to `data_output`: the padded region is never compared with data, in any loss
    or metric, because it never leaves the model.
    """

    def __init__(self, net: BCRNet | BCNN | dict, *, antipodal: bool = True, use_imag: bool = False,
                 input: str = "measure", target: str = "coe", data_input=None, data_output=None,
                 model_type: str = "bcrnet"):
        """`net`: the network, or its constructor arguments (`config()`, as checkpoints store them) for
        `model_type` (`bcrnet` or `bcnn`); `input`/`target`: the datasets it reads and predicts;
        `data_input`/`data_output`: the unpadded sizes (default: the network's)."""
        super().__init__()
        if isinstance(net, nn.Module):
            model_type = next(name for name, cls in MODEL_TYPES.items() if isinstance(net, cls))
        elif model_type not in MODEL_TYPES:
            raise ValueError(f"ScatteringModel: unknown model type {model_type!r} (expected {', '.join(MODEL_TYPES)})")
        self.model_type = model_type
        self.net = net if isinstance(net, nn.Module) else MODEL_TYPES[model_type](**net)
        self.antipodal = antipodal
        self.use_imag = use_imag
        self.input, self.target = input, target
        self.data_input = tuple(int(v) for v in (data_input or self.net.n_input))
        self.data_output = tuple(int(v) for v in (data_output or self.net.n_output))
        for what, data, net_size in (("input", self.data_input, self.net.n_input),
                                     ("output", self.data_output, self.net.n_output)):
            if any(d > n for d, n in zip(data, net_size)):
                raise ValueError(f"ScatteringModel: data {what} {data} is larger than the network's {net_size}")
        nd = self.data_input[1]
        self.register_buffer("in_shift", torch.zeros(nd))
        self.register_buffer("in_scale", torch.ones(nd))
        self.register_buffer("out_scale", torch.ones(()))
        if model_type == "bcnn":
            # the Born matrix is fixed and identical on every rank (broadcast once at construction): DDP need not
            # re-broadcast its megabytes before every forward
            self._ddp_params_and_buffers_to_ignore = ["net.born.matrix"]
        self.born_record: dict = {}

    @property
    def padded(self) -> bool:
        return self.data_input != tuple(self.net.n_input) or self.data_output != tuple(self.net.n_output)

    @classmethod
    def from_config(cls, cfg, n_input, n_output, *, antipodal: bool | None = None, use_imag: bool | None = None,
                    bc_padding: str | None = None, input: str | None = None) -> ScatteringModel:
        """The model of training config `cfg` (its `model` section, `data.input`/`data.target`, and the resolved
        `antipodal`/`use_imag`, by default `data.antipodal`/`data.use_imag`) for network inputs (Ns, Nd') and
        targets (Nt, Nr), padded to `model.pad_to`; ConfigError or ValueError for sizes BCR-Net cannot take.
        `bc_padding`: the resolved `model.bc_padding` (`period` or `zero`; default `period`);
        `input`: the resolved input field (`farfield.real` for a complex `farfield`), default `data.input`."""
        m = cfg.model
        n_input, n_output = tuple(int(v) for v in n_input), tuple(int(v) for v in n_output)
        common = dict(antipodal=bool(cfg.data.antipodal if antipodal is None else antipodal),
                      use_imag=bool(cfg.data.use_imag if use_imag is None else use_imag),
                      input=cfg.data.input if input is None else input, target=cfg.data.target,
                      data_input=n_input, data_output=n_output)
        if m.type == "bcnn":
            if m.pad_to is not None:
                raise ConfigError("model.pad_to: applies to model.type bcrnet only; BCNN works at the data's sizes")
            b = m.bcnn
            net = BCNN(n_input, n_output, channels=b.channels, depth=b.depth, convs=b.convs, kernel=b.kernel,
                       periodic_rows=cfg.data.target == "coe")
            return cls(net, **common)
        net_in, net_out = n_input, n_output
        if m.pad_to is not None:
            h, w = (int(v) for v in m.pad_to)
            if max(n_input[0], n_output[0]) > h or max(n_input[1], n_output[1]) > w:
                raise ConfigError(f"model.pad_to: {[h, w]} is smaller than the data (input {n_input[0]}×{n_input[1]}, "
                                  f"target {n_output[0]}×{n_output[1]}); give [H, W] at least their size")
            net_in, net_out = (h, w), (h, w)
        levels = resolve_levels(net_in[0], m.levels, m.pad_to is not None)
        net = BCRNet.from_config(dataclasses.replace(m, levels=levels), net_in, net_out,
                                 bc_padding=bc_padding or "period")
        return cls(net, **common)

    @classmethod
    def from_extra_config(cls, mc: dict) -> ScatteringModel:
        """The model (untrained) of a checkpoint's `model_config` (`extra_config()`; older ones lack the data
        names and sizes: Fan's layout, unpadded; and the model type: BCR-Net)."""
        net = dict(mc["net"])
        net["n_input"], net["n_output"] = tuple(net["n_input"]), tuple(net["n_output"])
        model = cls(net, antipodal=mc["antipodal"], use_imag=mc["use_imag"], input=mc.get("input", "measure"),
                    target=mc.get("target", "coe"), data_input=mc.get("data_input"),
                    data_output=mc.get("data_output"), model_type=mc.get("type", "bcrnet"))
        model.born_record = dict(mc.get("born") or {})
        return model

    def set_normalization(self, shift, scale, out_scale: float) -> None:
        """Set the input shift/scale (each (Nd',)) and the output scale (> 0)."""
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not torch.all(torch.isfinite(scale)) or torch.any(scale <= 0):
            raise ValueError("input scale must be positive and finite")
        self.in_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
        self.in_scale.copy_(scale)
        self.out_scale.fill_(float(out_scale))

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """x (B, Ns, Nd') preprocessed measurements → normalised η (B, Nt, Nr) [, auxiliary head]."""
        x = (x - self.in_shift.to(x.dtype)) / self.in_scale.to(x.dtype)
        if self.model_type == "bcnn":
            return self.net(x, (self.in_shift, self.in_scale, self.out_scale), return_aux=return_aux)
        if not self.padded:
            return self.net(x, return_aux=return_aux)
        (h, w), (nt, nr) = self.net.n_input, self.data_output
        x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
        out = self.net(x, return_aux=return_aux)
        if return_aux:
            return out[0][:, :nt, :nr], out[1][:, :nt, :nr]
        return out[:, :nt, :nr]

    def preprocess(self, measure, measure_imag=None) -> torch.Tensor:
        """Raw input (B, Ns, Nd) [+ `measure_imag`] → the network input (B, Ns, Nd'), as in training. A complex
        input (the far field) gives its real part, and with `use_imag` its imaginary part as the second one."""
        def tensor(a):
            return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))

        measure = tensor(measure)
        if measure.is_complex():
            measure, measure_imag = measure.real, measure.imag
        if self.use_imag and measure_imag is None:
            raise ValueError("this model was trained with measure_imag: pass measure_imag as well")
        imag = tensor(measure_imag) if self.use_imag else None
        return network_input(tensor(measure), imag, apply_antipodal=self.antipodal).float()

    @torch.no_grad()
    def predict_eta(self, measure, measure_imag=None, batch_size: int = 256) -> np.ndarray:
        """Raw `measure` (B, Ns, Nd) or (Ns, Nd) → η on the polar grid (B, Nt, Nr) in physical units."""
        single = np.ndim(measure) == 2
        x = self.preprocess(measure[None] if single else measure,
                            None if measure_imag is None else (measure_imag[None] if single else measure_imag))
        device = self.out_scale.device
        was_training = self.training
        self.eval()
        out = [self(x[i:i + batch_size].to(device)) * self.out_scale for i in range(0, len(x), batch_size)]
        self.train(was_training)
        eta = torch.cat(out).cpu().numpy()
        return eta[0] if single else eta

    def summary(self) -> dict:
        """What a run's results record of the model: its type, and for BCNN how its Born layer was made."""
        return {"type": self.model_type, **({"born": dict(self.born_record)} if self.model_type == "bcnn" else {})}

    def extra_config(self) -> dict:
        """Everything besides the state dict needed to rebuild this model (for BCNN also `born`, how its Born
        layer was made: λ, the norm, the validation error; `bcrdist.train.born_layer`)."""
        out = {"net": self.net.config(), "antipodal": self.antipodal, "use_imag": self.use_imag,
               "input": self.input, "target": self.target, "data_input": list(self.data_input),
               "data_output": list(self.data_output)}
        if self.model_type != "bcrnet":         # BCR-Net checkpoints stay as they were
            out.update(type=self.model_type, born=dict(self.born_record))
        return out
