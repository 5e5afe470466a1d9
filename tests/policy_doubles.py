"""Test doubles for a trained policy (used by test_deploy and the subprocesses it starts)."""

import threading

import numpy as np

from robodiff.features import Feature


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
