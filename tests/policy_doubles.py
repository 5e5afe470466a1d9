"""Test doubles for a trained policy (used by test_deploy and the subprocesses it starts)."""

import threading

import numpy as np

from robodiff.features import Feature
from robodiff.hal.base import Robot


class GoToPolicy:
    """A test double for a trained policy: chunks that walk the pusher towards `target`."""

    n_obs_steps, horizon, n_action_steps = 2, 16, 8
    obs_keys = ["state"]
    action_key = "action"

    def __init__(self, target, speed=15.0, hang_on_call=None):
        self.target = np.asarray(target, dtype=np.float64)
        self.speed = speed
        self.calls = 0
        self.hang_on_call = hang_on_call
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.features = {"state": Feature("lowdim", (2,)), "action": Feature("action", (2,))}

    def reset(self):
        self.calls = 0

    def predict_action_chunk(self, obs_history):
        assert obs_history["state"].shape == (self.n_obs_steps, 2)
        self.calls += 1
        if self.calls == self.hang_on_call:
            self.hanging.set()
            self.release.wait()
        current = obs_history["state"][-1].astype(np.float64)
        gap = self.target - current
        dist = float(np.linalg.norm(gap)) + 1e-9
        steps = np.arange(self.horizon) - (self.n_obs_steps - 2)
        return (current + gap / dist * np.minimum(dist, self.speed * steps)[:, None]).astype(np.float32)


class TickRobot(Robot):
    """A robot for loop tests: its `state` counts the actions sent to it (1000 + n), each
    `send_action` is one control period, and it keeps what it was sent."""

    name = "tick robot"

    def __init__(self, dim: int = 1, start: float = 1000.0):
        super().__init__()
        self.dim, self.start = dim, start
        self.sent: list[np.ndarray] = []
        self.holds = 0
        self.action_limits = {"action": (np.full(dim, -1e6), np.full(dim, 1e6))}

    @property
    def observation_features(self):
        return {"state": Feature("lowdim", (self.dim,)), "timestamp": Feature("timestamp", (), "float64")}

    @property
    def action_features(self):
        return {"action": Feature("action", (self.dim,))}

    def _connect(self):
        pass

    def _disconnect(self):
        pass

    def _get_observation(self):
        return {"state": np.full(self.dim, self.start + len(self.sent), np.float32),
                "timestamp": len(self.sent) * 0.1}

    def _send_action(self, action):
        a = np.asarray(action["action"], dtype=np.float32)
        self.sent.append(a)
        return {"action": a}

    def _hold(self):
        self.holds += 1
        return None


def run_loop(robot, source, ticks: int, period_s: float = 0.1, rate_limit: bool = False, **kw):
    """`ticks` ticks of the episode loop on a simulated clock; returns the loop's statistics."""
    from types import SimpleNamespace

    from robodiff.control.clock import SimulatedClock
    from robodiff.control.loop import EpisodeLoop
    from robodiff.control.safety import SafeRobot, SafetyFilter, resolve_limits

    safety = SimpleNamespace(low=None, high=None, rate_limit=rate_limit, max_delta=None,
                             max_delta_fraction=0.1, watchdog_s=None)
    if not robot.is_connected:
        robot.connect()
    safe = SafeRobot(robot, SafetyFilter(resolve_limits(robot, safety)), None, None)
    clock = kw.pop("clock", None) or SimulatedClock(period_s)
    return EpisodeLoop(safe, clock).run(source, duration_s=ticks * period_s, **kw)
