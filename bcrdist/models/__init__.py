"""Networks built from the MNN layers: BCR-Net."""

from bcrdist.models.bcrnet import BCRNet, default_levels

__all__ = ["BCRNet", "default_levels"]
