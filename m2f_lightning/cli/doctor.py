"""`m2f-doctor`: read every record of every split through the readers' own checks (the code path
training uses), in parallel, report every problem at once, then summarise the dataset.

    m2f-doctor dataset=coco task=panoptic          # the same keys as training

Exit code 0 only when no record has a problem (warnings, such as skipped degenerate polygons or
categories that differ from the catalog, are listed but do not fail the check).
"""

import multiprocessing
import os
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..data import build_reader, metadata_for
from ..data.catalog import DatasetMetadata
from ..data.datasets.base import Reader, Sample
from ..data.io import WIDE_GREY_MODES, image_mode
from ..data.validation import DataWarning, collecting
from ..errors import DataError, UserError
from .builders import validate_config

SPLITS = ("train", "val")

# the reader the worker processes read from: set before they are forked (no pickling needed)
_READER: Reader | None = None


@dataclass
class SplitReport:
    """What the doctor found in one split."""

    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    classes: Counter = field(default_factory=Counter)
    crowd: int = 0
    modes: Counter = field(default_factory=Counter)  # PIL image modes (16-bit grey: I;16)


def record_stats(sample: Sample) -> dict[str, Any]:
    """(h, w), segment count, class ids (one per segment; per image for semantic), crowd count."""
    if sample.id_map is not None:
        classes = [s["category"] for s in sample.segments]
        crowd = sum(bool(s["iscrowd"]) for s in sample.segments)
    elif sample.masks is not None:
        classes = [int(c) for c in sample.labels]
        crowd = int(sample.crowd.sum()) if sample.crowd is not None else 0
    else:
        import numpy as np

        classes = [int(c) for c in np.unique(sample.sem_seg) if c != 255]
        crowd = 0
    return {
        "size": tuple(int(v) for v in sample.image.shape[:2]),
        "segments": len(classes),
        "classes": classes,
        "crowd": crowd,
        "mode": image_mode(sample.file_name),
    }


def _check(index: int) -> tuple[int, dict[str, Any] | None, str | None]:
    """Read record `index` as training would; a problem comes back as its message, the data
    warnings raised while reading it (a 16-bit image holding 8-bit values) in its stats."""
    assert _READER is not None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            stats = record_stats(_READER[index])
        stats["warnings"] = [str(w.message) for w in caught if w.category is DataWarning]
        return index, stats, None
    except (UserError, FileNotFoundError) as err:
        return index, None, str(err)
    except Exception as err:  # a format our checks do not know yet: still a record problem
        return index, None, f"record {index}: unexpected {type(err).__name__}: {err}"


def check_records(reader: Reader, workers: int, desc: str) -> list[tuple[int, Any, str | None]]:
    """Every record of `reader`, read in `workers` processes (forked), with a progress bar."""
    from tqdm import tqdm

    global _READER
    _READER = reader
    indices = range(len(reader))
    bar = tqdm(total=len(reader), desc=desc, unit="img", mininterval=1.0)
    try:
        if workers <= 1 or len(reader) < 2:
            results = []
            for i in indices:
                results.append(_check(i))
                bar.update()
            return results
        context = multiprocessing.get_context("fork")
        with context.Pool(workers) as pool:
            results = []
            chunk = max(1, min(64, len(reader) // (workers * 8)))
            for result in pool.imap_unordered(_check, indices, chunksize=chunk):
                results.append(result)
                bar.update()
        return sorted(results, key=lambda r: r[0])
    finally:
        bar.close()
        _READER = None


def examine_split(cfg: DictConfig, split: str, workers: int) -> SplitReport:
    report = SplitReport(split)
    source = cfg.dataset.get("source")
    source = OmegaConf.to_container(source, resolve=True) if source is not None else None
    with warnings.catch_warnings(record=True) as caught, collecting() as problems:
        warnings.simplefilter("always", DataWarning)
        try:
            reader = build_reader(
                cfg.dataset.name, cfg.task.name, split, cfg.dataset.get("root"), source
            )
        except DataError as err:
            problems.extend(err.problems)
            reader = None
        except (UserError, FileNotFoundError) as err:
            problems.append(str(err))
            reader = None
    report.problems += problems
    report.warnings += [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    if reader is None:
        return report
    report.records = len(reader)
    if not len(reader):
        report.problems.append(f"the {split} split has no records")
    for _, stats, problem in check_records(reader, workers, f"{split:5s}"):
        if problem is not None:
            report.problems.append(problem)
            continue
        report.sizes.append(stats["size"])
        report.segments.append(stats["segments"])
        report.classes.update(stats["classes"])
        report.crowd += stats["crowd"]
        report.modes[stats["mode"]] += 1
        report.warnings += stats["warnings"]
    return report


def _spread(values: list[int]) -> str:
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def summary_lines(report: SplitReport, meta: DatasetMetadata, task: str) -> list[str]:
    ok = len(report.sizes)
    lines = [f"[{report.name}] {report.records} records, {ok} read without a problem"]
    if not ok:
        return lines
    heights = [h for h, _ in report.sizes]
    widths = [w for _, w in report.sizes]
    common = Counter(report.sizes).most_common(3)
    lines.append(
        f"  image height min/median/max {_spread(heights)}, width {_spread(widths)}; most "
        "common (h x w): " + ", ".join(f"{h}x{w} ({n})" for (h, w), n in common)
    )
    lines.append(
        "  image modes: "
        + ", ".join(f"{mode} ({n})" for mode, n in report.modes.most_common())
        + (
            "; 16-bit grey images are read as value >> 8 (their high byte)"
            if any(mode in WIDE_GREY_MODES for mode in report.modes)
            else ""
        )
    )
    unit = "classes per image" if task == "semantic" else "segments per image"
    empty = sum(1 for s in report.segments if s == 0)
    lines.append(f"  {unit} min/median/max {_spread(report.segments)}; images with none: {empty}")
    total = sum(report.classes.values())
    if task != "semantic":
        share = report.crowd / total if total else 0.0
        lines.append(f"  crowd segments: {report.crowd} of {total} ({share:.1%})")
    what = "images containing the class" if task == "semantic" else "segments"
    lines.append(f"  class histogram ({what}), most frequent first:")
    for cls, count in report.classes.most_common():
        lines.append(f"    {meta.class_names[cls]:<30s} {count}")
    unseen = [meta.class_names[i] for i in range(meta.num_classes) if i not in report.classes]
    lines.append(
        f"  classes never seen ({len(unseen)} of {meta.num_classes}): "
        + (", ".join(unseen) if unseen else "none")
    )
    return lines


def doctor(cfg: DictConfig) -> int:
    """Check every split of `cfg.dataset` for `cfg.task`; print problems, warnings and a summary.
    Returns the exit code: 0 for a clean dataset, 1 when any record has a problem."""
    validate_config(cfg, "doctor")
    source = cfg.dataset.get("source")
    source = OmegaConf.to_container(source, resolve=True) if source is not None else None
    meta = metadata_for(cfg.dataset.name, cfg.task.name, source, cfg.dataset.get("root"))
    workers = int(cfg.get("workers") or os.cpu_count() or 1)
    reports = [examine_split(cfg, split, workers) for split in SPLITS]
    print(f"\nm2f-doctor: dataset '{cfg.dataset.name}', task '{cfg.task.name}'")
    problems = sum(len(r.problems) for r in reports)
    for report in reports:
        for message in report.warnings:
            print(f"warning [{report.name}]: {message}")
        for message in report.problems:
            print(f"problem [{report.name}]: {message}")
    for report in reports:
        print("\n".join(summary_lines(report, meta, cfg.task.name)))
    if problems:
        print(
            f"\n{problems} problem(s): training would stop at the first of them. Fix them and rerun."
        )
        return 1
    print(
        "\nno problems found"
        + (" (see the warnings above)" if any(r.warnings for r in reports) else "")
    )
    return 0
