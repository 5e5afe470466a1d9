"""How action chunks become one action per control tick: `sync`, `async`, `rtc` and `ensemble`.

A policy returns a chunk `(horizon, A)` whose entry `n_obs_steps - 1` is the action for the newest
observation, taken at `t_obs`; entry `n_obs_steps - 1 + i` is stamped `t_obs + i * dt`.

- `sync`: infer on the control thread when the queue is empty, then play `n_action_steps` actions.
  The robot holds its last target while the policy thinks (the safety watchdog holds it explicitly
  if that takes longer than `watchdog_s`); each inference longer than a period is a stall.
- `async`: infer in the background (a process under `robodiff deploy`, else a thread), launched
  when the actions left to play no longer cover the measured latency (90th percentile of the
  recent inferences, plus a margin). When the chunk arrives, its actions whose time has passed are
  dropped (counted) and the rest replace the plan from the current tick on. If inference is slower
  than the whole remaining plan, the robot holds.
- `rtc`: real-time chunking. As `async`, but each inference is given the actions that will still
  execute while it runs, and the rest of the plan with weights falling to 0 (`AsyncExecutor.guide`),
  and the policy (`GuidedPolicy`, the DDIM fast sampler) inpaints them into the new chunk: the new
  chunk keeps the actions under way and blends from the old plan into its own. See
  docs/deployment.md.
- `ensemble`: ACT temporal ensembling. Inference runs back to back in the background; every tick
  averages all chunks' predictions for that tick with weights `exp(-k * i)`, `i = 0` the oldest.
  Averaging is only right for unimodal policies: the mean of two good modes of a diffusion policy
  (left or right around an obstacle) is a bad action. Use it with regression-style policies.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robodiff.control.clock import percentiles_ms
from robodiff.control.history import ObservationHistory
from robodiff.control.inference import (WARM_UP_TIMEOUT_S, BackgroundInference, ChunkResult,
                                        ProcessInference, SimulatedLatency, drain, infer)
from robodiff.control.sources import ActionSource
from robodiff.errors import ConfigError
from robodiff.policy.base import Policy
from robodiff.policy.guided import Guide, require_guided

EXECUTORS = ("sync", "async", "rtc", "ensemble")


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise ConfigError(f"executor '{name}' is not one of {', '.join(EXECUTORS)}")


def check_n_action_steps(policy: Any, n_action_steps: int) -> int:
    """`n_action_steps` (the command's value, resolved there) must fit the policy's chunk."""
    most = int(policy.horizon) - int(policy.n_obs_steps) + 1
    if not 1 <= int(n_action_steps) <= most:
        raise ConfigError(f"n_action_steps={n_action_steps} must be in 1..{most} (horizon "
                          f"{policy.horizon}, n_obs_steps {policy.n_obs_steps})")
    return int(n_action_steps)


@dataclass(frozen=True)
class TimedAction:
    t: float
    action: np.ndarray


def timestamp_chunk(chunk: np.ndarray, t_obs: float, n_obs_steps: int, dt: float,
                    n_steps: int | None = None) -> list[TimedAction]:
    """Entries from `n_obs_steps - 1` on, stamped `t_obs + i * dt` (at most `n_steps` of them):
    the one place a chunk becomes timed actions."""
    chunk = np.asarray(chunk)
    if chunk.ndim != 2:
        raise ValueError(f"a policy chunk must be (horizon, action_dim), got shape {chunk.shape}")
    actions = chunk[n_obs_steps - 1:]
    if n_steps is not None:
        actions = actions[:n_steps]
    return [TimedAction(t_obs + i * dt, a) for i, a in enumerate(actions)]


class LatencyEstimate:
    """Online inference latency: a high percentile of a sliding window of recent measurements."""

    def __init__(self, window: int = 50, quantile: float = 0.9):
        self.samples: deque[float] = deque(maxlen=window)
        self.all: list[float] = []
        self.quantile = quantile
        self._estimate = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.all.append(seconds)
        # Computed here, once per inference, not on every control tick that asks for it.
        self._estimate = float(np.quantile(self.samples, self.quantile))

    def estimate(self) -> float:
        return self._estimate


class Executor(ActionSource):
    """A policy as an action source: `act(now, obs, t_obs)` once per tick pushes the observation
    into the policy's history and returns the action to send, or None (hold). `clock` is the
    loop's (`now`, `sleep`, `period_s`)."""

    name = "executor"

    def __init__(self, policy: Policy, clock: Any, n_action_steps: int):
        self.policy = policy
        self.clock = clock
        self.dt = float(clock.period_s)
        self.n_obs_steps = int(policy.n_obs_steps)
        self.horizon = int(policy.horizon)
        self.n_action_steps = int(n_action_steps)
        self.history = ObservationHistory(self.n_obs_steps, keys=list(policy.obs_keys))
        self.latency = LatencyEstimate()
        self.inferences = 0
        self.dropped = 0
        # Ticks with no action to play after the first chunk arrived (the robot held).
        self.stalls = 0

    def act(self, now: float, obs: dict[str, Any], t_obs: float) -> np.ndarray | None:
        self.history.push(obs)
        return self._act(now, t_obs)

    def _act(self, now: float, t_obs: float) -> np.ndarray | None:
        raise NotImplementedError

    def warm_up(self, obs: dict[str, Any], stop: Callable[[], bool] | None = None) -> None:
        """One inference on `obs` whose result is discarded, before the robot moves: first calls
        pay for allocations, autotuning and CUDA graph capture. A background executor stops
        waiting for it when `stop()` turns true (an e-stop); one inferring on this thread cannot."""
        self.history.push(obs)
        self._warm_up(self.history.stacked(), stop)
        self.history.reset()

    def _warm_up(self, obs_history: dict[str, np.ndarray], stop: Callable[[], bool] | None) -> None:
        infer(self.policy, obs_history, None)

    def reset(self) -> None:
        """Between episodes: forget the observations and the planned actions (absolute targets
        from a state a reset just replaced). Latency estimates and counters stay: run totals."""
        self.history.reset()
        self._forget()

    def _forget(self) -> None:
        """Drop every planned action."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"executor": self.name, "inferences": self.inferences,
                **percentiles_ms(self.latency.all, "inference"),
                "dropped_actions": self.dropped, "stalls": self.stalls}


class SyncExecutor(Executor):
    """Infers on the loop's thread, taking `delay_s` more of the clock (`clock.sleep`): on a
    simulated clock that is the whole simulated latency, the robot holding meanwhile."""

    name = "sync"

    def __init__(self, policy: Policy, clock: Any, n_action_steps: int, delay_s: float = 0.0):
        super().__init__(policy, clock, n_action_steps)
        self.delay_s = float(delay_s)
        self.queue: deque[np.ndarray] = deque()

    def _forget(self) -> None:
        self.queue.clear()

    def _act(self, now: float, t_obs: float) -> np.ndarray | None:
        if not self.queue:
            start = self.clock.now()
            chunk = infer(self.policy, self.history.stacked(), None)
            if self.delay_s > 0:
                self.clock.sleep(self.delay_s)
            latency = self.clock.now() - start
            self.latency.add(latency)
            self.inferences += 1
            # Here a stall is an inference that made the loop miss its next tick.
            self.stalls += int(latency > self.dt)
            # The robot held still meanwhile, so the plan still starts where the robot is: play it
            # from its first step rather than skipping the steps that "passed" during inference.
            self.queue.extend(ta.action for ta in timestamp_chunk(
                chunk, t_obs, self.n_obs_steps, self.dt, self.n_action_steps))
        return self.queue.popleft()


class BackgroundExecutor(Executor):
    """An executor fed by a background `backend` (`busy`, `submit(obs, t_obs, guide=None)`,
    `poll()`, `close()`)."""

    def __init__(self, policy: Policy, clock: Any, n_action_steps: int, backend: Any):
        super().__init__(policy, clock, n_action_steps)
        self.backend = backend

    # Whether inferences are guided (they then have a CUDA graph of their own to warm up).
    guided = False

    def reset(self) -> None:
        drain(self.backend)
        super().reset()

    def _warm_up(self, obs_history: dict[str, np.ndarray], stop: Callable[[], bool] | None) -> None:
        self.backend.submit(obs_history, 0.0, guide=Guide.empty() if self.guided else None)
        drain(self.backend, WARM_UP_TIMEOUT_S, stop)

    def _receive(self) -> ChunkResult | None:
        """The chunk that arrived since the last tick, if any, with its latency accounted."""
        result = self.backend.poll()
        if result is not None:
            self.latency.add(result.latency_s)
            self.inferences += 1
        return result

    def _take_due(self, queue: deque[TimedAction], now: float) -> TimedAction | None:
        """This tick's action from a time-ordered queue; actions whose time has passed are dropped."""
        while queue and queue[0].t < now - self.dt / 2:
            queue.popleft()
            self.dropped += 1
        if queue and queue[0].t <= now + self.dt / 2:
            return queue.popleft()
        return None

    def close(self) -> None:
        self.backend.close()


class AsyncExecutor(BackgroundExecutor):
    """See the module docstring."""

    name = "async"

    def __init__(self, policy: Policy, clock: Any, n_action_steps: int, backend: Any,
                 margin_steps: int = 1):
        super().__init__(policy, clock, n_action_steps, backend)
        self.margin_steps = int(margin_steps)
        self.plan: deque[TimedAction] = deque()
        # The last actions sent, at the ticks they were sent: a guided inference's plan under way
        # starts at the observation, which may be older than the current tick.
        self.played: deque[TimedAction] = deque(maxlen=self.horizon)
        self.played_from_chunk = 0
        self.splices = 0

    def _forget(self) -> None:
        self.plan.clear()
        self.played.clear()
        self.played_from_chunk = 0

    def lead_steps(self) -> int:
        """Ticks that the next inference is expected to take, plus a margin."""
        return math.ceil(self.latency.estimate() / self.dt) + self.margin_steps

    def _act(self, now: float, t_obs: float) -> np.ndarray | None:
        result = self._receive()
        if result is not None:
            self._splice(result)
        due = self._take_due(self.plan, now)
        if due is not None:
            self.played.append(TimedAction(now, due.action))
            self.played_from_chunk += 1
        else:
            self.stalls += int(self.inferences > 0)
        if not self.backend.busy and self._due():
            self._launch(now, t_obs)
        return None if due is None else due.action

    def _due(self) -> bool:
        lead = self.lead_steps()
        return (not self.plan or len(self.plan) <= lead
                or self.played_from_chunk >= self.n_action_steps - lead)

    def _launch(self, now: float, t_obs: float) -> None:
        self.backend.submit(self.history.stacked(), t_obs)

    def guide(self, now: float, t_obs: float) -> Guide:
        """The plan under way for the new chunk's slots `t_obs + (j + 1) * dt`: for each, the
        action played at the tick that will play that slot (`_take_due`'s rule), sent already
        when that tick has passed (an observation older than the tick), else planned; up to the
        first slot without one. Weight 1 for the slots played before the chunk is expected back
        (the latency estimate from now: those play from the old plan whatever the new chunk
        says), then falling linearly to 0 over the rest."""
        frozen, n_hard = [], 0
        arrival = now + self.latency.estimate()
        for j in range(self.horizon - self.n_obs_steps):
            slot = t_obs + (j + 1) * self.dt
            # The tick `_take_due` plays a slot at: the first one at most dt/2 before it.
            tick = now + math.ceil((slot - now) / self.dt - 0.5 - 1e-9) * self.dt
            if tick <= now + self.dt / 2:
                match = next((ta.action for ta in self.played if abs(ta.t - tick) < self.dt / 2), None)
            else:
                entry = next((ta for ta in self.plan if ta.t >= tick - self.dt / 2), None)
                match = entry.action if entry is not None and entry.t <= tick + self.dt / 2 else None
            if match is None:
                break
            frozen.append(match)
            n_hard += int(tick < arrival)
        if not frozen:
            return Guide.empty()
        n_soft = len(frozen) - n_hard
        weights = np.concatenate([np.ones(n_hard), np.linspace(1.0, 0.0, n_soft + 2)[1:-1]])
        return Guide(np.stack(frozen), weights)

    def _splice(self, result: ChunkResult) -> None:
        """Replace the plan by the new chunk; `_take_due` then drops its actions already past."""
        self.plan = deque(timestamp_chunk(result.chunk, result.t_obs, self.n_obs_steps, self.dt))
        self.played_from_chunk = 0
        self.splices += 1


class RTCExecutor(AsyncExecutor):
    """Real-time chunking: `async`, with each inference given the actions that will execute while
    it runs, and the rest of its plan with falling weights (`guide`), and asked for a chunk that
    keeps them and blends from them (`GuidedPolicy`). A new chunk then continues the motion under
    way instead of jumping to another mode of the policy."""

    name = "rtc"
    guided = True

    def _launch(self, now: float, t_obs: float) -> None:
        self.backend.submit(self.history.stacked(), t_obs, guide=self.guide(now, t_obs))


class EnsembleExecutor(BackgroundExecutor):
    """ACT temporal ensembling over back-to-back background inferences (unimodal policies only)."""

    name = "ensemble"

    def __init__(self, policy: Policy, clock: Any, n_action_steps: int, backend: Any,
                 k: float = 0.01):
        super().__init__(policy, clock, n_action_steps, backend)
        self.k = float(k)
        # Oldest first; each is the remaining timestamped actions of one chunk.
        self.chunks: deque[deque[TimedAction]] = deque()

    def _forget(self) -> None:
        self.chunks.clear()

    def _act(self, now: float, t_obs: float) -> np.ndarray | None:
        result = self._receive()
        if result is not None:
            self.chunks.append(deque(timestamp_chunk(result.chunk, result.t_obs, self.n_obs_steps,
                                                     self.dt)))
        if not self.backend.busy:
            self.backend.submit(self.history.stacked(), t_obs)
        predictions = [ta.action for ta in (self._take_due(chunk, now) for chunk in self.chunks)
                       if ta is not None]
        while self.chunks and not self.chunks[0]:
            self.chunks.popleft()
        if not predictions:
            self.stalls += int(self.inferences > 0)
            return None
        weights = np.exp(-self.k * np.arange(len(predictions)))
        return np.tensordot(weights / weights.sum(), np.stack(predictions).astype(np.float64), axes=1)


def make_executor(name: str, policy: Policy, clock: Any, n_action_steps: int, delay_s: float = 0.0,
                  make_policy: Callable[[], Policy] | None = None, torch_threads: int = 1) -> Executor:
    """Executor `name` on the loop's `clock`, every inference taking `delay_s` more of it.

    On a simulated clock inference runs on the caller's thread, handed out `delay_s` later by
    that clock (`SimulatedLatency`); on the real clock a background executor infers in a process
    of its own when `make_policy` (picklable, builds the same policy) is given, else on a thread."""
    check_executor(name)
    if name == "sync":
        return SyncExecutor(policy, clock, n_action_steps, delay_s=delay_s)
    cls = {"async": AsyncExecutor, "rtc": RTCExecutor, "ensemble": EnsembleExecutor}[name]
    if clock.simulated:
        if make_policy is not None:
            raise ValueError("a simulated clock runs inference on the caller's thread, not in a process")
        backend: Any = SimulatedLatency(policy, delay_s, clock.now)
    elif make_policy is not None:
        backend = ProcessInference(make_policy, delay_s, torch_threads, guided=cls.guided)
    else:
        backend = BackgroundInference(policy, delay_s=delay_s, now=clock.now)
    if cls.guided and make_policy is None:
        require_guided(policy)
    return cls(policy, clock, n_action_steps, backend)
