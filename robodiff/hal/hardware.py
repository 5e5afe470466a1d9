"""Hardware YAML (`hardware/<name>.yaml`): which joints, actuators, limits and cameras a robot has.

Loading validates the file up front so that a typo fails with the file and key named, before any
simulator or serial port is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robodiff.errors import UserError
from robodiff.paths import resolve_yaml

# Drivers that exist in this version; a YAML may name another (e.g. `feetech` for the SO-101) and
# is still loadable as a description, but cannot be connected yet.

MUJOCO_KEYS = {"name", "driver", "model", "joints", "actuators", "limits", "physics", "cameras"}


@dataclass(frozen=True)
class CameraSpec:
    camera: str  # name of the camera in the MJCF scene
    width: int
    height: int


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    driver: str
    path: Path
    joints: tuple[str, ...] = ()
    actuators: tuple[str, ...] = ()
    action_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    action_high: np.ndarray = field(default_factory=lambda: np.zeros(0))
    substeps_per_control: int | None = None
    cameras: dict[str, CameraSpec] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected YAML)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _require(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data or data[key] is None:
        raise UserError(f"{path}: missing key '{key}'")
    return data[key]


def _names(data: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = _require(data, key, path)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{path}: '{key}' must be a non-empty list of names")
    return tuple(value)


def load_hardware(name_or_path: str) -> HardwareSpec:
    """Parse and check `hardware/<name>.yaml` (or a path to one)."""
    path = resolve_yaml("hardware", name_or_path)
    data = read_yaml(path)
    name = str(data.get("name", path.stem))
    driver = str(_require(data, "driver", path))
    if driver != "mujoco":
        return HardwareSpec(name=name, driver=driver, path=path, raw=data)
    unknown = sorted(set(data) - MUJOCO_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(MUJOCO_KEYS))})")
    _require(data, "model", path)
    joints = _names(data, "joints", path)
    actuators = _names(data, "actuators", path)
    limits = _require(data, "limits", path)
    action = limits.get("action") if isinstance(limits, dict) else None
    if not isinstance(action, dict) or "low" not in action or "high" not in action:
        raise UserError(f"{path}: 'limits.action' needs 'low' and 'high' lists")
    low = np.asarray(action["low"], dtype=np.float64)
    high = np.asarray(action["high"], dtype=np.float64)
    if low.shape != (len(actuators),) or high.shape != (len(actuators),) or np.any(low > high):
        raise UserError(f"{path}: 'limits.action' low/high must be {len(actuators)} numbers each, low <= high")
    substeps = (data.get("physics") or {}).get("substeps_per_control")
    cameras = {}
    for feat, cam in (data.get("cameras") or {}).items():
        if not isinstance(cam, dict) or not {"camera", "width", "height"} <= set(cam):
            raise UserError(f"{path}: camera '{feat}' needs 'camera', 'width' and 'height'")
        cameras[str(feat)] = CameraSpec(str(cam["camera"]), int(cam["width"]), int(cam["height"]))
    return HardwareSpec(name=name, driver=driver, path=path, joints=joints, actuators=actuators,
                        action_low=low, action_high=high,
                        substeps_per_control=int(substeps) if substeps else None,
                        cameras=cameras, raw=data)
