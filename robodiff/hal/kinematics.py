"""An arm's forward and inverse kinematics, on its own MJCF, in the arm's units.

Part of the robot (hal), not of the simulation: the physical arm's driver builds the same object
from the same hardware YAML. It keeps its own `MjData`, so solving never disturbs a simulation.

A pose is five numbers `[x, y, z, pitch, roll]`: the tool site's position in the arm's base
frame (metres) and its orientation in the arm's vertical plane (radians). A five-joint arm with
a pan joint cannot choose the gripper's yaw: it follows from where the tool is. So orientation
is measured in the frame of the pan joint's body: pitch turns the approach axis down (0 =
horizontal, pi/2 = pointing down), roll turns the gripper about its approach axis. Unlike Euler
angles of the world frame, these are regular when the gripper points straight down.

Inverse kinematics is damped least squares on mujoco's site Jacobians (`mj_jacSite`), with the
joints clamped to their MJCF ranges after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robodiff.hal.gl import select_headless_gl  # noqa: E402

select_headless_gl()
import mujoco  # noqa: E402

from robodiff.errors import UserError  # noqa: E402
from robodiff.hal.hardware import HardwareSpec  # noqa: E402
from robodiff.hal.joint_units import JointUnits  # noqa: E402

# One radian of orientation error weighs as much as this many metres of position error: when a
# pose cannot be reached exactly, the solver gives up orientation before position.
ROTATION_WEIGHT_M = 0.1
DAMPING = 1e-3
MAX_STEP_RAD = 0.3
POSITION_TOL_M = 2e-4
ROTATION_TOL_RAD = 2e-3


@dataclass(frozen=True)
class IkResult:
    joints: np.ndarray  # arm units, the kinematic chain's joints
    position_error_m: float
    rotation_error_rad: float
    iterations: int

    @property
    def reached(self) -> bool:
        return self.position_error_m <= 2 * POSITION_TOL_M and self.rotation_error_rad <= 2 * ROTATION_TOL_RAD


def _plane_orientation(rotation: np.ndarray) -> tuple[float, float]:
    """(pitch, roll) of a rotation of the form Ry(pitch) @ Rx(roll)."""
    return float(np.arctan2(-rotation[2, 0], rotation[0, 0])), float(np.arctan2(-rotation[1, 2], rotation[1, 1]))


def _plane_rotation(pitch: float, roll: float) -> np.ndarray:
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return ry @ rx


def _rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """The axis * angle of a rotation matrix (world frame)."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rotation.reshape(-1))
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class ArmKinematics:
    """`forward(joints) -> pose` and `inverse(pose, start) -> IkResult`, joints in arm units."""

    def __init__(self, hardware: HardwareSpec) -> None:
        spec = hardware.kinematics
        if spec is None or hardware.units is None:
            raise UserError(f"robot '{hardware.name}' ({hardware.path}) has no 'kinematics' and 'units'")
        self.spec = spec
        self.hardware = hardware
        self.units: JointUnits = hardware.units.select(spec.joints)
        self.model = mujoco.MjModel.from_xml_path(str(hardware.model_path))
        self.data = mujoco.MjData(self.model)
        self._site = self._id(mujoco.mjtObj.mjOBJ_SITE, spec.site, hardware)
        joint_ids = [self._id(mujoco.mjtObj.mjOBJ_JOINT, j, hardware) for j in spec.joints]
        self._qpos = self.model.jnt_qposadr[joint_ids]
        self._dofs = self.model.jnt_dofadr[joint_ids]
        self._low, self._high = self.model.jnt_range[joint_ids].T
        # The pan joint's body carries the frame orientation is measured in.
        self._plane_body = int(self.model.jnt_bodyid[joint_ids[0]])

    def _id(self, kind: mujoco.mjtObj, name: str, hardware: HardwareSpec) -> int:
        index = mujoco.mj_name2id(self.model, kind, name)
        if index < 0:
            raise UserError(f"{hardware.path}: kinematics names '{name}', which is not in {hardware.model_path}")
        return index

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.joints

    def _set(self, radians: np.ndarray) -> None:
        self.data.qpos[self._qpos] = radians
        mujoco.mj_kinematics(self.model, self.data)

    def _pose(self) -> np.ndarray:
        site_rot = self.data.site_xmat[self._site].reshape(3, 3)
        plane = self.data.xmat[self._plane_body].reshape(3, 3)
        pitch, roll = _plane_orientation(plane.T @ site_rot)
        return np.array([*self.data.site_xpos[self._site], pitch, roll])

    def forward(self, joints: np.ndarray) -> np.ndarray:
        """The pose `[x, y, z, pitch, roll]` of the tool at `joints` (arm units)."""
        self._set(self.units.to_radians(np.asarray(joints, np.float64).reshape(-1)[: len(self._qpos)]))
        return self._pose()

    def tool_rotation(self, joints: np.ndarray) -> np.ndarray:
        """The tool site's orientation (3 x 3, base frame) at `joints` (arm units): its columns
        are the approach axis, the jaws' closing axis (the moving jaw closes towards -y) and z."""
        self._set(self.units.to_radians(np.asarray(joints, np.float64).reshape(-1)[: len(self._qpos)]))
        return self.data.site_xmat[self._site].reshape(3, 3).copy()

    def clamp(self, radians: np.ndarray) -> np.ndarray:
        return np.clip(radians, self._low, self._high)

    def inverse(self, pose: np.ndarray, start: np.ndarray, iterations: int = 60) -> IkResult:
        """Joints (arm units) that put the tool at `pose`, searched from `start` (arm units); the
        nearest reachable solution within the joint ranges when the pose cannot be reached."""
        pose = np.asarray(pose, np.float64)
        q = self.clamp(self.units.to_radians(np.asarray(start, np.float64).reshape(-1)[: len(self._qpos)]))
        local_target = _plane_rotation(pose[3], pose[4])
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        pos_err, rot_err = np.inf, np.inf
        for step in range(iterations + 1):
            self._set(q)
            mujoco.mj_comPos(self.model, self.data)
            site_rot = self.data.site_xmat[self._site].reshape(3, 3)
            plane = self.data.xmat[self._plane_body].reshape(3, 3)
            e_pos = pose[:3] - self.data.site_xpos[self._site]
            e_rot = _rotation_vector(plane @ local_target @ site_rot.T)
            pos_err, rot_err = float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))
            if (pos_err <= POSITION_TOL_M and rot_err <= ROTATION_TOL_RAD) or step == iterations:
                break
            mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self._site)
            rot_rows = jacr[:, self._dofs].copy()
            # Turning the pan joint turns the target orientation with the tool (the target is in
            # the pan's frame): it changes no orientation error.
            rot_rows[:, 0] = 0.0
            jac = np.vstack([jacp[:, self._dofs], ROTATION_WEIGHT_M * rot_rows])
            err = np.concatenate([e_pos, ROTATION_WEIGHT_M * e_rot])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + DAMPING**2 * np.eye(6), err)
            norm = float(np.max(np.abs(dq)))
            if norm > MAX_STEP_RAD:
                dq *= MAX_STEP_RAD / norm
            q = self.clamp(q + dq)
        return IkResult(self.units.to_units(q), pos_err, rot_err, step)
