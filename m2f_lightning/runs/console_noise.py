"""Third-party console lines that say nothing to a user of this project, each silenced at its
source by its message (a warning filter, a filter on one logger's records), never a whole logger
or every warning: a warning of ours, or a third party's real one, still shows.

- torch's deprecation of `LeafSpec`, raised by Lightning's own `_pytree` helper at every fit;
- Lightning's "`srun` is available but not used" (SLURM jobs are launched by submitit or
  scripts/, which use srun; a login-node run is meant to be local) and its litlogger tip;
- Lightning's DataLoader worker-count advice (`dataset.num_workers` sets the workers);
- Lightning's "GPU available / TPU available" lines (the run's summary names the device);
- the ONNX exporter's INFO lines per node and weight it folds or removes, and its warning per
  node it does not fold ("Skipping constant folding ..."): m2f-export; its other warnings show.
"""

import logging
import warnings

# (message regex, category, module regex) of warnings.filterwarnings
WARNINGS = [
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\."),
    (r"The '\w+' does not have many workers which may be a bottleneck", Warning, ""),
    (r"The `srun` command is available", Warning, ""),
]
# logger name: text that drops a record of its whose message contains it
RECORDS = {
    "lightning.pytorch.utilities.rank_zero": (
        "GPU available:",
        "TPU available:",
        "HPU available:",
        "litlogger",
    ),
    "lightning.fabric.utilities.rank_zero": ("litlogger",),
    "onnxscript.optimizer._constant_folding": ("Skipping constant folding",),
}
# loggers whose INFO lines are one per weight: only their warnings and errors are kept
CHATTY_INFO = ("onnxscript.optimizer", "onnxscript.rewriter", "onnx_ir.passes")


class DropMessages(logging.Filter):
    """Drops the records whose message contains one of `needles`."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(needle in str(record.msg) for needle in self.needles)


def quiet_third_party() -> None:
    """Install the filters above (once: a second call adds nothing)."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, needles in RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.needles == needles for f in logger.filters):
            logger.addFilter(DropMessages(*needles))
    for name in CHATTY_INFO:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
