"""The safety layer: limits and rate limit for any input, NaN/Inf rejection, watchdog, e-stop."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robodiff.control.safety import ActionLimits, EStop, SafeRobot, SafetyFilter, resolve_limits
from robodiff.errors import ConfigError
from robodiff.features import Feature
from robodiff.hal.base import Robot


class PointRobot(Robot):
    """A 2-D position-controlled point that records every command (holds included)."""

    name = "point"

    def __init__(self, limits: dict | None = None):
        super().__init__()
        self.pos = np.zeros(2)
        self.sent: list[tuple[float, str, np.ndarray]] = []
        self.action_limits = limits

    @property
    def observation_features(self):
        return {"state": Feature("lowdim", (2,))}

    @property
    def action_features(self):
        return {"action": Feature("action", (2,))}

    def _connect(self) -> None: ...

    def _disconnect(self) -> None: ...

    def _get_observation(self):
        return {"state": self.pos.copy(), "timestamp": time.monotonic()}

    def _send_action(self, action):
        self.pos = np.asarray(action["action"], dtype=np.float64)
        self.sent.append((time.monotonic(), threading.current_thread().name, self.pos.copy()))
        return {"action": np.asarray(action["action"], dtype=np.float32)}

    def watchdog_sends(self) -> list[tuple[float, np.ndarray]]:
        return [(t, pos) for t, thread, pos in self.sent if thread == "safety-watchdog"]


def _floats() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                     st.sampled_from([1e308, -1e308, 1e30, -1e30, 0.0]))


@settings(max_examples=300, deadline=None)
@given(
    low=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    span=st.lists(st.floats(1e-3, 10), min_size=3, max_size=3),
    delta=st.floats(1e-4, 5),
    start=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    outputs=st.lists(st.lists(_floats(), min_size=3, max_size=3), min_size=1, max_size=30),
)
def test_no_sent_action_leaves_the_limits_or_exceeds_the_step(low, span, delta, start, outputs):
    low = np.asarray(low)
    high = low + np.asarray(span)
    limits = ActionLimits(low, high, delta)
    filt = SafetyFilter(limits)
    prev = filt.reset(low + np.asarray(start) * (high - low)).astype(np.float64)
    for proposed in outputs:
        sent = filt(np.asarray(proposed)).astype(np.float64)
        assert np.all(np.isfinite(sent))
        # Tolerances are float32 rounding of the bounds themselves.
        tol = 1e-6 * np.maximum(1.0, np.abs(high))
        assert np.all(sent >= low - tol) and np.all(sent <= high + tol)
        assert np.all(np.abs(sent - prev) <= delta + 1e-6 * np.maximum(1.0, np.abs(prev)))
        if not np.all(np.isfinite(proposed)):
            assert np.array_equal(sent, prev)  # rejected: the last safe action is held
        prev = sent


def test_filter_counts_and_converges_to_a_reachable_target():
    filt = SafetyFilter(ActionLimits([0, 0], [1, 1], 0.1))
    filt.reset(np.array([0.5, 0.5]))
    out = [filt(np.array([5.0, 0.55])) for _ in range(10)]
    assert out[0] == pytest.approx([0.6, 0.55])
    assert out[-1] == pytest.approx([1.0, 0.55])
    assert filt(np.array([np.nan, 0.0])) == pytest.approx([1.0, 0.55])
    assert filt(np.array([0.0, 0.0, 0.0])) == pytest.approx([1.0, 0.55])  # wrong length: rejected
    assert filt.stats() == {"safety_rejected": 2, "safety_clamped": 10, "safety_rate_limited": 5}


def _safety(**kw) -> SimpleNamespace:
    """A `safety.*` block (deploy's defaults unless given)."""
    return SimpleNamespace(**{"low": None, "high": None, "rate_limit": True, "max_delta": None,
                              "max_delta_fraction": 0.1, "watchdog_s": None, **kw})


def test_limits_from_robot_and_config_errors():
    robot = PointRobot({"low": [-1, -2], "high": [1, 2]})
    limits = resolve_limits(robot, _safety(max_delta_fraction=0.05))
    assert limits.high.tolist() == [1, 2] and limits.max_delta == pytest.approx([0.1, 0.2])
    limits = resolve_limits(robot, _safety(low=[0, 0], max_delta=0.5))
    assert limits.low.tolist() == [0, 0] and limits.max_delta.tolist() == [0.5, 0.5]
    assert resolve_limits(robot, _safety(rate_limit=False)).max_delta is None
    with pytest.raises(ConfigError, match="publishes no action limits"):
        resolve_limits(PointRobot(None), _safety())
    with pytest.raises(ConfigError, match="low <= high"):
        ActionLimits([1, 1], [0, 2], 0.1)
    with pytest.raises(ConfigError, match="max_delta"):
        ActionLimits([0, 0], [1, 1], 0.0)
    with pytest.raises(ConfigError, match="finite"):  # a rate limit needs a finite range
        ActionLimits([0, -np.inf], [1, 1], 0.1)
    assert ActionLimits([0, -np.inf], [1, 1]).dim == 2  # without one, a gym Box may be open


class FakeTime:
    """The watchdog's clock, moved by the test alone."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _safe_robot(watchdog_s: float, now=time.monotonic) -> tuple[PointRobot, SafeRobot, EStop]:
    robot = PointRobot()
    robot.connect()
    estop = EStop()
    safe = SafeRobot(robot, SafetyFilter(ActionLimits([-1, -1], [1, 1], 0.5)), watchdog_s, estop, now=now)
    safe.start(np.zeros(2))
    return robot, safe, estop


def _eventually(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return condition()


def test_watchdog_holds_once_when_no_fresh_action_arrives_within_its_period():
    clock = FakeTime()
    robot, safe, _ = _safe_robot(watchdog_s=0.05, now=clock)
    try:
        for _ in range(5):
            safe.send(np.array([0.1, 0.1]))
            clock.t += 0.01
        last_pos = robot.sent[-1][2]
        clock.t += 0.035  # 0.045 s since the last action: inside the period, whatever the wall clock does
        time.sleep(0.1)
        assert safe.watchdog_trips == 0
        clock.t += 0.01  # 0.055 s: the policy "hangs"
        assert _eventually(lambda: safe.watchdog_trips == 1)
        holds = robot.watchdog_sends()
        assert len(holds) == 1 and np.array_equal(holds[0][1], last_pos)  # re-commands the last safe action
        clock.t += 1.0
        time.sleep(0.1)
        assert safe.watchdog_trips == 1 and len(robot.watchdog_sends()) == 1  # held once, not every poll
        safe.send(np.array([0.2, 0.2]))  # a fresh action re-arms it
        clock.t += 0.06
        assert _eventually(lambda: safe.watchdog_trips == 2)
    finally:
        safe.stop()


def test_no_watchdog_thread_on_a_simulated_clock():
    robot = PointRobot()
    robot.connect()
    safe = SafeRobot(robot, SafetyFilter(ActionLimits([-1, -1], [1, 1])), None, None)
    safe.start(np.zeros(2))
    assert safe._thread is None
    safe.stop()


def test_estop_holds_at_once_even_while_the_control_thread_is_busy():
    robot, safe, estop = _safe_robot(watchdog_s=1e9, now=FakeTime())
    try:
        safe.send(np.array([0.3, 0.3]))
        estop.trigger("test")  # the control thread sends nothing more: the watchdog thread holds
        assert _eventually(lambda: bool(robot.watchdog_sends()))
        holds = robot.watchdog_sends()
        assert estop.reason == "test" and holds[0][1] == pytest.approx([0.3, 0.3])
        assert safe.watchdog_trips == 0  # an e-stop hold, not a timeout
    finally:
        safe.stop()


def test_estop_from_the_terminal_key_q(monkeypatch):
    import os
    import pty

    master, slave = pty.openpty()
    with open(slave, "r") as tty_in:
        monkeypatch.setattr("sys.stdin", tty_in)
        estop = EStop().install(signals=False)
        try:
            os.write(master, b"x")
            assert not estop.wait(0.3)
            os.write(master, b"q")
            assert estop.wait(2.0) and estop.reason == "key"
        finally:
            estop.uninstall()
    os.close(master)


def test_without_a_rate_limit_the_filter_clamps_exactly_and_rejects_non_finite():
    robot = PointRobot({"low": [0.0, 0.0], "high": [0.7, 512.0]})
    robot.connect()
    filt = SafetyFilter(resolve_limits(robot, _safety(rate_limit=False)))
    safe = SafeRobot(robot, filt, None, None)
    safe.start(np.array([0.3, 4.0]))
    assert safe.send(None)["action"] == pytest.approx([0.3, 4.0])  # nothing yet: stay put
    # A jump of any size, clamped in float64 to the bounds themselves: 0.7, not float32(0.7).
    sent = filt(np.array([900.0, 300.5]))
    assert sent.dtype == np.float64 and sent.tolist() == [0.7, 300.5]
    assert safe.send(np.array([np.nan, 1.0]))["action"] == pytest.approx([0.7, 300.5])  # held
    assert filt.stats() == {"safety_rejected": 1, "safety_clamped": 1, "safety_rate_limited": 0}
    # A proposal is what the robot would see: cast to its action dtype first.
    assert filt(np.array([0.1, 1.0 + 1e-12])).tolist() == [np.float64(np.float32(0.1)), 1.0]
    # A robot without `state` gives no position: nothing to hold until an action was sent.
    filt.reset(None)
    with pytest.raises(RuntimeError, match="nothing to hold"):
        filt(None)
    with pytest.raises(ValueError, match="rate limit needs"):
        SafetyFilter(ActionLimits([0, 0], [1, 1], 0.1)).reset(None)
