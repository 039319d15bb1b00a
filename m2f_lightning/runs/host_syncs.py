"""Count the host round trips of a piece of code (a training step) — on CPU as on a GPU.

On a GPU every read of a device value by the host (`.item()`, `float(t)`, `bool(t)`, `.cpu()`,
`.tolist()`, `.numpy()`), every op whose output shape depends on the data (`nonzero`, boolean
mask indexing, `masked_select`, `unique`, `repeat_interleave` without `output_size`) and every
blocking host-to-device copy (`.to(device)` of a host tensor without `non_blocking`, a device
tensor indexed by a host tensor) makes the host wait for the device queue to drain.

On CPU most of these dispatch nothing (`.cpu()` returns the tensor itself, `.numpy()` shares its
memory), so the profiler cannot see them. `HostSyncCounter` therefore *simulates* the device:
every tensor that exists before the counted block, or that an op makes from such tensors, is a
"device" tensor; tensors made from host data inside the block (`torch.tensor`/`torch.as_tensor`/
`torch.from_numpy` without a device, the result of a counted `.cpu()`) are "host" tensors, and
ops on host tensors alone stay on the host. A `TorchDispatchMode` sees every aten op (scalar
reads, data-dependent shapes, implicit copies) and patched `Tensor.cpu/.numpy/.tolist/.to/.cuda`
and `torch.tensor/as_tensor/from_numpy` see what dispatches nothing. On CUDA the real devices
decide (host = a CPU tensor) and the same events are recorded, so the CPU count is what the GPU
would stall on. The `meta` device was not used: a step needs real values (the Hungarian
matching reads its costs), and meta tensors raise on exactly the reads we want to count.

Usage::

    with HostSyncCounter() as syncs:
        step()
    print(syncs.summary())   # {"d2h": 1}; syncs.events says where each one came from
"""

import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# ops whose output shape depends on the values (the host must read a count first)
_DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.unique_dim_consecutive.default,
    aten.bincount.default,
}
_SCALAR_READS = {aten._local_scalar_dense.default, aten.equal.default}
_INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS_FILE = str(Path(__file__).resolve())


@dataclass(frozen=True)
class HostSync:
    """One host round trip: its kind (d2h, scalar_read, data_dependent, bool_index, h2d), the
    op or method, and the first frame outside torch that caused it (`file:line function`)."""

    kind: str
    op: str
    where: str


def _caller() -> str:
    """The innermost frame outside torch, numpy and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = str(Path(frame.f_code.co_filename).resolve())
        if not name.startswith(_TORCH_DIR) and name != _THIS_FILE and "numpy" not in name:
            return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class HostSyncCounter(TorchDispatchMode):
    """Record every host round trip of the code run inside `with HostSyncCounter() as c:`.

    `device`: the device the counted code runs on (default: CPU, simulated as described in the
    module docstring). `events` lists what was seen, `summary()` counts it by kind.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.simulated = self.device.type == "cpu"
        self.events: list[HostSync] = []
        self._host: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._inside = threading.local()  # a patched method is running: its ops are its own
        self._saved: list[tuple[Any, str, Any]] = []
        self.sync_warnings: list[str] = []  # CUDA's sync debug warnings (count_training_step)

    # ------------------------------------------------------------------ bookkeeping
    def is_host(self, tensor: torch.Tensor) -> bool:
        if tensor.device.type == "meta":
            return False
        if not self.simulated:
            return tensor.device.type == "cpu"
        return tensor in self._host

    def mark_host(self, *tensors: torch.Tensor) -> None:
        """Declare tensors made before the counted block as host tensors (e.g. the step
        counters that torch optimisers keep on the CPU)."""
        for tensor in tensors:
            self._mark_host(tensor)

    def _mark_host(self, tensor: Any) -> Any:
        if isinstance(tensor, torch.Tensor) and self.simulated:
            self._host[tensor] = True
        return tensor

    def _record(self, kind: str, op: str) -> None:
        self.events.append(HostSync(kind, op, _caller()))

    def summary(self) -> dict[str, int]:
        """Number of events of each kind."""
        return dict(Counter(event.kind for event in self.events))

    @property
    def count(self) -> int:
        return len(self.events)

    # ------------------------------------------------------------------ aten ops
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_inputs = [t for t in tensors if not self.is_host(t)]
        host_inputs = [t for t in tensors if self.is_host(t)]
        if tensors and not device_inputs and self.simulated:  # host tensors alone: host result
            for t in tree_flatten(out)[0]:
                self._mark_host(t)
        if getattr(self._inside, "active", False):
            return out
        name = str(func.overloadpacket.__name__)
        if device_inputs:
            if func in _SCALAR_READS:
                self._record("scalar_read", name)
            elif func in _DATA_DEPENDENT or (
                func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None
            ):
                self._record("data_dependent", name)
            elif func in _INDEXING and any(
                t.dtype in (torch.bool, torch.uint8) for t in _index_tensors(func, args)
            ):
                self._record("bool_index", name)
            elif func in (aten._to_copy.default, aten.copy_.default):
                self._copy(func, args, kwargs)
            elif any(t.dim() > 0 for t in host_inputs):  # a host tensor copied implicitly
                self._record("h2d", name)
        return out

    def _copy(self, func, args, kwargs) -> None:
        """A real cross-device copy (CUDA runs; on CPU `.to`/`.cpu` are patched instead)."""
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            to_host, from_host = dst.device.type == "cpu", src.device.type == "cpu"
        else:
            src = args[0]
            target = kwargs.get("device") or src.device
            to_host, from_host = torch.device(target).type == "cpu", src.device.type == "cpu"
        if to_host and not from_host:
            self._record("d2h", str(func.overloadpacket.__name__))
        elif from_host and not to_host and not kwargs.get("non_blocking", False):
            self._record("h2d", str(func.overloadpacket.__name__))

    # ------------------------------------------------------------------ patched methods
    def _patch(self, owner: Any, name: str, wrapper: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    def _wrap(self, original: Any, before: Any, after: Any = None) -> Any:
        counter = self

        def wrapper(*args, **kwargs):
            if getattr(counter._inside, "active", False):
                return original(*args, **kwargs)
            before(*args, **kwargs)
            counter._inside.active = True
            try:
                out = original(*args, **kwargs)
            finally:
                counter._inside.active = False
            return after(out, *args, **kwargs) if after else out

        return wrapper

    def _install(self) -> None:
        tensor = torch.Tensor

        def reading(kind: str, op: str):
            def before(self_tensor, *args, **kwargs):
                if not self.is_host(self_tensor):
                    self._record(kind, op)

            return before

        def to_host(out, *args, **kwargs):
            return self._mark_host(out.view_as(out) if out is args[0] else out)

        self._patch(tensor, "cpu", self._wrap(tensor.cpu, reading("d2h", "cpu"), to_host))
        for name in ("numpy", "tolist"):
            self._patch(tensor, name, self._wrap(getattr(tensor, name), reading("d2h", name)))

        def moving(self_tensor, *args, **kwargs):
            target = _target_device(args, kwargs)
            if target is None:  # a dtype change only
                return
            blocking = not (kwargs.get("non_blocking", False) or _non_blocking_arg(args))
            to_host = _names_host(_device_arg(args, kwargs)) or target.type == "cpu"
            if self.is_host(self_tensor):
                if blocking and not (
                    to_host if not self.simulated else _moves_to_host(args, kwargs)
                ):
                    self._record("h2d", "to")
            elif to_host and (not self.simulated or _moves_to_host(args, kwargs)):
                self._record("d2h", "to")

        def to_device(out, self_tensor, *args, **kwargs):
            if not self.simulated or _target_device(args, kwargs) is None:
                return out
            if out is self_tensor:  # a no-op move on CPU: a new alias
                out = out.view_as(out)
            if _moves_to_host(args, kwargs):
                self._mark_host(out)
            else:
                self._host.pop(out, None)
            return out

        self._patch(tensor, "to", self._wrap(tensor.to, moving, to_device))

        def cuda_moving(self_tensor, *args, **kwargs):
            if self.is_host(self_tensor) and not kwargs.get("non_blocking", False):
                self._record("h2d", "cuda")

        self._patch(tensor, "cuda", self._wrap(tensor.cuda, cuda_moving))

        def creating(op: str):
            def before(data, *args, **kwargs):
                device = kwargs.get("device")
                on_device = isinstance(data, torch.Tensor) and not self.is_host(data)
                if device is None or on_device or _names_host(device):
                    return
                if self.simulated or torch.device(device).type != "cpu":
                    self._record("h2d", op)

            return before

        def created(out, data, *args, **kwargs):
            on_device = isinstance(data, torch.Tensor) and not self.is_host(data)
            device = kwargs.get("device")
            if (device is None or _names_host(device)) and not on_device:
                self._mark_host(out)
            return out

        for name in ("tensor", "as_tensor"):
            self._patch(torch, name, self._wrap(getattr(torch, name), creating(name), created))

        def nothing(*args, **kwargs) -> None:
            return None

        def host_result(out, *args, **kwargs):
            return self._mark_host(out)

        self._patch(torch, "from_numpy", self._wrap(torch.from_numpy, nothing, host_result))

    def __enter__(self) -> "HostSyncCounter":
        self._install()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for owner, name, original in reversed(self._saved):
                setattr(owner, name, original)
            self._saved.clear()


def _index_tensors(func, args) -> list[torch.Tensor]:
    indices = args[1] if len(args) > 1 else []
    return [t for t in indices if isinstance(t, torch.Tensor)]


def _target_device(args: tuple, kwargs: dict) -> torch.device | None:
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    for arg in args:
        if isinstance(arg, torch.device | str):
            return torch.device(arg)
        if isinstance(arg, torch.Tensor):
            return arg.device
    return None


def _device_arg(args: tuple, kwargs: dict) -> Any:
    if kwargs.get("device") is not None:
        return kwargs["device"]
    return next((a for a in args if isinstance(a, torch.device | str)), None)


def _names_host(device: Any) -> bool:
    """The literal "cpu" names the host; a `torch.device` (usually taken from a tensor) names
    the device the step runs on, which is the CPU in a simulated count."""
    return isinstance(device, str) and device.startswith("cpu")


def _moves_to_host(args: tuple, kwargs: dict) -> bool:
    return _names_host(_device_arg(args, kwargs))


def _non_blocking_arg(args: tuple) -> bool:
    flags = [a for a in args if isinstance(a, bool)]
    return bool(flags and flags[0])


def optimizer_host_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The per-parameter `step` counters a torch optimiser keeps on the CPU (all but the
    capturable and fused implementations): reading them costs no device round trip."""
    on_device = any(
        group.get("capturable") or group.get("fused") for group in optimizer.param_groups
    )
    if on_device:
        return []
    return [
        state["step"]
        for state in optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor)
    ]


def count_training_step(
    module: Any, batch: Any, step: int = 0, device: str = "cpu"
) -> HostSyncCounter:
    """Run `step + 2` training steps of a LightningModule on `batch` (no logger, no checkpoints,
    no progress bar, gradients clipped as the recipes do) and count the host round trips of step
    `step`, from `on_train_batch_start` to `on_train_batch_end`: training_step (forward,
    matching, losses, `self.log`), backward, `on_before_optimizer_step`, clipping and the
    optimiser step. The work of every `log_every_n_steps`-th step and of the last step (Lightning
    pushing logged values to loggers and progress bars; the non-finite guard's check, which
    rides on it) is not part of it: choose `step` so that `step + 1` is not a multiple of it. On CUDA (`device="cuda"`) the step also runs under
    `torch.cuda.set_sync_debug_mode("warn")`, whose warnings land in `counter.sync_warnings`."""
    import warnings

    import lightning as L

    counter = HostSyncCounter(device)
    cuda = counter.device.type == "cuda"
    counter.sync_warnings = []
    caught = warnings.catch_warnings(record=True)

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx != step:
                return
            for optimizer in trainer.optimizers:
                counter.mark_host(*optimizer_host_tensors(optimizer))
            if cuda:
                self.records = caught.__enter__()
                warnings.simplefilter("always")
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            counter.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx != step:
                return
            counter.__exit__(None, None, None)
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                caught.__exit__(None, None, None)
                counter.sync_warnings = [
                    str(w.message) for w in self.records if "synchroniz" in str(w.message)
                ]

    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        max_steps=step + 2,
        limit_val_batches=0,
        gradient_clip_val=0.01,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Count()],
    )
    loader = torch.utils.data.DataLoader([batch] * (step + 2), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return counter
