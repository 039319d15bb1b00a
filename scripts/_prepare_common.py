"""Shared plumbing of the prepare scripts: a parallel, resumable map with a progress bar."""

import os
from collections.abc import Callable, Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically (temp file + rename): an interrupted run leaves no half-written
    file that the resume check would take as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see save_png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_jobs(
    function: Callable[[tuple], None],
    jobs: Iterable[tuple],
    outputs: Callable[[tuple], Path],
    workers: int,
    desc: str,
) -> int:
    """Run `function` on every job whose output file does not exist yet (so a rerun resumes)."""
    todo = [job for job in jobs if not outputs(job).is_file()]
    if not todo:
        print(f"{desc}: everything already written")
        return 0
    if workers > 1:
        with Pool(workers) as pool:
            for _ in tqdm(
                pool.imap_unordered(function, todo, chunksize=8), total=len(todo), desc=desc
            ):
                pass
    else:
        for job in tqdm(todo, desc=desc):
            function(job)
    return len(todo)
