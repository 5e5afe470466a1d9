"""The receding-horizon control loop: observe, plan with an executor, filter, send, record.

One tick per control period (`Clock`): read the robot's observation, push it into the policy's
observation history, ask the executor for this tick's action (it plans from chunks stamped with
the observation's own timestamp), pass it through the safety layer, and record what was sent.
The loop ends at `duration_s`, when a simulated task reports its episode done, or on an e-stop;
in every case the robot is held before the caller disconnects it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from robodiff.control.clock import Clock, realtime_priority, restore_priority
from robodiff.control.executors import Executor
from robodiff.control.history import ObservationHistory
from robodiff.control.safety import EStop, SafeRobot
from robodiff.data.store import EpisodeRecorder

# A robot whose timestamps are this far from our monotonic clock keeps its own clock (e.g. a
# simulator's time); it is then mapped onto ours by the offset seen at the first observation.
SAME_CLOCK_TOLERANCE_S = 1.0


def current_position(obs: dict[str, Any], action_dim: int) -> np.ndarray:
    """The HAL convention (see `Robot.hold`): the first `action_dim` entries of `state`."""
    if "state" not in obs:
        raise KeyError("the robot's observation has no 'state' to start the safety filter from")
    return np.asarray(obs["state"], dtype=np.float64).reshape(-1)[:action_dim]


class TimestampAlignment:
    """Maps the timestamps a robot reports onto the control loop's clock."""

    def __init__(self) -> None:
        self.offset: float | None = None

    def __call__(self, robot_t: float, loop_now: float) -> float:
        if self.offset is None:
            gap = loop_now - robot_t
            self.offset = 0.0 if abs(gap) < SAME_CLOCK_TOLERANCE_S else gap
        return robot_t + self.offset


class Runner:
    """`run(duration_s)` -> statistics. `outcome()` (simulated tasks) returns at least `done`.

    `run` may be called again for the next episode (after the robot was reset): `steps`, the
    clock's timings, the executor's and the safety layer's counters are totals over every run,
    `stop_reason`, `duration_s` and the outcome are this run's."""

    def __init__(self, robot: SafeRobot, executor: Executor, clock: Clock,
                 history: ObservationHistory, estop: EStop,
                 recorder: EpisodeRecorder | None = None,
                 outcome: Callable[[], dict[str, Any]] | None = None, progress: bool = True,
                 realtime: bool = False):
        """`realtime`: run the loop's thread under SCHED_FIFO where permitted. Only for executors
        that infer in the background: a FIFO thread doing heavy compute would starve the machine."""
        self.robot = robot
        self.executor = executor
        self.clock = clock
        self.history = history
        self.estop = estop
        self.recorder = recorder
        self.outcome = outcome
        self.progress = progress
        self.realtime = realtime
        self.align = TimestampAlignment()
        self.steps = 0
        self.stale_observations = 0

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        action_dim = int(np.prod(self.robot.robot.action_features[self.robot.action_key].shape))
        first = self.robot.get_observation()
        # A reset robot may have restarted its own clock: align its timestamps afresh.
        self.align = TimestampAlignment()
        self.robot.start(current_position(first, action_dim))
        self.history.reset()
        result: dict[str, Any] = {}
        total = None if duration_s is None else int(round(duration_s / self.clock.period_s))
        bar = tqdm(total=total, desc="deploy", unit="step", file=sys.stderr, disable=not self.progress,
                   mininterval=1.0)
        # A background inference thread running Python code keeps the GIL for up to the switch
        # interval (5 ms by default) before the woken control thread gets it: shorten it.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        previous_policy = realtime_priority() if self.realtime else None
        t0 = self.clock.start()
        last_robot_t: float | None = None
        stop_reason = "duration"
        try:
            while True:
                if self.estop.is_set():
                    stop_reason = f"e-stop ({self.estop.reason})"
                    break
                tick = self.clock.tick()
                with self.clock.section("observe"):
                    obs = self.robot.get_observation()
                robot_t = float(obs["timestamp"])
                t_obs = self.align(robot_t, tick)
                self.stale_observations += int(last_robot_t is not None and robot_t <= last_robot_t)
                last_robot_t = robot_t
                self.history.push(obs)
                with self.clock.section("act"):
                    proposed = self.executor.act(tick, self.history, t_obs)
                if self.estop.is_set():  # set while the policy ran on this thread: send nothing new
                    stop_reason = f"e-stop ({self.estop.reason})"
                    break
                with self.clock.section("send"):
                    sent = self.robot.send(proposed)
                if self.recorder is not None:
                    self.recorder.add({**obs, **sent})
                self.steps += 1
                bar.update(1)
                if self.outcome is not None:
                    with self.robot.lock:  # scoring reads the simulator's state
                        result = self.outcome()
                    if result.get("done"):
                        stop_reason = "episode done"
                        break
                if duration_s is not None and tick - t0 >= duration_s - self.clock.period_s / 2:
                    break
        finally:
            bar.close()
            try:
                # Hold before anything else: a stopping loop must never leave a moving target.
                self.robot.hold()
            finally:
                self.robot.stop()
                sys.setswitchinterval(switch_interval)
                restore_priority(previous_policy)
        stats: dict[str, Any] = {"steps": self.steps, "stop_reason": stop_reason,
                                 "duration_s": round(self.clock.now() - t0, 3),
                                 "stale_observations": self.stale_observations}
        stats.update(self.clock.summary())
        stats.update(self.executor.stats())
        stats.update(self.robot.stats())
        stats["realtime_priority"] = previous_policy is not None
        stats.update({k: v for k, v in result.items() if k != "done"})
        return stats
