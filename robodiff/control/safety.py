"""The safety layer between the episode loop and the robot; always on.

- `SafetyFilter`: per-step action filter. Non-finite actions are rejected (the last safe action is
  held), targets are clamped to the robot's limits, and (`rate_limit`, on for deploy, off for eval and
  collect) the change per step is bounded.
- `EStop`: an emergency stop set by SIGINT/SIGTERM or by `q`/space on an interactive terminal.
- `SafeRobot`: owns the robot while the loop runs. Every action goes through the filter; what it
  returns is what `robot.send_action` returned (what was really sent, so that is what is recorded).
  A watchdog thread holds the robot (`robot.hold()`: it commands its current position, and must be
  thread-safe) when no fresh action arrived within `watchdog_s` (a hung or slow policy on the
  control thread) and at once on an e-stop, even while the control thread is blocked in inference.
  After a hold the rate limit counts from the held position, so the next action cannot jump.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

from robodiff.config import bounded, unbounded
from robodiff.errors import ConfigError
from robodiff.hal.base import Robot, robot_limits


@dataclass
class SafetyConfig:
    """`safety.*` of collect, eval and deploy (defaults in their YAML)."""

    low: Optional[list[float]] = unbounded()
    high: Optional[list[float]] = unbounded()
    rate_limit: Optional[bool] = MISSING  # None: on when the robot publishes a per-step bound
    max_delta: Optional[Any] = bounded(gt=0)  # one bound for every joint, or a list of them
    max_delta_fraction: float = bounded(gt=0, le=1)
    watchdog_s: Optional[float] = bounded(gt=0)


@dataclass(frozen=True)
class ActionLimits:
    """Bounds of the `action` vector in robot units and, with the rate limit on, the largest
    change allowed per step (None: no rate limit)."""

    low: np.ndarray
    high: np.ndarray
    max_delta: np.ndarray | None = None

    def __post_init__(self) -> None:
        low, high = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (self.low, self.high))
        if len(low) != len(high):
            raise ConfigError(f"safety limits have mismatched lengths: low {len(low)}, high {len(high)}")
        # Unbounded entries (a gym env's Box) are allowed without a rate limit, which needs a range.
        finite = np.all(np.isfinite(low)) and np.all(np.isfinite(high))
        if np.any(np.isnan(low)) or np.any(np.isnan(high)) or not np.all(low <= high) or (
                self.max_delta is not None and not finite):
            raise ConfigError(f"safety limits must be {'finite ' if self.max_delta is not None else ''}"
                              f"with low <= high (low {low.tolist()}, high {high.tolist()})")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.max_delta is None:
            return
        delta = np.asarray(self.max_delta, dtype=np.float64).reshape(-1)
        if len(delta) == 1:
            delta = np.repeat(delta, len(low))
        if len(delta) != len(low):
            raise ConfigError(f"safety limits have mismatched lengths: low {len(low)}, "
                              f"max_delta {len(delta)}")
        if not (np.all(np.isfinite(delta)) and np.all(delta > 0)):
            raise ConfigError(f"safety.max_delta must be positive and finite, got {delta.tolist()}")
        object.__setattr__(self, "max_delta", delta)

    @property
    def dim(self) -> int:
        return len(self.low)


def resolve_limits(robot: Robot, safety: Any, action_key: str = "action") -> ActionLimits:
    """`safety` is the run's `safety.*` block: its values win over the robot's; without a
    per-step bound, `max_delta_fraction` of the range; no bound at all with `rate_limit` off, and
    with `rate_limit` None, the robot's bound if it publishes one (a physical arm)."""
    published = robot_limits(robot, action_key)
    low = _floats(safety.low) if safety.low is not None else published.get("low")
    high = _floats(safety.high) if safety.high is not None else published.get("high")
    if low is None or high is None:
        raise ConfigError(f"robot '{getattr(robot, 'name', '?')}' publishes no action limits: set "
                          "safety.low= and safety.high=")
    dim = int(np.prod(robot.action_features[action_key].shape))
    for key, value in (("safety.low", low), ("safety.high", high)):
        if np.asarray(value).size not in (1, dim):
            raise ConfigError(f"config key '{key}' has {np.asarray(value).size} values, robot "
                              f"'{getattr(robot, 'name', '?')}' actions have {dim}")
    if np.any(np.broadcast_to(np.asarray(low, np.float64), (dim,)) > np.broadcast_to(np.asarray(high, np.float64), (dim,))):
        raise ConfigError(f"safety limits: low {list(np.atleast_1d(low))} above high {list(np.atleast_1d(high))}")
    rate_limit = "max_delta" in published if safety.rate_limit is None else bool(safety.rate_limit)
    if not rate_limit:
        return ActionLimits(np.asarray(low), np.asarray(high))
    max_delta = _floats(safety.max_delta) if safety.max_delta is not None else published.get("max_delta")
    if max_delta is None:
        max_delta = (np.asarray(high, np.float64) - np.asarray(low, np.float64)) * float(safety.max_delta_fraction)
    return ActionLimits(np.asarray(low), np.asarray(high), np.asarray(max_delta))


def _floats(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) else [float(v) for v in value]


class SafetyFilter:
    """Maps any proposed action to one inside the limits and, with a rate limit, within
    `max_delta` of the last one. A proposal is first cast to the robot's action dtype (what the
    robot would see); without a rate limit the clamp is exact in float64, so a robot that clamps
    to the same limits again sends exactly what it would have sent unfiltered."""

    def __init__(self, limits: ActionLimits, dtype: str = "float32"):
        self.limits = limits
        self.dtype = np.dtype(dtype)
        self.rate_limit = limits.max_delta is not None
        # Bounds in the output dtype, so rounding on the cast can never step outside them.
        self._low = limits.low.astype(self.dtype) if self.rate_limit else limits.low
        self._high = limits.high.astype(self.dtype) if self.rate_limit else limits.high
        self.last: np.ndarray | None = None
        self.started = False
        self.rejected = 0
        self.clamped = 0
        self.rate_limited = 0

    def _cast(self, action: Any) -> np.ndarray:
        # A value beyond the dtype's range becomes inf here, and is then rejected as non-finite.
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(action).astype(self.dtype).astype(np.float64).reshape(-1)

    def reset(self, current: np.ndarray | None) -> np.ndarray | None:
        """Start from the robot's current position (clamped into the limits). None: the robot
        cannot tell it (a gym env without `state`); then there is nothing to hold until an action
        was sent, and no rate limit to count from."""
        self.started = True
        if current is None:
            if self.rate_limit:
                raise ValueError("the rate limit needs the robot's current position ('state')")
            self.last = None
            return None
        current = self._cast(current)
        if current.shape != (self.limits.dim,) or not np.all(np.isfinite(current)):
            raise ValueError(f"current position must be {self.limits.dim} finite numbers, got {current}")
        self.last = np.clip(current, self._low, self._high)
        if self.rate_limit:
            self.last = self.last.astype(self.dtype)
        return self.last

    def __call__(self, proposed: np.ndarray | None) -> np.ndarray:
        if not self.started:
            raise RuntimeError("SafetyFilter.reset(current_position) was not called")
        if proposed is None:
            return self._held()
        target = self._cast(proposed)
        if target.shape != (self.limits.dim,) or not np.all(np.isfinite(target)):
            self.rejected += 1
            return self._held()
        clipped = np.clip(target, self.limits.low, self.limits.high)
        self.clamped += int(np.any(clipped != target))
        if not self.rate_limit:
            self.last = clipped
            return clipped
        last = self.last.astype(np.float64)
        step = np.clip(clipped - last, -self.limits.max_delta, self.limits.max_delta)
        self.rate_limited += int(np.any(step != clipped - last))
        out = (last + step).astype(self.dtype)
        # After the cast, |out - last| can exceed max_delta by one rounding step: pull it back.
        over = np.abs(out.astype(np.float64) - last) > self.limits.max_delta
        out[over] = np.nextafter(out[over], self.last[over])
        self.last = np.clip(out, self._low, self._high)
        return self.last

    def _held(self) -> np.ndarray:
        if self.last is None:
            raise RuntimeError("nothing to hold: the robot gave no position and no action was sent yet")
        return self.last

    def stats(self) -> dict[str, int]:
        return {"safety_rejected": self.rejected, "safety_clamped": self.clamped,
                "safety_rate_limited": self.rate_limited}


class EStop:
    """Set by SIGINT/SIGTERM or by `q`/space on a terminal; `wait`/`is_set` like an Event.

    A second SIGINT after the e-stop is set raises KeyboardInterrupt, so a user can always get out.
    """

    KEYS = ("q", " ")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._tty_thread: threading.Thread | None = None
        self._tty_stop = threading.Event()
        self._tty_restore: Callable[[], None] | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def trigger(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trigger(signal.Signals(signum).name)

    def install(self, signals: bool = True, terminal: bool = True) -> "EStop":
        """Signal handlers need the main thread; the key reader needs stdin to be a TTY."""
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        if terminal and sys.stdin is not None and sys.stdin.isatty() and os.name == "posix":
            self._start_key_reader()
        return self

    def _start_key_reader(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._tty_restore = lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)

        def read_keys() -> None:
            while not self._tty_stop.is_set() and not self._event.is_set():
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready and os.read(fd, 1).decode(errors="ignore").lower() in self.KEYS:
                    self.trigger("key")

        self._tty_thread = threading.Thread(target=read_keys, name="estop-keys", daemon=True)
        self._tty_thread.start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self._tty_stop.set()
        if self._tty_thread is not None:
            self._tty_thread.join(timeout=1.0)
            self._tty_thread = None
        if self._tty_restore is not None:
            self._tty_restore()
            self._tty_restore = None


class SafeRobot:
    """The only path from the episode loop to the robot while it runs (see the module docstring).

    `watchdog_s=None` (a simulated clock, where wall time means nothing) runs no watchdog thread;
    `estop=None`: nothing outside the loop can stop it.
    """

    def __init__(self, robot: Robot, safety_filter: SafetyFilter, watchdog_s: float | None,
                 estop: EStop | None, action_key: str = "action", now: Callable[[], float] = time.monotonic):
        if watchdog_s is not None and watchdog_s <= 0:
            raise ConfigError(f"safety.watchdog_s must be positive, got {watchdog_s}")
        self.robot = robot
        self.filter = safety_filter
        self.watchdog_s = None if watchdog_s is None else float(watchdog_s)
        self.estop = estop
        self.action_key = action_key
        self.now = now
        self.lock = threading.RLock()
        self.watchdog_trips = 0
        self.holds = 0
        self._last_fresh = now()
        self._held_since_fresh = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, current_position: np.ndarray | None) -> None:
        self.filter.reset(current_position)
        self._last_fresh = self.now()
        self._held_since_fresh = False
        self._stop.clear()  # start() again after stop(), e.g. for the next episode
        if self.watchdog_s is not None:
            self._thread = threading.Thread(target=self._watch, name="safety-watchdog", daemon=True)
            self._thread.start()

    def get_observation(self) -> dict[str, Any]:
        with self.lock:
            return self.robot.get_observation()

    def send(self, proposed: np.ndarray | None) -> dict[str, np.ndarray]:
        """Filter and send one action; `None` re-sends the last safe action (hold in place)."""
        # The filter runs under the lock: a watchdog hold resets it from another thread.
        with self.lock:
            sent = self.robot.send_action({self.action_key: self.filter(proposed)})
            self._last_fresh = self.now()
            self._held_since_fresh = False
        return sent

    def hold(self) -> None:
        """The robot's own hold (command its current position); any thread (see `Robot.hold`)."""
        with self.lock:
            held = self.robot.hold()
            if held is not None and self.action_key in held and np.all(np.isfinite(held[self.action_key])):
                # The robot now targets where it is: rate-limit the next action from there, or
                # it could differ from this command by the lag behind the previous target.
                self.filter.reset(held[self.action_key])
            self.holds += 1
            self._held_since_fresh = True

    def _watch(self) -> None:
        assert self.watchdog_s is not None
        poll = min(self.watchdog_s / 10, 0.01)
        while not self._stop.is_set():
            if self.estop is not None and self.estop.wait(poll):
                if not self._held_since_fresh:
                    self.hold()
                self._stop.wait(poll)
                continue
            if self.estop is None:
                self._stop.wait(poll)
            if not self._held_since_fresh and self.now() - self._last_fresh > self.watchdog_s:
                self.watchdog_trips += 1
                self.hold()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        return {"watchdog_trips": self.watchdog_trips, "holds": self.holds, **self.filter.stats(),
                **self.robot.stats()}
