"""How the network runs at inference: `build_runtime(model, name)` returns a callable
`(images [B, 3, H, W] RGB 0..255, image_sizes=None) -> outputs` whose outputs are what the eager
model gives post-processing (`pred_logits`, `pred_masks`, `image_size`, `padded_size`), so that
`predict_results` / `predict_tiled` read them unchanged.

- `eager`: the model itself (`Mask2Former.infer`: the output set's mask logits only);
- `compile`: the same with `torch.compile` on its three parts (`Mask2Former.compile_network`);
- `onnxruntime`: the network exported to ONNX (`export.export_model`) once per padded input size
  (test-time resizing gives images their own sizes; each size that comes up is exported when it
  first does) and run by ONNX Runtime on CPU. The files are cached beside the checkpoint (else in
  `cache_dir`), named by a hash of the weights and the size, so a later run loads them. The first
  image of each file is also run eagerly: the runtime keeps ONNX Runtime only when the two agree
  (`PARITY_LOGITS_ATOL` on the logits, `PARITY_MASK_AGREEMENT` of the mask pixels' signs); else,
  or when an export fails, it warns and runs eagerly from then on.

One export with a dynamic height and width would serve every size, but `torch.export` with
symbolic H, W did not finish in over 2 CPU minutes on the tiny test model (a fixed size: 32 s), and
specialises H, W for ResNet backbones; so each size gets its own file.
"""

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..modeling import Mask2Former

RUNTIMES = ("eager", "compile", "onnxruntime")
# parity of the first image: largest |difference| of class and mask logits, and the share of
# mask pixels (queries × pixels, logit > 0) on the same side in both
PARITY_LOGITS_ATOL = 1e-2
PARITY_MASK_AGREEMENT = 0.999
EXPORT_VERSION = 2  # bump when the exported graph changes, so old cached files are not read


class RuntimeFallback(UserWarning):
    """ONNX Runtime was asked for but could not be used: the model runs eagerly."""


def require_onnxruntime() -> Any:
    """The `onnxruntime` module, or a clear error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            "runtime=onnxruntime needs the onnxruntime and onnx packages: "
            "pip install 'm2f-lightning[export]' (or pip install onnxruntime onnx onnxscript)"
        ) from err
    return onnxruntime


def weights_key(model: Mask2Former) -> str:
    """A short hash of the weights and the architecture: the name of the cached export."""
    digest = hashlib.sha256()
    digest.update(f"v{EXPORT_VERSION} {torch.__version__} {sorted(model.config.items())}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def onnx_cache_path(
    model: Mask2Former,
    checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
    shape: tuple[int, int] = (512, 512),
    key: str | None = None,
) -> Path:
    """Where the export of `model` at input size `shape` (H, W) lives: beside `checkpoint` when
    that folder is writable, else in `cache_dir` (default ~/.cache/m2f-lightning/onnx).
    `key`: `weights_key(model)` when already known."""
    key = key or weights_key(model)
    size = f"{shape[0]}x{shape[1]}"
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if _writable(checkpoint.parent):
            return checkpoint.parent / f"{checkpoint.stem}.{key}.{size}.onnx"
    folder = Path(cache_dir or Path.home() / ".cache" / "m2f-lightning" / "onnx")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"model.{key}.{size}.onnx"


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime's options: every graph optimisation, sequential execution, `threads` intra-op
    threads (default: torch's thread count, so both runtimes use the same cores)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return options


def parity(eager: dict[str, Any], logits: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """(largest |difference| of the logits, share of mask pixels whose sign agrees)."""
    e_logits = eager["pred_logits"].detach().float().cpu().numpy()
    e_masks = eager["pred_masks"].detach().float().cpu().numpy()
    if e_logits.shape != logits.shape or e_masks.shape != masks.shape:
        return float("inf"), 0.0
    diff = max(float(np.abs(e_logits - logits).max()), float(np.abs(e_masks - masks).max()))
    agreement = float(((e_masks > 0) == (masks > 0)).mean())
    return diff, agreement


class OnnxRuntime:
    """Runs the exported network with ONNX Runtime, one image at a time, one session per padded
    input size; see the module doc."""

    name = "onnxruntime"

    def __init__(
        self,
        model: Mask2Former,
        checkpoint: str | Path | None = None,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        require_onnxruntime()
        self.model = model
        self.checkpoint, self.cache_dir, self.threads = checkpoint, cache_dir, threads
        self.key: str | None = None
        self.sessions: dict[tuple[int, int], Any] = {}  # by padded (H, W)
        self.paths: list[Path] = []  # the files opened, in order
        self.exported: list[Path] = []  # those this runtime wrote (the others: from the cache)
        self.parity: dict[tuple[int, int], tuple[float, float]] = {}
        self.fallback = False  # True once ONNX Runtime was given up: eager from then on

    @property
    def path(self) -> Path | None:
        return self.paths[0] if self.paths else None

    def _give_up(self, reason: str) -> None:
        warnings.warn(
            f"runtime=onnxruntime: {reason}; running the model eagerly instead",
            RuntimeFallback,
            stacklevel=3,
        )
        self.fallback = True

    def _open(self, shape: tuple[int, int]) -> Any:
        """The session of padded inputs of `shape`, exported first unless cached."""
        from ..cli import export

        ort = require_onnxruntime()
        self.key = self.key or weights_key(self.model)
        path = onnx_cache_path(self.model, self.checkpoint, self.cache_dir, shape, self.key)
        if not path.is_file():
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            try:
                export.export_model(self.model, tmp, "onnx", shape)
                tmp.replace(path)  # whole files only: a run stopped mid-export leaves no cache
            finally:
                tmp.unlink(missing_ok=True)
            self.exported.append(path)
        self.paths.append(path)
        session = ort.InferenceSession(
            str(path), session_options(self.threads), providers=["CPUExecutionProvider"]
        )
        self.sessions[shape] = session
        return session

    def _padded(
        self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]] | None
    ) -> torch.Tensor:
        """The batch as the exported graph takes it: pixels outside each image's size and the
        padding to the size divisibility set to the pixel mean (zero once normalised, as eager
        sets them), so that every height and width is a multiple of it."""
        mean = self.model.pixel_mean.to(images.device).view(1, 3, 1, 1)
        div = self.model.size_divisibility
        b, _, h, w = images.shape
        hp, wp = -(-h // div) * div, -(-w // div) * div
        x = mean.expand(b, 3, hp, wp).clone()
        x[:, :, :h, :w] = images.float()
        for i, (hi, wi) in enumerate(image_sizes or ()):
            x[i, :, hi:, :] = mean[0]
            x[i, :, :, wi:] = mean[0]
        return x

    def __call__(
        self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]] | None = None
    ) -> dict[str, Any]:
        if self.fallback:
            return self.model.infer(images, image_sizes)
        self.model._check_images(images)
        x = self._padded(images, image_sizes)
        key = (int(x.shape[2]), int(x.shape[3]))
        try:
            session = self.sessions.get(key) or self._open(key)
        except Exception as err:  # noqa: BLE001 - any export failure falls back, named
            self._give_up(f"the export failed ({type(err).__name__}: {err})")
            return self.model.infer(images, image_sizes)
        names = [o.name for o in session.get_outputs()]
        feed = session.get_inputs()[0].name
        runs = [session.run(names, {feed: x[i : i + 1].cpu().numpy()}) for i in range(len(x))]
        logits = np.concatenate([r[0] for r in runs])
        masks = np.concatenate([r[1] for r in runs])
        if key not in self.parity:  # a session's first batch: checked against eager
            eager = self.model.infer(images, image_sizes)
            self.parity[key] = diff, agreement = parity(eager, logits, masks)
            if not (diff <= PARITY_LOGITS_ATOL and agreement >= PARITY_MASK_AGREEMENT):
                self._give_up(
                    f"{self.paths[-1]} ({key[0]}x{key[1]}) differs from eager PyTorch on the first image (logits by "
                    f"up to {diff:.3g}, tolerance {PARITY_LOGITS_ATOL:g}; mask pixels agree "
                    f"{100 * agreement:.3f}%, needed {100 * PARITY_MASK_AGREEMENT:g}%)"
                )
                return eager
        return {
            "pred_logits": torch.from_numpy(logits).to(images.device),
            "pred_masks": torch.from_numpy(masks).to(images.device),
            "image_size": (int(images.shape[2]), int(images.shape[3])),
            "padded_size": (int(x.shape[2]), int(x.shape[3])),
        }


def build_runtime(
    model: Mask2Former,
    name: str = "eager",
    *,
    checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
    compile_cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> Any:
    """A callable `(images, image_sizes=None) -> outputs` running `model` (in eval mode) with the
    runtime `name` (one of `RUNTIMES`); see the module doc. `checkpoint`: the file the weights
    came from (the ONNX export is cached beside it); `cache_dir`: where it goes otherwise."""
    if name not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {name!r}")
    model.eval()
    if name == "compile":
        model.compile_network(
            cache_dir=str(compile_cache_dir) if compile_cache_dir is not None else None
        )
        return model.infer
    if name == "onnxruntime":
        if checkpoint is not None and not Path(checkpoint).exists():
            checkpoint = None  # a hub id: the export goes to cache_dir, not beside a name
        return OnnxRuntime(model, checkpoint, cache_dir, threads)
    return model.infer
