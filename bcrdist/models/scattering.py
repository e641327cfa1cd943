"""BCR-Net together with the data transforms it was trained with, for training and inference.

`ScatteringModel` holds the network and, as buffers (so they travel in every checkpoint), the input
normalisation (per detector channel: x ← (x − shift)/scale) and the output scale (targets were divided
by it for training, the original's "half range"). `forward` works in training units; `predict_eta` takes
raw `measure` arrays and returns η in physical units, assembling the network input as training did
(`bcrdist.transforms.network_input`). `ScatteringModel.from_config` builds one from a training config's
`model` and `data` sections and the data shapes (the trainer and `bcrdist import-keras`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bcrdist.transforms import network_input
from bcrdist.models.bcrnet import BCRNet


class ScatteringModel(nn.Module):
    """(B, Ns, Nd') preprocessed measurements → (B, Nt, Nr) normalised η (and the auxiliary head).

    Nd' = Nd, or 2·Nd when the imaginary part is concatenated (`use_imag`).
    """

    def __init__(self, net: BCRNet | dict, *, antipodal: bool = True, use_imag: bool = False):
        """`net`: the network, or its constructor arguments (`BCRNet.config()`, as checkpoints store them)."""
        super().__init__()
        self.net = net if isinstance(net, BCRNet) else BCRNet(**net)
        self.antipodal = antipodal
        self.use_imag = use_imag
        nd = self.net.n_input[1]
        self.register_buffer("in_shift", torch.zeros(nd))
        self.register_buffer("in_scale", torch.ones(nd))
        self.register_buffer("out_scale", torch.ones(()))

    @classmethod
    def from_config(cls, cfg, n_input, n_output) -> ScatteringModel:
        """The model of training config `cfg` (its `model` section and `data.antipodal`/`data.use_imag`) for
        network inputs (Ns, Nd') and targets (Nt, Nr); ValueError for sizes BCR-Net cannot take."""
        return cls(BCRNet.from_config(cfg.model, n_input, n_output), antipodal=cfg.data.antipodal,
                   use_imag=cfg.data.use_imag)

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
        return self.net(x, return_aux=return_aux)

    def preprocess(self, measure, measure_imag=None) -> torch.Tensor:
        """Raw `measure` (B, Ns, Nd) [+ `measure_imag`] → the network input (B, Ns, Nd'), as in training."""
        if self.use_imag and measure_imag is None:
            raise ValueError("this model was trained with measure_imag: pass measure_imag as well")
        def tensor(a):
            return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))

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

    def extra_config(self) -> dict:
        """Everything besides the state dict needed to rebuild this model."""
        return {"net": self.net.config(), "antipodal": self.antipodal, "use_imag": self.use_imag}
