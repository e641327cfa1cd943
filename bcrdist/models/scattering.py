"""A registered network together with the data transforms it was trained with, for training and inference.

`ScatteringModel` holds the network (any `bcrdist.models.registry.Network`: BCR-Net, BCNN, the study's
networks, or one registered outside bcrdist) and, as buffers (so they travel in every checkpoint), the input
normalisation (per detector channel: x ← (x − shift)/scale), the output scale (targets were divided by it for
training, the original's "half range") and, with the study's min–max normalisation, the output map
y = gain·o + bias from the network's [−1, 1] units to training units. `forward` works in training units;
`predict_eta` takes raw input arrays and returns η in physical units, assembling the network input as training
did (`bcrdist.transforms.network_input`). The run plan (`bcrdist.train.plan`) resolves the network's
constructor arguments; `record()` / `from_record` are what a checkpoint stores and how it is rebuilt.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.errors import DataError
from bcrdist.models.registry import Network, Units, network_class
from bcrdist.transforms import network_input

NORMALIZATIONS = ("rms", "minmax")


class RawInput(NamedTuple):
    """What a model reads, in the data's terms: `dataset` (`measure`, `farfield`, …), `part` (None: a real
    dataset; "real" / "imag": that part of a complex dataset; "both": its real and imaginary parts), `second`
    (a second real dataset concatenated after the first: Fan's `measure_imag`; or None) and `shape` (Ns, Nd) of
    one sample of each."""

    dataset: str
    part: str | None
    second: str | None
    shape: tuple[int, int]

    def describe(self) -> str:
        """E.g. "the complex far field 'farfield' (N, 12, 12), its real and imaginary parts"."""
        shape = f"(N, {self.shape[0]}, {self.shape[1]})"
        name = f"the complex far field {self.dataset!r}" if self.dataset == "farfield" else \
            f"the complex {self.dataset!r}"
        if self.part == "both":
            return f"{name} {shape}, its real and imaginary parts"
        if self.part is not None:
            return f"the {self.part} part of {name} {shape}"
        if self.second is not None:
            return f"the real {self.dataset!r} and {self.second!r}, each {shape}"
        return f"the real {self.dataset!r} {shape}"


class ScatteringModel(nn.Module):
    """(B, Ns, Nd') preprocessed network input → (B, Nt, Nr) normalised target (and the auxiliary head).

    Nd' = Nd, or 2·Nd when a second part is concatenated (`use_imag`). With padding (`net.n_input` larger than
    `data_input`), the normalised input is zero-padded after its last angle and detector to `net.n_input` and
    the network's output cropped to `data_output`: the padded region is never compared with data, in any loss
    or metric, because it never leaves the model.
    """

    def __init__(self, net: Network, *, antipodal: bool = True, use_imag: bool = False, input: str = "measure",
                 target: str = "coe", data_input=None, data_output=None, normalization: str = "rms"):
        """`net`: the network; `input`/`target`: the datasets it reads and predicts; `data_input`/`data_output`:
        the unpadded sizes (default: the network's); `normalization`: `rms` (bcrdist's) or `minmax` (the
        study's: the output map gain·o + bias is a buffer too)."""
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"ScatteringModel: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.net = net
        self.antipodal = antipodal
        self.use_imag = use_imag
        self.input, self.target = input, target
        self.normalization = normalization
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
        if normalization == "minmax":
            self.register_buffer("out_gain", torch.ones(()))
            self.register_buffer("out_bias", torch.zeros(()))

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by DDP when it wraps the model: tensors rebuilt from a definition (a Born layer's factors,
        non-persistent buffers) are the same on every rank, so DDP need not broadcast their megabytes before
        every forward."""
        return [f"{prefix}.{name}" if prefix else name for prefix, module in self.named_modules()
                for name in module._non_persistent_buffers_set]

    @property
    def model_type(self) -> str:
        return self.net.name

    @property
    def padded(self) -> bool:
        return self.data_input != tuple(self.net.n_input) or self.data_output != tuple(self.net.n_output)

    @classmethod
    def from_record(cls, record: dict, where: str = "model_config") -> ScatteringModel:
        """The model (untrained) of a checkpoint's `model_config` (`record()`; older ones lack the data names and
        sizes: Fan's layout, unpadded; and the network type: BCR-Net)."""
        name = record.get("type", "bcrnet")
        net_config = dict(record["net"])
        if "born" in record and "born" not in net_config:
            raise DataError(f"{where}: a BCNN checkpoint of bcrdist 0.1 stores its Born layer as a dense matrix; "
                            f"this bcrdist stores the layer by its definition: train the model again")
        net = network_class(name, f"{where}.type")(**net_config)
        model = cls(net, antipodal=record["antipodal"], use_imag=record["use_imag"],
                    input=record.get("input", "measure"), target=record.get("target", "coe"),
                    data_input=record.get("data_input"), data_output=record.get("data_output"),
                    normalization=record.get("normalization", "rms"))
        net.keep_fit_record(record.get("fit") or {})
        return model

    def set_normalization(self, shift, scale, out_scale: float, out_gain: float = 1.0, out_bias: float = 0.0) -> None:
        """Set the input shift/scale (each (Nd',)), the output scale (> 0) and, with `minmax`, the output map."""
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not torch.all(torch.isfinite(scale)) or torch.any(scale <= 0):
            raise ValueError("input scale must be positive and finite")
        self.in_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
        self.in_scale.copy_(scale)
        self.out_scale.fill_(float(out_scale))
        if self.normalization == "minmax":
            self.out_gain.fill_(float(out_gain))
            self.out_bias.fill_(float(out_bias))

    def units(self) -> Units:
        """The normalisation as a network working in physical units sees it."""
        if self.normalization == "minmax":
            return Units(self.in_shift, self.in_scale, self.out_gain, self.out_bias, self.out_scale)
        one = self.out_scale.new_ones(())
        return Units(self.in_shift, self.in_scale, one, one - 1, self.out_scale)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """x (B, Ns, Nd') preprocessed input → normalised η (B, Nt, Nr) [, auxiliary head]."""
        x = (x - self.in_shift.to(x.dtype)) / self.in_scale.to(x.dtype)
        if self.padded:
            (h, w) = self.net.n_input
            x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
        kwargs = {"units": self.units()} if self.net.uses_units else {}
        out = self.net(x, return_aux=return_aux, **kwargs)
        heads = out if return_aux else (out,)
        if self.padded:
            nt, nr = self.data_output
            heads = tuple(h[:, :nt, :nr] for h in heads)
        if self.normalization == "minmax":
            heads = tuple(h * self.out_gain.to(h.dtype) + self.out_bias.to(h.dtype) for h in heads)
        return heads if return_aux else heads[0]

    def raw_input(self) -> RawInput:
        """What `predict_eta` takes: the dataset this model was trained on and which of its parts (`RawInput`)."""
        base, _, suffix = self.input.rpartition(".")
        if suffix not in ("real", "imag") or not base:
            base, suffix = self.input, ""
        ns, nd = self.data_input
        if suffix:
            part, second = ("both" if self.use_imag else suffix), None
        elif self.use_imag and base == "measure":
            part, second = None, "measure_imag"
        else:
            # a complex dataset named without a part (a model built outside a run plan) is read as both parts
            part, second = ("both" if self.use_imag else None), None
        two = part == "both" or second is not None
        return RawInput(base, part, second, (ns, nd // 2 if two else nd))

    def preprocess(self, measure, measure_imag=None) -> torch.Tensor:
        """Raw input → the network input (B, Ns, Nd'), as in training (`raw_input()` says what it reads).

        `measure` (B, Ns, Nd): the model's dataset (Fan's `measure`, or the far field (B, n_obs, n_inc)), real or
        complex. A complex array gives the part(s) the model was trained on: both (the far field's Re and Im,
        or `measure` + i·`measure_imag`), or the one its input names (`farfield.real`: Re, `farfield.imag`: Im;
        the other part is not used, by the model's design). `measure_imag` (B, Ns, Nd): the second real part
        of a model that reads two. ValueError when the input is not what the model reads: a complex array for
        a real dataset, a missing or unexpected second part, another sample shape."""
        def tensor(a):
            return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))

        raw = self.raw_input()
        measure = tensor(measure)
        imag = None if measure_imag is None else tensor(measure_imag)
        two = raw.part == "both" or raw.second is not None
        if measure.is_complex():
            if imag is not None:
                raise ValueError("predict: a complex input already holds both parts; pass no second part")
            if raw.part is None and raw.second is None:
                raise ValueError(f"predict: this model reads {raw.describe()}, got a complex array; pass its real "
                                 f"part")
            measure, imag = (measure.imag, None) if raw.part == "imag" else \
                (measure.real, measure.imag if two else None)
        elif two and imag is None:
            raise ValueError(f"predict: this model reads {raw.describe()}: pass a complex array, or the second "
                             f"part as well")
        elif not two and imag is not None:
            raise ValueError(f"predict: this model reads {raw.describe()}, one part; pass no second part")
        for what, a in (("input", measure), ("second part", imag)):
            if a is not None and tuple(a.shape[-2:]) != raw.shape:
                raise ValueError(f"predict: this model reads {raw.describe()}; the {what} has shape "
                                 f"{tuple(a.shape)}")
        return network_input(measure, imag, apply_antipodal=self.antipodal).float()

    @torch.no_grad()
    def predict_eta(self, measure, measure_imag=None, batch_size: int = 256) -> np.ndarray:
        """η in physical units on the grid of the model's target: the polar (B, Nt, Nr) `coe` of Fan's layout or
        the Cartesian (B, H, W) image of the far-field layout, whichever the model was trained to predict.

        `measure`: the raw input the model reads (`raw_input()`), (B, Ns, Nd) or one sample (Ns, Nd): Fan's
        `measure` (with `measure_imag`, or as `measure` + i·`measure_imag`, for a model trained with it), or the
        complex far field (B, n_obs, n_inc) of a far-field model; a complex input is read as `preprocess`
        says (the part(s) the model was trained on, never silently the real part of a real dataset)."""
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
        """What a run's results record of the model: its type, and how it was fitted to its data (a Born
        layer's λ or damping)."""
        fit = self.net.fit_record()
        return {"type": self.model_type, **({"born": fit} if fit else {})}

    def record(self) -> dict:
        """Everything besides the state dict needed to rebuild this model: the network's type and constructor
        arguments (a Born layer's definition among them), the data it reads and predicts, the normalisation,
        and its fit record."""
        out = {"net": self.net.config(), "antipodal": self.antipodal, "use_imag": self.use_imag,
               "input": self.input, "target": self.target, "data_input": list(self.data_input),
               "data_output": list(self.data_output), "type": self.model_type}
        if self.normalization != "rms":
            out["normalization"] = self.normalization
        fit = self.net.fit_record()
        if fit:
            out["fit"] = fit
        return out
