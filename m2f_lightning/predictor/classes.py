"""The classes of a model used from its checkpoint alone (predict without a dataset, the Python
`Segmenter`): names and thing flags as the checkpoint stores them, completed from the catalog
the project ships when the names are one of them (an HF checkpoint stores names, not flags)."""

from collections.abc import Sequence

from ..data.catalog import AVAILABLE, DatasetMetadata, get_metadata
from ..data.datasets.custom import palette
from ..errors import CheckpointError

TASKS = ("panoptic", "instance", "semantic")


def catalog_with_names(
    names: Sequence[str], is_thing: Sequence[bool] | None = None
) -> DatasetMetadata | None:
    """The shipped catalog whose class names are `names`, in order (and whose thing flags are
    `is_thing`, where given): its dataset ids, flags and colours are the model's."""
    for catalog in AVAILABLE:
        meta = get_metadata(catalog)
        if meta.class_names != list(names):
            continue
        if is_thing is None or meta.is_thing == [bool(t) for t in is_thing]:
            return meta
    return None


def checkpoint_metadata(
    source: str,
    task: str,
    class_names: Sequence[str] | None,
    is_thing: Sequence[bool] | None,
    dataset_ids: Sequence[int] | None = None,
    *,
    names_hint: str,
    things_hint: str,
) -> DatasetMetadata:
    """The `DatasetMetadata` of a model from checkpoint `source`. `names_hint` / `things_hint`
    say how the caller gives the names / the thing classes where the checkpoint stores none
    (the error shows them)."""
    if class_names is None:
        raise no_class_names(source, names_hint)
    names = [str(n) for n in class_names]
    catalog = catalog_with_names(names, is_thing)
    if catalog is not None:
        return catalog
    if is_thing is None:
        if task != "semantic":
            raise CheckpointError(
                f"{source} stores its {len(names)} class names but not which are things (an HF "
                f"checkpoint does not), and they are no catalog this project ships: a {task} "
                f"model needs them, {things_hint}"
            )
        is_thing = [False] * len(names)  # semantic: no instances, every class is drawn alike
    if len(is_thing) != len(names):
        raise CheckpointError(f"{source}: {len(is_thing)} thing flags for {len(names)} classes")
    ids = list(dataset_ids) if dataset_ids is not None and len(dataset_ids) == len(names) else None
    return DatasetMetadata(
        name="checkpoint",
        class_names=names,
        dataset_ids=ids or list(range(len(names))),
        is_thing=[bool(t) for t in is_thing],
        colors=palette(len(names)),
    )


def no_class_names(source: str, hint: str) -> CheckpointError:
    """The error for a checkpoint without class names; `hint` says how to give them."""
    return CheckpointError(
        f"{source} stores no class names (a detectron2 model-zoo .pkl stores only weights): "
        f"give them, {hint}"
    )


def thing_flags(names: Sequence[str], thing_classes: Sequence[str], source: str) -> list[bool]:
    """Thing flags of `names` from the list of the thing classes' names (each one of `names`)."""
    unknown = [t for t in thing_classes if t not in set(names)]
    if unknown:
        raise CheckpointError(
            f"{source}: thing classes {unknown[:5]} are not classes of the model "
            f"(its classes: {list(names)[:20]})"
        )
    return [n in set(thing_classes) for n in names]


def resolve_task(source: str, task: str | None, stored: str | None, hint: str) -> str:
    """The task: the caller's, else the checkpoint's; an error saying how to give it."""
    task = task or stored
    if task is None:
        raise CheckpointError(
            f"{source} does not store the task it was trained for (HF and .pkl checkpoints do "
            f"not): give it, {hint}"
        )
    if task not in TASKS:
        raise CheckpointError(f"{source}: unknown task '{task}': choose one of {', '.join(TASKS)}")
    return task
