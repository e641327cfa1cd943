"""bcrdist: multiscale neural networks (MNN-H, MNN-H2, BCR-Net) and distributed training for 2D inverse
wave scattering."""

__version__ = "0.1.0"


def load_model(checkpoint, device="cpu"):
    """A trained model with its preprocessing, from a checkpoint or a `bcrdist export` directory (see
    `bcrdist.models.checkpoint.load_model`)."""
    from bcrdist.models.checkpoint import load_model as _load

    return _load(checkpoint, device=device)
