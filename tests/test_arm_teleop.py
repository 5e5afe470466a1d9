"""Teleop devices that move an arm's tool: recorded SpaceMouse reports, gamepad events and key
presses are parsed, and each drives the simulated SO-101's tool the way it was pushed; the keyboard
session records an episode in a pseudo-terminal; absent libraries or devices are one-line errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

import robodiff.sim  # noqa: F401  (registers the task robots)
from robodiff.data.store import EpisodeStore
from robodiff.errors import UserError
from robodiff.hal import make_robot, make_teleop
from robodiff.hal.teleop.gamepad import (ABS_HAT0Y, ABS_RX, ABS_RY, ABS_RZ, ABS_X, ABS_Y, ABS_Z, BTN_EAST,
                                         BTN_SOUTH, EV_ABS, EV_KEY, AxisRange, GamepadState, GamepadTeleop,
                                         decode_events)
from robodiff.hal.teleop.keyboard import ArmKeyboardTeleop
from robodiff.hal.teleop.spacemouse import SpaceMouseState, SpaceMouseTeleop

REPO = Path(__file__).resolve().parents[1]
TASK = "so101_pick_place"


def spacemouse_report(kind: int, *values: int) -> bytes:
    return bytes([kind]) + struct.pack(f"<{len(values)}h", *values)


def input_events(*events: tuple[int, int, int]) -> bytes:
    """Kernel `struct input_event`s as a gamepad's device file gives them, each followed by a SYN."""
    out = b""
    for t, (kind, code, value) in enumerate(events):
        out += struct.pack("llHHi", 1700000000, 1000 * t, kind, code, value)
        out += struct.pack("llHHi", 1700000000, 1000 * t, 0, 0, 0)  # EV_SYN
    return out


# An Xbox pad's axis ranges as EVIOCGABS reports them (sticks, triggers, d-pad).
XBOX = {ABS_X: AxisRange(-32768, 32767, 128), ABS_Y: AxisRange(-32768, 32767, 128),
        ABS_RX: AxisRange(-32768, 32767, 128), ABS_RY: AxisRange(-32768, 32767, 128),
        ABS_Z: AxisRange(0, 1023), ABS_RZ: AxisRange(0, 1023), ABS_HAT0Y: AxisRange(-1, 1)}


class Recorded:
    """Recorded device input, one batch per control tick (then nothing): a stand-in for the device."""

    def __init__(self, batches, ranges=None):
        self.batches = list(batches)
        self.ranges = ranges
        self.closed = False

    def read(self):
        return self.batches.pop(0) if self.batches else (b"" if self.ranges is not None else [])

    def close(self):
        self.closed = True


# ---- parsing ------------------------------------------------------------------------------------
def test_spacemouse_reports_wired_and_wireless():
    state = SpaceMouseState()
    state.apply(spacemouse_report(1, 30, -350, 175))  # wired: translation ...
    state.apply(spacemouse_report(2, 350, -70, 10))  # ... and rotation in its own report
    np.testing.assert_allclose(state.axes, [30 / 350, -1.0, 0.5, 1.0, -0.2, 10 / 350])
    # forward = -y, left = -x, up = -z, tip down = rx, roll = ry; 30 counts are inside the dead zone
    np.testing.assert_allclose(state.motion(), [1.0, 0.0, -0.5, 1.0, -0.2])
    state.apply(spacemouse_report(1, -175, 0, 0, 0, 0, 350))  # wireless: all six in report 1
    np.testing.assert_allclose(state.axes, [-0.5, 0, 0, 0, 0, 1.0])
    state.apply(bytes([3, 0x02, 0x00]))
    assert state.gripper() == 1.0  # right button: open
    state.apply(bytes([3, 0x01, 0x00]))
    assert state.gripper() == -1.0
    state.apply(bytes([3, 0x00, 0x00]))
    assert state.gripper() == 0.0


def test_gamepad_events_decode_and_normalize():
    raw = input_events((EV_ABS, ABS_Y, -32768), (EV_ABS, ABS_X, 100), (EV_ABS, ABS_RZ, 1023),
                       (EV_ABS, ABS_HAT0Y, 1), (EV_KEY, BTN_SOUTH, 1), (EV_KEY, BTN_SOUTH, 0))
    events = decode_events(raw + b"\x01\x02")  # a torn trailing fragment is not an event
    assert [e for e in events if e[0] != 0] == [(EV_ABS, ABS_Y, -32768), (EV_ABS, ABS_X, 100),
                                                (EV_ABS, ABS_RZ, 1023), (EV_ABS, ABS_HAT0Y, 1),
                                                (EV_KEY, BTN_SOUTH, 1), (EV_KEY, BTN_SOUTH, 0)]
    state = GamepadState(XBOX)
    for event in events:
        state.apply(*event)
    # stick up = forward, the 100-count wobble on x is inside the flat zone, d-pad down tips down
    np.testing.assert_allclose(state.motion(), [1.0, 0.0, 0.0, 1.0, 0.0], atol=1e-4)
    assert state.gripper() == pytest.approx(1.0)  # right trigger fully pressed: open
    assert state.take_presses() == [BTN_SOUTH] and state.take_presses() == []
    assert AxisRange(0, 1023).normalize(0) == 0.0 and AxisRange(-32768, 32767, 128).normalize(32767) == 1.0


# ---- driving the simulated arm --------------------------------------------------------------------
@pytest.fixture
def arm():
    robot = make_robot(TASK, render=False, seed=0)
    robot.connect()
    yield robot
    robot.close()


def drive(robot, teleop, ticks: int, press=None) -> tuple[np.ndarray, np.ndarray]:
    """Run the teleop on the robot for `ticks` control periods; the tool pose before and after.
    `press()` runs once the device is connected (a terminal drops what was typed before)."""
    with teleop:
        teleop.reset(0)
        if press is not None:
            press()
        obs = robot.get_observation()
        before = robot.kinematics.forward(obs["state"])
        for _ in range(ticks):
            robot.send_action(teleop.get_action(obs))
            obs = robot.get_observation()
        for _ in range(15):  # let the servos settle on the last command
            robot.send_action(teleop.get_action(obs))
            obs = robot.get_observation()
    return before, robot.kinematics.forward(obs["state"])


def assert_moved(before, after, axis: int, sign: float, at_least: float) -> None:
    moved = after - before
    assert sign * moved[axis] > at_least, moved
    others = [i for i in range(3) if i != axis] if axis < 3 else [0, 1, 2]
    assert np.all(np.abs(moved[others]) < 0.3 * abs(moved[axis]) + 0.004), moved


# Held for 1/3 s at 0.12 m/s: 4 cm, except upwards, where a tool pointing down reaches 2 cm higher.
@pytest.mark.parametrize("report, axis, sign, at_least", [
    (spacemouse_report(1, 0, -350, 0), 0, 1.0, 0.03),   # push away: forward
    (spacemouse_report(1, -350, 0, 0), 1, 1.0, 0.03),   # push left: +y
    (spacemouse_report(1, 0, 0, -350), 2, 1.0, 0.015),  # pull up: up
    (spacemouse_report(1, 0, 0, 350), 2, -1.0, 0.03),   # press down: down
])
def test_spacemouse_moves_the_tool_the_way_it_is_pushed(arm, report, axis, sign, at_least):
    teleop = SpaceMouseTeleop(arm, reports=Recorded([[report]]))
    before, after = drive(arm, teleop, ticks=10)
    assert_moved(before, after, axis, sign, at_least)
    assert teleop.reports.closed


def test_spacemouse_buttons_open_and_close_the_gripper(arm):
    teleop = SpaceMouseTeleop(arm, reports=Recorded([[bytes([3, 0x01, 0])]]))
    with teleop:
        teleop.reset(0)
        obs = arm.get_observation()
        start = obs["state"][5]
        for _ in range(6):
            action = teleop.get_action(obs)["action"]
        assert action[5] == pytest.approx(max(0.0, start - 6 * 150 / 30), abs=1e-4)  # left button: close


@pytest.mark.parametrize("event, axis, sign, at_least", [
    ((EV_ABS, ABS_Y, -32768), 0, 1.0, 0.03),   # left stick up: forward
    ((EV_ABS, ABS_X, 32767), 1, -1.0, 0.03),   # left stick right: -y
    ((EV_ABS, ABS_RY, 32767), 2, -1.0, 0.03),  # right stick down: down
    ((EV_ABS, ABS_HAT0Y, -1), 3, -1.0, 0.2),   # d-pad up: tip the tool up (0.5 rad)
])
def test_gamepad_moves_the_tool_the_way_it_is_pushed(arm, event, axis, sign, at_least):
    teleop = GamepadTeleop(arm, source=Recorded([input_events(event)], ranges=XBOX))
    before, after = drive(arm, teleop, ticks=10)
    assert_moved(before, after, axis, sign, at_least)


def test_gamepad_buttons_end_or_discard_the_episode(arm):
    teleop = GamepadTeleop(arm, source=Recorded([input_events((EV_KEY, BTN_EAST, 1), (EV_KEY, BTN_SOUTH, 1))],
                                                ranges=XBOX))
    with teleop:
        teleop.reset(0)
        teleop.get_action(arm.get_observation())
        assert [teleop.pop_event(), teleop.pop_event(), teleop.pop_event()] == ["discard", "done", None]


# 8 presses of 5 mm; backwards, the wrist's limit stops the tool after 6
@pytest.mark.parametrize("keys, axis, sign, at_least", [(b"w" * 8, 0, 1.0, 0.035), (b"\x1b[D" * 8, 1, 1.0, 0.035),
                                                        (b"s" * 8, 0, -1.0, 0.025), (b"f" * 8, 2, -1.0, 0.035)])
def test_keys_move_the_tool_the_way_they_say(arm, pty_pair, keys, axis, sign, at_least):
    master, slave = pty_pair
    teleop = make_teleop("keyboard", arm)
    assert isinstance(teleop, ArmKeyboardTeleop)  # the keyboard drives an arm's tool, not a 2-D target
    teleop.terminal.fd = slave
    before, after = drive(arm, teleop, ticks=3, press=lambda: os.write(master, keys))
    assert_moved(before, after, axis, sign, at_least)


def test_the_tool_stops_where_the_arm_cannot_follow(arm):
    teleop = SpaceMouseTeleop(arm, reports=Recorded([[spacemouse_report(1, 0, 0, -350)]]))
    low, high = arm.action_limits["action"]
    with teleop:
        teleop.reset(0)
        obs = arm.get_observation()
        for _ in range(150):  # 5 s straight up at full deflection: far beyond the arm's reach
            action = teleop.get_action(obs)["action"]
            arm.send_action({"action": action})
            obs = arm.get_observation()
        assert np.all(action >= low - 1e-3) and np.all(action <= high + 1e-3)
        pose = arm.kinematics.forward(action)
        assert arm.kinematics.inverse(pose, action).reached  # the target is still one the arm reaches


# ---- absent libraries and devices ----------------------------------------------------------------
@pytest.mark.parametrize("name, module, needle", [("spacemouse", "hid", "needs the hidapi library"),
                                                  ("gamepad", "evdev", "needs the evdev library")])
def test_a_missing_library_is_one_line(arm, monkeypatch, name, module, needle):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UserError, match=f"teleop={name} {needle}.*not installed") as err:
        make_teleop(name, arm).connect()
    assert "\n" not in str(err.value)


def test_an_absent_spacemouse_names_what_was_looked_for(arm, monkeypatch):
    monkeypatch.setitem(sys.modules, "hid", types.SimpleNamespace(enumerate=lambda: []))
    with pytest.raises(UserError, match="no SpaceMouse found \\(looked for USB HID vendor:product 046d:c626, "):
        make_teleop("spacemouse", arm).connect()


def test_an_absent_gamepad_names_what_was_looked_for(arm, monkeypatch):
    monkeypatch.setitem(sys.modules, "evdev", types.SimpleNamespace(list_devices=lambda: []))
    with pytest.raises(UserError, match="no gamepad found among /dev/input/event\\* \\(looked for .*BTN_SOUTH"):
        make_teleop("gamepad", arm).connect()


def test_arm_devices_need_an_arm():
    robot = make_robot("push_block", render=False)
    with pytest.raises(UserError, match="teleop=gamepad moves an arm's tool, and sim robot of task 'push_block' "
                                        "has no kinematics"):
        make_teleop("gamepad", robot)


# ---- a keyboard session in a pseudo-terminal -----------------------------------------------------
def test_a_keyboard_session_records_an_episode_in_a_pseudo_terminal(tmp_path, pty_pair):
    master, slave = pty_pair
    out = tmp_path / "demo.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "robodiff", "collect", f"task={TASK}", "teleop=keyboard",
                             "episodes=1", f"out={out}", "--json"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in proc.stderr:  # the session prints its keys once the terminal is in cbreak mode
            if b"keys:" in line:
                break
        os.write(master, b"w" * 6 + b"r" * 2 + b"c" * 3)
        os.write(master, b"\r")  # Enter: keep the episode
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["episodes"] == 1
    with EpisodeStore.open(out) as store:
        episode = store.read_episode(0)
        assert set(store.features) >= {"front", "wrist", "state", "cube_pose", "action"}
    robot = make_robot(TASK, render=False)
    # from where the arm started (the keys may all land on the first tick)
    first, last = (robot.kinematics.forward(a) for a in (episode["state"][0], episode["action"][-1]))
    assert last[0] - first[0] == pytest.approx(0.03, abs=1e-3)  # 6 presses forward,
    assert last[2] - first[2] == pytest.approx(0.01, abs=1e-3)  # 2 up
    assert episode["action"][-1][5] == pytest.approx(max(0.0, episode["state"][0][5] - 30), abs=1e-3)
