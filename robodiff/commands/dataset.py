"""`robodiff dataset info|validate|view|import`: inspect, check, watch and import episode stores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.data.importers import import_dataset
from robodiff.data.store import EpisodeStore
from robodiff.data.integrity import TAIL, check_store, require_valid, validate_store
from robodiff.data.video import write_video
from robodiff.errors import UserError

HELP = """
usage: robodiff dataset info PATH [--json]
       robodiff dataset validate PATH [--repair] [--json]
       robodiff dataset view PATH episode=K [out=FILE.mp4] [--json]
       robodiff dataset import SRC DEST [format=auto] [units=degrees|range100] [rename=OLD:NEW,...] [--json]

  info      episodes, frames, fps and features of a store (directory or .zarr.zip)
  validate  uncommitted tail, broken meta/episode_ends, unequal lengths, missing action,
            NaN/Inf in low-dim data, wrong dtypes or shapes, missing or corrupt chunks;
            exit 0 iff valid. --repair truncates an uncommitted tail (nothing else is ever
            changed; it refuses when the commit record itself is damaged)
  view      an mp4 of one episode: camera frames side by side, action/state traces beside them
            with a cursor at the current step (out defaults to <store>_episode<K>.mp4)
  import    convert SRC into a new store at DEST; format: auto, dp_zarr, dp_real, demo_folder,
            robomimic, lerobot (see docs/formats.md). units: the convention an arm's state and
            action are in (required for LeRobot SO-101 data, whose metadata does not say);
            rename: feature names to change, e.g. rename=top:front,laptop:wrist for cameras
"""

FLAGS = ("--repair",)
SUBCOMMANDS = ("info", "validate", "view", "import")
TRACE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _options(sub: str, overrides: list[str], allowed: dict[str, str | None]) -> dict[str, str | None]:
    options = dict(allowed)
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in allowed:
            raise UserError(f"unknown key '{key}' for `robodiff dataset {sub}` "
                            f"(keys: {', '.join(allowed) or 'none'})")
        options[key] = value
    return options


def _positionals(sub: str, args: list[str], names: list[str]) -> list[str]:
    if len(args) != len(names):
        raise UserError(f"`robodiff dataset {sub}` takes {' '.join(names)} (got {len(args)} arguments)")
    return args


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    if not args or args[0] not in SUBCOMMANDS:
        raise UserError(f"choose one of: {', '.join(SUBCOMMANDS)} (e.g. `robodiff dataset info PATH`)")
    sub, rest = args[0], args[1:]
    if "--repair" in flags and sub != "validate":
        raise UserError("--repair only applies to `robodiff dataset validate`")
    if sub == "info":
        (path,) = _positionals(sub, rest, ["PATH"])
        _options(sub, overrides, {})
        return info(path)
    if sub == "validate":
        (path,) = _positionals(sub, rest, ["PATH"])
        _options(sub, overrides, {})
        return validate(path, repair="--repair" in flags)
    if sub == "view":
        (path,) = _positionals(sub, rest, ["PATH"])
        opts = _options(sub, overrides, {"episode": None, "out": None})
        if opts["episode"] is None:
            raise UserError("`robodiff dataset view` needs episode=K")
        try:
            episode = int(opts["episode"])
        except ValueError:
            raise UserError(f"episode={opts['episode']}: not an integer") from None
        store_path = Path(path.rstrip("/"))
        # Beside the store, named after all of it: v.1.zarr and v.2.zarr must not share a video.
        out = opts["out"] or str(store_path.with_name(f"{store_path.name}_episode{episode}.mp4"))
        if Path(out).suffix.lower() != ".mp4":
            raise UserError(f"out={out}: the episode is written as an mp4 video; give a path ending in .mp4")
        return view(path, episode, out)
    src, dest = _positionals(sub, rest, ["SRC", "DEST"])
    opts = _options(sub, overrides, {"format": "auto", "units": None, "rename": None})
    result = import_dataset(src, dest, opts["format"] or "auto", units=opts["units"],
                            rename=_renames(opts["rename"]))
    print(f"imported {src} -> {dest}", file=sys.stderr)
    return result


def _renames(value: str | None) -> dict[str, str]:
    """`rename=OLD:NEW,OLD2:NEW2` -> {OLD: NEW, OLD2: NEW2}."""
    pairs = [p for p in (value or "").strip("[]{}").split(",") if p.strip()]
    out = {}
    for pair in pairs:
        old, sep, new = (x.strip() for x in pair.partition(":"))
        if not sep or not old or not new:
            raise UserError(f"rename={value}: expected OLD:NEW pairs separated by commas (e.g. rename=top:front)")
        out[old] = new
    return out


def info(path: str) -> dict[str, Any]:
    with EpisodeStore.open(path) as store:
        result = store.info()
        # The cheap part of the check (no chunk is decoded): enough to say whether to validate.
        result["problems"] = [p.message for p in check_store(store) if p.kind != TAIL]
    print(f"{result['path']}: {result['episodes']} episodes, {result['frames']} frames, "
          f"fps {result['fps']}, zarr format {result['zarr_format']}")
    if result["episodes"]:
        print(f"episode length {result['episode_length_min']}..{result['episode_length_max']}")
    for name, feat in result["features"].items():
        print(f"  {name:<16} {feat['kind']:<9} {feat['dtype']:<8} {feat['shape']}")
    if result["uncommitted_tail"]:
        print(f"uncommitted tail: {result['uncommitted_tail']} (run `robodiff dataset validate "
              f"{path} --repair`)")
    for problem in result["problems"]:
        print(f"  problem: {problem}")
    if result["problems"]:
        print(f"run `robodiff dataset validate {path}` for the full check")
    return result


def validate(path: str, repair: bool) -> dict[str, Any]:
    report = validate_store(path, repair=repair)
    print(f"{path}: {'valid' if report['valid'] else 'INVALID'}, {report['episodes']} episodes")
    for problem in report["problems"]:
        print(f"  - {problem}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    return {**report, "_exit_code": 0 if report["valid"] else 1}


def view(path: str, episode: int, out: str) -> dict[str, Any]:
    with EpisodeStore.open(path) as store:
        require_valid(store, store.keys)
        ep = store.read_episode(episode)
        fps = float(store.fps or 10)
        kinds = {k: f.kind for k, f in store.features.items()}
    cameras = [k for k, kind in kinds.items() if kind == "image"]
    traces = [k for k, kind in kinds.items() if kind == "action"] + \
             [k for k, kind in kinds.items() if kind == "lowdim" and ep[k].ndim <= 2]
    if not cameras and not traces:
        raise UserError(f"{path}: nothing to draw (no image, action or low-dim features)")
    frames = render_episode(ep, cameras, traces)
    write_video(out, frames, fps)
    print(f"wrote {out}: episode {episode}, {len(frames)} frames at {fps:g} fps", file=sys.stderr)
    return {"out": str(out), "episode": episode, "frames": int(len(frames)), "fps": fps}


def render_episode(ep: dict[str, np.ndarray], cameras: list[str], traces: list[str],
                   height: int = 240, plot_width: int = 360) -> np.ndarray:
    """(T, H, W, 3) uint8: cameras scaled to `height` side by side, trace panel on the right."""
    import cv2

    length = len(next(iter(ep.values())))
    panel = _trace_panel(ep, traces, height, plot_width, length) if traces else None
    frames = []
    for t in range(length):
        tiles = []
        for cam in cameras:
            img = ep[cam][t]
            img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
            w = max(1, round(img.shape[1] * height / img.shape[0]))
            tiles.append(cv2.resize(img, (w, height), interpolation=cv2.INTER_NEAREST))
        if panel is not None:
            canvas = panel.copy()
            x = _x_at(t, length, plot_width)
            cv2.line(canvas, (x, 0), (x, height - 1), (0, 0, 0), 1)
            cv2.putText(canvas, f"t={t}", (plot_width - 70, height - 6), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(canvas)
        frames.append(np.concatenate(tiles, axis=1))
    return np.stack(frames)


def _x_at(t: int, length: int, width: int) -> int:
    return int(round(4 + (width - 8) * (t / max(1, length - 1))))


def _trace_panel(ep: dict[str, np.ndarray], traces: list[str], height: int, width: int,
                 length: int) -> np.ndarray:
    """The static part: one band per key, each dimension a polyline scaled to its band."""
    import cv2

    panel = np.full((height, width, 3), 255, np.uint8)
    band = height // len(traces)
    xs = np.array([_x_at(t, length, width) for t in range(length)])
    for b, key in enumerate(traces):
        top = b * band
        values = ep[key].reshape(length, -1).astype(np.float64)
        values[~np.isfinite(values)] = np.nan  # drawn as gaps' neighbours, without numpy's overflow warnings
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        if b:
            cv2.line(panel, (0, top), (width - 1, top), (200, 200, 200), 1)
        for d in range(values.shape[1]):
            ys = top + 14 + (band - 20) * (1.0 - (np.nan_to_num(values[:, d], nan=lo) - lo) / span)
            pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
            cv2.polylines(panel, [pts], False, TRACE_COLOURS[d % len(TRACE_COLOURS)], 1, cv2.LINE_AA)
        cv2.putText(panel, key, (4, top + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return panel
