"""Class sets by name: matching a checkpoint's classes to a dataset's (fine-tuning keeps the rows
of the class head whose names match) and checking that they agree (evaluate / predict).

Names compare case and punctuation insensitive ("Traffic-Light" = "traffic light" =
"traffic_light"); a name listing comma-separated synonyms, as the official ADE20K names do
("road, route"), also matches each of them ("road"); `class_map` maps a new name to an old one for
other synonyms ({"auto": "car"}).
"""

import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

from .errors import CheckpointError, ConfigError


def normalize_name(name: str) -> str:
    """Lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def name_keys(name: str) -> list[str]:
    """The normalised name, then its comma-separated synonyms: "road, route" → ["roadroute",
    "road", "route"]."""
    keys = [normalize_name(name)]
    parts = str(name).split(",")
    for part in parts if len(parts) > 1 else []:
        key = normalize_name(part)
        if key and key not in keys:
            keys.append(key)
    return keys


def same_class(a: str, b: str) -> bool:
    """Whether two names name the same class (equal, or sharing a comma-separated synonym)."""
    return bool(set(name_keys(a)) & set(name_keys(b)))


def _pairs(new_names: Sequence[str], old_names: Sequence[str]) -> dict[int, int]:
    """`{new index: old index}` by whole name first, else by a synonym that exactly one new and
    one old name list (so "blind, screen" does not take "screen")."""
    new_keys = [name_keys(n) for n in new_names]
    old_keys = [name_keys(n) for n in old_names]
    whole: dict[str, int] = {}
    by_key: dict[str, int] = {}
    for j, keys in enumerate(old_keys):
        whole.setdefault(keys[0], j)
        for key in keys:
            by_key.setdefault(key, j)
    new_count = Counter(k for keys in new_keys for k in set(keys))
    old_count = Counter(k for keys in old_keys for k in set(keys))
    pairs = {}
    for i, keys in enumerate(new_keys):
        if keys[0] in whole:
            pairs[i] = whole[keys[0]]
            continue
        for key in keys:
            if new_count[key] == 1 and old_count[key] == 1:
                pairs[i] = by_key[key]
                break
    return pairs


def match_classes(
    new_names: Sequence[str],
    old_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
) -> dict[int, int]:
    """`{new index: old index}` of the new classes found among the old ones by (normalised)
    name, `class_map[new] = old` first. A `class_map` entry naming an unknown class fails."""
    synonyms: dict[int, int] = {}
    for new, old in (class_map or {}).items():
        i = _pairs([new], new_names).get(0)
        if i is None:
            raise ConfigError(
                f"class_map: '{new}' is not a class of the dataset ({list(new_names)})"
            )
        j = _pairs([old], old_names).get(0)
        if j is None:
            raise ConfigError(
                f"class_map: '{old}' (for '{new}') is not a class of the checkpoint "
                f"({list(old_names)})"
            )
        synonyms[i] = j
    matches = _pairs(new_names, old_names) | synonyms
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
    agree = len(old) == len(new) and all(
        same_class(a, b) for a, b in zip(checkpoint_names, dataset_names, strict=True)
    )
    if not agree:
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
            if not same_class(checkpoint_names[i], dataset_names[i])
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
