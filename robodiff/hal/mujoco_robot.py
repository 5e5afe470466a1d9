"""A `Robot` simulated by MuJoCo: a scene MJCF plus a hardware YAML (joints, actuators, limits, cameras).

Physics runs at the MJCF timestep with several substeps per control period. Two pacings:
- `realtime=False` (evaluation, scripted collection): each `send_action` advances exactly one control
  period, as fast as the CPU allows; timestamps are simulation seconds.
- `realtime=True` (a person or a real-time control loop): simulated time follows the wall clock.
  Every call first advances physics to "now" under the previous command, so a slow caller sees the
  robot keep moving exactly as hardware would; timestamps are on the `time.monotonic()` clock.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robodiff.hal.gl import select_headless_gl  # noqa: E402

select_headless_gl()
import mujoco  # noqa: E402

from robodiff.errors import UserError  # noqa: E402
from robodiff.features import Feature, Features  # noqa: E402
from robodiff.hal.base import Robot  # noqa: E402
from robodiff.hal.hardware import HardwareSpec  # noqa: E402
from robodiff.hal.kinematics import ArmKinematics  # noqa: E402
from robodiff.hal.mujoco_camera import MujocoCamera  # noqa: E402

Observe = Callable[[mujoco.MjModel, mujoco.MjData], dict[str, np.ndarray]]
Initialize = Callable[[mujoco.MjModel, mujoco.MjData], None]

# A realtime caller that stalls longer than this does not make physics replay the whole gap in one
# call (which would stall it further); the simulation skips ahead instead.
MAX_CATCH_UP_S = 1.0


def load_model(scene: Path) -> mujoco.MjModel:
    if not Path(scene).is_file():
        raise UserError(f"MJCF scene '{scene}' not found")
    try:
        return mujoco.MjModel.from_xml_path(str(scene))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid MJCF"
        raise UserError(f"{scene}: {first}") from None


def _ids(model: mujoco.MjModel, kind: mujoco.mjtObj, names: tuple[str, ...], what: str,
         hardware: HardwareSpec) -> np.ndarray:
    ids = []
    for n in names:
        i = mujoco.mj_name2id(model, kind, n)
        if i < 0:
            raise UserError(f"{hardware.path}: {what} '{n}' is not in the MJCF scene")
        ids.append(i)
    return np.asarray(ids, dtype=np.int64)


class MujocoRobot(Robot):
    def __init__(self, scene: Path | mujoco.MjModel, hardware: HardwareSpec, *, fps: float = 10.0,
                 realtime: bool = False, cameras: bool = True,
                 observation_features: Features | None = None, observe: Observe | None = None,
                 initialize: Initialize | None = None, name: str | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        """`observation_features`/`observe` replace the default observation (joint positions as
        `state`) with a task's; `initialize` sets the state at connect (e.g. a task's reset).
        `scene` is an MJCF path or an already loaded model. `now`: the wall clock a real-time
        robot follows (injectable, so tests can move it)."""
        super().__init__()
        self._now = now
        self.name = name or f"mujoco robot '{hardware.name}'"
        self.hardware = hardware
        self.model = scene if isinstance(scene, mujoco.MjModel) else load_model(scene)
        self.data = mujoco.MjData(self.model)
        self.fps = float(fps)
        self.realtime = realtime
        self._lock = threading.RLock()
        self._initialize = initialize
        self._observe = observe
        dt = self.model.opt.timestep
        self.substeps = hardware.substeps_per_control or max(1, round(1.0 / (self.fps * dt)))
        self._joint_qpos = self.model.jnt_qposadr[_ids(self.model, mujoco.mjtObj.mjOBJ_JOINT,
                                                       hardware.joints, "joint", hardware)]
        self._actuators = _ids(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, hardware.actuators,
                               "actuator", hardware)
        # position actuators hold where their joint is at reset instead of pulling towards 0
        act_joints = self.model.actuator_trnid[self._actuators, 0]
        self._actuated_qpos = self.model.jnt_qposadr[act_joints]
        # An arm works in its units (state and action); the MJCF's controls are radians.
        self.units = hardware.units
        if hardware.action_low is None:
            ends = self._to_units(self.model.actuator_ctrlrange[self._actuators].T)
            self._low, self._high = ends.min(axis=0), ends.max(axis=0)
        else:
            self._low, self._high = hardware.action_low, hardware.action_high
        self.kinematics = ArmKinematics(hardware) if hardware.kinematics is not None else None
        self._command = np.zeros(len(self._actuators))  # the last command, in the robot's units
        self._t0 = 0.0
        self._video_cameras: dict[tuple[str, int], MujocoCamera] = {}
        self.cameras: dict[str, MujocoCamera] = {}
        if cameras:
            for feat, cam in hardware.cameras.items():
                self.cameras[feat] = MujocoCamera(self.model, self._camera_source, cam.camera,
                                                  cam.width, cam.height, name=f"{self.name} camera '{feat}'")
        self._obs_features = self._build_observation_features(observation_features)

    # ---- features -------------------------------------------------------------------------------
    def _build_observation_features(self, given: Features | None) -> Features:
        feats: Features = {k: Feature("image", c.shape, "uint8") for k, c in self.cameras.items()}
        if given is None:
            feats["state"] = Feature("lowdim", (len(self._joint_qpos),), "float32", names=self.hardware.joints,
                                     units=self._convention)
        else:
            feats.update({k: f for k, f in given.items() if f.kind == "lowdim"})
        feats["timestamp"] = Feature("timestamp", (), "float64")
        return feats

    @property
    def observation_features(self) -> Features:
        return dict(self._obs_features)

    @property
    def action_features(self) -> Features:
        return {"action": Feature("action", (len(self._actuators),), "float32", names=self.hardware.actuators,
                                  units=self._convention)}

    @property
    def _convention(self) -> str | None:
        return self.units.convention if self.units is not None else None

    def _to_units(self, radians: np.ndarray) -> np.ndarray:
        return radians if self.units is None else self.units.to_units(radians)

    def _to_ctrl(self, command: np.ndarray) -> np.ndarray:
        return command if self.units is None else self.units.to_radians(command)

    def joint_state(self) -> np.ndarray:
        """The joints' positions, in the robot's units (an arm's `state`)."""
        return self._to_units(self.data.qpos[self._joint_qpos]).astype(np.float32)

    @property
    def action_limits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`limits.action` of the hardware YAML, what `send_action` clamps to (copies: callers
        must not be able to widen the robot's own clamp)."""
        return {"action": (self._low.copy(), self._high.copy())}

    # ---- lifecycle ------------------------------------------------------------------------------
    def _connect(self) -> None:
        for cam in self.cameras.values():
            cam.connect()
        self._reset_state(self._initialize)

    def _disconnect(self) -> None:
        for cam in self.cameras.values():
            if cam.is_connected:
                cam.disconnect()

    def reset(self, initialize: Initialize | None = None) -> None:
        """Back to the scene's initial state, then `initialize` (default: the one given at init)."""
        self._require_connected()
        self._reset_state(initialize or self._initialize)

    def _reset_state(self, initialize: Initialize | None) -> None:
        with self._lock:
            mujoco.mj_resetData(self.model, self.data)
            if initialize is not None:
                initialize(self.model, self.data)
            self.data.ctrl[self._actuators] = self._to_ctrl(self._actuated_positions())
            mujoco.mj_forward(self.model, self.data)
            self._t0 = self._now()

    # ---- time -----------------------------------------------------------------------------------
    @property
    def timestamp(self) -> float:
        return (self._t0 + self.data.time) if self.realtime else float(self.data.time)

    def _catch_up(self) -> None:
        """Realtime pacing: advance physics to the wall clock under the current command."""
        lag = self._now() - self._t0 - self.data.time
        if lag > MAX_CATCH_UP_S:
            self._t0 += lag - MAX_CATCH_UP_S
            lag = MAX_CATCH_UP_S
        n = math.floor(lag / self.model.opt.timestep)
        if n > 0:
            mujoco.mj_step(self.model, self.data, nstep=n)

    def _camera_source(self) -> tuple[mujoco.MjData, float, float]:
        with self._lock:
            if not self.realtime:
                return self.data, self.timestamp, self.timestamp
            self._catch_up()
            return self.data, self.timestamp, self._now()

    # ---- I/O ------------------------------------------------------------------------------------
    def _get_observation(self) -> dict[str, Any]:
        with self._lock:
            if self.realtime:
                self._catch_up()
            obs: dict[str, Any] = {k: cam.read_latest()[0] for k, cam in self.cameras.items()}
            extra = {} if self._observe is None else self._observe(self.model, self.data)
            for k, v in extra.items():
                obs[k] = np.asarray(v, dtype=self._obs_features[k].dtype)
            if "state" in self._obs_features and "state" not in extra:  # the joints, unless a task says otherwise
                obs["state"] = self.joint_state()
            obs["timestamp"] = self.timestamp
            return obs

    def _send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "action" not in action:
            raise UserError(f"{self.name}: send_action needs an 'action' entry, got {sorted(action)}")
        a = np.asarray(action["action"], dtype=np.float64).reshape(-1)
        if a.shape != self._low.shape:
            raise UserError(f"{self.name}: action has {a.size} values, expected {self._low.size}")
        with self._lock:
            if self.realtime:
                self._catch_up()
            if np.all(np.isfinite(a)):
                self._command = np.clip(a, self._low, self._high)
                self.data.ctrl[self._actuators] = self._to_ctrl(self._command)
            # a non-finite command is dropped: the robot keeps its previous target, and reports so
            sent = self._command.astype(np.float32)
            if not self.realtime:
                mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        return {"action": sent}

    def _actuated_positions(self) -> np.ndarray:
        """Where the actuated joints are, as a command (position actuators, clamped to the limits);
        it becomes the command the robot reports as sent."""
        self._command = np.clip(self._to_units(self.data.qpos[self._actuated_qpos]), self._low, self._high)
        return self._command

    def _hold(self) -> dict[str, np.ndarray]:
        # Straight from MjData, never through the cameras: rendering is bound to the thread that
        # made the GL context, and the safety watchdog holds from its own thread.
        with self._lock:
            if self.realtime:
                self._catch_up()  # hold where the robot is now, not where it was at the last call
            # No physics step even when not realtime: holding is a command, not a control period.
            self.data.ctrl[self._actuators] = self._to_ctrl(self._actuated_positions())
            return {"action": self._command.astype(np.float32)}

    def render(self, camera: str, size: int) -> np.ndarray:
        """A frame from any MJCF camera at `size` x `size` (for videos; not an observation)."""
        key = (camera, size)
        if key not in self._video_cameras:
            cam = MujocoCamera(self.model, self._camera_source, camera, size, size, name=f"{self.name} video")
            cam.connect()
            self._video_cameras[key] = cam
        with self._lock:
            return self._video_cameras[key].read_latest()[0]

    def close(self) -> None:
        for cam in self._video_cameras.values():
            cam.disconnect()
        self._video_cameras.clear()
        if self.is_connected:
            self.disconnect()
