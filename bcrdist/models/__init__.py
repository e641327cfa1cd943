"""Networks built from the MNN layers (BCR-Net, MNN-H, MNN-H2), the study's comparison networks, the network
registry (`register`: how a network is added, `bcrdist.models.registry`), the scattering model wrapper,
Keras weight import and the model-checkpoint format.

The networks a run can train are registered here, by name (`model.type`)."""

from bcrdist.models.bcnn import BCNN
from bcrdist.models.bcrnet import BCRNet, default_levels
from bcrdist.models.mnnh import MNNH, MNNH2
from bcrdist.models.nio import NIO
from bcrdist.models.registry import Network, NetworkIO, Units, network_class, network_names, register
from bcrdist.models.study_cnn import CNN, CNNB, StudyBCNN

register("bcrnet", BCRNet)
register("bcnn", BCNN)
register("cnn", CNN)
register("cnnb", CNNB)
register("study_bcnn", StudyBCNN)
register("nio", NIO)

__all__ = ["BCRNet", "BCNN", "CNN", "CNNB", "StudyBCNN", "NIO", "default_levels", "MNNH", "MNNH2", "Network",
           "NetworkIO", "Units", "register", "network_class", "network_names"]
