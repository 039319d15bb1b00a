"""Weights named by a Hugging Face hub id (`facebook/mask2former-swin-tiny-coco-panoptic`,
optionally `@revision`): fetched once through `huggingface_hub` into its cache, then read from
there (offline too, `HF_HUB_OFFLINE=1`) as the HF folder it is (`checkpoints/hf.py` converts it
on the fly).

An existing local path always wins over a hub id of the same spelling, and a name with a weights
file's suffix (`runs/last.ckpt`) is always a path, so a mistyped file is reported as missing
rather than looked up on the hub.
"""

import json
import re
from pathlib import Path

from ..errors import CheckpointError, MissingCheckpointError
from .hf import check_mask2former_config

# owner/name as the hub spells repositories, then an optional @revision (branch, tag or commit)
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin", ".safetensors", ".json")
# what a Mask2Former folder needs (the preprocessor's sizes are for the predictor)
_CONFIG_FILES = ["config.json", "preprocessor_config.json"]
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def parse_hub_id(spec: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `spec` names a hub model, None when it is a local path
    (one that exists, or one that cannot be a hub id: absolute, `./`, `~`, a file suffix)."""
    text = str(spec).strip()
    if not text or Path(text).expanduser().exists():
        return None
    match = _HUB_ID.fullmatch(text)
    if match is None:
        return None
    repo = match["repo"]
    if "--" in repo or ".." in repo or repo.lower().endswith(_FILE_SUFFIXES):
        return None
    return repo, match["revision"]


def is_hub_id(spec: str | Path) -> bool:
    return parse_hub_id(spec) is not None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _not_cached(spec: str, repo: str, why: str) -> MissingCheckpointError:
    cache = _cache_dir()
    return MissingCheckpointError(
        f"checkpoint {spec}: no such local file or folder, and as a Hugging Face hub id it is not "
        f"in the local HF cache ({cache}) and {why}. Offline: run `hf download {repo}` on a "
        f"machine with network and copy the models--{repo.replace('/', '--')} folder of its HF "
        f"cache into {cache} (or point HF_HUB_CACHE at a shared cache), or pass a downloaded "
        "folder's path instead"
    )


def _check_mask2former(folder: Path, spec: str) -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"hub model {spec} has no config.json: not a transformers model")
    try:
        hf_config = json.loads(config_file.read_text())
    except ValueError:
        raise CheckpointError(f"hub model {spec}: its config.json is not JSON") from None
    check_mask2former_config(hf_config, f"hub model {spec}")


def resolve_weights(spec: str | Path, local_only: bool = False) -> Path:
    """The local path of the weights `spec` names: a local path as it is, a hub id as its
    snapshot folder in the HF cache (config.json, the weights, preprocessor_config.json),
    downloaded there first when missing. `local_only`: never ask the network (a hub id not in
    the cache raises). A hub that cannot be reached falls back to the cache."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        return Path(spec)
    repo, revision = parsed
    spec = str(spec)
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_only or constants.HF_HUB_OFFLINE
    try:
        # the small files first: a repository of another kind fails before its weights download
        folder = Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=_CONFIG_FILES, local_files_only=offline
            )
        )
        _check_mask2former(folder, spec)
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):
            commit = folder.name  # the snapshot's commit: the weights of the same revision
            for name in _WEIGHT_FILES:
                try:
                    hf_hub_download(repo, name, revision=commit, local_files_only=offline)
                    break
                except LocalEntryNotFoundError:
                    raise
                except EntryNotFoundError:  # not in the repository: try the other file
                    continue
            else:
                raise CheckpointError(f"hub model {spec} has neither {' nor '.join(_WEIGHT_FILES)}")
    except RevisionNotFoundError:
        raise CheckpointError(f"hub model {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise MissingCheckpointError(
            f"checkpoint {spec}: no such local file or folder, and no model {repo} on the "
            "Hugging Face hub (or it is private or gated: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else "only the cache was searched"
            if local_only
            else "the hub cannot be reached"
        )
        raise _not_cached(spec, repo, why) from None
    except HFValidationError as err:
        raise MissingCheckpointError(
            f"checkpoint {spec}: no such local file or folder, nor a valid hub id ({err})"
        ) from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"hub model {spec}: {str(err).splitlines()[0]}") from None
    return folder
