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
