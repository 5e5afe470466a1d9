"""An arm's servos with their joints simulated by MuJoCo: the state behind the bus emulator.

Each servo has an encoder that reads `mount + q * 4096 / 2pi` (0..4095, one turn) at joint angle
`q` (the MJCF's radians): `mount` is where the servo's horn was fixed when the arm was assembled,
a few hundred steps from the centre as on a hand-built arm, so calibration has something to find.
The servo's registers follow the firmware's rules:
- Present_Position = (encoder - Homing_Offset) mod 4096; a goal is clamped to the position limits
  and reached at encoder = (goal + Homing_Offset) mod 4096 (one turn: never the short way round);
- with torque on, the goal drives the joint's position actuator (the MJCF's servo model); with
  torque off, the joint is the person's to move (`person.py`) or stays where it was left (the
  gear train's friction);
- Present_Speed, Present_Load and Present_Current come from the joint's velocity and the
  actuator's force.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.emulator.person import Person
from robodiff.hal.emulator.servo import Servo
from robodiff.hal.hardware import HardwareSpec, motors_of
from robodiff.hal.motors.feetech_protocol import TABLES
from robodiff.hal.mujoco_robot import MujocoRobot

STEPS_PER_RAD = 4096 / (2 * math.pi)
MOUNT_SPREAD = 400  # steps: how far from the centre a servo horn may have been fixed
STALL_CURRENT_A = 2.7  # STS3215 at 12 V
CURRENT_UNIT_A = 0.0065
PHYSICS_HZ = 500


class EmulatedArm:
    """`update()` moves the simulated joints towards what the servos are told; `refresh(servo)`
    fills a servo's present-state registers from the physics. `now` is the clock the physics
    follows (injectable: tests move it by hand)."""

    def __init__(self, hardware: HardwareSpec, *, voltage_v: float, person: Person | None = None,
                 assembly_seed: int = 0, now: Callable[[], float] = time.monotonic) -> None:
        if tuple(hardware.actuators) != tuple(hardware.joints):
            raise UserError(f"{hardware.path}: the emulator needs one actuator per joint, same names")
        self.hardware = hardware
        self.motors = motors_of(hardware)
        self.names = list(self.motors)
        self.servos = {name: Servo(TABLES[m.model], m.id, voltage_v) for name, m in self.motors.items()}
        self._joint = {servo: j for j, servo in enumerate(self.servos.values())}
        self.sim = MujocoRobot(hardware.model_path, replace(hardware, units=None, action_low=None, action_high=None, kinematics=None),
                               fps=PHYSICS_HZ, realtime=True, cameras=False, now=now,
                               name=f"emulated {hardware.name}")
        self.low, self.high = self.sim.action_limits["action"]
        model = self.sim.model
        self._dofs = np.array([model.joint(n).dofadr[0] for n in self.names])
        self._actuators = np.array([model.actuator(n).id for n in self.names])
        self._force_limit = np.abs(model.actuator_forcerange[self._actuators]).max(axis=1)
        self.mount = self._assemble(assembly_seed)
        self.person = person
        self.person_t0: float | None = None
        # Called once when the person is done (a terminal says so: the cue to press Enter).
        self.on_person_done: Callable[[], None] | None = None
        self._person_done_told = False
        self._now = now
        self.sim.connect()
        self._held = self.joint_radians()

    def _assemble(self, seed: int) -> np.ndarray:
        """Horn positions that keep each joint's whole travel inside one encoder turn."""
        rng = np.random.default_rng(seed)
        lo = np.maximum(2048 - MOUNT_SPREAD, -self.low * STEPS_PER_RAD + 16)
        hi = np.minimum(2048 + MOUNT_SPREAD, 4095 - self.high * STEPS_PER_RAD - 16)
        return np.round(lo + (hi - lo) * rng.uniform(size=len(self.names))).astype(np.int64)

    # ---- physics -------------------------------------------------------------------------------
    def joint_radians(self) -> np.ndarray:
        return self.sim.joint_state().astype(np.float64)

    def encoder(self, j: int, q: float) -> int:
        """Joint `j`'s encoder reading at angle `q`."""
        return int(round(self.mount[j] + q * STEPS_PER_RAD)) % 4096

    def _goal_radians(self, servo: Servo) -> float:
        goal = min(max(servo.get("Goal_Position"), servo.get("Min_Position_Limit")), servo.get("Max_Position_Limit"))
        encoder = (goal + servo.get("Homing_Offset")) % 4096
        return (encoder - self.mount[self._joint[servo]]) / STEPS_PER_RAD

    def update(self) -> None:
        """Physics up to now under the current targets (the MujocoRobot follows the clock)."""
        t = None if self.person is None or self.person_t0 is None else self._now() - self.person_t0
        by_hand = None if t is None else self.person.target(t)
        done_s = None if t is None else self.person.done_s
        if done_s is not None and t >= done_s and not self._person_done_told and self.on_person_done:
            self._person_done_told = True
            self.on_person_done()
        targets = np.empty(len(self.names))
        for j, name in enumerate(self.names):
            servo = self.servos[name]
            if servo.get("Torque_Enable"):
                targets[j] = self._goal_radians(servo)
            else:
                targets[j] = self._held[j] if by_hand is None else by_hand[j]
        self.sim.send_action({"action": targets})

    def on_write(self, servo: Servo, touched: set[str]) -> None:
        """Torque switched off: the joint stays where it is until a hand moves it (and the
        person, waiting for the arm to go limp, starts)."""
        if "Torque_Enable" in touched and not servo.get("Torque_Enable"):
            j = self._joint[servo]
            self._held[j] = self.joint_radians()[j]
            if self.person_t0 is None:
                self.person_t0 = self._now()

    def refresh(self, servo: Servo) -> None:
        j = self._joint[servo]
        q = self.joint_radians()[j]
        speed = float(self.sim.data.qvel[self._dofs[j]]) * STEPS_PER_RAD
        force = float(self.sim.data.actuator_force[self._actuators[j]]) / self._force_limit[j]
        servo.set("Present_Position", (self.encoder(j, q) - servo.get("Homing_Offset")) % 4096)
        servo.set("Present_Speed", int(np.clip(round(speed), -32767, 32767)))
        servo.set("Present_Load", int(np.clip(round(force * 1000), -1000, 1000)))
        servo.set("Present_Current", int(np.clip(round(force * STALL_CURRENT_A / CURRENT_UNIT_A), -2047, 2047)))
        servo.set("Moving", int(abs(speed) > 20))

    def close(self) -> None:
        self.sim.close()
