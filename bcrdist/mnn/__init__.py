"""MNN layer library: channels-first ports of Yuwei Fan's `mnn` layers (the networks are in `bcrdist.models`)."""

from bcrdist.mnn.conv import (CNNI1D, CNNI2D, CNNI3D, CNNK1D, CNNK2D, CNNK3D, CNNR1D, CNNR2D, CNNR3D)
from bcrdist.mnn.locally_connected import LCI1D, LCI2D, LCK1D, LCK2D, LCR1D, LCR2D
from bcrdist.mnn.padding import PeriodPadding1D, PeriodPadding2D, PeriodPadding3D, period_pad, zero_pad
from bcrdist.mnn.reshape import (ReshapeM1D, ReshapeM2D, ReshapeM3D, ReshapeT1D, ReshapeT2D, ReshapeT3D,
                                 reshape_m, reshape_t)
from bcrdist.mnn.wavelet import (InvWaveLetC1D, InvWaveLetC2D, InvWaveLetC3D, WaveLetC1D, WaveLetC2D,
                                 WaveLetC3D)

__all__ = [
    "CNNR1D", "CNNR2D", "CNNR3D", "CNNK1D", "CNNK2D", "CNNK3D", "CNNI1D", "CNNI2D", "CNNI3D",
    "LCR1D", "LCR2D", "LCK1D", "LCK2D", "LCI1D", "LCI2D",
    "WaveLetC1D", "WaveLetC2D", "WaveLetC3D", "InvWaveLetC1D", "InvWaveLetC2D", "InvWaveLetC3D",
    "PeriodPadding1D", "PeriodPadding2D", "PeriodPadding3D", "period_pad", "zero_pad",
    "ReshapeM1D", "ReshapeM2D", "ReshapeM3D", "ReshapeT1D", "ReshapeT2D", "ReshapeT3D", "reshape_m", "reshape_t",
]
