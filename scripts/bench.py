"""One benchmark table: ours vs a reference, every row timed alternately in the same run.

Rows (ours | reference):
- train step, batch 2, at 256² and 512²: `Mask2Former` + `SetCriterion` + AdamW | the Hugging Face
  port (transformers' Mask2FormerForUniversalSegmentation with its own loss and AdamW), whose
  random weights are converted into ours with `load_model(hf_dir)`: same weights, same images and
  targets, fp32, Swin-T, 150 classes;
- FLOPs of one train step (forward, loss, backward) at 512², as torch.profiler counts them;
- peak RSS of one process doing that train step at 512² (one child process per side), and
  again with ours under activation checkpointing (`Mask2Former(checkpointing=True)`);
- inference, batch 1, 512² (eval, no grad): ours as evaluate and predict run it (`Mask2Former.infer`:
  the output set's mask logits only; on CPU the deformable attention's "gather" backend) | HF's
  forward; the row's `check` is the mask agreement with our forward in the official arithmetic
  (grid_sample, every set's full mask logits);
- the same with ours under `runtime=onnxruntime` (`m2f_lightning.predictor.runtimes`: the network exported
  to ONNX, cached in build/onnx_cache, run by ONNX Runtime), with the mask agreement with our
  eager output in the row's `check`;
- host syncs per train step (batch 2, the first train size): host round trips a GPU would stall
  on, counted on CPU by `m2f_lightning.runs.host_syncs` (ours: the Lightning step) | HF's train step;
- criterion forward + backward (batch 2, 10 prediction sets, 100 queries) | HF's Mask2FormerLoss;
- PQ metric on 512² panoptic maps with ~30 segments | torchmetrics' PanopticQuality;
- COCO LSJ at 1024 on a 480x640 image and its id map | the same geometry from stock
  albumentations transforms (LongestMaxSize, RandomScale, PadIfNeeded, RandomCrop).

Time rows give seconds (median of the alternated rounds) and the ratio reference / ours (> 1:
ours is faster); the RSS row gives GB and ours / reference (< 1: ours is lighter).

    python scripts/bench.py [--quick] [--json out.json] [--threads 2] [--profile]

`--quick` runs a tiny model at tiny sizes (a smoke test of the whole table, seconds);
`--profile` adds where our train step goes (forward parts, matcher, loss, backward, optimizer);
`--compile` adds the train-step and inference rows again with ours under `compile=true`
(`Mask2Former.compile_network`, graphs cached in `--compile-cache`: the first run compiles for
minutes, which the row's `first_call_s` records; later runs load them in seconds).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from m2f_lightning.checkpoints import load_model  # noqa: E402
from m2f_lightning.losses import SetCriterion  # noqa: E402

# sizes of the full run and of --quick (a tiny model at tiny sizes)
FULL = {
    "train_sizes": (256, 512),
    "infer_size": 512,
    "rss_size": 512,
    "classes": 150,
    "num_points": 12544,
    "rounds": {256: 3, 512: 3},
    "infer_rounds": 8,
    "criterion_rounds": 5,
    "criterion_size": 512,
    "criterion_queries": 100,
    "pq_size": 512,
    "pq_images": 10,
    "lsj_size": 1024,
    "lsj_samples": 30,
}
QUICK = {
    "train_sizes": (32, 64),
    "infer_size": 64,
    "rss_size": 64,
    "classes": 10,
    "num_points": 64,
    "rounds": {32: 1, 64: 1},
    "infer_rounds": 1,
    "criterion_rounds": 1,
    "criterion_size": 64,
    "criterion_queries": 10,
    "pq_size": 64,
    "pq_images": 2,
    "lsj_size": 128,
    "lsj_samples": 2,
}


def hf_model(classes: int, quick: bool, num_points: int):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    if quick:
        backbone = SwinConfig(
            embed_dim=32,
            depths=[1, 1, 2, 1],
            num_heads=[1, 2, 4, 8],
            window_size=7,
            out_features=["stage1", "stage2", "stage3", "stage4"],
            drop_path_rate=0.0,
        )
        extra = {
            "hidden_dim": 64,
            "feature_size": 64,
            "mask_feature_size": 64,
            "encoder_layers": 2,
            "encoder_feedforward_dim": 128,
            "decoder_layers": 4,
            "dim_feedforward": 128,
            "num_attention_heads": 4,
            "num_queries": 10,
        }
    else:  # Swin-T, the paper's decoder
        backbone = SwinConfig(
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            out_features=["stage1", "stage2", "stage3", "stage4"],
            drop_path_rate=0.0,
        )
        extra = {}
    config = Mask2FormerConfig(
        backbone_config=backbone, num_labels=classes, train_num_points=num_points, **extra
    )
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(config)


def batch(size: int, classes: int, images: int = 2, per_image: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(images, 3, size, size, generator=g) * 255
    targets = [
        {
            "labels": torch.randint(0, classes, (per_image,), generator=g),
            "masks": torch.rand(per_image, size, size, generator=g) > 0.7,
        }
        for _ in range(images)
    ]
    return pixels, targets


class TrainStep:
    """One optimisation step of ours or of the HF port on a fixed batch."""

    def __init__(
        self,
        side: str,
        hf_dir: str,
        cfg: dict,
        size: int,
        compile_cache: str | None = None,
        **model_overrides,
    ) -> None:
        self.side = side
        self.images, self.targets = batch(size, cfg["classes"])
        if side == "ours":
            self.model = load_model(hf_dir, **model_overrides).train()
            if compile_cache:
                self.model.compile_network(cache_dir=compile_cache)
            self.criterion = SetCriterion(cfg["classes"], num_points=cfg["num_points"])
        else:
            from transformers import Mask2FormerForUniversalSegmentation

            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).train()
            mean = torch.tensor((123.675, 116.28, 103.53)).view(1, 3, 1, 1)
            std = torch.tensor((58.395, 57.12, 57.375)).view(1, 3, 1, 1)
            self.pixels = (self.images - mean) / std
            self.mask_labels = [t["masks"].float() for t in self.targets]
            self.class_labels = [t["labels"] for t in self.targets]
        # ours: the fused AdamW the training module uses; HF: torch's default AdamW
        fused = True if side == "ours" else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=fused)

    def loss(self) -> torch.Tensor:
        if self.side == "ours":
            # as the training step: no full mask logits, the criterion makes them where it reads
            return self.criterion(self.model(self.images, full_masks=False), self.targets)["loss"]
        out = self.model(
            pixel_values=self.pixels, mask_labels=self.mask_labels, class_labels=self.class_labels
        )
        return out.loss

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        return float(loss)


def alternate(
    ours: Callable[[], object], reference: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """Times of `rounds` alternated runs of each (after one untimed warm-up each), so that load
    changes of a shared machine hit both alike."""
    ours(), reference()
    a, b = [], []
    for _ in range(rounds):
        for fn, times in ((ours, a), (reference, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return a, b


def time_row(name: str, reference: str, a: list[float], b: list[float], unit: str = "s") -> dict:
    ours, ref = statistics.median(a), statistics.median(b)
    return {
        "row": name,
        "unit": unit,
        "ours": ours,
        "reference": ref,
        "reference_name": reference,
        "ratio": ref / ours,
        "ratio_meaning": "reference / ours (>1: ours faster)",
        "ours_runs": a,
        "reference_runs": b,
    }


def first_call(fn: Callable[[], object]) -> float:
    """Seconds of one call: with a compiled model, the compile (or the load from the cache)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compiled_suffix(compile_cache: str | None) -> str:
    return ", ours compile=true" if compile_cache else ""


def bench_train(hf_dir: str, cfg: dict, size: int, compile_cache: str | None = None) -> dict:
    torch._dynamo.reset()  # each size compiled for its static shapes, as a training run is
    ours = TrainStep("ours", hf_dir, cfg, size, compile_cache=compile_cache)
    hf = TrainStep("hf", hf_dir, cfg, size)
    compile_s = first_call(ours) if compile_cache else None
    a, b = alternate(ours, hf, cfg["rounds"][size])
    row = time_row(
        f"train step, batch 2, {size}²{compiled_suffix(compile_cache)}", "HF transformers", a, b
    )
    return {**row, "first_call_s": compile_s} if compile_cache else row


def bench_inference(hf_dir: str, cfg: dict, compile_cache: str | None = None) -> dict:
    from transformers import Mask2FormerForUniversalSegmentation

    from m2f_lightning.modeling import set_ms_deform_attn_backend
    from m2f_lightning.predictor.runtimes import parity

    torch._dynamo.reset()
    size = cfg["infer_size"]
    ours = load_model(hf_dir).eval()
    if compile_cache:
        ours.compile_network(cache_dir=compile_cache)
    hf = Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).eval()
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    pixels = (images - ours.pixel_mean) / ours.pixel_std
    with torch.inference_mode():
        compile_s = first_call(lambda: ours.infer(images)) if compile_cache else None
        a, b = alternate(
            lambda: ours.infer(images), lambda: hf(pixel_values=pixels), cfg["infer_rounds"]
        )
        # `check`: against the official arithmetic (grid_sample, every set's full mask logits)
        reference = load_model(hf_dir).eval()
        set_ms_deform_attn_backend(reference, "torch")
        official = reference(images)
        out = ours.infer(images)
        diff, agreement = parity(official, out["pred_logits"].numpy(), out["pred_masks"].numpy())
    row = time_row(
        f"inference, batch 1, {size}²{compiled_suffix(compile_cache)}", "HF transformers", a, b
    )
    row["check"] = {"mask_agreement": agreement, "max_abs_logit_diff": diff}
    return {**row, "first_call_s": compile_s} if compile_cache else row


def bench_runtimes(hf_dir: str, cfg: dict) -> list[dict]:
    """Inference, batch 1, with `runtime=onnxruntime` (`m2f_lightning.predictor.runtimes`) | HF eager; the
    export is cached in build/onnx_cache (the first run exports for minutes). `check`: the
    share of mask pixels (queries x pixels, logit > 0) on the same side as our eager output."""
    from transformers import Mask2FormerForUniversalSegmentation

    from m2f_lightning.predictor.runtimes import build_runtime, parity

    size = cfg["infer_size"]
    ours = load_model(hf_dir).eval()
    hf = Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).eval()
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    pixels = (images - ours.pixel_mean) / ours.pixel_std
    cache = REPO / "build" / "onnx_cache"
    runtime = build_runtime(ours, "onnxruntime", cache_dir=cache)
    with torch.inference_mode():
        first_s = first_call(lambda: runtime(images))  # export (or load) + parity check
        if runtime.fallback:
            raise RuntimeError("runtime=onnxruntime fell back to eager (see the warning)")
        out = runtime(images)
        diff, agreement = parity(
            ours.infer(images), out["pred_logits"].numpy(), out["pred_masks"].numpy()
        )
        a, b = alternate(
            lambda: runtime(images), lambda: hf(pixel_values=pixels), cfg["infer_rounds"]
        )
    row = time_row(
        f"inference, batch 1, {size}², ours runtime=onnxruntime", "HF transformers", a, b
    )
    row["first_call_s"] = first_s
    row["check"] = {"mask_agreement": agreement, "max_abs_logit_diff": diff}
    return [row]


# rows of our model against HF's, each `fn(hf_dir, cfg) -> rows`, run in this order by name
# (`--only NAME`); a new row function is one entry here
MODEL_ROWS: dict[str, Callable[[str, dict], list[dict]]] = {
    "runtimes": bench_runtimes,
}


def rss_child(
    side: str, hf_dir: str, quick: bool, size: int, threads: int, checkpointing: bool
) -> None:
    """Entry of a child process: two train steps, then print the peak RSS in bytes."""
    torch.set_num_threads(threads)
    cfg = QUICK if quick else FULL
    extra = {"checkpointing": True} if checkpointing else {}
    step = TrainStep(side, hf_dir, cfg, size, **extra)
    step()
    step()
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size. VmHWM of /proc/self/status belongs to this
    process's own address space; getrusage's ru_maxrss is not used because Linux carries the
    parent's peak over fork + exec (a child of a big parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def bench_rss(hf_dir: str, cfg: dict, quick: bool, threads: int) -> list[dict]:
    """Peak RSS of one child process per case: ours, HF, ours with activation checkpointing."""
    size = cfg["rss_size"]
    peaks = {}
    for case, side, checkpointing in (
        ("ours", "ours", False),
        ("hf", "hf", False),
        ("ours_ckpt", "ours", True),
    ):
        cmd = [sys.executable, __file__, "--rss-child", side, "--hf-dir", hf_dir]
        cmd += ["--rss-size", str(size), "--threads", str(threads)] + (["--quick"] if quick else [])
        cmd += ["--checkpointing"] if checkpointing else []
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        out = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"RSS child ({case}) failed:\n{out.stderr[-3000:]}")
        peaks[case] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"] / 1e9
    return [
        {
            "row": f"peak RSS, train step process, {size}²" + suffix,
            "unit": "GB",
            "ours": peaks[case],
            "reference": peaks["hf"],
            "reference_name": "HF transformers",
            "ratio": peaks[case] / peaks["hf"],
            "ratio_meaning": "ours / reference (<1: ours lighter)",
        }
        for case, suffix in (("ours", ""), ("ours_ckpt", ", ours checkpointed"))
    ]


def bench_criterion(cfg: dict) -> dict:
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    size, queries, classes = cfg["criterion_size"], cfg["criterion_queries"], cfg["classes"]
    g = torch.Generator().manual_seed(0)

    def one():
        return {
            "pred_logits": torch.randn(2, queries, classes + 1, generator=g, requires_grad=True),
            "pred_masks": torch.randn(
                2, queries, size // 4, size // 4, generator=g, requires_grad=True
            ),
        }

    outputs = one()
    outputs["aux_outputs"] = [one() for _ in range(9)]
    _, targets = batch(size, classes, per_image=15, seed=1)
    ours = SetCriterion(classes, num_points=cfg["num_points"])
    hf = Mask2FormerLoss(
        Mask2FormerConfig(num_labels=classes, train_num_points=cfg["num_points"]),
        {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
    )
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
        for a in outputs["aux_outputs"]
    ]
    masks = [t["masks"].float() for t in targets]
    labels = [t["labels"] for t in targets]
    a, b = alternate(
        lambda: ours(outputs, targets)["loss"].backward(),
        lambda: sum(
            hf(outputs["pred_masks"], outputs["pred_logits"], masks, labels, aux).values()
        ).backward(),
        cfg["criterion_rounds"],
    )
    return time_row(
        f"criterion fwd+bwd, 2 x 10 sets, {queries} queries, {size}²",
        "HF Mask2FormerLoss",
        a,
        b,
    )


def pq_scene(rng: np.random.Generator, size: int, things: list, stuffs: list, segments: int = 30):
    gt = np.zeros((size, size, 2), dtype=np.int64)
    gt[..., 0] = rng.choice(stuffs)
    for k in range(segments - 1):
        y, x = rng.integers(0, max(1, size - 64), 2)
        h, w = rng.integers(max(2, size // 32), max(3, size // 4), 2)
        gt[y : y + h, x : x + w] = (rng.choice(things + stuffs), k + 1)
    pred = np.roll(gt, (rng.integers(-6, 7), rng.integers(-6, 7)), axis=(0, 1))
    return gt, pred


def bench_pq(cfg: dict) -> dict:
    from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

    from m2f_lightning.metrics import PanopticQuality

    things, stuffs = list(range(1, 21)), list(range(21, 31))
    rng = np.random.default_rng(0)
    pairs = [pq_scene(rng, cfg["pq_size"], things, stuffs) for _ in range(cfg["pq_images"])]
    gts = torch.from_numpy(np.stack([g for g, _ in pairs]))
    preds = torch.from_numpy(np.stack([p for _, p in pairs]))
    values = {}

    def ours():
        m = PanopticQuality(things, stuffs)
        m.update(preds, gts)
        values["ours"] = m.compute()["pq"].item()

    def reference():
        m = TorchmetricsPQ(things=set(things), stuffs=set(stuffs))
        m.update(preds, gts)
        values["reference"] = m.compute().item()

    a, b = alternate(ours, reference, 3)
    n = cfg["pq_images"]
    row = time_row(
        f"PQ metric per {cfg['pq_size']}² image (~30 segments)",
        "torchmetrics PanopticQuality",
        [t / n for t in a],
        [t / n for t in b],
    )
    row["check"] = {"pq_ours": values["ours"], "pq_reference": values["reference"]}
    return row


def stock_lsj(size: int):
    """LSJ from stock albumentations transforms: flip, longest side to `size`, a random scale in
    [0.1, 2.0], pad to at least size² at the top-left, random size² crop."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.LongestMaxSize(max_size=size),
            A.RandomScale(scale_limit=(-0.9, 1.0), p=1.0),
            A.PadIfNeeded(
                size,
                size,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=128,
                fill_mask=0,
            ),
            A.RandomCrop(size, size),
        ]
    )


def bench_lsj(cfg: dict) -> dict:
    from m2f_lightning.data.transforms import lsj

    size, samples = cfg["lsj_size"], cfg["lsj_samples"]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    id_map = np.zeros((480, 640), dtype=np.int32)
    for k in range(30):
        y, x = rng.integers(0, 400, 2)
        id_map[y : y + rng.integers(10, 150), x : x + rng.integers(10, 150)] = k + 1
    ours, reference = lsj(size), stock_lsj(size)

    def run(transform):
        def go():
            for _ in range(samples):
                transform(image=image, mask=id_map)

        return go

    a, b = alternate(run(ours), run(reference), 3)
    row = time_row(
        f"LSJ {size}, 480x640 image + id map",
        "stock albumentations",
        [samples / t for t in a],
        [samples / t for t in b],
        unit="samples/s",
    )
    row["ours"], row["reference"] = (
        statistics.median(row["ours_runs"]),
        statistics.median(row["reference_runs"]),
    )
    row["ratio"] = row["ours"] / row["reference"]
    row["ratio_meaning"] = "ours / reference (>1: ours faster)"
    return row


def bench_host_syncs(hf_dir: str, cfg: dict) -> dict:
    """Host round trips of one train step (the second: optimiser state exists), counted by
    `m2f_lightning.runs.host_syncs` on CPU as a GPU would stall on them: ours as the Lightning
    module's step (forward, matcher, losses, logging, backward, non-finite guard, AdamW), HF's
    as forward with labels + backward + AdamW. The row gives the counts; `kinds` what they are."""
    from m2f_lightning.lightning_module import Mask2FormerModule
    from m2f_lightning.runs.host_syncs import (
        HostSyncCounter,
        count_training_step,
        optimizer_host_tensors,
    )
    from m2f_lightning.types import Batch

    size = cfg["train_sizes"][0]
    hf = TrainStep("hf", hf_dir, cfg, size)
    hf()  # the optimiser's state
    with HostSyncCounter() as hf_syncs:
        hf_syncs.mark_host(*optimizer_host_tensors(hf.optimizer))
        hf.optimizer.zero_grad(set_to_none=True)
        hf.loss().backward()
        hf.optimizer.step()
    images, targets = batch(size, cfg["classes"])
    module = Mask2FormerModule(
        load_model(hf_dir).train(),
        task="semantic",
        class_names=[str(c) for c in range(cfg["classes"])],
        thing_ids=[],
        stuff_ids=list(range(cfg["classes"])),
        criterion=SetCriterion(cfg["classes"], num_points=cfg["num_points"]),
        max_steps=2,
    )
    sizes = [(size, size)] * len(images)
    step = Batch(images, sizes, sizes, ["a", "b"], [0, 1], targets=targets)
    ours = count_training_step(module, step, step=1)
    return {
        "row": f"host syncs per train step, batch 2, {size}²",
        "unit": "syncs",
        "ours": ours.count,
        "reference": hf_syncs.count,
        "reference_name": "HF transformers",
        "ratio": hf_syncs.count / max(ours.count, 1),
        "kinds": {"ours": ours.summary(), "reference": hf_syncs.summary()},
    }


def profile_train_step(hf_dir: str, cfg: dict, size: int, steps: int = 2) -> dict:
    """Where our train step goes: wall time of the forward parts, matcher, mask losses (the
    rest of the criterion is the class loss and bookkeeping), backward and optimizer step."""
    step = TrainStep("ours", hf_dir, cfg, size)
    model, criterion = step.model, step.criterion
    totals: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            totals[name] += time.perf_counter() - start
            return result

        return wrapper

    model.backbone.forward = timed("forward: backbone", model.backbone.forward)
    model.pixel_decoder.forward = timed("forward: pixel decoder", model.pixel_decoder.forward)
    model.transformer_decoder.forward = timed(
        "forward: transformer decoder", model.transformer_decoder.forward
    )
    criterion.matcher.match_sets = timed("criterion: matcher", criterion.matcher.match_sets)
    criterion.loss_masks = timed("criterion: mask losses", criterion.loss_masks)

    def one():
        step.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        outputs = model(step.images, full_masks=False)
        totals["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        loss = criterion(outputs, step.targets)["loss"]
        totals["criterion"] += time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        totals["backward"] += time.perf_counter() - start
        start = time.perf_counter()
        step.optimizer.step()
        totals["optimizer"] += time.perf_counter() - start

    one()
    totals.clear()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    total = (time.perf_counter() - start) / steps
    return {"size": size, "step_s": total, "parts_s": {k: v / steps for k, v in totals.items()}}


def train_step_flops(step: TrainStep) -> float:
    """FLOPs of one train step's forward, loss and backward as torch.profiler counts them
    (`with_flops`: matrix products and convolutions; elementwise ops and sampling are not
    counted)."""
    from torch.profiler import ProfilerActivity, profile

    step.optimizer.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step.loss().backward()
    return float(sum(event.flops for event in prof.key_averages()))


def bench_flops(hf_dir: str, cfg: dict, size: int) -> dict:
    """FLOPs per train step, ours | HF (same weights, batch and targets): what a GPU must
    compute, whatever this machine's timing noise."""
    ours = train_step_flops(TrainStep("ours", hf_dir, cfg, size))
    hf = train_step_flops(TrainStep("hf", hf_dir, cfg, size))
    return {
        "row": f"FLOPs per train step (fwd+loss+bwd), batch 2, {size}²",
        "unit": "GFLOP",
        "ours": ours / 1e9,
        "reference": hf / 1e9,
        "reference_name": "HF transformers",
        "ratio": ours / hf,
        "ratio_meaning": "ours / reference (<1: ours computes less)",
    }


def fmt(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"
    return f"{x:.2f} {unit}" if unit == "GB" else f"{x:.1f} {unit}"


def print_table(rows: list[dict], note: str) -> None:
    print(f"\nours vs reference, alternated in one run ({note})")
    width = max([len(r["row"]) for r in rows] + [10])
    cells = [(r["row"], fmt(r["reference"], r["unit"]), fmt(r["ours"], r["unit"])) for r in rows]
    value_width = max([len(c) for _, *values in cells for c in values] + [9])
    print(
        f"| {'':{width}s} | {'reference':>{value_width}s} | {'ours':>{value_width}s} | {'ratio':>7s} |"
    )
    print(f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|{'-' * (value_width + 2)}|{'-' * 9}|")
    for (name, reference, ours), r in zip(cells, rows, strict=True):
        print(
            f"| {name:{width}s} | {reference:>{value_width}s} | {ours:>{value_width}s} | "
            f"x{r['ratio']:6.2f} |"
        )
    print(
        "ratios: time rows reference/ours (>1 ours faster); RSS and FLOPs ours/reference "
        "(<1 ours lighter)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes (smoke test)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="break our train step down")
    parser.add_argument("--profile-size", type=int, help="image size of --profile")
    parser.add_argument(
        "--only",
        nargs="*",
        help="rows to run: train flops infer rss syncs criterion pq lsj and those of MODEL_ROWS",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add train and inference rows with compile=true"
    )
    parser.add_argument(
        "--compile-cache",
        default=str(REPO / "build" / "compile_cache"),
        help="Inductor cache of --compile (kept between runs)",
    )
    parser.add_argument("--rss-child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    parser.add_argument("--rss-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(
            args.rss_child, args.hf_dir, args.quick, args.rss_size, args.threads, args.checkpointing
        )
        return
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    only = set(
        args.only
        or ("train", "flops", "infer", "rss", "syncs", *MODEL_ROWS, "criterion", "pq", "lsj")
    )
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    result: dict = {}
    with tempfile.TemporaryDirectory() as hf_dir:
        if only & {"train", "flops", "rss", "infer", "syncs", *MODEL_ROWS} or args.profile:
            hf_model(cfg["classes"], args.quick, cfg["num_points"]).save_pretrained(hf_dir)
        if "train" in only:
            for size in cfg["train_sizes"]:
                rows.append(bench_train(hf_dir, cfg, size))
                print(rows[-1]["row"], f"x{rows[-1]['ratio']:.2f}", flush=True)
        if "flops" in only:
            rows.append(bench_flops(hf_dir, cfg, cfg["train_sizes"][-1]))
            print(rows[-1]["row"], f"x{rows[-1]['ratio']:.2f}", flush=True)
        if "rss" in only:
            for row in bench_rss(hf_dir, cfg, args.quick, args.threads):
                rows.append(row)
                print(row["row"], f"x{row['ratio']:.2f}", flush=True)
        if "infer" in only:
            rows.append(bench_inference(hf_dir, cfg))
            print(rows[-1]["row"], f"x{rows[-1]['ratio']:.2f}", flush=True)
        for name, fn in MODEL_ROWS.items():
            if name in only:
                for row in fn(hf_dir, cfg):
                    rows.append(row)
                    print(row["row"], f"x{row['ratio']:.2f}", flush=True)
        if args.compile:
            compiled_rows = []
            if "train" in only:
                compiled_rows += [
                    bench_train(hf_dir, cfg, size, args.compile_cache)
                    for size in cfg["train_sizes"]
                ]
            if "infer" in only:
                compiled_rows.append(bench_inference(hf_dir, cfg, args.compile_cache))
            for row in compiled_rows:
                print(row["row"], f"x{row['ratio']:.2f}", f"first call {row['first_call_s']:.0f} s")
            rows += compiled_rows
        if args.profile:
            result["profile"] = profile_train_step(
                hf_dir, cfg, args.profile_size or cfg["train_sizes"][0]
            )
        if "syncs" in only:
            rows.append(bench_host_syncs(hf_dir, cfg))
            print(rows[-1]["row"], rows[-1]["kinds"], flush=True)
    if "criterion" in only:
        rows.append(bench_criterion(cfg))
    if "pq" in only:
        rows.append(bench_pq(cfg))
    if "lsj" in only:
        rows.append(bench_lsj(cfg))
    note = (
        f"{args.threads} threads, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores, {time.perf_counter() - start:.0f} s"
    )
    print_table(rows, note)
    if "profile" in result:
        prof = result["profile"]
        print(f"\nour train step at {prof['size']}²: {prof['step_s']:.2f} s")
        for name, seconds in prof["parts_s"].items():
            print(f"  {name:32s} {seconds:7.3f} s  {100 * seconds / prof['step_s']:5.1f}%")
    result.update(
        {
            "quick": args.quick,
            "threads": args.threads,
            "note": note,
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "rows": rows,
        }
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
