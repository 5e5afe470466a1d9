"""Generic demo folders (specified in docs/formats.md):

    <root>/meta.json                 optional {"fps": 10, "task": ..., "robot": ...}
    <root>/episode_<n>/steps.npz     per-step arrays, `action` required, `timestamp` optional
    <root>/episode_<n>/<camera>.mp4  or <root>/episode_<n>/<camera>/*.png (one image per step)
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.data.importers.source import Episode, Source, check_lengths, image_shape, lowdim, require_action
from robodiff.data.video import FrameSampler, first_frame
from robodiff.errors import UserError
from robodiff.features import Feature, Features

DEFAULT_FPS = 10.0


def natural_key(path: Path) -> tuple[Any, ...]:
    """`episode_2` before `episode_10`, `frame_9.png` before `frame_10.png`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def episode_dirs(src: Path) -> list[Path]:
    return sorted((p for p in src.glob("episode_*") if p.is_dir()), key=natural_key)


def read(src: Path) -> Source:
    meta = _read_meta(src / "meta.json")
    raw_fps = meta.get("fps", DEFAULT_FPS)
    if isinstance(raw_fps, bool) or not isinstance(raw_fps, (int, float)) or raw_fps <= 0:
        raise UserError(f"{src / 'meta.json'}: fps must be a positive number, got {raw_fps!r}")
    fps = float(raw_fps)
    episodes = episode_dirs(src)
    if not episodes:
        raise UserError(f"{src}: no episode_*/ folders")
    steps = _load_steps(episodes[0] / "steps.npz")
    features: Features = {}
    for key, arr in steps.items():
        if key == "action":
            features[key] = lowdim(arr.shape[1:], "action")
        elif key == "timestamp":
            features[key] = lowdim(arr.shape[1:], "timestamp")
        elif arr.ndim == 4 and image_shape(arr.shape[1:]) is not None and (
                arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
            features[key] = Feature("image", image_shape(arr.shape[1:]), "uint8")  # HWC or CHW, 0..255 or 0..1
        else:
            features[key] = lowdim(arr.shape[1:])
    features.setdefault("timestamp", lowdim((), "timestamp"))
    for camera, path in _cameras(episodes[0]).items():
        if camera in features:
            raise UserError(f"{path}: camera '{camera}' clashes with the steps.npz array of that name")
        image = first_frame(path) if path.suffix == ".mp4" else _read_png(_pngs(path)[0])
        features[camera] = Feature("image", image.shape, "uint8")
    return Source(origin=str(src), features=features, episodes=_episodes(episodes, features, fps),
                  total=len(episodes), fps=fps, task=meta.get("task"), robot=meta.get("robot"))


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object")
    return meta


def _load_steps(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: missing (every episode folder needs steps.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            steps = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: unreadable npz ({type(exc).__name__}: {exc})") from None
    require_action(steps, str(path))
    for key, arr in steps.items():
        if arr.ndim == 0:
            raise UserError(f"{path}: '{key}' is a scalar, expected one row per step")
    return steps


def _cameras(episode: Path) -> dict[str, Path]:
    cameras = {p.stem: p for p in episode.glob("*.mp4")}
    for folder in episode.iterdir():
        if folder.is_dir() and any(folder.glob("*.png")):
            if folder.name in cameras:
                raise UserError(f"{folder}: camera '{folder.name}' is both an mp4 and a PNG folder")
            cameras[folder.name] = folder
    return dict(sorted(cameras.items()))


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"), key=natural_key)


def _read_png(path: Path) -> np.ndarray:
    # OpenCV is imported where it is used: importing it starts its thread pool, which slows torch
    # on the same cores (1.2-1.4x on linear layers, measured 2026-12-07), and training imports this.
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{path}: unreadable PNG")
    if image.dtype != np.uint8:
        raise UserError(f"{path}: {image.dtype} PNG, expected 8 bits per channel")
    if image.ndim == 2:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[-1] == 4 else cv2.COLOR_BGR2RGB)


def _episodes(episodes: list[Path], features: Features, fps: float) -> Generator[Episode, None, None]:
    for folder in episodes:
        steps_path = folder / "steps.npz"
        data = _load_steps(steps_path)
        check_lengths(data, str(steps_path))  # before the videos are decoded
        length = len(data["action"])
        if "timestamp" not in data:
            data["timestamp"] = np.arange(length, dtype=np.float64) / fps
        times = data["timestamp"].astype(np.float64)
        cameras = _cameras(folder)
        for camera in (k for k, f in features.items() if f.kind == "image" and k not in data):
            path = cameras.get(camera)
            if path is None:
                raise UserError(f"{folder}: no {camera}.mp4 or {camera}/*.png (episode 0 has it)")
            if path.suffix == ".mp4":
                with FrameSampler(path) as sampler:
                    data[camera] = sampler.frames_at(times - times[0], f"{steps_path}'s timestamps")
            else:
                pngs = _pngs(path)
                if len(pngs) != length:
                    raise UserError(f"{path}: {len(pngs)} PNG frames for {length} steps")
                images = [_read_png(p) for p in pngs]
                odd = next((p for p, im in zip(pngs, images) if im.shape != images[0].shape), None)
                if odd is not None:
                    raise UserError(f"{odd}: size {list(_read_png(odd).shape)} differs from {pngs[0].name}'s")
                data[camera] = np.stack(images)
        yield Episode(data, str(steps_path))
