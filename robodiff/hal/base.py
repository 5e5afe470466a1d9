"""The hardware seams: `Robot`, `Camera`, `Teleop`. A MuJoCo sim and a physical arm are both Robots.

Feature descriptions are known before connecting, so a policy or a dataset can be checked against a
robot without touching hardware. Connection guards turn misuse into a clear error.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from robodiff.errors import ConfigError, UserError
from robodiff.features import Features


class NotConnectedError(UserError):
    pass


class AlreadyConnectedError(UserError):
    pass


class StaleFrameError(UserError):
    """A camera's latest frame is older than the caller accepts (a camera that stopped delivering
    is the user's to fix: one line, no traceback)."""


class Device(abc.ABC):
    """Connection guard and context manager shared by robots, cameras and teleop devices."""

    name: str = "device"

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            raise AlreadyConnectedError(f"{self.name} is already connected")
        self._connect()
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            raise NotConnectedError(f"{self.name} is not connected")
        try:
            self._disconnect()
        finally:
            self._connected = False

    def close(self) -> None:
        """Disconnect if connected and release everything held (safe to call twice)."""
        if self._connected:
            self.disconnect()

    def _require_connected(self) -> None:
        if not self._connected:
            raise NotConnectedError(f"{self.name} is not connected (call connect() or use `with`)")

    @abc.abstractmethod
    def _connect(self) -> None: ...

    @abc.abstractmethod
    def _disconnect(self) -> None: ...

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connected:
            self.disconnect()


class Camera(Device):
    """A threaded reader: `read_latest` never blocks the control loop and raises on a stale frame."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]: ...

    @abc.abstractmethod
    def read_latest(self, max_age_s: float | None = None) -> tuple[np.ndarray, float]:
        """(uint8 HWC frame, its capture timestamp in seconds)."""


class Robot(Device):
    """get_observation() -> dict with `timestamp`; send_action(a) -> what was really sent."""

    @property
    @abc.abstractmethod
    def observation_features(self) -> Features: ...

    @property
    @abc.abstractmethod
    def action_features(self) -> Features: ...

    # An arm's `ArmKinematics` (robodiff.hal.kinematics), built from its hardware YAML by every
    # backend: what end-effector teleop devices and scripted experts move the tool with.
    kinematics: Any = None

    # Set on an instance when limits are only known at run time (e.g. after a calibration).
    _action_limits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def action_limits(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """`{action_key: (low, high)}` arrays in robot units that commands must stay within, or
        None when unknown (the safety layer then needs limits from the config)."""
        return self._action_limits

    @action_limits.setter
    def action_limits(self, value: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> None:
        self._action_limits = value

    def get_observation(self) -> dict[str, Any]:
        self._require_connected()
        return self._get_observation()

    def send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_connected()
        return self._send_action(action)

    @abc.abstractmethod
    def _get_observation(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def stats(self) -> dict[str, Any]:
        """Counters a run reports (a physical arm: its bus's retries and stale reads)."""
        return {}

    def hold(self) -> dict[str, np.ndarray] | None:
        """Stop moving: command the current position (the safe default on any fault). Returns what
        was commanded, or None when the robot could not tell its position.

        The safety watchdog calls this from its own thread while the control thread may be busy,
        so `_hold` must not use thread-bound resources (e.g. a GL context that renders cameras)."""
        self._require_connected()
        return self._hold()

    def _hold(self) -> dict[str, np.ndarray] | None:
        # Generic fallback via a full observation: a robot whose observation is thread-bound or
        # slow (rendered or polled cameras) overrides this to read its joint positions alone.
        obs = self._get_observation()
        if "state" not in obs:
            return None
        dim = self.action_features["action"].shape[0]
        return self._send_action({"action": np.asarray(obs["state"])[:dim]})


class Teleop(Device):
    """A source of actions: keyboard, SpaceMouse, gamepad, leader arm, scripted expert."""

    # A person drives it: recording runs at the task's control rate, not as fast as the sim goes.
    human = False
    # What to tell that person before recording (which key or axis does what).
    help = ""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    @property
    @abc.abstractmethod
    def action_features(self) -> Features: ...

    def get_action(self, observation: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        self._require_connected()
        return self._get_action(observation)

    def reset(self, seed: int | None = None) -> None:
        """At the start of each episode (a scripted expert draws its choices from `seed`)."""

    def pop_event(self) -> str | None:
        """`done`, `discard` or `quit` when the person ended the episode since the last call
        (devices append them to `events`)."""
        return self.events.pop(0) if self.events else None

    @abc.abstractmethod
    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]: ...


def robot_limits(robot: Robot | None, action_key: str = "action") -> dict[str, list[float]]:
    """The limits a robot publishes for `action_key` (`robot.action_limits`, from its hardware
    YAML or task); empty when there is no robot or it publishes none.

    `action_limits` is `{action_key: (low, high)}`; a robot that also knows its largest change per
    step may publish `{"low", "high", "max_delta"}` for its one action instead.
    """
    raw = robot.action_limits if robot is not None else None
    if raw is None:
        return {}
    if action_key in raw:
        low, high = raw[action_key]
        return {"low": np.asarray(low, np.float64).reshape(-1).tolist(),
                "high": np.asarray(high, np.float64).reshape(-1).tolist()}
    if "low" in raw and "high" in raw:
        return {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in raw.items()
                if k in ("low", "high", "max_delta") and v is not None}
    raise ConfigError(f"robot '{getattr(robot, 'name', '?')}' publishes action limits for "
                      f"{', '.join(map(str, raw))}, not for '{action_key}'")
