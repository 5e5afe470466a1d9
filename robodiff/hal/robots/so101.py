"""`SO101Follower`: the physical SO-101 arm (Feetech STS3215 servos) and its cameras as a `Robot`.

It works in the units of the simulated arm (`units:` of the YAML: degrees around the middle of each
calibrated range, or range100; the gripper 0..100), so a policy trained in simulation runs on it
unchanged. What it guarantees, whatever the caller sends:
- every goal is inside the calibrated range (clamped in units, then in servo steps) before it is
  sent; what `send_action` returns is the goal really sent (rounded to servo steps);
- it publishes its limits and a per-step bound (`limits.max_step_deg`), so the safety filter's
  rate limit is on by default for it;
- no jump when torque comes on: the goal is set to the present position first;
- the gripper's current is limited (`servo_settings` in the YAML, written at connect);
- torque off on disconnect; after a bus fault nothing more is sent (the servos hold their goal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Camera, Robot
from robodiff.hal.cameras import make_camera
from robodiff.hal.hardware import HardwareSpec
from robodiff.hal.kinematics import ArmKinematics
from robodiff.hal.motors import BusError
from robodiff.hal.motors.bus import open_serial
from robodiff.hal.robots.arm_bus import ArmBus


class SO101Follower(Robot):
    def __init__(self, hardware: HardwareSpec, *, cameras: dict[str, Camera] | None = None,
                 open_port: Callable[[str, int, float], Any] = open_serial,
                 now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.hardware = hardware
        self.arm = ArmBus(hardware, "follower", open_port)
        self.name = f"{hardware.name} follower on {self.arm.settings.port}"
        self.kinematics = ArmKinematics(hardware) if hardware.kinematics is not None else None
        specs = hardware.raw.get("cameras") or {}
        self.cameras = cameras if cameras is not None else {
            feat: make_camera(f"{self.name} camera '{feat}'", spec) for feat, spec in specs.items()}
        self._max_age = {feat: float(specs[feat]["max_age_ms"]) / 1e3 for feat in self.cameras}
        self._now = now
        cal = self.arm.calibration
        self._low, self._high = cal.limits()
        step = (hardware.raw.get("limits") or {}).get("max_step_deg")
        if step is None:
            raise UserError(f"{hardware.path}: a physical arm needs 'limits: {{max_step_deg: ...}}'")
        self._max_delta = cal.per_step(float(step))
        self._goal: dict[str, int] | None = None

    # ---- features ------------------------------------------------------------------------------
    @property
    def _joint_feature(self) -> dict[str, Any]:
        return {"shape": (len(self.arm.names),), "dtype": "float32", "names": tuple(self.arm.names),
                "units": self.arm.calibration.convention}

    @property
    def observation_features(self) -> Features:
        feats: Features = {feat: Feature("image", cam.shape, "uint8") for feat, cam in self.cameras.items()}
        feats["state"] = Feature("lowdim", **self._joint_feature)
        feats["timestamp"] = Feature("timestamp", (), "float64")
        return feats

    @property
    def action_features(self) -> Features:
        return {"action": Feature("action", **self._joint_feature)}

    @property
    def action_limits(self) -> dict[str, np.ndarray]:
        return {"low": self._low.copy(), "high": self._high.copy(), "max_delta": self._max_delta.copy()}

    def stats(self) -> dict[str, Any]:
        return self.arm.bus.stats()

    # ---- lifecycle -----------------------------------------------------------------------------
    def _connect(self) -> None:
        self.arm.connect()
        try:
            bus, names = self.arm.bus, self.arm.names
            bus.torque(False)
            for target, registers in (self.hardware.raw.get("servo_settings") or {}).items():
                motors = names if target == "all" else [target]
                for register, value in registers.items():
                    bus.write_acked(register, dict.fromkeys(motors, int(value)))
            present = bus.read_fresh("Present_Position", names)
            bus.write_acked("Goal_Position", present)  # torque on must not move the arm
            bus.torque(True)
            self._goal = present
            for cam in self.cameras.values():
                cam.connect()
        except BaseException:
            self._release()
            raise

    def _disconnect(self) -> None:
        self._release()

    def _release(self) -> None:
        for cam in self.cameras.values():
            if cam.is_connected:
                cam.disconnect()
        bus = self.arm.bus
        if bus.is_connected and bus.fault is None:
            try:
                bus.torque(False)
            except BusError:
                pass  # the bus faulted on the way out: nothing more is sent
        bus.disconnect()

    # ---- I/O -----------------------------------------------------------------------------------
    def _get_observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {feat: cam.read_latest(self._max_age[feat])[0] for feat, cam in self.cameras.items()}
        obs["state"] = self.arm.positions().astype(np.float32)
        obs["timestamp"] = self._now()
        return obs

    def _send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "action" not in action:
            raise UserError(f"{self.name}: send_action needs an 'action' entry, got {sorted(action)}")
        a = np.asarray(action["action"], np.float64).reshape(-1)
        if a.shape != self._low.shape:
            raise UserError(f"{self.name}: action has {a.size} values, expected {self._low.size}")
        if np.all(np.isfinite(a)):  # a non-finite command is dropped: the arm keeps its goal
            goal = self.arm.calibration.to_raw(np.clip(a, self._low, self._high))
            self.arm.bus.write("Goal_Position", goal)
            self._goal = goal
        return {"action": self.arm.calibration.to_units(self._goal).astype(np.float32)}

    def _hold(self) -> dict[str, np.ndarray] | None:
        try:
            present = self.arm.bus.read("Present_Position")
            self.arm.bus.write("Goal_Position", present)
        except BusError:
            return None  # faulted: nothing is sent, the servos keep their last goal
        self._goal = present
        return {"action": self.arm.calibration.to_units(present).astype(np.float32)}


def feetech_arm(hardware: HardwareSpec, **_: Any) -> SO101Follower:
    """The `feetech` driver of `make_robot` (its control rate is the run's; nothing to set here)."""
    return SO101Follower(hardware)
