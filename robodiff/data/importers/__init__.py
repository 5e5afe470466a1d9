"""Import other datasets into an episode store: `import_dataset(src, dest, fmt="auto")`.

Each format module has `read(src) -> Source` (features up front, episodes streamed); one writer
(`source.write_store`) turns any Source into a store atomically. Formats: docs/formats.md.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodiff.data.importers import demo_folder, dp_real, dp_zarr, lerobot, robomimic
from robodiff.data.importers.source import Source, check_dest, relabel, write_store
from robodiff.errors import UserError

READERS: dict[str, Callable[[Path], Source]] = {
    "dp_zarr": dp_zarr.read,
    "dp_real": dp_real.read,
    "demo_folder": demo_folder.read,
    "robomimic": robomimic.read,
    "lerobot": lerobot.read,
}
FORMATS = ("auto", *READERS)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What reading a malformed foreign file raises (parsers index, convert and divide what they find).
MALFORMED = (AttributeError, IndexError, KeyError, TypeError, ValueError, ZeroDivisionError)


def _is_zarr_group(path: Path) -> bool:
    return (path / ".zgroup").is_file() or (path / "zarr.json").is_file()


def detect_format(src: str | os.PathLike) -> str:
    """The format name of SRC, judged from its layout (not its name alone)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if src.is_file():
        if zipfile.is_zipfile(src) and src.name.endswith(".zip"):
            return "dp_zarr"
        with open(src, "rb") as f:
            if f.read(8) == HDF5_SIGNATURE:
                return "robomimic"
    elif (src / "meta" / "info.json").is_file():
        return "lerobot"
    elif (src / "replay_buffer.zarr").is_dir() and (src / "videos").is_dir():
        return "dp_real"
    elif _is_zarr_group(src) and (src / "data").is_dir() and (src / "meta").is_dir():
        return "dp_zarr"
    elif any((p / "steps.npz").is_file() for p in demo_folder.episode_dirs(src)):
        return "demo_folder"
    raise UserError(f"{src}: cannot tell its format (not a Zarr store, .zarr.zip, DP real-robot folder, "
                    f"demo folder, robomimic HDF5 or LeRobot folder); pass format=<name>")


def import_dataset(src: str | os.PathLike, dest: str | os.PathLike, fmt: str = "auto",
                   units: str | None = None, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Import SRC into a new episode store at DEST. Returns {dest, format, episodes, frames, features}.
    `units`: the convention an arm's joint features (state, action) are in; `rename`: old -> new
    feature names."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    check_dest(Path(dest))
    if fmt == "auto":
        fmt = detect_format(src)
    try:
        source = READERS[fmt](src)
        try:
            source = relabel(source, units, rename or {})
        except UserError:
            source.episodes.close()
            raise
        return write_store(source, dest, fmt)
    except MALFORMED as exc:
        # Someone else's files can be malformed in more ways than any reader checks one by one: the
        # reader's first complaint, as one line naming the dataset, not a traceback.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{src}: malformed {fmt} dataset ({type(exc).__name__}: {first})") from None
