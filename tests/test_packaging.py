"""The package outside the checkout: a wheel carries the Hydra configs, so the console scripts
(`m2f-train`, `m2f-evaluate`, `m2f-predict`) compose them, and put outputs/ and datasets/ under
the working directory rather than under site-packages."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_configs_and_uses_the_working_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("m2f_lightning", "conf"):
        shutil.copytree(
            ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", source],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("m2f_lightning-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "M2F_PROJECT_ROOT"}
    env["PYTHONPATH"] = str(site)
    script = (
        "import m2f_lightning, sys; print('package:', m2f_lightning.__file__, file=sys.stderr); "
        "from m2f_lightning.cli.main import train_main; train_main()"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "task=semantic",
            "dataset=ade20k",
            "--cfg",
            "job",
            "--resolve",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"package: {site / 'm2f_lightning'}" in done.stderr  # the installed copy, not ours
    assert (site / "m2f_lightning" / "conf" / "train.yaml").is_file()
    assert "name: ade20k" in done.stdout
    assert f"datasets_dir: {work / 'datasets'}" in done.stdout
    assert f"log_dir: {work / 'outputs'}" in done.stdout
