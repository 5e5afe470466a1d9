"""The Feetech bus driver against the bus emulator (real bytes over a pseudo-terminal, MuJoCo
joints): reads, writes that persist, retries of damaged answers counted, a stale value never
silent, a vanished port and a silent servo each one error after which nothing more is sent."""

from __future__ import annotations

import errno
import os
import threading
import time
import tty

import numpy as np
import pytest

from robodiff.errors import UserError
from robodiff.hal.motors import PortVanishedError, ServoFaultError, ServoSilentError
from robodiff.hal.motors import feetech_protocol as fp
from robodiff.hal.motors.bus import open_serial
from tests.emulated_arm import FakeClock, bus_at, emulated

NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def truth(emulator, register="Present_Position"):
    """What the emulated servos hold now (the physics read into their registers)."""
    out = {}
    for name, servo in emulator.arm.servos.items():
        emulator.arm.refresh(servo)
        out[name] = servo.get(register)
    return out


def test_reads_writes_and_settings_that_persist(tmp_path):
    with emulated(tmp_path / "arm") as emulator:
        bus = bus_at(tmp_path / "arm")
        assert all(bus.ping(i) for i in range(1, 7)) and not bus.ping(7)
        assert bus.broadcast_ping() == [1, 2, 3, 4, 5, 6]
        assert bus.read_fresh("Model_Number", NAMES) == dict.fromkeys(NAMES, 777)
        assert bus.read_one("Present_Voltage", "gripper") == 120
        before = bus.read("Present_Position")
        assert before == truth(emulator)
        bus.write_acked("Homing_Offset", {"elbow_flex": -300, "wrist_flex": 250})
        after = bus.read("Present_Position")
        assert after["elbow_flex"] == (before["elbow_flex"] + 300) % 4096
        assert after["wrist_flex"] == (before["wrist_flex"] - 250) % 4096
        assert emulator.arm.servos["elbow_flex"].get("Homing_Offset") == -300
        bus.disconnect()
        bus.connect()  # the servos keep what was written for the emulator's life
        assert bus.read_one("Homing_Offset", "elbow_flex") == -300


def test_goals_move_the_simulated_joints(tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "arm", now=clock) as emulator:
        bus = bus_at(tmp_path / "arm")
        start = bus.read("Present_Position")
        bus.write("Goal_Position", start)  # no jump when torque comes on
        bus.torque(True)
        goal = {**start, "elbow_flex": start["elbow_flex"] + 200, "shoulder_pan": start["shoulder_pan"] - 150}
        bus.write("Goal_Position", goal)
        for _ in range(100):  # one simulated second
            clock.advance(0.01)
            now = bus.read("Present_Position")
        for name in NAMES:
            assert abs(now[name] - goal[name]) <= 6, name
        assert bus.read("Present_Speed")["elbow_flex"] == pytest.approx(0, abs=20)
        bus.write_acked("Max_Position_Limit", {"elbow_flex": start["elbow_flex"] + 50})
        bus.write("Goal_Position", {"elbow_flex": start["elbow_flex"] + 400})
        bus.read("Present_Position")  # answered after the write: the emulator has the goal before time moves
        for _ in range(100):
            clock.advance(0.01)
        assert abs(bus.read("Present_Position")["elbow_flex"] - (start["elbow_flex"] + 50)) <= 6  # clamped
        assert emulator.stats["corrupted"] == 0


def test_damaged_answers_are_retried_and_a_stale_value_is_always_counted(tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "arm", now=clock, seed=3) as emulator:
        bus = bus_at(tmp_path / "arm", retries=1, silent_reads=50, timeout_s=0.01)
        start = bus.read_fresh("Present_Position", NAMES)
        bus.write_acked("Goal_Position", start)
        bus.torque(True)
        bus.write_acked("Goal_Position", {"elbow_flex": start["elbow_flex"] + 400, "shoulder_pan": start["shoulder_pan"] + 400})
        emulator.corrupt_rate, emulator.drop_rate = 0.3, 0.05  # from here on
        previous, stale_seen = dict(start), 0
        for _ in range(150):
            clock.advance(0.004)  # the joints move between reads: a stale value differs from the truth
            counted = bus.stats()["bus_stale_reads"]
            values, now = bus.read("Present_Position"), truth(emulator)
            stale = [n for n in NAMES if values[n] != now[n]]
            assert all(values[n] == previous[n] for n in stale)  # not fresh: the last value read
            assert bus.stats()["bus_stale_reads"] - counted >= len(stale)  # and counted
            stale_seen += len(stale)
            previous = values
        stats = bus.stats()
        assert stats["bus_retries"] > 0 and stats["bus_bad_status_packets"] >= emulator.stats["dropped"]
        assert stale_seen > 0 and stats["bus_stale_reads"] == sum(stats["bus_stale_by_servo"].values())


def test_a_vanished_port_is_one_error_and_nothing_more_is_sent(tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "arm", now=clock, disconnect_after_s=1.0) as emulator:
        bus = bus_at(tmp_path / "arm")
        bus.read("Present_Position")
        clock.advance(1.0)
        for _ in range(6000):  # the emulator's loop sees the time has come (60 s is only a cap)
            if emulator.stats["vanished_t"] is not None:
                break
            time.sleep(0.01)
        with pytest.raises(PortVanishedError, match="arm: the serial port vanished .*nothing more is sent") as err:
            bus.read("Present_Position")
        assert "\n" not in str(err.value) and not (tmp_path / "arm").exists()
        writes = []
        bus._port.write = writes.append
        with pytest.raises(PortVanishedError):
            bus.write("Goal_Position", {"gripper": 2000})
        with pytest.raises(PortVanishedError):
            bus.torque(False)
        assert writes == [] and bus.fault is not None


def test_a_silent_servo_is_named_after_the_retries_and_nothing_more_is_sent(tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "arm", now=clock, silent="elbow_flex", silent_after_s=1.0) as emulator:
        bus = bus_at(tmp_path / "arm", retries=2, silent_reads=3, timeout_s=0.01)
        first = bus.read("Present_Position")
        emulator.silent_after_s = 0.0  # from now on
        for _ in range(2):  # the others are fresh meanwhile; the silent one is stale and counted
            values = bus.read("Present_Position")
            assert values == {**truth(emulator), "elbow_flex": first["elbow_flex"]}
        assert bus.stats()["bus_stale_by_servo"] == {**dict.fromkeys(NAMES, 0), "elbow_flex": 2}
        with pytest.raises(ServoSilentError, match="servo 'elbow_flex' \\(id 3\\) stopped answering .*3 reads in a "
                                                   "row.*2 retries each.*the other servos hold"):
            bus.read("Present_Position")
        sent = emulator.stats["instructions"]
        with pytest.raises(ServoSilentError):
            bus.write("Goal_Position", dict.fromkeys(NAMES, 2048))
        assert emulator.stats["instructions"] == sent


def test_a_servo_reporting_overload_is_named(pty_pair):
    master, slave = pty_pair
    tty.setraw(slave)
    received = []

    def servos():  # answer the one instruction as six servos would, the gripper overloaded
        received.append(os.read(master, 64))
        os.write(master, b"".join(fp.status(i, 0x20 if i == 6 else 0, (2000).to_bytes(2, "little"))
                                  for i in range(1, 7)))

    answer = threading.Thread(target=servos)
    answer.start()
    bus = bus_at(os.ttyname(slave))
    with pytest.raises(ServoFaultError, match="servo 'gripper' \\(id 6\\) reports overload"):
        bus.read("Present_Position")
    answer.join()
    assert received == [fp.sync_read(56, 2, [1, 2, 3, 4, 5, 6])]


@pytest.mark.parametrize("code, needle", [(errno.EACCES, "permission denied; on Linux add yourself to the dialout group"),
                                          (errno.ENOENT, "no such port"), (errno.EBUSY, "busy")])
def test_a_port_that_cannot_be_opened_says_why_in_one_line(monkeypatch, code, needle):
    import serial

    def refuse(*_, **__):
        raise serial.SerialException(code, f"could not open port /dev/ttyACM0: [Errno {code}] {os.strerror(code)}")

    monkeypatch.setattr(serial, "Serial", refuse)
    with pytest.raises(UserError, match=needle) as err:
        open_serial("/dev/ttyACM0", 1_000_000, 0.02)
    assert str(err.value).startswith("/dev/ttyACM0: ") and "\n" not in str(err.value)


def test_values_outside_a_register_are_refused_before_sending(tmp_path):
    with emulated(tmp_path / "arm") as emulator:
        bus = bus_at(tmp_path / "arm")
        sent = emulator.stats["instructions"]
        with pytest.raises(UserError, match="Homing_Offset: 3000 is outside -2047..2047"):
            bus.write_acked("Homing_Offset", {"gripper": 3000})
        assert emulator.stats["instructions"] == sent
        assert np.all([v == 0 for v in bus.read_fresh("Homing_Offset", NAMES).values()])


def test_the_emulator_survives_garbage_on_the_line(tmp_path):
    """Noise on the bus (random bytes, headers of packets that never finish, writes past the
    control table): the emulated servos resynchronise and the driver's retries get through."""
    rng = np.random.default_rng(5)
    with emulated(tmp_path / "arm") as emulator:
        noise = os.open(tmp_path / "arm", os.O_WRONLY | os.O_NOCTTY)
        os.write(noise, bytes(rng.integers(0, 256, 3000, dtype=np.uint8)) + fp.write(1, 250, b"\x01" * 20)
                 + b"\xff\xff\x01\xf0\x03")
        os.close(noise)
        bus = bus_at(tmp_path / "arm")
        assert bus.read_fresh("Present_Position", NAMES) == truth(emulator)
        assert emulator.arm.servos["shoulder_pan"].get("Model_Number") == 777
