"""`robodiff hardware ...`: find-port on injected port listings, setup-motors one servo at a time on
an emulated bus, calibrate in a terminal against an emulator process whose person does as told,
and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware
from robodiff.hal.robots.arm_bus import BusSettings
from robodiff.hal.robots.setup import find_port, setup_motors
from tests.emulated_arm import emulated

REPO = Path(__file__).resolve().parents[1]
NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "robodiff", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)


def listings(*ports_over_time):
    calls = iter(ports_over_time)
    return lambda: next(calls)


def test_find_port_is_the_one_that_disappears():
    asked = []
    port = find_port(listings(["/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyS0"], ["/dev/ttyACM0", "/dev/ttyS0"]),
                     asked.append)
    assert port == "/dev/ttyACM1" and "Unplug the arm's USB cable" in asked[0]
    with pytest.raises(UserError, match="no port disappeared: unplug exactly the arm's USB cable"):
        find_port(listings(["/dev/ttyACM0"], ["/dev/ttyACM0"]), lambda _: None)
    with pytest.raises(UserError, match="2 ports disappeared \\(/dev/ttyACM0, /dev/ttyACM1\\)"):
        find_port(listings(["/dev/ttyACM0", "/dev/ttyACM1"], []), lambda _: None)
    with pytest.raises(UserError, match="no serial ports at all"):
        find_port(listings([]), lambda _: None)


def test_setup_motors_gives_each_new_servo_its_id_one_at_a_time(tmp_path):
    hardware = load_hardware("so101", {"port": str(tmp_path / "arm")})
    settings = BusSettings.of(hardware, "follower")
    with emulated(tmp_path / "arm") as emulator:
        servos = emulator.arm.servos
        for servo in servos.values():  # factory-new: every servo at id 1
            servo.set("ID", 1)
            servo.set("Baud_Rate", 3)
        plugged = []

        def person(message):  # plugs in the servo the prompt names, and only that one
            name = next(n for n in NAMES if f"'{n}'" in message)
            emulator.wired = {name}
            plugged.append(name)

        ids = setup_motors(hardware, settings, person, lambda _: None)
        assert plugged == NAMES[::-1]
        assert ids == {n: i + 1 for i, n in enumerate(NAMES)}
        assert {n: s.get("ID") for n, s in servos.items()} == ids
        assert all(s.get("Baud_Rate") == 0 for s in servos.values())
        emulator.wired = {"gripper", "elbow_flex"}
        with pytest.raises(UserError, match="2 servos answer \\(ids 3, 6\\): connect only the 'gripper' servo"):
            setup_motors(hardware, settings, lambda _: None, lambda _: None)
        emulator.wired = set()
        with pytest.raises(UserError, match="no servo answers at any baud rate: is the 'gripper' servo connected"):
            setup_motors(hardware, settings, lambda _: None, lambda _: None)


def read_until(stream, needle):
    """Lines of a child's stderr until one holds `needle` (the prompt the person waits for)."""
    seen = []
    for line in iter(stream.readline, ""):
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"never saw {needle!r}: {''.join(seen)}")


def test_calibrate_in_a_terminal_against_an_emulator_process(tmp_path):
    link, folder = tmp_path / "follower", tmp_path / "calibration"
    hold_s, sweep_s = 2.0, 0.8
    emulator = subprocess.Popen([sys.executable, "-m", "robodiff", "hardware", "emulate", f"link={link}",
                                 "person=calibration", f"hold_s={hold_s}", f"sweep_s={sweep_s}"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stderr=subprocess.PIPE, text=True)
    try:
        read_until(emulator.stderr, "Ctrl-C stops")
        calibrate = subprocess.Popen([sys.executable, "-m", "robodiff", "hardware", "calibrate", f"port={link}",
                                      "--json"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO), "ROBODIFF_CALIBRATION_DIR": str(folder)})
        read_until(calibrate.stderr, "middle of its range")
        calibrate.stdin.write("\n")  # the person holds the middle pose for hold_s after the torque went off
        calibrate.stdin.flush()
        read_until(calibrate.stderr, "through its whole range")
        read_until(emulator.stderr, "has finished")  # ... then sweeps the joints one by one
        out, err = calibrate.communicate("\n", timeout=60)
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    assert calibrate.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    saved = json.loads((folder / "so101_follower.json").read_text())
    assert report["path"] == str(folder / "so101_follower.json") and list(saved) == NAMES
    for name in NAMES:
        joint = saved[name]
        assert abs(joint["homing_offset"]) <= 2047
        assert joint["range_min"] < 2047 < joint["range_max"], name
    assert saved["shoulder_pan"]["range_max"] - saved["shoulder_pan"]["range_min"] > 1000  # swept (fast here)
    assert "saved " in err and "shoulder_pan" in err


@pytest.mark.parametrize("args, needle", [
    (["emulate"], "`link=` is required"),
    (["emulate", "link=/tmp/x", "arm=middle"], "arm=middle: follower or leader"),
    (["emulate", "link=/tmp/x", "silent=nose"], "silent=nose: not a motor of so101"),
    (["emulate", "link=/tmp/x", "person=robot"], "person=robot: one of none, calibration, teleop, recorded"),
    (["emulate", "link=/tmp/x", "corrupt_rate=2"], "'corrupt_rate' must be >= 0 and <= 1"),
    (["emulate", "link=/tmp/x", "robot.prot=1"], "robot.prot: .*so101.yaml has no such setting"),
    (["calibrate", "port=/nonexistent/tty"], "/nonexistent/tty: no such port"),
    (["calibrate", "arm=third"], "arm=third: one of follower, leader"),
    (["setup-motors", "port=/nonexistent/tty"], "stdin closed: this step needs a person at the terminal"),
    (["blink"], "choose one of: emulate, calibrate, find-port, setup-motors"),
])
def test_bad_input_is_one_line(args, needle):
    proc = cli("hardware", *args, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.endswith("then press Enter.")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.search(needle, lines[0]), lines[0]


def test_setup_motors_names_a_port_that_is_not_there():
    proc = cli("hardware", "setup-motors", "port=/nonexistent/tty", input="\n")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        "robodiff hardware: error: /nonexistent/tty: no such port (is the arm plugged in and powered? " \
        "`robodiff hardware find-port` finds it)"


def test_a_leader_replays_a_recorded_trajectory(tmp_path):
    """`hardware emulate arm=leader trajectory=STORE`: the person moves the joints as recorded
    (in the units the store declares), and the leader reads that back through its bus."""
    import numpy as np

    from robodiff.commands.hardware.emulate import recorded
    from robodiff.data.store import EpisodeStore
    from robodiff.features import Feature
    from tests.emulated_arm import FakeClock, bus_at

    hardware = load_hardware("so101")
    t = np.arange(0, 3, 1 / 30)
    state = np.stack([20 * np.sin(t), -15 * t, 10 * np.cos(t), 5 * t, 30 * np.sin(2 * t), 50 + 20 * np.sin(t)], 1)
    features = {"state": Feature("lowdim", (6,), units="degrees"), "action": Feature("action", (6,), units="degrees"),
                "timestamp": Feature("timestamp", (), "float64")}
    with EpisodeStore.create(tmp_path / "rec.zarr", features, fps=30) as store:
        store.append_episode({"state": state.astype(np.float32), "action": state.astype(np.float32), "timestamp": t})
    person = recorded(str(tmp_path / "rec.zarr"), 0, hardware)
    np.testing.assert_allclose(hardware.units.to_units(person.target(1.5)), state[45], atol=1e-3)
    clock = FakeClock()
    with emulated(tmp_path / "leader", now=clock, person=lambda low, high: person) as emulator:
        bus = bus_at(tmp_path / "leader")
        bus.torque(False)  # the person starts when the program lets go of the arm
        for _ in range(150):
            clock.advance(0.01)
            bus.read("Present_Position")
        joints = hardware.units.to_units(emulator.arm.joint_radians())
    np.testing.assert_allclose(joints[:4], state[45, :4], atol=2.0)  # followed by hand, a little behind
