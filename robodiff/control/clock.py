"""The episode loop's clocks: `Clock` (real time) and `SimulatedClock` (a simulation's own time).

Both: `start()`, then `tick()` once per cycle, `now()`, `sleep()`, `section(name)` timings,
`ticks_behind(tick)` and `observation_time(robot_t, tick)`.

Real time: a precise periodic loop with per-section timings, period jitter statistics and overruns.
`time.sleep` on Linux wakes up to a few hundred microseconds late and the GIL adds more, so the
loop sleeps until `spin_s` before each deadline and busy-waits the rest (as the reference real-robot
code's `precise_wait` does). Deadlines sit on a fixed grid `t0 + k * period`, so a late tick does
not push every later tick back; a tick more than half a period late skips to the next grid point.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

# A robot whose timestamps are this far from our monotonic clock keeps its own clock (e.g. a
# simulator's time); it is then mapped onto ours by the offset seen at the first observation.
SAME_CLOCK_TOLERANCE_S = 1.0


def precise_wait(deadline: float, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 0.001) -> None:
    """Return at `deadline` (same clock as `now`): sleep most of the way, spin the last `spin_s`."""
    remaining = deadline - now()
    if remaining > spin_s:
        sleep(remaining - spin_s)
    while now() < deadline:
        pass


def realtime_priority(priority: int = 10) -> tuple[int, os.sched_param] | None:
    """Put the calling thread in SCHED_FIFO so that its wake-ups are not queued behind other work
    on a loaded machine. Returns the policy and parameters to restore, or None where that is not
    permitted."""
    if not hasattr(os, "sched_setscheduler"):
        return None
    # The parameters too: a thread that was real-time already (a native library may have made it
    # so) goes back to its own priority, which SCHED_OTHER's 0 is not.
    previous = (os.sched_getscheduler(0), os.sched_getparam(0))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError):
        return None
    return previous


def restore_priority(previous: tuple[int, os.sched_param] | None) -> None:
    if previous is not None:
        os.sched_setscheduler(0, *previous)


def percentiles_ms(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_p50_ms": float("nan"), f"{prefix}_p99_ms": float("nan"),
                f"{prefix}_max_ms": float("nan")}
    arr = np.asarray(values) * 1e3
    return {f"{prefix}_p50_ms": round(float(np.percentile(arr, 50)), 3),
            f"{prefix}_p99_ms": round(float(np.percentile(arr, 99)), 3),
            f"{prefix}_max_ms": round(float(arr.max()), 3)}


class TimestampAlignment:
    """Maps the timestamps a robot reports onto the control loop's clock."""

    def __init__(self) -> None:
        self.offset: float | None = None

    def __call__(self, robot_t: float, loop_now: float) -> float:
        if self.offset is None:
            gap = loop_now - robot_t
            self.offset = 0.0 if abs(gap) < SAME_CLOCK_TOLERANCE_S else gap
        return robot_t + self.offset


class Clock:
    """`start()`, then `tick()` once per cycle; `with clock.section("infer"):` times a part of it.

    `now` and `sleep` are injectable so that tests can drive the loop with a fake clock; in
    production they are `time.monotonic` and `time.sleep` (the clock robots stamp observations with).
    Time passes by itself: a robot keeps moving while the loop computes, so the loop never owes
    ticks (`ticks_behind` is 0) and a late tick is an overrun.
    """

    simulated = False

    def __init__(self, period_s: float, spin_s: float = 0.001,
                 now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = float(period_s)
        self.spin_s = float(spin_s)
        self.now = now
        self.sleep = sleep
        self.t0: float | None = None
        self.ticks = 0
        self.overruns = 0
        self.periods: list[float] = []
        self.period_errors: list[float] = []
        self.sections: dict[str, list[float]] = defaultdict(list)
        self._last_tick: float | None = None
        self._next_index = 1

    def start(self) -> float:
        self.t0 = self.now()
        self._last_tick = self.t0
        self._next_index = 1
        # A reset robot may have restarted its own clock: align its timestamps afresh.
        self._align = TimestampAlignment()
        return self.t0

    def observation_time(self, robot_t: float, tick: float) -> float:
        """An observation's timestamp on this clock."""
        return self._align(robot_t, tick)

    def ticks_behind(self, tick: float) -> int:
        return 0

    @property
    def next_deadline(self) -> float:
        if self.t0 is None:
            raise RuntimeError("Clock.start() was not called")
        return self.t0 + self._next_index * self.period_s

    def tick(self) -> float:
        """Wait for the next deadline and return it (the nominal time of the cycle that starts)."""
        deadline = self.next_deadline
        now = self.now()
        if now > deadline:
            self.overruns += 1
            # Realign to the grid rather than fire a burst of catch-up cycles: run late only when
            # less than half a period late, else wait for the next grid point.
            skip = int((now - deadline) // self.period_s)
            if now - (deadline + skip * self.period_s) > self.period_s / 2:
                skip += 1
            deadline += skip * self.period_s
            self._next_index += skip
        precise_wait(deadline, self.now, self.sleep, self.spin_s)
        woke = self.now()
        self.periods.append(woke - self._last_tick)
        self.period_errors.append(abs(woke - deadline))
        self._last_tick = woke
        self._next_index += 1
        self.ticks += 1
        return deadline

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.sections[name].append(self.now() - start)

    def record(self, name: str, seconds: float) -> None:
        """Add a timing measured elsewhere (e.g. inference on a background thread)."""
        self.sections[name].append(float(seconds))

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"ticks": self.ticks, "overruns": self.overruns,
                                       "period_ms": round(self.period_s * 1e3, 3)}
        out.update(percentiles_ms(self.periods, "period"))
        out.update(percentiles_ms(self.period_errors, "period_error"))
        for name, values in self.sections.items():
            out.update(percentiles_ms(values, name))
        return out


class SimulatedClock:
    """A simulation's time: tick k is at `k * period_s` from the start, reached at once (`tick`
    never waits), and time moves only when someone `sleep`s on it (a simulated inference
    latency). The robot is stepped once per tick, so ticks a blocking inference overran are owed
    (`ticks_behind`): the loop holds the robot for them before it acts again. Observations are
    stamped with their tick."""

    simulated = True

    def __init__(self, period_s: float):
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = float(period_s)
        self.t = 0.0
        self.ticks = 0
        self._index = 0

    def start(self) -> float:
        self.t, self.ticks, self._index = 0.0, 0, 0
        return -self.period_s  # so that the first tick, at 0, is one period after the start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += float(seconds)

    def tick(self) -> float:
        deadline = self._index * self.period_s
        self._index += 1
        self.ticks += 1
        self.t = max(self.t, deadline)
        return deadline

    def ticks_behind(self, tick: float) -> int:
        """Whole periods (rounded to the nearest) that passed since `tick` began."""
        return math.floor((self.t - tick) / self.period_s + 0.5)

    def observation_time(self, robot_t: float, tick: float) -> float:
        return tick

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        yield

    def summary(self) -> dict[str, float | int]:
        return {"ticks": self.ticks, "period_ms": round(self.period_s * 1e3, 3)}
