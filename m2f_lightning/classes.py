"""Class sets by name: matching a checkpoint's classes to a dataset's (fine-tuning keeps the rows
of the class head whose names match) and checking that they agree (evaluate / predict).

Names compare case and punctuation insensitive ("Traffic-Light" = "traffic light" =
"traffic_light"); `class_map` maps a new name to an old one for synonyms ({"auto": "car"}).
"""

import re
import warnings
from collections.abc import Mapping, Sequence

from .errors import CheckpointError, ConfigError


def normalize_name(name: str) -> str:
    """Lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def match_classes(
    new_names: Sequence[str],
    old_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
) -> dict[int, int]:
    """`{new index: old index}` of the new classes found among the old ones by (normalised)
    name, `class_map[new] = old` first. A `class_map` entry naming an unknown class fails."""
    old_index: dict[str, int] = {}
    for i, name in enumerate(old_names):
        old_index.setdefault(normalize_name(name), i)
    new_by_key = {normalize_name(n): n for n in new_names}
    synonyms: dict[str, str] = {}
    for new, old in (class_map or {}).items():
        if normalize_name(new) not in new_by_key:
            raise ConfigError(
                f"class_map: '{new}' is not a class of the dataset ({list(new_names)})"
            )
        if normalize_name(old) not in old_index:
            raise ConfigError(
                f"class_map: '{old}' (for '{new}') is not a class of the checkpoint "
                f"({list(old_names)})"
            )
        synonyms[normalize_name(new)] = normalize_name(old)
    matches = {}
    for i, name in enumerate(new_names):
        key = normalize_name(name)
        j = old_index.get(synonyms.get(key, key))
        if j is not None:
            matches[i] = j
    _warn_shared_rows(matches, new_names, old_names)
    return matches


def _warn_shared_rows(
    matches: dict[int, int], new_names: Sequence[str], old_names: Sequence[str]
) -> None:
    """A `class_map` entry naming a checkpoint class that another dataset class already matches
    by name starts both from one row: allowed (a new class may start from a similar one), but
    said, since a synonym meant as a rename would leave two classes the model cannot tell apart
    at the start."""
    takers: dict[int, list[int]] = {}
    for new, old in matches.items():
        takers.setdefault(old, []).append(new)
    shared = [
        f"dataset classes {' and '.join(f'{i} ({new_names[i]!r})' for i in news)} start from "
        f"the checkpoint's class {old} ({old_names[old]!r})"
        for old, news in takers.items()
        if len(news) > 1
    ]
    if shared:
        warnings.warn("class_map: " + "; ".join(shared), stacklevel=3)


def check_classes_agree(
    checkpoint_names: Sequence[str] | None,
    dataset_names: Sequence[str],
    source: str,
    dataset: str,
    checkpoint_is_thing: Sequence[bool] | None = None,
    dataset_is_thing: Sequence[bool] | None = None,
) -> None:
    """Evaluate / predict with a checkpoint on a dataset: fail when the checkpoint holds the
    dataset's classes in another order (every result would be mislabelled), warn when names or
    thing/stuff flags differ otherwise. Checkpoints without names (model-zoo .pkl) pass."""
    if not checkpoint_names:
        return
    old = [normalize_name(n) for n in checkpoint_names]
    new = [normalize_name(n) for n in dataset_names]
    if old != new:
        if sorted(old) == sorted(new):
            moved = [
                f"{i}: '{dataset_names[i]}' in the dataset, '{checkpoint_names[i]}' in the checkpoint"
                for i in range(len(new))
                if old[i] != new[i]
            ]
            raise CheckpointError(
                f"{source} has the classes of dataset '{dataset}' in another order "
                f"({'; '.join(moved[:5])}). Fine-tune with init_weights={source} to remap them."
            )
        differ = [
            f"{i}: '{dataset_names[i]}' vs '{checkpoint_names[i]}'"
            for i in range(min(len(new), len(old)))
            if old[i] != new[i]
        ]
        warnings.warn(
            f"{source} was trained on other classes than dataset '{dataset}': "
            f"{len(differ)} of {len(new)} names differ (dataset vs checkpoint: "
            f"{'; '.join(differ[:5])})",
            stacklevel=2,
        )
    elif checkpoint_is_thing is not None and dataset_is_thing is not None:
        flipped = [
            dataset_names[i]
            for i, (a, b) in enumerate(zip(checkpoint_is_thing, dataset_is_thing, strict=False))
            if bool(a) != bool(b)
        ]
        if flipped:
            warnings.warn(
                f"{source}: thing/stuff differs from dataset '{dataset}' for {flipped[:5]}; the "
                "dataset's flags are used",
                stacklevel=2,
            )
