"""A simulated episode's outcome as the episode loop runs it: best score, success, and its end.

The one place the best-score / success fold is written (eval, collect and deploy on a simulated
task all read it). An episode ends on success, when a gym env ends it, or when the task's time
budget (`max_steps / fps` seconds of the robot's episode time) is spent.
"""

from __future__ import annotations

import math
from typing import Any


class TaskOutcome:
    """`reset(seed)` starts the robot's next episode; calling it after each tick returns `done`,
    `success`, `score` (the best so far; 0 before any step) and `episode_time_s`."""

    def __init__(self, robot: Any, max_steps: int, fps: float):
        self.robot = robot
        self.time_limit_s = int(max_steps) / float(fps)
        self.period_s = 1.0 / float(fps)
        self.best = -math.inf
        self.success = False

    def reset(self, seed: int | None) -> None:
        self.robot.reset_episode(seed)
        self.best = -math.inf
        self.success = False

    @property
    def score(self) -> float:
        return 0.0 if self.best == -math.inf else self.best

    def __call__(self) -> dict[str, Any]:
        score, success = self.robot.evaluate()
        self.best = max(self.best, score)
        self.success = self.success or success
        elapsed = self.robot.episode_time_s
        done = self.success or self.robot.ended or elapsed >= self.time_limit_s - self.period_s / 2
        return {"done": done, "success": self.success, "score": self.score, "episode_time_s": round(elapsed, 3)}
