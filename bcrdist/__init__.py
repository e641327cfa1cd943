"""bcrdist: multiscale neural networks (MNN-H, MNN-H2, BCR-Net) and distributed training for 2D inverse
wave scattering."""

__version__ = "0.1.0"
