"""The person at an emulated arm: where a hand moves the limp joints, over time.

A person starts when the program first switches the arm's torque off (a person waits for the arm
to go limp), and gives joint targets in the MJCF's radians, in the hardware YAML's joint order:
- `CalibrationPerson`: holds the middle pose, then sweeps the joints one after the other to both
  ends of their range and back (all at once, a folded arm would hit itself), then holds the
  middle again (what `robodiff hardware calibrate` asks for);
- `TeleopPerson`: moves every joint of a leader arm around the middle, sinusoids peaking at a
  given speed (60 deg/s: a brisk demonstration);
- `RecordedPerson`: replays recorded joint positions (looped).
"""

from __future__ import annotations

import numpy as np


class Person:
    done_s: float | None = None  # when the person has finished (None: never)

    def target(self, t: float) -> np.ndarray:
        """Joint targets (radians) `t` seconds after the person started."""
        raise NotImplementedError


class CalibrationPerson(Person):
    def __init__(self, low: np.ndarray, high: np.ndarray, middle: np.ndarray | None = None,
                 hold_s: float = 2.0, sweep_s: float = 3.0) -> None:
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.middle = (self.low + self.high) / 2 if middle is None else np.asarray(middle, np.float64)
        self.hold_s, self.sweep_s = float(hold_s), float(sweep_s)  # sweep_s: per joint

    @property
    def done_s(self) -> float:
        """When every sweep is over and the arm is back in the middle."""
        return self.hold_s + self.sweep_s * len(self.middle)

    def target(self, t: float) -> np.ndarray:
        pose = self.middle.copy()
        j, u = divmod((t - self.hold_s) / self.sweep_s, 1.0)
        if t <= self.hold_s or j >= len(pose):
            return pose
        j = int(j)
        # middle -> high, a pause there, high -> low, a pause, low -> middle; eased, and the
        # pauses let the joint settle against each end
        legs = [(0.0, 0.2, pose[j], self.high[j]), (0.2, 0.35, self.high[j], self.high[j]),
                (0.35, 0.65, self.high[j], self.low[j]), (0.65, 0.8, self.low[j], self.low[j]),
                (0.8, 1.0, self.low[j], pose[j])]
        start, end, a, b = next(leg for leg in legs if u <= leg[1])
        pose[j] = a + (b - a) * (1 - np.cos(np.pi * (u - start) / (end - start))) / 2
        return pose


class TeleopPerson(Person):
    def __init__(self, low: np.ndarray, high: np.ndarray, speed_deg_s: float = 60.0, seed: int = 0) -> None:
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        rng = np.random.default_rng(seed)
        self.middle = (low + high) / 2
        self.amplitude = (high - low) / 4  # half of each joint's half-range
        self.omega = np.radians(speed_deg_s) / self.amplitude  # peak speed = amplitude * omega
        self.phase = rng.uniform(0, 2 * np.pi, len(low))

    def target(self, t: float) -> np.ndarray:
        return self.middle + self.amplitude * np.sin(self.omega * t + self.phase)


class RecordedPerson(Person):
    def __init__(self, times: np.ndarray, radians: np.ndarray) -> None:
        self.times = np.asarray(times, np.float64) - float(times[0])
        self.radians = np.asarray(radians, np.float64)
        if len(self.times) < 2 or self.times[-1] <= 0:
            raise ValueError("a recorded trajectory needs at least two time-stamped positions")

    def target(self, t: float) -> np.ndarray:
        t = t % self.times[-1]
        return np.array([np.interp(t, self.times, column) for column in self.radians.T])
