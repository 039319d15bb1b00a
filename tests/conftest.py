"""Shared test setup: CPU only, two threads, W&B and the Hugging Face hub off, deterministic
seeds."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# tests never download: a backbone tag that is not cached fails instead
os.environ["HF_HUB_OFFLINE"] = "1"

import logging  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def _test_threads() -> int:
    """Torch threads per test process: M2F_TEST_THREADS if set, else 2; under pytest-xdist the
    cores shared out between the workers (at least 1), so that `make test`'s parallel workers do
    not oversubscribe the machine. One thread under mutation runs (scripts/mutate.py): mutmut forks
    a worker per mutant from a process whose OpenMP pool is started, and a forked child's first
    parallel op never returns."""
    if "M2F_TEST_THREADS" in os.environ:
        return int(os.environ["M2F_TEST_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 0:
        return max(1, min(2, (os.cpu_count() or 1) // workers))
    return 2


_THREADS = _test_threads()
torch.set_num_threads(_THREADS)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # the commands a test runs in a subprocess (training CLIs) get the same share
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command run in-process (Hydra's job logging) leaves handlers on the root logger that
    write to this test's captured stdout, closed once the test ends: the next test's log records
    would fail in them ("I/O operation on closed file"). Each test starts with the root logger
    as the previous one found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
