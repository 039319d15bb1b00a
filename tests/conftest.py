"""Shared test setup: CPU only, two threads, W&B and the Hugging Face hub off, deterministic
seeds."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# tests never download: a backbone tag that is not cached fails instead
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
