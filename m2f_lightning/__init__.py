"""m2f-lightning: Mask2Former on PyTorch Lightning + Hydra.

    from m2f_lightning import Segmenter
    result = Segmenter.from_pretrained("last.ckpt")("photo.jpg")

The public names below are imported on first use, so `import m2f_lightning` stays cheap.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name → the module that defines it
_PUBLIC = {
    "Segmenter": "m2f_lightning.predictor",
    "SegmenterResult": "m2f_lightning.predictor",
    "PredictedSegment": "m2f_lightning.predictor",
    "PredictedInstances": "m2f_lightning.predictor",
    "save_results": "m2f_lightning.predictor",
    "Mask2Former": "m2f_lightning.modeling",
    "load_model": "m2f_lightning.checkpoints",
    "save_model": "m2f_lightning.checkpoints",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'm2f_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
