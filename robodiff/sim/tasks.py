"""Task YAML (`tasks/<name>.yaml`) -> `TaskSpec`.

Three kinds of task:
- `mujoco` (default): an MJCF scene, a robot (hardware YAML) and runtime logic in robodiff/sim
  (`logic:` names it: reset distribution, score, success, expert).
- `gym`: any installed gymnasium env (`gym_id`), its observation keys mapped to ours with
  `observation_map: {gym_key: our_key}` and its action fed from our `action_key`.
- `physical`: work on a physical robot, with no simulator: the episode's features (checked
  against the robot's hardware YAML), its rate and its longest length (`max_steps`); a person
  ends an episode sooner (collect), nothing scores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.hardware import load_hardware, read_yaml
from robodiff.paths import resolve_yaml
from robodiff.sim.gym_tasks import gym_task_features
from robodiff.sim.logic import TaskLogic, check_logic_config
from robodiff.sim.pick_place import PickPlace
from robodiff.sim.push_block import PushBlock
from robodiff.sim.push_t import PushT
from robodiff.sim.reach import Reach

# logic name -> the class implementing reset/observe/evaluate for a MuJoCo task
LOGIC: dict[str, type[TaskLogic]] = {"push_t": PushT, "push_block": PushBlock, "pick_place": PickPlace,
                                   "reach": Reach}

COMMON_KEYS = {"name", "kind", "fps", "max_steps", "features", "policy_inputs"}
# A MuJoCo task also holds the blocks its logic declares (`TaskLogic.CONFIG`).
KIND_KEYS = {
    "mujoco": COMMON_KEYS | {"logic", "scene", "robot"},
    "gym": COMMON_KEYS | {"gym_id", "gym_kwargs", "observation_map", "action_key", "success_key"},
    "physical": COMMON_KEYS | {"robot"},
}
REQUIRED = {
    "mujoco": ("name", "fps", "max_steps", "scene", "robot", "features", "logic"),
    "gym": ("name", "fps", "max_steps", "gym_id", "observation_map"),
    "physical": ("name", "fps", "max_steps", "robot", "features"),
}
TIMESTAMP = Feature("timestamp", (), "float64")


@dataclass
class TaskSpec:
    name: str
    fps: float
    max_steps: int
    features: Features  # observations + action + timestamp
    observation_keys: list[str]  # every image/lowdim observation (recorded)
    robot: str | None
    scene_path: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    kind: str = "mujoco"
    path: Path | None = None
    # What a policy trained for this task observes by default: the YAML's `policy_inputs`, which
    # leaves out privileged observations (push_t's full state beside its image), else all.
    policy_inputs: list[str] = field(default_factory=list)

    @property
    def action_key(self) -> str:
        return next(k for k, f in self.features.items() if f.kind == "action")


def _features(raw: Any, path: Path) -> Features:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: 'features' must map feature names to {{kind, shape, dtype}}")
    out: Features = {}
    for name, d in raw.items():
        if not isinstance(d, dict) or "kind" not in d or "shape" not in d:
            raise UserError(f"{path}: feature '{name}' needs 'kind' and 'shape'")
        try:
            out[str(name)] = Feature.from_dict(d)
        except UserError as exc:
            raise UserError(f"{path}: feature '{name}': {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: feature '{name}': {exc}") from None
    if sum(f.kind == "action" for f in out.values()) != 1:
        raise UserError(f"{path}: 'features' must hold exactly one feature of kind 'action'")
    return out


def _check_against_robot(features: Features, robot: str, path: Path) -> None:
    hw = load_hardware(robot)
    for name, f in features.items():
        if f.kind == "image":
            if name not in hw.cameras:
                raise UserError(f"{path}: image feature '{name}' is not a camera of robot '{robot}' "
                                f"(cameras: {', '.join(hw.cameras) or 'none'})")
            cam = hw.cameras[name]
            if f.shape != (cam.height, cam.width, 3):
                raise UserError(f"{path}: image feature '{name}' has shape {list(f.shape)} but robot "
                                f"'{robot}' renders {[cam.height, cam.width, 3]}")
        elif f.kind == "action" and f.shape != (len(hw.actuators),):
            raise UserError(f"{path}: action feature '{name}' has shape {list(f.shape)} but robot "
                            f"'{robot}' has {len(hw.actuators)} actuators")
        if f.kind == "action" and hw.unit_conventions and f.units is None:
            raise UserError(f"{path}: action feature '{name}' needs units (robot '{robot}' works in "
                            f"{' or '.join(hw.unit_conventions)})")
        if f.units is not None and f.kind in ("action", "lowdim") and name in ("action", "state") \
                and f.units not in hw.unit_conventions:
            raise UserError(f"{path}: feature '{name}' is in units '{f.units}', which robot '{robot}' "
                            f"does not map (it maps: {', '.join(hw.unit_conventions) or 'none'})")


def load_task(name_or_path: str | Path) -> TaskSpec:
    path = resolve_yaml("tasks", str(name_or_path))
    cfg = read_yaml(path)
    kind = cfg.get("kind", "mujoco")
    if kind not in KIND_KEYS:
        raise UserError(f"{path}: unknown task kind '{kind}' (known: {', '.join(KIND_KEYS)})")
    for key in REQUIRED[kind]:
        if cfg.get(key) is None:
            raise UserError(f"{path}: missing key '{key}'")
    logic = LOGIC.get(str(cfg["logic"])) if kind == "mujoco" else None
    if kind == "mujoco" and logic is None:
        raise UserError(f"{path}: unknown logic '{cfg['logic']}' (known: {', '.join(LOGIC)})")
    known = KIND_KEYS[kind] | set(logic.CONFIG if logic is not None else ())
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' for a {kind} task "
                        f"(known: {', '.join(sorted(known))})")
    if logic is not None:
        check_logic_config(cfg, logic.CONFIG, path)
    fps, max_steps = cfg["fps"], cfg["max_steps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise UserError(f"{path}: 'fps' must be a positive number of control steps per second, got {fps!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UserError(f"{path}: 'max_steps' must be a positive whole number, got {max_steps!r}")
    fps = float(fps)
    scene = None
    if kind == "gym":
        features = gym_task_features(cfg, path)
        robot = None
    else:
        if kind == "mujoco":
            scene = (path.parent / str(cfg["scene"])).resolve()
            if not scene.is_file():
                raise UserError(f"{path}: scene MJCF '{cfg['scene']}' not found ({scene})")
        robot = str(cfg["robot"])
        features = _features(cfg["features"], path)
        _check_against_robot(features, robot, path)
    features = {**features, "timestamp": TIMESTAMP}
    obs_keys = [k for k, f in features.items() if f.kind in ("image", "lowdim")]
    return TaskSpec(name=str(cfg["name"]), fps=fps, max_steps=max_steps, features=features,
                    observation_keys=obs_keys, robot=robot, scene_path=scene, config=cfg,
                    kind=kind, path=path, policy_inputs=_policy_inputs(cfg, obs_keys, path))


def _policy_inputs(cfg: dict[str, Any], obs_keys: list[str], path: Path) -> list[str]:
    raw = cfg.get("policy_inputs")
    if raw is None:
        return list(obs_keys)
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: 'policy_inputs' must be a non-empty list of observation names")
    for key in raw:
        if key not in obs_keys:
            raise UserError(f"{path}: policy_inputs entry '{key}' is not an image or low-dim "
                            f"observation (observations: {', '.join(obs_keys)})")
    return [str(k) for k in raw]


def as_task(task: str | Path | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else load_task(task)
