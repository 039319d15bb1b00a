"""m2f-lightning: Mask2Former on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
