"""Shared plumbing of the prepare scripts: a parallel, resumable map with a progress bar."""

from collections.abc import Callable, Iterable
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm


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
