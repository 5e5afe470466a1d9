"""A precise periodic loop with per-section timings, period jitter statistics and overruns.

`time.sleep` on Linux wakes up to a few hundred microseconds late and the GIL adds more, so the
loop sleeps until `spin_s` before each deadline and busy-waits the rest (as the reference real-robot
code's `precise_wait` does). Deadlines sit on a fixed grid `t0 + k * period`, so a late tick does
not push every later tick back; a tick more than half a period late skips to the next grid point.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np


def precise_wait(deadline: float, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 0.001) -> None:
    """Return at `deadline` (same clock as `now`): sleep most of the way, spin the last `spin_s`."""
    remaining = deadline - now()
    if remaining > spin_s:
        sleep(remaining - spin_s)
    while now() < deadline:
        pass


def realtime_priority(priority: int = 10) -> int | None:
    """Put the calling thread in SCHED_FIFO so that its wake-ups are not queued behind other work
    on a loaded machine. Returns the policy to restore, or None where that is not permitted."""
    if not hasattr(os, "sched_setscheduler"):
        return None
    previous = os.sched_getscheduler(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError):
        return None
    return previous


def restore_priority(previous: int | None) -> None:
    if previous is not None:
        os.sched_setscheduler(0, previous, os.sched_param(0))


def percentiles_ms(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_p50_ms": float("nan"), f"{prefix}_p99_ms": float("nan"),
                f"{prefix}_max_ms": float("nan")}
    arr = np.asarray(values) * 1e3
    return {f"{prefix}_p50_ms": round(float(np.percentile(arr, 50)), 3),
            f"{prefix}_p99_ms": round(float(np.percentile(arr, 99)), 3),
            f"{prefix}_max_ms": round(float(arr.max()), 3)}


class Clock:
    """`start()`, then `tick()` once per cycle; `with clock.section("infer"):` times a part of it.

    `now` and `sleep` are injectable so that tests can drive the loop with a fake clock; in
    production they are `time.monotonic` and `time.sleep` (the clock robots stamp observations with).
    """

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
        return self.t0

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
