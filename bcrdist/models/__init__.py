"""Networks built from the MNN layers (BCR-Net, MNN-H, MNN-H2), the scattering model wrapper, Keras weight
import and the model-checkpoint format."""

from bcrdist.models.bcrnet import BCRNet, default_levels
from bcrdist.models.mnnh import MNNH, MNNH2

__all__ = ["BCRNet", "default_levels", "MNNH", "MNNH2"]
