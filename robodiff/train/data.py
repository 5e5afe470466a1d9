"""What a training run reads: the episode store (importing foreign formats once) and which of its
features the task observes."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
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
        fingerprint = source_fingerprint(src)
        if cached.exists():
            try:
                with EpisodeStore.open(cached) as store:
                    current = store.attrs.get("source_fingerprint") == fingerprint
                if current or not may_import:
                    return cached
                print(f"{src} changed since it was imported to {cached}: importing it again", file=sys.stderr)
            except NotAStoreError:
                pass  # a half-written import (killed run): import again below
        if not may_import:
            raise UserError(f"dataset '{src}': imported store {cached} is missing") from None
        if cached.exists():
            shutil.rmtree(cached)
        import_dataset(str(src), str(cached))
        with EpisodeStore.open(cached, mode="r+") as store:
            store.set_attrs(source_fingerprint=fingerprint)
        return cached


def source_fingerprint(src: Path) -> str:
    """Changes when any file of a foreign dataset is added, removed, resized or rewritten."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(src) if path != src else path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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
                            f"(it has {', '.join(store_features) or 'none'})")
        if store_features[key].kind not in ("image", "lowdim"):
            raise UserError(f"dataset {store_path}: feature '{key}' is {store_features[key].kind}, "
                            f"not an image or low-dim observation")
    return list(keys)
