"""Files written by `m2f-predict` and `m2f-evaluate save_predictions=true`.

Two layouts:

- Folder inputs (`inputs=`): `<stem>_overlay.png` per image plus the task's files, ids the file
  stems: `<stem>_panoptic.png` + `panoptic.json` (COCO panoptic format), `instances_results.json`
  (COCO results, RLE masks) or `<stem>_semantic.png` (contiguous class ids).
- A dataset split (`split=`, or evaluation): the files each official evaluator or benchmark
  server reads, with the dataset's own image ids, file names and category ids:
  panoptic   `panoptic_<split>_<method>_results/<image stem>.png` + `….json` (+ `….zip`), read
             by panopticapi's `pq_compute`, the COCO server and cityscapesScripts; the thing
             instances of the same model also as detections (below);
  instance   `detections_<split>_<method>_results.json` (+ `….zip`), a COCO results list
             (`COCO.loadRes`); Cityscapes: `cityscapes_instance_<split>_<method>_results/` with
             `<image stem>_pred.txt` (`masks/<png> <label id> <score>` per line) + mask PNGs,
             read by cityscapesScripts' evalInstanceLevelSemanticLabeling;
  semantic   `semantic_<split>_<method>_results/<image stem>.png` in the dataset's label space
             (ADE20K 1..150 with 0 = other; Cityscapes labelIds; otherwise the contiguous ids
             the dataset's label PNGs hold);
  overlays   `overlays/<image stem>.png` (when asked).
  `<split>` is COCO's name (`val2017`, `test-dev2017`) for COCO-format datasets.

Per-image files are written as each result arrives; the JSON lists at `finish()` (after
`merge()` of every rank's `state()` under DDP).

`m2f-predict` also writes `predicted.json` (`PROGRESS_FILE`) with the JSON lists: the settings it
ran with (a fingerprint of the config and the checkpoint), each image's files, and whether every
input was done. A rerun in the same folder with the same settings (after an interruption) skips
the images listed there whose files are all on disk and keeps their JSON entries (`resume`); other
settings predict every image again.
"""

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..data.catalog import DatasetMetadata
from ..data.io import id_to_rgb, read_image
from ..types import SegmentationResult
from .visualize import class_map, overlay_panel, segment_map

COCO_SPLITS = {"train": "train2017", "val": "val2017", "test": "test-dev2017"}
PROGRESS_FILE = "predicted.json"


def split_name(dataset: str, split: str) -> str:
    """The split as the dataset's own file names spell it (COCO: val2017, test-dev2017)."""
    return COCO_SPLITS.get(split, split) if dataset in ("coco", "synthetic") else split


def semantic_file_ids(dataset: str, metadata: DatasetMetadata) -> np.ndarray:
    """Contiguous class → the value its label PNGs (and official evaluators) use."""
    if dataset == "ade20k":  # 0 = "other", classes 1..150
        return np.asarray(metadata.dataset_ids, dtype=np.int64) + 1
    if dataset == "cityscapes":  # labelIds, as evalPixelLevelSemanticLabeling reads them
        return np.asarray(metadata.dataset_ids, dtype=np.int64)
    return np.arange(metadata.num_classes, dtype=np.int64)


def _json_id(image_id: Any) -> int | str:
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return int(image_id)
    if isinstance(image_id, str) and image_id.isdigit() and str(int(image_id)) == image_id:
        return int(image_id)  # an integer id that travelled as text
    return str(image_id)


def write_json(path: Path, data: Any) -> None:
    """`path` replaced whole or not at all (a temporary file beside it, then a rename): an
    interrupted write never leaves a truncated list under the final name."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class PredictionWriter:
    """Writes results as they come (see the module docstring for the files).

    Args:
        task: panoptic | instance | semantic.
        metadata: the dataset's classes.
        out_dir: where the files go.
        dataset, split: a dataset split → the benchmark layout; None → the folder layout.
        method: the method name in benchmark file names.
        overlays: also write overlay panels.
        score_threshold: instances drawn in overlays (every top-k instance goes to the files).
        settings: a fingerprint of what makes the predictions (config, checkpoint): given, the
            writer keeps `PROGRESS_FILE` and can `resume` a folder written with the same one.
    """

    def __init__(
        self,
        task: str,
        metadata: DatasetMetadata,
        out_dir: Path,
        dataset: str | None = None,
        split: str | None = None,
        method: str = "m2f",
        overlays: bool = True,
        score_threshold: float = 0.5,
        settings: str | None = None,
    ) -> None:
        self.task = task
        self.metadata = metadata
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.benchmark = dataset is not None and split is not None
        self.overlays = overlays
        self.score_threshold = score_threshold
        self.panoptic: list[dict] = []
        self.detections: list[dict] = []
        self.written: list[Path] = []
        self.settings = settings
        self.images: dict[str, dict[str, Any]] = {}  # stem → its image id and files
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.benchmark:
            name = split_name(dataset, split)
            self.prefix = {
                kind: f"{kind}_{name}_{method}_results"
                for kind in ("panoptic", "detections", "semantic", "cityscapes_instance")
            }
            self.semantic_ids = semantic_file_ids(dataset, metadata)

    # -- per image -----------------------------------------------------------------------
    def write(self, result: SegmentationResult, image: np.ndarray | None = None) -> list[Path]:
        """Write one image's files now; keep its JSON entries for `finish`. `image`: the RGB
        image for the overlay (default: read from `result.file_name`)."""
        stem = Path(result.file_name).stem
        image_id = _json_id(result.image_id) if self.benchmark else stem
        new: list[Path] = []
        if self.task == "panoptic":
            new.append(self._panoptic(result, stem, image_id))
        if self.task == "semantic":
            new.append(self._semantic(result, stem))
        if result.instances is not None and self.task in ("instance", "panoptic"):
            if self.benchmark and self.dataset == "cityscapes" and self.task == "instance":
                new += self._cityscapes_instances(result, stem)
            elif self.benchmark or self.task == "instance":
                self._detections(result, image_id)
        if self.overlays:
            new.append(self._overlay(result, stem, image))
        self.written += new
        files = [p.relative_to(self.out_dir).as_posix() for p in new]
        self.images[stem] = {"image_id": image_id, "files": files}
        return new

    def _panoptic(self, result: SegmentationResult, stem: str, image_id: int | str) -> Path:
        seg = result.panoptic_seg.cpu().numpy()
        if self.benchmark:
            png = self.out_dir / self.prefix["panoptic"] / f"{stem}.png"
        else:
            png = self.out_dir / f"{stem}_panoptic.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(id_to_rgb(seg)).save(png)
        ids, areas = np.unique(seg, return_counts=True)
        area = dict(zip(ids.tolist(), areas.tolist(), strict=True))
        self.panoptic.append(
            {
                "image_id": image_id,
                "file_name": png.name,
                "segments_info": [
                    {
                        "id": int(s.id),
                        "category_id": int(self.metadata.dataset_ids[s.category_id]),
                        "isthing": int(s.isthing),
                        "score": float(s.score),
                        "area": int(area.get(s.id, 0)),
                    }
                    for s in result.segments
                ],
            }
        )
        return png

    def _semantic(self, result: SegmentationResult, stem: str) -> Path:
        classes = result.class_map().cpu().numpy()
        if self.benchmark:
            png = self.out_dir / self.prefix["semantic"] / f"{stem}.png"
            values = self.semantic_ids[classes]
        else:
            png = self.out_dir / f"{stem}_semantic.png"
            values = classes
        png.parent.mkdir(parents=True, exist_ok=True)
        dtype = np.uint8 if values.max(initial=0) < 256 else np.uint16
        Image.fromarray(values.astype(dtype)).save(png)
        return png

    def _detections(self, result: SegmentationResult, image_id: int | str) -> None:
        inst = result.instances
        scores = inst.scores.cpu().numpy()
        for i in np.argsort(-scores, kind="stable"):
            self.detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(self.metadata.dataset_ids[int(inst.labels[i])]),
                    "segmentation": _rle(inst.masks[i].cpu().numpy()),
                    "score": float(scores[i]),
                }
            )

    def _cityscapes_instances(self, result: SegmentationResult, stem: str) -> list[Path]:
        folder = self.out_dir / self.prefix["cityscapes_instance"]
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        inst = result.instances
        scores = inst.scores.cpu().numpy()
        lines, new = [], []
        for k, i in enumerate(np.argsort(-scores, kind="stable")):
            mask = inst.masks[i].cpu().numpy()
            if not mask.any():
                continue
            png = folder / "masks" / f"{stem}_{k:03d}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(png)
            new.append(png)
            label_id = int(self.metadata.dataset_ids[int(inst.labels[i])])
            lines.append(f"masks/{png.name} {label_id} {float(scores[i]):.6f}\n")
        txt = folder / f"{stem}_pred.txt"
        txt.write_text("".join(lines))
        return [txt, *new]

    def _overlay(self, result: SegmentationResult, stem: str, image: np.ndarray | None) -> Path:
        if image is None:
            image = read_image(result.file_name)
        panel = overlay_of(result, image, self.metadata, self.score_threshold)
        if self.benchmark:
            out = self.out_dir / "overlays" / f"{stem}.png"
        else:
            out = self.out_dir / f"{stem}_overlay.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(panel).save(out)
        return out

    # -- the lists -----------------------------------------------------------------------
    def state(self) -> dict[str, list]:
        """This process's JSON entries (what `merge` takes from the other ranks)."""
        return {
            "panoptic": self.panoptic,
            "detections": self.detections,
            "written": self.written,
            "images": self.images,
        }

    def merge(self, states: list[dict[str, list]]) -> None:
        """Take every rank's entries (this one's included, in `states`)."""
        self.panoptic = [a for s in states for a in s["panoptic"]]
        self.detections = [d for s in states for d in s["detections"]]
        self.written = [p for s in states for p in s["written"]]
        self.images = {k: v for s in states for k, v in s["images"].items()}

    # -- an interrupted run, done again ---------------------------------------------------
    def _json_lists(self) -> dict[str, Path]:
        """The JSON lists this writer's `finish` writes: "panoptic" and/or "detections"."""
        lists = {}
        if self.task == "panoptic":
            name = f"{self.prefix['panoptic']}.json" if self.benchmark else "panoptic.json"
            lists["panoptic"] = self.out_dir / name
        cityscapes = self.benchmark and self.dataset == "cityscapes"
        if self.task == "instance" and not cityscapes or self.benchmark and self.task == "panoptic":
            name = (
                f"{self.prefix['detections']}.json" if self.benchmark else "instances_results.json"
            )
            lists["detections"] = self.out_dir / name
        return lists

    def resume(self) -> set[str]:
        """The stems of the images an earlier run in this folder finished with the same
        `settings` (listed in `PROGRESS_FILE`, every file on disk, in the JSON lists): their
        entries are kept for `finish`, and the caller skips them. Anything else is done again."""
        record = _read_json(self.out_dir / PROGRESS_FILE) if self.settings else None
        if not isinstance(record, dict):
            return set()
        if record.get("settings") != self.settings:
            print(
                f"{self.out_dir} holds predictions made with other settings (config or "
                "checkpoint): every image is predicted again",
                flush=True,
            )
            return set()
        entries: dict[str, list] = {}
        for kind, path in self._json_lists().items():
            data = _read_json(path)
            if data is None:
                return set()  # the run stopped before its lists: nothing is known to be done
            entries[kind] = data["annotations"] if kind == "panoptic" else data
        listed = {repr(a["image_id"]) for a in entries.get("panoptic", [])}
        done = {
            stem: image
            for stem, image in record.get("images", {}).items()
            if all((self.out_dir / f).is_file() for f in image["files"])
            and ("panoptic" not in entries or repr(image["image_id"]) in listed)
        }
        ids = {repr(image["image_id"]) for image in done.values()}
        self.panoptic = [a for a in entries.get("panoptic", []) if repr(a["image_id"]) in ids]
        self.detections = [d for d in entries.get("detections", []) if repr(d["image_id"]) in ids]
        self.images = dict(done)
        return set(done)

    def finish(self, complete: bool = True) -> list[Path]:
        """Write the JSON lists (and the servers' zips), then `PROGRESS_FILE` (`complete`: every
        input was done); returns every file written."""
        key = lambda entry: (str(type(entry["image_id"])), entry["image_id"])  # noqa: E731
        self.panoptic.sort(key=key)
        if self.task == "panoptic":
            self._finish_panoptic()
        write_detections = self.task == "instance" and not (
            self.benchmark and self.dataset == "cityscapes"
        )
        if write_detections or (self.benchmark and self.task == "panoptic"):
            self.detections.sort(key=key)  # stable: each image's by score
            if self.benchmark:
                name = self.prefix["detections"]
                out = self.out_dir / f"{name}.json"
                write_json(out, self.detections)
                self.written += [out, self._zip(name, [out])]
            else:
                out = self.out_dir / "instances_results.json"
                write_json(out, self.detections)
                self.written.append(out)
        if self.settings is not None:
            progress = {"settings": self.settings, "complete": complete, "images": self.images}
            write_json(self.out_dir / PROGRESS_FILE, progress)
            self.written.append(self.out_dir / PROGRESS_FILE)
        return self.written

    def _finish_panoptic(self) -> None:
        categories = [
            {"id": int(d), "name": n, "isthing": int(t)}
            for d, n, t in zip(
                self.metadata.dataset_ids,
                self.metadata.class_names,
                self.metadata.is_thing,
                strict=True,
            )
        ]
        data = {"annotations": self.panoptic, "categories": categories}
        if not self.benchmark:
            out = self.out_dir / "panoptic.json"
            write_json(out, data)
            self.written.append(out)
            return
        name = self.prefix["panoptic"]
        out = self.out_dir / f"{name}.json"
        write_json(out, data)
        pngs = sorted((self.out_dir / name).glob("*.png"))
        self.written += [out, self._zip(name, [out, *pngs])]

    def _zip(self, name: str, files: list[Path]) -> Path:
        """`<name>.zip` holding `files` at their paths under out_dir (the servers' layout: the
        JSON at the top, the panoptic PNGs in the folder of the same name)."""
        out = self.out_dir / f"{name}.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(self.out_dir).as_posix())
        return out


def overlay_of(
    result: SegmentationResult,
    image: np.ndarray,
    metadata: DatasetMetadata,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """The overlay panel of a result (the image | the prediction, class names written on the
    segments): what predict writes as `<stem>_overlay.png`."""
    return overlay_panel(
        image,
        class_map(result, score_threshold),
        metadata.colors,
        metadata.class_names,
        segment_map=segment_map(result, score_threshold),
    )


def write_predictions(
    results: list[SegmentationResult],
    task: str,
    metadata: DatasetMetadata,
    out_dir: Path,
    score_threshold: float = 0.5,
) -> list[Path]:
    """The folder layout for a list of results (ids = file stems)."""
    writer = PredictionWriter(task, metadata, out_dir, score_threshold=score_threshold)
    for result in results:
        writer.write(result)
    return writer.finish()
