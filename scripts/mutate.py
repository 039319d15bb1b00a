"""Mutation testing of one module with only its fast tests: python scripts/mutate.py MODULE

MODULE is a key of FAST_TESTS (`metrics`, `inference`, `losses`, `checkpoints`, ...). mutmut
runs in a scratch copy of the repository (build/mutate/<module>/), so the working tree and the
shared virtual environment are untouched and runs of different modules do not mix. The last
lines printed are the score: killed / (killed + survived + timeout); `mutmut results` and
`mutmut show NAME` in that folder list and show the survivors. Not part of `make test`/CI.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module → (files or globs to mutate, the fast tests that cover them)
FAST_TESTS: dict[str, tuple[list[str], list[str]]] = {
    "metrics": (
        ["m2f_lightning/metrics/*"],
        [
            "tests/test_metrics.py",
            "tests/test_metrics_wiring.py",
            "tests/test_fidelity_eval.py",
            "tests/test_coco_ap.py",
        ],
    ),
    "inference": (
        ["m2f_lightning/inference/*"],
        ["tests/test_inference.py", "tests/test_inference_properties.py", "tests/test_tiling.py"],
    ),
    "losses": (["m2f_lightning/losses/*"], ["tests/test_losses.py", "tests/test_losses_edges.py"]),
    "checkpoints": (
        ["m2f_lightning/checkpoints/*", "m2f_lightning/modeling/d2_format.py"],
        [
            "tests/test_checkpoints.py",
            "tests/test_parity_hf.py",
            "tests/test_converter_properties.py",
            "tests/test_model_zoo_r50.py",
            "tests/test_checkpoints_edges.py",
            "tests/test_finetune_classes.py",
            "tests/test_checkpoint_survivors.py",
            "tests/test_checkpoint_reading_edges.py",
        ],
    ),
    "targets": (
        ["m2f_lightning/data/targets.py"],
        ["tests/test_data_pipeline.py", "tests/test_targets.py"],
    ),
    "readers": (
        ["m2f_lightning/data/datasets/*", "m2f_lightning/data/io.py", "m2f_lightning/data/rle.py"],
        [
            "tests/test_data_readers.py",
            "tests/test_data_bad_input.py",
            "tests/test_readers_edges.py",
            "tests/test_instance_readers_edges.py",
            "tests/test_image_io_edges.py",
            "tests/test_registry_panoptic_edges.py",
            "tests/test_rle.py",
            "tests/test_custom_dataset_edges.py",
        ],
    ),
    "resume": (
        ["m2f_lightning/runs/resume.py", "m2f_lightning/runs/preemption.py"],
        [
            "tests/test_train_cli.py::test_resume_path_picks_the_newer_checkpoint_and_rejects_a_missing_one"
        ],
    ),
}


def write_config(work: Path, mutate: list[str], tests: list[str]) -> None:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject += f"""
[tool.mutmut]
source_paths = ["m2f_lightning"]
only_mutate = {toml_list(mutate)}
pytest_add_cli_args_test_selection = {toml_list(tests)}
pytest_add_cli_args = ["-m", "not slow and not spawns", "-p", "no:cacheprovider", "-x", "-q"]
mutate_only_covered_lines = true
also_copy = ["scripts", "conf"]
"""
    (work / "pyproject.toml").write_text(pyproject)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=sorted(FAST_TESTS))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="reuse a previous run's results")
    args = parser.parse_args()
    mutate, tests = FAST_TESTS[args.module]
    work = ROOT / "build" / "mutate" / args.module
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("m2f_lightning", "tests", "scripts", "conf"):
        if not (work / name).exists():
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_config(work, mutate, tests)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut sets sys.path
    env["WANDB_MODE"] = "disabled"
    # mutmut forks one worker per mutant from a process that already ran the tests: with an
    # OpenMP pool started there, the child's first parallel torch op waits forever (every
    # mutant timed out); one thread keeps OpenMP out (tests/conftest.py reads the variable)
    env.update(M2F_TEST_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=work, env=env)
    results = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True
    ).stdout
    counts: dict[str, int] = {}
    for line in results.splitlines():
        if ":" in line:
            status = line.rsplit(":", 1)[1].strip()
            counts[status] = counts.get(status, 0) + 1
    (work / "results.txt").write_text(results)
    killed = counts.get("killed", 0)
    scored = killed + counts.get("survived", 0) + counts.get("timeout", 0)
    print(f"{args.module}: {counts}")
    if scored:
        print(f"{args.module}: {killed}/{scored} killed = {100 * killed / scored:.1f}%")
    print(f"survivors: cd {work} && mutmut results; mutmut show NAME")
    return 0


if __name__ == "__main__":
    sys.exit(main())
