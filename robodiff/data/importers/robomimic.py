"""robomimic HDF5 files: `data/demo_<n>/obs/<key>` and `data/demo_<n>/actions`, read with h5py.

`<camera>_image` observations become image features named `<camera>`; other observations keep
their names; `actions` becomes `action`; a `timestamp` is generated from the control rate in
`data.attrs["env_args"]` (robosuite's default, 20 Hz, when it is absent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from pathlib import Path

import h5py
import numpy as np

from robodiff.data.importers.source import Episode, Source, lowdim
from robodiff.errors import UserError
from robodiff.features import Feature, Features

DEFAULT_FPS = 20.0
IMAGE_SUFFIX = "_image"


def read(src: Path) -> Source:
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise UserError(f"{src}: not a readable HDF5 file ({exc})") from None
    try:
        demos = _demo_names(f, src)
        features = _features(f[f"data/{demos[0]}"], src)
        fps = _control_rate(f["data"], src)
    except BaseException:
        f.close()
        raise
    return Source(origin=str(src), features=features, episodes=_episodes(f, src, demos, fps),
                  total=len(demos), fps=fps)


def _demo_names(f: h5py.File, src: Path) -> list[str]:
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise UserError(f"{src}: no 'data' group (expected robomimic layout data/demo_<n>/...)")
    demos = [name for name in f["data"] if re.fullmatch(r"demo_\d+", name)]
    if not demos:
        raise UserError(f"{src}: 'data' has no demo_<n> groups")
    return sorted(demos, key=lambda name: int(name.split("_")[1]))


def feature_name(obs_key: str) -> str:
    return obs_key[: -len(IMAGE_SUFFIX)] if obs_key.endswith(IMAGE_SUFFIX) else obs_key


def _features(demo: h5py.Group, src: Path) -> Features:
    actions, obs = _arrays(demo, src)
    features: Features = {"action": lowdim(actions.shape[1:], "action")}
    for key, ds in obs.items():
        name = feature_name(key)
        if name in features:
            raise UserError(f"{src}: {demo.name}/obs/{key} clashes with another feature named '{name}'")
        if key.endswith(IMAGE_SUFFIX):
            features[name] = Feature("image", ds.shape[1:], "uint8")
        else:
            features[name] = lowdim(ds.shape[1:])
    features["timestamp"] = lowdim((), "timestamp")
    return features


def _arrays(demo: h5py.Group, src: Path) -> tuple[h5py.Dataset, dict[str, h5py.Dataset]]:
    if not isinstance(demo.get("actions"), h5py.Dataset):
        raise UserError(f"{src}: {demo.name}/actions missing (wrong HDF5 layout for robomimic)")
    if not isinstance(demo.get("obs"), h5py.Group):
        raise UserError(f"{src}: {demo.name}/obs group missing (wrong HDF5 layout for robomimic)")
    obs = {k: v for k, v in demo["obs"].items() if isinstance(v, h5py.Dataset)}
    return demo["actions"], dict(sorted(obs.items()))


def _control_rate(data: h5py.Group, src: Path) -> float:
    raw = data.attrs.get("env_args")
    if raw is None:
        return DEFAULT_FPS
    try:
        rate = json.loads(raw).get("env_kwargs", {}).get("control_freq", DEFAULT_FPS)
    except (ValueError, AttributeError) as exc:
        raise UserError(f"{src}: data.attrs['env_args'] is not valid JSON ({exc})") from None
    return float(rate)


def _episodes(f: h5py.File, src: Path, demos: list[str], fps: float) -> Generator[Episode, None, None]:
    try:
        for name in demos:
            demo = f[f"data/{name}"]
            actions, obs = _arrays(demo, src)
            data = {"action": actions[()]}
            for key, ds in obs.items():
                data[feature_name(key)] = ds[()]
            data["timestamp"] = np.arange(len(actions), dtype=np.float64) / fps
            yield Episode(data, f"{src} {demo.name}")
    finally:
        f.close()
