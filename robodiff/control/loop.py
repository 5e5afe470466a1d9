"""The one episode loop: observe -> action source -> safety filter -> send -> record.

`robodiff collect`, `eval` and `deploy` all run episodes through `EpisodeLoop.run`; they differ in
the action source (a teleop device or scripted expert, a policy behind an executor, eval's random
baseline), the clock (real time, or a simulated one that steps the simulator instead of sleeping)
and what they keep (`keep`: a recorder, a video writer, nothing).

On a simulated clock a blocking inference (`executor=sync` with a latency) leaves the loop ticks
behind: it holds the robot for those ticks, observing nothing, and sends the planned action at the
tick the inference ends, as a real robot would have held while the computer thought. On the real
clock time passes by itself and a late tick is the clock's overrun.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from robodiff.control.clock import realtime_priority, restore_priority
from robodiff.control.safety import EStop, SafeRobot
from robodiff.control.sources import ActionSource
from robodiff.progress import progress_bar

Outcome = Callable[[], dict[str, Any]]
Keep = Callable[[dict[str, Any]], None]


def current_position(obs: dict[str, Any], action_dim: int) -> np.ndarray | None:
    """The HAL convention (see `Robot.hold`): the first `action_dim` entries of `state`; None for
    a robot that observes no `state`."""
    if "state" not in obs:
        return None
    return np.asarray(obs["state"], dtype=np.float64).reshape(-1)[:action_dim]


class EpisodeLoop:
    """`run(source, ...)` runs one episode on `robot` (a connected robot behind a `SafeRobot`).

    `run` may be called again for the next episode (after the robot was reset): the clock's
    timings and the safety layer's counters are totals over every run, the rest is this run's.
    `realtime`: run the loop's thread under SCHED_FIFO where permitted, only for sources that
    infer in the background (a FIFO thread doing heavy compute would starve the machine)."""

    def __init__(self, robot: SafeRobot, clock: Any, estop: EStop | None = None, progress: bool = False,
                 realtime: bool = False, desc: str = "episode"):
        self.robot = robot
        self.clock = clock
        self.estop = estop
        self.progress = progress
        self.realtime = realtime
        self.desc = desc
        action_feature = robot.robot.action_features[robot.action_key]
        self.action_dim = int(np.prod(action_feature.shape))

    def _stopped(self) -> bool:
        return self.estop is not None and self.estop.is_set()

    def run(self, source: ActionSource, outcome: Outcome | None = None, keep: Keep | None = None,
            duration_s: float | None = None) -> dict[str, Any]:
        """Until `outcome()` says done, the source reports an event (a person ended the episode),
        `duration_s` passed, or the e-stop. The robot is held before it returns, in every case.
        Returns this episode's `steps`, `stop_reason`, `event`, `duration_s`, the outcome's last
        values and the clock's, source's and safety layer's statistics."""
        clock, robot = self.clock, self.robot
        total = None if duration_s is None else int(round(duration_s / clock.period_s))
        bar = progress_bar(total=total, desc=self.desc, unit="step", disable=not self.progress,
                   mininterval=1.0)
        # A background inference thread running Python code keeps the GIL for up to the switch
        # interval (5 ms by default) before the woken control thread gets it: shorten it.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        previous_policy = realtime_priority() if self.realtime else None
        t0 = clock.start()
        steps = stale = owed = 0
        started = False
        pending: np.ndarray | None = None
        last_robot_t: float | None = None
        result: dict[str, Any] = {}
        stop_reason, event = "duration", None
        try:
            while True:
                if self._stopped():
                    stop_reason = f"e-stop ({self.estop.reason})"
                    break
                tick = clock.tick()
                if owed:
                    # Ticks a blocking inference overran: the robot holds, then sends its plan.
                    owed -= 1
                    with clock.section("send"):
                        sent = robot.send(None if owed else pending)
                    obs = None
                else:
                    with clock.section("observe"):
                        obs = robot.get_observation()
                    if not started:
                        robot.start(current_position(obs, self.action_dim))
                        started = True
                    robot_t = float(obs["timestamp"])
                    stale += int(last_robot_t is not None and robot_t <= last_robot_t)
                    last_robot_t = robot_t
                    with clock.section("act"):
                        proposed = source.act(tick, obs, clock.observation_time(robot_t, tick))
                    if self._stopped():  # set while the policy ran on this thread: send nothing new
                        stop_reason = f"e-stop ({self.estop.reason})"
                        break
                    owed = clock.ticks_behind(tick)
                    if owed:
                        pending, proposed = proposed, None
                    with clock.section("send"):
                        sent = robot.send(proposed)
                if keep is not None:
                    keep({**(obs or {}), **sent})
                steps += 1
                bar.update(1)
                if outcome is not None:
                    with robot.lock:  # scoring reads the simulator's state
                        result = outcome()
                event = source.event()
                if event is not None:
                    stop_reason = f"teleop ({event})"
                    break
                if result.get("done"):
                    stop_reason = "episode done"
                    break
                if duration_s is not None and tick - t0 >= duration_s - clock.period_s / 2:
                    break
        finally:
            bar.close()
            try:
                if started:
                    # Hold before anything else: a stopping loop must never leave a moving target.
                    robot.hold()
            finally:
                robot.stop()
                sys.setswitchinterval(switch_interval)
                restore_priority(previous_policy)
        stats: dict[str, Any] = {"steps": steps, "stop_reason": stop_reason, "event": event,
                                 "duration_s": round(clock.now() - t0, 3), "stale_observations": stale}
        stats.update(clock.summary())
        stats.update(source.stats())
        stats.update(robot.stats())
        stats["realtime_priority"] = previous_policy is not None
        stats.update({k: v for k, v in result.items() if k != "done"})
        return stats
