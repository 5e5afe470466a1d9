"""What the episode loop asks for this tick's action: an `ActionSource`.

A policy behind an executor (`robodiff.control.executors`), a teleop device or a task's scripted
expert (`TeleopSource`), or eval's uniform random baseline. `act` returns the action to send, or
None to hold the last one; `event` lets a person end the episode (keep it, discard it, or stop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.hal.base import Teleop


class ActionSource:
    """`act(now, obs, t_obs)` once per tick: `now` is the tick's time on the loop's clock and
    `t_obs` the observation's, mapped onto that clock."""

    name = "source"

    def act(self, now: float, obs: dict[str, Any], t_obs: float) -> np.ndarray | None:
        raise NotImplementedError

    def event(self) -> str | None:
        """`done`, `discard` or `quit` when a person ended the episode on this tick."""
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release background resources."""


class TeleopSource(ActionSource):
    """A connected `Teleop` (keyboard, leader arm, scripted expert, ...) as an action source."""

    def __init__(self, teleop: Teleop, action_key: str):
        self.teleop = teleop
        self.action_key = action_key
        self.name = teleop.name

    def act(self, now: float, obs: dict[str, Any], t_obs: float) -> np.ndarray:
        return self.teleop.get_action(obs)[self.action_key]

    def event(self) -> str | None:
        return self.teleop.pop_event()


class PerturbedSource(ActionSource):
    """Noise injection as in DART: the action sent is the wrapped source's plus temporally
    correlated Gaussian noise (an AR(1) process, so the robot drifts off the demonstrated path
    for a while instead of jittering), while the source, a closed-loop expert or a person, keeps
    acting from where the robot really is. `intended` is the source's own action of the tick:
    the label a policy learns, so it learns the correction, not the noise.

    `std` is the stationary standard deviation per action dimension, in robot units."""

    def __init__(self, inner: ActionSource, std: np.ndarray, correlation: float):
        self.inner = inner
        self.name = inner.name
        self.std = np.asarray(std, dtype=np.float64)
        self.correlation = float(correlation)
        self.rng = np.random.default_rng()
        self.noise = np.zeros_like(self.std)
        self.intended: np.ndarray | None = None

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = np.zeros_like(self.std)
        self.intended = None

    def act(self, now: float, obs: dict[str, Any], t_obs: float) -> np.ndarray | None:
        action = self.inner.act(now, obs, t_obs)
        if action is None:  # holding: the label stays the last intended action
            return None
        self.intended = np.array(action, copy=True)
        fresh = self.rng.standard_normal(self.std.shape) * self.std
        self.noise = self.correlation * self.noise + np.sqrt(1.0 - self.correlation ** 2) * fresh
        return (np.asarray(action, dtype=np.float64) + self.noise).astype(np.asarray(action).dtype)

    def event(self) -> str | None:
        return self.inner.event()
