"""The safety layer: limits and rate limit for any input, NaN/Inf rejection, watchdog, e-stop."""

from __future__ import annotations

import threading
import time

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


def test_limits_from_robot_and_config_errors():
    robot = PointRobot({"low": [-1, -2], "high": [1, 2]})
    limits = resolve_limits(robot, None, None, None, max_delta_fraction=0.05)
    assert limits.high.tolist() == [1, 2] and limits.max_delta == pytest.approx([0.1, 0.2])
    limits = resolve_limits(robot, [0, 0], None, 0.5, max_delta_fraction=0.05)
    assert limits.low.tolist() == [0, 0] and limits.max_delta.tolist() == [0.5, 0.5]
    with pytest.raises(ConfigError, match="publishes no action limits"):
        resolve_limits(PointRobot(None), None, None, None, 0.05)
    with pytest.raises(ConfigError, match="low <= high"):
        ActionLimits([1, 1], [0, 2], 0.1)
    with pytest.raises(ConfigError, match="max_delta"):
        ActionLimits([0, 0], [1, 1], 0.0)


def _safe_robot(watchdog_s: float) -> tuple[PointRobot, SafeRobot, EStop]:
    robot = PointRobot()
    robot.connect()
    estop = EStop()
    safe = SafeRobot(robot, SafetyFilter(ActionLimits([-1, -1], [1, 1], 0.5)), watchdog_s, estop)
    safe.start(np.zeros(2))
    return robot, safe, estop


def test_watchdog_holds_within_its_period_when_no_fresh_action_arrives():
    robot, safe, _ = _safe_robot(watchdog_s=0.05)
    try:
        for _ in range(5):
            safe.send(np.array([0.1, 0.1]))
            time.sleep(0.01)
        assert safe.watchdog_trips == 0
        last_send, last_pos = robot.sent[-1][0], robot.sent[-1][2]
        time.sleep(0.2)  # the policy "hangs"
        holds = robot.watchdog_sends()
        assert safe.watchdog_trips == 1 and len(holds) == 1  # held once, not every poll
        assert 0.05 <= holds[0][0] - last_send <= 0.05 + 0.03
        assert np.array_equal(holds[0][1], last_pos)  # re-commands the last safe action
        safe.send(np.array([0.2, 0.2]))  # a fresh action re-arms it
        time.sleep(0.15)
        assert safe.watchdog_trips == 2
    finally:
        safe.stop()


def test_estop_holds_at_once_even_while_the_control_thread_is_busy():
    robot, safe, estop = _safe_robot(watchdog_s=10.0)
    try:
        safe.send(np.array([0.3, 0.3]))
        t = time.monotonic()
        estop.trigger("test")
        deadline = t + 0.5
        while not robot.watchdog_sends() and time.monotonic() < deadline:
            time.sleep(0.001)
        holds = robot.watchdog_sends()
        assert holds and holds[0][0] - t < 0.05 and estop.reason == "test"
        assert holds[0][1] == pytest.approx([0.3, 0.3])
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


def test_without_the_filter_actions_pass_unchanged_and_none_repeats_the_last():
    robot = PointRobot()
    robot.connect()
    safe = SafeRobot(robot, None, 1.0, EStop())
    safe.start(np.array([3.0, 4.0]))
    try:
        assert safe.send(None)["action"] == pytest.approx([3.0, 4.0])  # nothing yet: stay put
        assert safe.send(np.array([900.0, -5.0]))["action"] == pytest.approx([900.0, -5.0])
        assert safe.send(None)["action"] == pytest.approx([900.0, -5.0])
    finally:
        safe.stop()
