"""The control clock: grid-aligned ticks, overrun accounting, section timings, summary."""

from __future__ import annotations

import time

import pytest

from robodiff.control.clock import Clock, precise_wait


class FakeTime:
    """A clock that moves only when slept on (and by `tick_s` per reading, so spins terminate)."""

    def __init__(self, tick_s: float = 1e-5):
        self.t = 100.0
        self.tick_s = tick_s
        self.sleeps: list[float] = []

    def now(self) -> float:
        self.t += self.tick_s
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_precise_wait_sleeps_then_spins_to_the_deadline():
    ft = FakeTime()
    deadline = ft.t + 0.05
    precise_wait(deadline, ft.now, ft.sleep, spin_s=0.001)
    assert len(ft.sleeps) == 1 and ft.sleeps[0] == pytest.approx(0.049, abs=1e-4)
    assert deadline <= ft.t < deadline + 1e-4


def test_ticks_on_grid_with_no_overruns():
    ft = FakeTime()
    clock = Clock(0.1, now=ft.now, sleep=ft.sleep)
    t0 = clock.start()
    deadlines = [clock.tick() for _ in range(20)]
    assert deadlines == pytest.approx([t0 + 0.1 * (k + 1) for k in range(20)])
    s = clock.summary()
    assert s["ticks"] == 20 and s["overruns"] == 0
    assert s["period_p50_ms"] == pytest.approx(100.0, abs=0.1)
    assert s["period_error_p99_ms"] < 0.1


def test_late_cycle_counts_an_overrun_and_realigns_to_the_grid():
    ft = FakeTime()
    clock = Clock(0.1, now=ft.now, sleep=ft.sleep)
    t0 = clock.start()
    clock.tick()
    with clock.section("infer"):
        ft.t += 0.27  # the cycle starting at t0+0.1 runs to t0+0.37: misses 0.2 and 0.3
    late = clock.tick()
    assert clock.overruns == 1
    assert late == pytest.approx(t0 + 0.4)  # more than half a period late: next grid point
    with clock.section("infer"):
        ft.t += 0.12  # 0.02 late for t0+0.5: runs at once, late
    slightly_late = clock.tick()
    assert slightly_late == pytest.approx(t0 + 0.5) and clock.overruns == 2
    assert clock.tick() == pytest.approx(t0 + 0.6)
    s = clock.summary()
    assert s["infer_p50_ms"] == pytest.approx(195.0, abs=1.0)
    assert s["infer_max_ms"] == pytest.approx(270.0, abs=1.0)
    assert s["period_error_max_ms"] == pytest.approx(20.0, abs=0.5)


def test_real_clock_summary_has_the_reported_keys():
    clock = Clock(0.005)
    clock.start()
    for _ in range(10):
        with clock.section("work"):
            time.sleep(0.001)
        clock.tick()
    s = clock.summary()
    for key in ("period_p50_ms", "period_p99_ms", "period_error_p50_ms", "period_error_p99_ms",
                "overruns", "ticks", "work_p50_ms", "work_p99_ms"):
        assert key in s
    assert s["ticks"] == 10 and s["work_p50_ms"] >= 1.0


def test_bad_period_and_unstarted_clock():
    with pytest.raises(ValueError):
        Clock(0)
    with pytest.raises(RuntimeError):
        Clock(0.1).tick()


def test_a_thread_that_was_real_time_already_gets_its_own_priority_back():
    """A native library (SVT-AV1's encoder, for one) may leave a thread in SCHED_FIFO; the loop's
    priority boost must put it back as it was, not fail restoring SCHED_FIFO with priority 0."""
    import os
    import threading

    from robodiff.control.clock import realtime_priority, restore_priority

    seen = []

    def thread() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
        except OSError:
            seen.append("not permitted")
            return
        previous = realtime_priority()
        seen.append(os.sched_getparam(0).sched_priority)
        restore_priority(previous)
        seen.append((os.sched_getscheduler(0), os.sched_getparam(0).sched_priority))

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    if seen == ["not permitted"]:
        pytest.skip("SCHED_FIFO is not permitted here")
    assert seen == [10, (os.SCHED_FIFO, 5)]
