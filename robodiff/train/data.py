"""What a training run reads: the episode store (importing foreign formats once) and which of its
features the task observes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from robodiff.data.importers import import_dataset
from robodiff.data.store import EpisodeStore
from robodiff.errors import NotAStoreError, UserError
from robodiff.features import Features

def imported_path(src: Path) -> Path:
    """Where a foreign dataset is imported to: next to it, so the import happens once."""
    return src.parent / f"{src.name.rstrip('/')}.robodiff.zarr"


def resolve_store(dataset: str | os.PathLike, may_import: bool = True) -> Path:
    """An episode store path for `dataset=`: the store itself, or the cached import of it.

    Only one process may import (`may_import`); the others call again after a barrier.
    """
    src = Path(dataset).expanduser()
    if not src.exists():
        raise UserError(f"dataset '{dataset}' does not exist")
    try:
        EpisodeStore.open(src).close()
        return src
    except NotAStoreError:  # a damaged episode store is an error, never a foreign format
        cached = imported_path(src)
        if cached.exists():
            try:
                EpisodeStore.open(cached).close()
                return cached
            except NotAStoreError:
                pass  # a half-written import (killed run): import again below
        if not may_import:
            raise UserError(f"dataset '{src}': imported store {cached} is missing") from None
        if cached.exists():
            shutil.rmtree(cached)
        import_dataset(str(src), str(cached))
        return cached


def choose_obs_keys(store_features: Features, store_path: Path, task_name: str,
                    task_keys: list[str] | None, override: list[str] | None) -> list[str]:
    """The explicit override, else the task's list, else every image / low-dim feature."""
    keys = override or task_keys
    if keys is None:
        keys = [k for k, f in store_features.items() if f.kind in ("image", "lowdim")]
        if not keys:
            raise UserError(f"dataset {store_path} has no image or low-dim feature to observe")
        return keys
    for key in keys:
        if key not in store_features:
            who = "obs_keys" if override else f"task '{task_name}'"
            raise UserError(f"dataset {store_path} lacks feature '{key}' that {who} needs "
                            f"(it has {', '.join(store_features)})")
        if store_features[key].kind not in ("image", "lowdim"):
            raise UserError(f"dataset {store_path}: feature '{key}' is {store_features[key].kind}, "
                            f"not an image or low-dim observation")
    return list(keys)
