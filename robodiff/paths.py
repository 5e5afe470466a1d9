"""Where the declarative folders (tasks/, hardware/, datasets/) are, in a checkout or a wheel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robodiff.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"


def asset_dir(kind: str) -> Path:
    """`tasks`, `hardware` or `datasets`; packaged under robodiff/assets (symlinks in a checkout)."""
    return ASSETS / kind


def resolve_yaml(kind: str, name: str) -> Path:
    """A name from `<kind>/<name>.yaml`, or a path to a YAML file the user wrote."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    path = asset_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in asset_dir(kind).glob("*.yaml"))
        raise UserError(f"unknown {kind[:-1] if kind.endswith('s') else kind} '{name}' "
                        f"(known: {', '.join(known) or 'none'}; or pass a path to a .yaml file)")
    return path


def calibration_dir() -> Path:
    """Where arm calibrations are kept, one JSON per arm id: `$ROBODIFF_CALIBRATION_DIR`, else
    `$XDG_CONFIG_HOME/robodiff/calibration` (`~/.config/robodiff/calibration`): the user's, never
    inside the installed package."""
    if os.environ.get("ROBODIFF_CALIBRATION_DIR"):
        return Path(os.environ["ROBODIFF_CALIBRATION_DIR"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "robodiff" / "calibration"


@contextmanager
def replaced(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it still work);
    it replaces `path` in one rename when the block completes, and is removed when it fails, so
    an earlier file at `path` is never left half-overwritten."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # the path the user named, not our temporary one
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        if tmp.exists() and tmp.is_file():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with replaced(path) as tmp:
        tmp.write_text(text)
