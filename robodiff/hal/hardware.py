"""Hardware YAML (`hardware/<name>.yaml`): which joints, actuators, limits and cameras a robot has.

Loading validates the file up front so that a typo fails with the file and key named, before any
simulator or serial port is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robodiff.errors import UserError
from robodiff.features import JOINT_UNITS
from robodiff.hal.joint_units import JointUnits, parse_joint_units
from robodiff.hal.motors.bus import Motor
from robodiff.paths import resolve_yaml

# The simulation part of a hardware YAML: any YAML with a `model:` (MJCF) has it, whatever its
# driver, so one YAML describes an arm for every backend (simulation, kinematics, the physical
# driver). A physical driver also reads its own keys (`PHYSICAL_KEYS`). A YAML without a model
# (a driver this version lacks) is still loadable as a description, but cannot be connected.
SIM_KEYS = {"name", "driver", "model", "joints", "actuators", "limits", "physics", "cameras", "units",
            "kinematics", "teleop"}
PHYSICAL_KEYS = {"port", "id", "bus", "leader", "servo_settings"}
# What a physical camera entry may hold besides the simulated camera's keys (the `robot.cameras.
# <name>.<key>=` settings of a run; docs/deployment.md).
CAMERA_KEYS = {"camera", "width", "height", "index", "path", "fps", "max_age_ms"}


@dataclass(frozen=True)
class CameraSpec:
    camera: str  # name of the camera in the MJCF scene
    width: int
    height: int


@dataclass(frozen=True)
class KinematicsSpec:
    """What an arm's FK/IK controls: the tool `site`, with `joints` (those before the gripper);
    `gripper` is the joint that opens and closes."""

    site: str
    joints: tuple[str, ...]
    gripper: str


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    driver: str
    path: Path
    joints: tuple[str, ...] = ()
    actuators: tuple[str, ...] = ()
    # None for an arm whose limits are its MJCF ranges in `units`
    action_low: np.ndarray | None = field(default_factory=lambda: np.zeros(0))
    action_high: np.ndarray | None = field(default_factory=lambda: np.zeros(0))
    substeps_per_control: int | None = None
    cameras: dict[str, CameraSpec] = field(default_factory=dict)
    # An arm's state/action units (None: the joints' own, e.g. the pusher's table pixels), and
    # every convention its YAML maps.
    units: JointUnits | None = None
    unit_conventions: dict[str, JointUnits] = field(default_factory=dict)
    kinematics: KinematicsSpec | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path.parent / str(self.raw["model"])

    def with_units(self, convention: str) -> "HardwareSpec":
        """The same robot working in another of its unit conventions."""
        if convention not in self.unit_conventions:
            raise UserError(f"robot '{self.name}' ({self.path}) has no '{convention}' units "
                            f"(it maps: {', '.join(self.unit_conventions) or 'none'})")
        return replace(self, units=self.unit_conventions[convention])


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


def _joints(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """`joints:` is a list of names, or (an arm) a mapping from names to motor and unit entries."""
    value = _require(data, "joints", path)
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return tuple(str(k) for k in value)
    return _names(data, "joints", path)


def _units(data: dict[str, Any], path: Path) -> tuple[JointUnits | None, dict[str, JointUnits]]:
    if data.get("units") is None:
        return None, {}
    if not isinstance(data["joints"], dict):
        raise UserError(f"{path}: 'units' needs 'joints' to map each joint to its unit entries")
    conventions = {c: parse_joint_units(data["joints"], c, path) for c in JOINT_UNITS}
    default = str(data["units"])
    if default not in conventions:
        raise UserError(f"{path}: units '{default}' is not one of {', '.join(JOINT_UNITS)}")
    return conventions[default], conventions


def _kinematics(data: dict[str, Any], joints: tuple[str, ...], path: Path) -> KinematicsSpec | None:
    raw = data.get("kinematics")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"site", "joints", "gripper"} <= set(raw):
        raise UserError(f"{path}: 'kinematics' needs 'site', 'joints' and 'gripper'")
    chain = tuple(str(j) for j in raw["joints"])
    for joint in (*chain, str(raw["gripper"])):
        if joint not in joints:
            raise UserError(f"{path}: kinematics joint '{joint}' is not one of the joints ({', '.join(joints)})")
    return KinematicsSpec(str(raw["site"]), chain, str(raw["gripper"]))


def apply_settings(data: dict[str, Any], settings: dict[str, Any], path: Path, prefix: str = "robot") -> None:
    """A run's `robot.<key>=value` settings over the YAML: only keys the YAML has (and a camera's
    `CAMERA_KEYS`), so a misspelt key is an error naming it."""
    for key, value in settings.items():
        where = f"{prefix}.{key}"
        in_camera = prefix.startswith("robot.cameras.") and prefix.count(".") == 2
        if key not in data and not (in_camera and key in CAMERA_KEYS):
            known = sorted(set(data) | (CAMERA_KEYS if in_camera else set()))
            raise UserError(f"{where}: {path} has no such setting (known here: {', '.join(known)})")
        if isinstance(value, dict):
            if not isinstance(data[key], dict):
                raise UserError(f"{where}: {path} holds a single value there, not settings")
            apply_settings(data[key], value, path, where)
        else:
            data[key] = value


def load_hardware(name_or_path: str, settings: dict[str, Any] | None = None) -> HardwareSpec:
    """Parse and check `hardware/<name>.yaml` (or a path to one), with a run's settings over it."""
    path = resolve_yaml("hardware", name_or_path)
    data = read_yaml(path)
    apply_settings(data, settings or {}, path)
    name = str(data.get("name", path.stem))
    driver = str(_require(data, "driver", path))
    if driver != "mujoco" and "model" not in data:
        return HardwareSpec(name=name, driver=driver, path=path, raw=data)
    known = SIM_KEYS | (PHYSICAL_KEYS if driver != "mujoco" else set())
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    _require(data, "model", path)
    joints = _joints(data, path)
    actuators = _names(data, "actuators", path) if "actuators" in data else joints
    units, conventions = _units(data, path)
    limits = data.get("limits") or {}
    action = limits.get("action") if isinstance(limits, dict) else None
    if action is None and units is not None:
        low = high = None  # the MJCF's ranges, in the arm's units (the robot reads them from the model)
    elif not isinstance(action, dict) or "low" not in action or "high" not in action:
        raise UserError(f"{path}: 'limits.action' needs 'low' and 'high' lists")
    else:
        low = np.asarray(action["low"], dtype=np.float64)
        high = np.asarray(action["high"], dtype=np.float64)
        if low.shape != (len(actuators),) or high.shape != (len(actuators),) or np.any(low > high):
            raise UserError(f"{path}: 'limits.action' low/high must be {len(actuators)} numbers each, low <= high")
    physics = data.get("physics") or {}
    substeps = physics.get("substeps_per_control") if isinstance(physics, dict) else physics
    if substeps is not None and (isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1):
        raise UserError(f"{path}: 'physics.substeps_per_control' must be a positive whole number or null, "
                        f"got {substeps!r}")
    cameras = {}
    for feat, cam in (data.get("cameras") or {}).items():
        if not isinstance(cam, dict) or not {"camera", "width", "height"} <= set(cam):
            raise UserError(f"{path}: camera '{feat}' needs 'camera', 'width' and 'height'")
        if not set(cam) <= CAMERA_KEYS:
            raise UserError(f"{path}: camera '{feat}' has unknown key '{sorted(set(cam) - CAMERA_KEYS)[0]}' "
                            f"(known: {', '.join(sorted(CAMERA_KEYS))})")
        size = (cam["width"], cam["height"])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise UserError(f"{path}: camera '{feat}' width and height must be positive whole numbers, got {list(size)}")
        cameras[str(feat)] = CameraSpec(str(cam["camera"]), int(cam["width"]), int(cam["height"]))
    return HardwareSpec(name=name, driver=driver, path=path, joints=joints, actuators=actuators,
                        action_low=low, action_high=high,
                        substeps_per_control=int(substeps) if substeps else None,
                        cameras=cameras, units=units, unit_conventions=conventions,
                        kinematics=_kinematics(data, joints, path), raw=data)


def motors_of(hardware: HardwareSpec) -> dict[str, Motor]:
    """Each joint's servo (`motor_id` and `model` under `joints:`), by joint name: what a driver
    on a servo bus and the bus emulator address."""
    joints = hardware.raw.get("joints")
    out = {}
    for name in hardware.joints:
        entry = joints.get(name) if isinstance(joints, dict) else None
        if not isinstance(entry, dict) or "motor_id" not in entry or "model" not in entry:
            raise UserError(f"{hardware.path}: joint '{name}' needs 'motor_id' and 'model' for a servo bus")
        out[name] = Motor(int(entry["motor_id"]), str(entry["model"]))
    return out
