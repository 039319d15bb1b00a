"""What one training step costs, ours or the Hugging Face port: FLOPs (torch.profiler
`with_flops`: matrix products and convolutions), memory kept for backward (the distinct tensors
autograd saves, parameters excluded), median wall time of a full step (forward, loss, backward,
AdamW) and the process's peak RSS. Swin-T, 150 classes, 100 queries, fp32, batch 2, the train
step of `scripts/bench.py` (same weights, images and targets on both sides).

    python scripts/step_cost.py --side ours --size 512 [--threads 2] [--repeats 3]

Prints one JSON line. It measures the checkout it lives in: to measure another commit, copy it
into that commit's tree (`git archive <commit> | tar -x -C DIR; cp scripts/step_cost.py DIR/scripts`).
One process per side and size, so that the peak RSS is that step's.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from bench import FULL, TrainStep, hf_model, peak_rss_bytes, train_step_flops


def measured_step(step: TrainStep) -> tuple[float, int]:
    """FLOPs of one step's forward, loss and backward, and the bytes of the distinct storages
    autograd keeps for backward (parameters excluded: they exist anyway)."""
    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        flops = train_step_flops(step)
    return flops, sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=("ours", "hf"), required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as hf_dir:
        hf_model(FULL["classes"], False, FULL["num_points"]).save_pretrained(hf_dir)
        step = TrainStep(args.side, hf_dir, FULL, args.size)
        flops, saved = measured_step(step)  # also the warm-up of the timed steps
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "side": args.side,
                "size": args.size,
                "threads": args.threads,
                "gflops": flops / 1e9,
                "saved_for_backward_gb": saved / 1e9,
                "step_s": statistics.median(times) if times else None,
                "peak_rss_gb": peak_rss_bytes() / 1e9,
            }
        )
    )


if __name__ == "__main__":
    main()
