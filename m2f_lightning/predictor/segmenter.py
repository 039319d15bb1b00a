"""`Segmenter`: a trained model as a Python function, image(s) in, typed results out.

It runs what `m2f-evaluate` and `m2f-predict` run, through the same functions: the test-time
resize (`eval_resize`), the padded batch (`collate`), the forward(s) and post-processing
(`inference.predict_images`: one forward, or sliding windows / TTA) and, for `save`, the
prediction writer. Its results are those of `m2f-predict` bit for bit (tests/test_segmenter.py).
"""

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.stored import (
    DEFAULT_TEST_MAX_SIZE,
    DEFAULT_TEST_MIN_SIZE,
    read_stored_settings,
)
from ..data.catalog import DatasetMetadata
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceSettings, predict_images
from ..modeling import Mask2Former
from ..modeling.dtypes import autocast_dtype
from .classes import checkpoint_metadata, no_class_names, resolve_task, thing_flags
from .inputs import ImageInput, is_single, load_input
from .results import SegmenterResult

INFERENCE_KEYS = tuple(f.name for f in fields(InferenceSettings))


class Segmenter:
    """Panoptic, instance or semantic segmentation of images with a trained Mask2Former.

        seg = Segmenter.from_pretrained("outputs/run/checkpoints/last.ckpt")
        result = seg("photo.jpg")          # or a PIL image, a numpy array, a list of them
        result.overlay().save("overlay.png")

    Build it with `from_pretrained`; the constructor takes a loaded model and its settings.
    """

    def __init__(
        self,
        model: Mask2Former,
        task: str,
        metadata: DatasetMetadata,
        settings: InferenceSettings,
        test_min_size: int,
        test_max_size: int,
        device: torch.device,
        mixed: torch.dtype | None = None,
        batch_size: int = 1,
        size_divisibility: int = 32,
        runtime: str = "eager",
        checkpoint: str | Path | None = None,
    ) -> None:
        from ..data.transforms import eval_resize
        from .runtimes import build_runtime

        if runtime == "onnxruntime" and (device.type != "cpu" or mixed is not None):
            raise ConfigError(
                f"runtime='onnxruntime' runs float32 on the CPU: use device='cpu', dtype='fp32' "
                f"(got device={device.type!r}, dtype={mixed}), or runtime='eager'/'compile'"
            )
        self.model = model.to(device).eval()
        # what runs the network: the model itself, compiled, or its ONNX export (`runtimes`)
        self.net = build_runtime(self.model, runtime, checkpoint=checkpoint)
        self.task = task
        self.metadata = metadata
        self.settings = settings
        self.test_min_size, self.test_max_size = test_min_size, test_max_size
        self.device = device
        self.mixed = mixed  # the autocast dtype, None for float32
        self.batch_size = batch_size
        self.size_divisibility = size_divisibility
        self.transform = eval_resize(test_min_size, test_max_size)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        *,
        task: str | None = None,
        test_min_size: int | None = None,
        test_max_size: int | None = None,
        class_names: Sequence[str] | None = None,
        thing_classes: Sequence[str] | None = None,
        batch_size: int = 1,
        model_config: dict[str, Any] | None = None,
        runtime: str = "eager",
        **inference: Any,
    ) -> "Segmenter":
        """The model at `checkpoint` (our checkpoint, a Lightning .ckpt, an HF directory, or a
        model-zoo .pkl with `class_names` and `model_config`), ready to segment.

        device: "cpu", "cuda", ... (default: CUDA where there is one). dtype: fp32; bf16 (mixed
        precision, CPU or CUDA); fp16 (mixed precision, CUDA only), as `precision=` in the
        commands. task, test_min_size / test_max_size and the post-processing (`inference`:
        the keys of the `inference` config group, e.g. object_mask_threshold, mode="sliding",
        tta=True) come from the checkpoint where it stores them; these arguments override
        them. class_names / thing_classes: for checkpoints that store no class names (.pkl) or
        no thing flags (an HF directory whose classes are no shipped catalog). runtime: "eager",
        "compile" (torch.compile) or "onnxruntime" (CPU, fp32: exported once, cached beside the
        checkpoint, checked against eager on the first image), as `runtime=` of m2f-predict.
        """
        from ..checkpoints import load_model

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        mixed = autocast_dtype(dtype, device)  # refused before anything is read
        unknown = sorted(set(inference) - set(INFERENCE_KEYS))
        if unknown:
            raise ConfigError(
                f"Segmenter.from_pretrained: unknown argument(s) {unknown}; the post-processing "
                f"arguments are {', '.join(INFERENCE_KEYS)}"
            )
        source = str(checkpoint)
        stored = read_stored_settings(checkpoint)
        overrides = dict(model_config or {})
        if source.endswith(".pkl") and class_names is not None:
            overrides.setdefault("num_classes", len(class_names))
        if source.endswith(".pkl") and "num_classes" not in overrides:
            raise no_class_names(source, _NAMES_HINT)
        model = load_model(checkpoint, map_location=device, **overrides)
        names = list(class_names) if class_names is not None else model.class_names
        is_thing = model.is_thing if class_names is None else None
        if thing_classes is not None and names is not None:
            is_thing = thing_flags(names, thing_classes, source)
        task = resolve_task(source, task, stored.task, "task='panoptic', 'instance' or 'semantic'")
        metadata = checkpoint_metadata(
            source,
            task,
            names,
            is_thing,
            stored.dataset_ids,
            names_hint=_NAMES_HINT,
            things_hint="thing_classes=[names of the thing classes]",
        )
        if metadata.num_classes != model.num_classes:
            raise CheckpointError(
                f"{source} predicts {model.num_classes} classes but {metadata.num_classes} "
                "class names were given"
            )
        try:
            kept = {k: v for k, v in stored.inference.items() if k in INFERENCE_KEYS}
            settings = InferenceSettings(**{**kept, **inference})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"Segmenter.from_pretrained: {err}") from None
        if (test_min_size or stored.test_min_size) is None:
            warnings.warn(
                f"{source} stores no test-time size: images are resized to a short side of "
                f"{DEFAULT_TEST_MIN_SIZE} (long side at most {DEFAULT_TEST_MAX_SIZE}, "
                "detectron2's default); pass test_min_size= / test_max_size= for the size the "
                "model was trained for",
                UserWarning,
                stacklevel=2,
            )
        return cls(
            model,
            task,
            metadata,
            settings,
            test_min_size or stored.test_min_size or DEFAULT_TEST_MIN_SIZE,
            test_max_size or stored.test_max_size or DEFAULT_TEST_MAX_SIZE,
            device,
            mixed,
            batch_size,
            runtime=runtime,
            checkpoint=checkpoint,
        )

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names

    def __call__(
        self, images: ImageInput | Sequence[ImageInput]
    ) -> SegmenterResult | list[SegmenterResult]:
        """The result of one image, or the list of results of a list of images (run
        `batch_size` at a time)."""
        single = is_single(images)
        loaded = [load_input(image, i) for i, image in enumerate([images] if single else images)]
        results: list[SegmenterResult] = []
        for start in range(0, len(loaded), self.batch_size):
            results += self._batch(loaded[start : start + self.batch_size])
        return results[0] if single else results

    def _batch(self, loaded: list[tuple[Any, str]]) -> list[SegmenterResult]:
        from ..data.collate import collate
        from ..data.torch_datasets import _predict_item

        items = [
            _predict_item(image, name, Path(name).stem, self.transform) for image, name in loaded
        ]
        batch = collate(items, self.size_divisibility)
        autocast = (
            torch.autocast(self.device.type, dtype=self.mixed, cache_enabled=False)
            if self.mixed is not None
            else nullcontext()
        )
        thing_ids = self.metadata.thing_ids
        with torch.inference_mode(), autocast:
            raw = predict_images(
                self.net,
                batch.images.to(self.device),
                batch.image_sizes,
                batch.orig_sizes,
                self.task,
                thing_ids,
                self.settings,
            )
        out = []
        for result, (image, name) in zip(raw, loaded, strict=True):
            result.file_name, result.image_id = name, Path(name).stem
            out.append(SegmenterResult(self.task, name, image, result, self.metadata))
        return out


_NAMES_HINT = "class_names=[...] (and model_config={...} for an architecture other than R50)"
