"""What every importer produces, and the one atomic writer that turns it into an episode store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Container, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.data.store import EpisodeStore, checked_fps
from robodiff.errors import StoreError, UserError
from robodiff.features import JOINT_UNITS, Feature, Features, features_to_dict
from robodiff.progress import progress_bar


@dataclass
class Episode:
    """One episode's arrays, and the file they came from (named in errors)."""

    data: dict[str, np.ndarray]
    origin: str


@dataclass
class Source:
    """A dataset being imported: its features up front, its episodes as a stream."""

    origin: str
    features: Features
    episodes: Generator[Episode, None, None]
    total: int | None = None
    fps: float | None = None
    task: str | None = None
    robot: str | None = None
    # The joint positions are in a unit convention the metadata does not state (LeRobot SO-101
    # data: degrees or range100), so the import must be told (`units=`).
    units_unstated: bool = False


def require_action(keys: Container[str], origin: str) -> None:
    if "action" not in keys:
        raise UserError(f"{origin}: no 'action' array (every imported dataset needs one)")


def check_lengths(data: dict[str, np.ndarray], origin: str) -> None:
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"{origin}: arrays have unequal lengths {lengths}")
    if next(iter(lengths.values()), 0) == 0:
        raise UserError(f"{origin}: empty episode")


def to_uint8_image(key: str, arr: np.ndarray, origin: str) -> np.ndarray:
    """Images are uint8. Float images holding 0..255 (the reference Push-T store) are rounded;
    float images holding 0..1 (a normalised camera, robomimic's float datasets) are scaled first."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255 or not np.isfinite([lo, hi]).all():
            raise UserError(f"{origin}: image '{key}' holds values in [{lo:g}, {hi:g}], expected 0..255")
        if np.issubdtype(arr.dtype, np.floating) and hi <= 1.0:
            arr = arr * 255.0
        return np.rint(arr).astype(np.uint8)
    raise UserError(f"{origin}: image '{key}' has dtype {arr.dtype}, expected uint8 or 0..255 numbers")


def image_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The HWC shape of a per-step array that is an image, stored HWC or CHW; None if it is not."""
    if len(shape) != 3:
        return None
    if shape[-1] in (1, 3, 4):
        return tuple(shape)
    if shape[0] in (1, 3, 4) and min(shape[1:]) > 4:
        return (shape[1], shape[2], shape[0])
    return None


def check_timestamps(times: np.ndarray, origin: str) -> None:
    """Seconds, finite and strictly increasing within an episode (videos are matched by them)."""
    times = np.asarray(times, dtype=np.float64).reshape(len(times))
    if not np.isfinite(times).all():
        raise UserError(f"{origin}: 'timestamp' holds NaN/Inf (first at step {int(np.argmin(np.isfinite(times)))})")
    back = np.nonzero(np.diff(times) <= 0)[0]
    if len(back):
        i = int(back[0])
        raise UserError(f"{origin}: 'timestamp' does not increase at step {i + 1} ({times[i]:g} -> {times[i + 1]:g})")


def conform(episode: Episode, features: Features) -> dict[str, np.ndarray]:
    """Check an episode against the features and cast it to their dtypes."""
    data, origin = episode.data, episode.origin
    missing = sorted(set(features) - set(data))
    if missing:
        raise UserError(f"{origin}: missing {', '.join(repr(k) for k in missing)}")
    extra = sorted(set(data) - set(features))
    if extra:  # the first episode decides the features: a later array would be dropped silently
        raise UserError(f"{origin}: has {', '.join(repr(k) for k in extra)}, which the first episode has not")
    check_lengths({k: data[k] for k in features}, origin)
    out = {}
    for key, feat in features.items():
        arr = np.asarray(data[key])
        if feat.kind == "image" and arr.ndim == 4 and tuple(arr.shape[1:]) != feat.shape \
                and image_shape(arr.shape[1:]) == feat.shape:
            arr = np.moveaxis(arr, 1, -1)  # stored channels-first
        if tuple(arr.shape[1:]) != feat.shape:
            raise UserError(f"{origin}: '{key}' has shape {list(arr.shape[1:])} per step, "
                            f"earlier episodes have {list(feat.shape)}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                or arr.dtype == np.bool_):
            raise UserError(f"{origin}: '{key}' has dtype {arr.dtype}, expected numbers")
        if feat.kind == "image":
            out[key] = to_uint8_image(key, arr, origin)
        else:
            out[key] = arr.astype(feat.dtype, copy=False)
            if np.issubdtype(out[key].dtype, np.floating) and not np.isfinite(out[key]).all():
                row = int(np.nonzero(~np.isfinite(out[key].reshape(len(arr), -1)).all(axis=1))[0][0])
                raise UserError(f"{origin}: '{key}' holds NaN/Inf (first at step {row})")
        if feat.kind == "timestamp":
            check_timestamps(out[key], origin)
    return out


def temporary_path(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.tmp-{os.getpid()}")


def check_dest(dest: Path) -> None:
    if dest.exists():
        raise UserError(f"{dest}: already exists (choose a new destination)")
    if dest.suffix == ".zip":
        raise UserError(f"{dest}: imports write a directory store; drop the .zip suffix")


def write_store(source: Source, dest: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """Stream the episodes into DEST.tmp-<pid>, then rename it to DEST (never clobbering DEST)."""
    dest = Path(dest)
    check_dest(dest)
    tmp = temporary_path(dest)
    if tmp.exists():
        shutil.rmtree(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    features: Features = dict(source.features)
    try:
        fps = checked_fps(source.fps, f"{source.origin}: fps")
        store = EpisodeStore.create(tmp, features, fps=fps, task=source.task, robot=source.robot)
        with progress_bar(source.episodes, total=source.total, desc=f"import {fmt}", unit="episode") as bar:
            for episode in bar:
                store.append_episode(conform(episode, features))
        if store.n_episodes == 0:
            raise UserError(f"{source.origin}: holds no episodes")
        episodes, frames = store.n_episodes, store.n_frames
        store.close()
        if dest.exists():
            raise StoreError(f"{dest}: appeared while importing; the import was discarded")
        os.rename(tmp, dest)
    except OSError as exc:  # name the destination, not its temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"{dest}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        source.episodes.close()  # releases the source's open files even after a failure
    return {"dest": str(dest), "format": fmt, "episodes": episodes, "frames": frames,
            "features": features_to_dict(features)}


def lowdim(shape: tuple[int, ...], kind: str = "lowdim", names: tuple[str, ...] | None = None) -> Feature:
    return Feature(kind, shape, "float64" if kind == "timestamp" else "float32", names=names)


# The features that hold an arm's joint positions, whose units `units=` states.
JOINT_FEATURES = ("state", "action")


def relabel(source: Source, units: str | None, rename: dict[str, str]) -> Source:
    """The source with features renamed (`rename`: old -> new name, e.g. a LeRobot camera name to
    the robot's) and its joint features marked as being in `units`."""
    if units is not None and units not in JOINT_UNITS:
        raise UserError(f"units={units}: one of {', '.join(JOINT_UNITS)}")
    if source.units_unstated and units is None:
        raise UserError(f"{source.origin}: an {source.robot} dataset, whose joint positions are in "
                        f"{' or '.join(JOINT_UNITS)} (its metadata does not say which): import it with "
                        f"units={'|'.join(JOINT_UNITS)}")
    for old, new in rename.items():
        if old not in source.features:
            raise UserError(f"rename={old}:{new}: {source.origin} has no feature '{old}' "
                            f"(it has {', '.join(source.features) or 'none'})")
    names = {k: rename.get(k, k) for k in source.features}
    if len(set(names.values())) < len(names):
        raise UserError(f"rename: two features would be named alike ({', '.join(names.values())})")
    features = {names[k]: (replace(f, units=units) if units is not None and names[k] in JOINT_FEATURES else f)
                for k, f in source.features.items()}

    def episodes() -> Generator[Episode, None, None]:
        try:
            for episode in source.episodes:
                yield Episode({names.get(k, k): v for k, v in episode.data.items()}, episode.origin)
        finally:
            source.episodes.close()

    return replace(source, features=features, episodes=episodes())
