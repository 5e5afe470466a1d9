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
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robodiff.control.clock import percentiles_ms
from robodiff.control.history import ObservationHistory
from robodiff.errors import ConfigError, UserError, one_line
from robodiff.policy.base import Policy

EXECUTORS = ("sync", "async", "rtc", "ensemble")
INFERENCE_NICE = 10


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise ConfigError(f"executor '{name}' is not one of {', '.join(EXECUTORS)}")


@runtime_checkable
class GuidedPolicy(Protocol):
    """The seam for real-time chunking: infer a chunk that continues a plan under way.

    `frozen` is `(k, A)`: the previous plan's actions for the slots `j + 1` ticks after the newest
    observation, and `weights[j]` in [0, 1] how firmly entry `n_obs_steps + j` of the returned
    `(horizon, A)` chunk must follow `frozen[j]`: 1 (the actions that execute while this inference
    runs) reproduces it, lower weights blend from the old plan into the new chunk's own actions.
    """

    def predict_action_chunk_guided(self, obs_history: dict[str, np.ndarray], frozen: np.ndarray,
                                    weights: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Guide:
    """What a guided inference request carries (see `GuidedPolicy`)."""

    frozen: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> Guide:
        return cls(np.zeros((0, 0)), np.zeros(0))


@dataclass(frozen=True)
class TimedAction:
    t: float
    action: np.ndarray


@dataclass(frozen=True)
class ChunkResult:
    chunk: np.ndarray
    t_obs: float
    latency_s: float


def timestamp_chunk(chunk: np.ndarray, t_obs: float, n_obs_steps: int, dt: float,
                    n_steps: int | None = None) -> list[TimedAction]:
    """Entries from `n_obs_steps - 1` on, stamped `t_obs + i * dt` (at most `n_steps` of them)."""
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


def infer(policy: Policy, obs_history: dict[str, np.ndarray], guide: Guide | None) -> np.ndarray:
    """One chunk; with a `guide` (the plan under way), a guided one (`GuidedPolicy`)."""
    if guide is None:
        return np.asarray(policy.predict_action_chunk(obs_history))
    return np.asarray(policy.predict_action_chunk_guided(obs_history, guide.frozen, guide.weights))


class BackgroundInference:
    """One worker thread running the policy (`infer`: guided when the request carries a guide);
    one request in flight at a time.

    It shares the GIL with the control loop, whose wake-ups then wait for Python code of the
    policy to yield it; `ProcessInference` does not, and is what `robodiff deploy` uses.

    `delay_s` is added to every inference (a sleep, not CPU load) to emulate a slower computer
    in tests and benchmarks (`inference_delay_s=`).
    """

    def __init__(self, policy: Policy, delay_s: float = 0.0,
                 now: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.delay_s = float(delay_s)
        self.now = now
        self._cond = threading.Condition()
        self._request: tuple[dict[str, np.ndarray], float, Guide | None] | None = None
        self._result: ChunkResult | None = None
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, obs_history: dict[str, np.ndarray], t_obs: float,
               guide: Guide | None = None) -> None:
        with self._cond:
            if self._busy:
                raise RuntimeError("an inference is already in flight")
            self._busy = True
            self._request = (obs_history, t_obs, guide)
            self._cond.notify()

    def poll(self) -> ChunkResult | None:
        if self.error is not None:
            raise RuntimeError("policy inference failed on the background thread") from self.error
        with self._cond:
            result, self._result = self._result, None
            return result

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                obs, t_obs, guide = self._request
                self._request = None
            start = self.now()
            try:
                chunk = infer(self.policy, obs, guide)
                if self.delay_s > 0:
                    time.sleep(self.delay_s)
            except BaseException as exc:  # surfaced on the control thread by poll()
                self.error = exc
                self._busy = False
                return
            with self._cond:
                self._result = ChunkResult(chunk, t_obs, self.now() - start)
                self._busy = False

    def close(self, timeout_s: float = 5.0) -> None:
        """Let an inference in flight finish (torch aborts the process if the interpreter exits
        under it); a hung policy is abandoned after `timeout_s` (the thread is a daemon)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)


class SimulatedLatency:
    """Background inference on a simulated clock `now`: each chunk is computed at once, on the
    caller's thread, and handed out `latency_s` later by that clock. With it the executors run
    on a simulation's own clock, deterministically, as if every inference took exactly
    `latency_s` (`robodiff eval executor=E latency_s=L`). Build a new executor on it for each
    episode rather than `reset` one: `drain` waits on the wall clock, and this clock stands
    still meanwhile."""

    def __init__(self, policy: Policy, latency_s: float, now: Callable[[], float]):
        self.policy, self.latency_s, self.clock = policy, float(latency_s), now
        self._pending: tuple[float, ChunkResult] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, obs_history: dict[str, np.ndarray], t_obs: float,
               guide: Guide | None = None) -> None:
        if self._pending is not None:
            raise RuntimeError("an inference is already in flight")
        chunk = infer(self.policy, obs_history, guide)
        self._pending = (self.clock() + self.latency_s, ChunkResult(chunk, t_obs, self.latency_s))

    def poll(self) -> ChunkResult | None:
        # The tolerance absorbs float steps of the clock (k * dt against t + latency).
        if self._pending is not None and self.clock() >= self._pending[0] - 1e-9:
            result, self._pending = self._pending[1], None
            return result
        return None

    def close(self) -> None:
        self._pending = None


def _serve(conn: Connection, make_policy: Callable[[], Policy], delay_s: float,
           torch_threads: int, guided: bool) -> None:
    """The inference process: build the policy, then answer one request at a time."""
    # Below the control loop in the scheduler: it must wake on time, inference only needs to
    # finish within the chunk's slack. No GIL is shared, so this cannot invert priorities.
    os.nice(INFERENCE_NICE)
    # Ctrl-C reaches the whole process group: the parent decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        policy = make_policy()
        if guided:
            require_guided(policy)
    except BaseException as exc:  # reported to the parent as one line
        conn.send(("error", one_line(exc)))
        return
    torch = sys.modules.get("torch")  # set only if the policy uses torch at all
    if torch is not None:
        torch.set_num_threads(torch_threads)
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            start = time.monotonic()
            chunk = infer(policy, *request)
            if delay_s > 0:
                time.sleep(delay_s)
            conn.send(("chunk", (chunk, time.monotonic() - start)))
        except BaseException as exc:
            conn.send(("error", one_line(exc)))
            return


class ProcessInference:
    """`BackgroundInference` in a child process (spawned): the control loop shares no GIL with
    the policy. `make_policy` must be picklable (e.g. a `functools.partial` of a loader)."""

    def __init__(self, make_policy: Callable[[], Policy], delay_s: float = 0.0,
                 torch_threads: int = 1, start_timeout_s: float = 300.0, guided: bool = False):
        """`guided`: the policy must take guided requests (checked as it loads)."""
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, make_policy, delay_s, torch_threads, guided),
                                 name="robodiff-inference", daemon=True)
        self._proc.start()
        child.close()
        self._busy = False
        self._pending_t_obs = 0.0
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"the inference process did not start within {start_timeout_s:.0f} s")
        kind, payload = self._recv()
        if kind != "ready":
            self.close()
            # Mostly a checkpoint that does not load (its weights, its device): the user's to fix.
            raise UserError(f"the inference process could not load the policy: {payload}")

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except EOFError:
            return "error", f"the inference process exited (code {self._proc.exitcode})"

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, obs_history: dict[str, np.ndarray], t_obs: float,
               guide: Guide | None = None) -> None:
        if self._busy:
            raise RuntimeError("an inference is already in flight")
        self._busy = True
        self._pending_t_obs = t_obs
        self._conn.send((obs_history, guide))

    def poll(self) -> ChunkResult | None:
        if not self._busy or not self._conn.poll():
            return None
        kind, payload = self._recv()
        if kind != "chunk":
            raise RuntimeError(f"policy inference failed in the inference process: {payload}")
        self._busy = False
        # The child's own timing: polled once a tick, ours would be rounded up to the period.
        chunk, latency_s = payload
        return ChunkResult(chunk, self._pending_t_obs, latency_s)

    def close(self, timeout_s: float = 5.0) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(1.0)
        self._conn.close()


def resolve_n_action_steps(policy: Policy, n_action_steps: int | None) -> int:
    n = int(n_action_steps or policy.n_action_steps)
    most = int(policy.horizon) - int(policy.n_obs_steps) + 1
    if not 1 <= n <= most:
        raise ConfigError(f"n_action_steps={n} must be in 1..{most} (horizon {policy.horizon}, "
                          f"n_obs_steps {policy.n_obs_steps})")
    return n


class Executor:
    """`act(now, history, t_obs)` once per tick returns the action to send, or None (hold)."""

    name = "executor"

    def __init__(self, policy: Policy, dt: float, n_action_steps: int | None = None):
        self.policy = policy
        self.dt = float(dt)
        self.n_obs_steps = int(policy.n_obs_steps)
        self.horizon = int(policy.horizon)
        self.n_action_steps = resolve_n_action_steps(policy, n_action_steps)
        self.latency = LatencyEstimate()
        self.inferences = 0
        self.dropped = 0
        # Ticks with no action to play after the first chunk arrived (the robot held).
        self.stalls = 0

    def act(self, now: float, history: ObservationHistory, t_obs: float) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release background resources."""

    def warm_up(self, obs_history: dict[str, np.ndarray], stop: Callable[[], bool] | None = None) -> None:
        """One inference whose result is discarded, before the robot moves: first calls pay for
        allocations, autotuning and CUDA graph capture. A background executor stops waiting for
        it when `stop()` turns true (an e-stop); one inferring on this thread cannot."""
        infer(self.policy, obs_history, None)

    def reset(self) -> None:
        """Between episodes: forget the planned actions (absolute targets from a state a reset just
        replaced). Latency estimates and counters stay: they are run totals."""

    def stats(self) -> dict[str, float | int]:
        return {"executor": self.name, "inferences": self.inferences,
                **percentiles_ms(self.latency.all, "inference"),
                "dropped_actions": self.dropped, "stalls": self.stalls}


class SyncExecutor(Executor):
    name = "sync"

    def __init__(self, policy: Policy, dt: float, n_action_steps: int | None = None,
                 delay_s: float = 0.0, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(policy, dt, n_action_steps)
        self.delay_s = float(delay_s)
        self.now = now
        self.sleep = sleep
        self.queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self.queue.clear()

    def act(self, now: float, history: ObservationHistory, t_obs: float) -> np.ndarray | None:
        if not self.queue:
            start = self.now()
            chunk = infer(self.policy, history.stacked(), None)
            if self.delay_s > 0:
                self.sleep(self.delay_s)
            latency = self.now() - start
            self.latency.add(latency)
            self.inferences += 1
            # Here a stall is an inference that made the loop miss its next tick.
            self.stalls += int(latency > self.dt)
            # The robot held still meanwhile, so the plan still starts where the robot is: play it
            # from its first step rather than skipping the steps that "passed" during inference.
            self.queue.extend(ta.action for ta in timestamp_chunk(
                chunk, t_obs, self.n_obs_steps, self.dt, self.n_action_steps))
        return self.queue.popleft()


# Longest wait for an inference of the previous episode still in flight.
DRAIN_TIMEOUT_S = 60.0
# Longest wait for the warm-up inference (a first call may compile or capture CUDA graphs).
WARM_UP_TIMEOUT_S = 300.0


def drain(backend: BackgroundInference, timeout_s: float = DRAIN_TIMEOUT_S,
          stop: Callable[[], bool] | None = None) -> None:
    """Wait out an inference in flight and discard its result, so it never plays later; give up
    waiting (the inference left in flight) as soon as `stop()` is true."""
    deadline = time.monotonic() + timeout_s
    while backend.busy and time.monotonic() < deadline:
        if stop is not None and stop():
            return
        if backend.poll() is None:
            time.sleep(0.005)
    if backend.busy:
        raise RuntimeError(f"an inference did not finish within {timeout_s:.0f} s")
    backend.poll()  # a result that arrived as `busy` cleared: discard it too


class BackgroundExecutor(Executor):
    """An executor fed by a background `backend` (`busy`, `submit(obs, t_obs, guide=None)`,
    `poll()`, `close()`)."""

    def __init__(self, policy: Policy, dt: float, backend: BackgroundInference,
                 n_action_steps: int | None = None):
        super().__init__(policy, dt, n_action_steps)
        self.backend = backend

    # Whether inferences are guided (they then have a CUDA graph of their own to warm up).
    guided = False

    def reset(self) -> None:
        drain(self.backend)
        self._forget()

    def warm_up(self, obs_history: dict[str, np.ndarray], stop: Callable[[], bool] | None = None) -> None:
        self.backend.submit(obs_history, 0.0, guide=Guide.empty() if self.guided else None)
        drain(self.backend, WARM_UP_TIMEOUT_S, stop)

    def _forget(self) -> None:
        """Drop every planned action."""
        raise NotImplementedError

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

    def __init__(self, policy: Policy, dt: float, backend: BackgroundInference,
                 n_action_steps: int | None = None, margin_steps: int = 1):
        super().__init__(policy, dt, backend, n_action_steps)
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

    def act(self, now: float, history: ObservationHistory, t_obs: float) -> np.ndarray | None:
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
            self._launch(now, history, t_obs)
        return None if due is None else due.action

    def _due(self) -> bool:
        lead = self.lead_steps()
        return (not self.plan or len(self.plan) <= lead
                or self.played_from_chunk >= self.n_action_steps - lead)

    def _launch(self, now: float, history: ObservationHistory, t_obs: float) -> None:
        self.backend.submit(history.stacked(), t_obs)

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

    def _launch(self, now: float, history: ObservationHistory, t_obs: float) -> None:
        self.backend.submit(history.stacked(), t_obs, guide=self.guide(now, t_obs))


def require_guided(policy: Any) -> None:
    if not isinstance(policy, GuidedPolicy):
        raise ConfigError("executor=rtc needs a policy with guided sampling: a diffusion policy with "
                          "policy.noise_scheduler.inference_scheduler=ddim (run through the fast sampler)")


class EnsembleExecutor(BackgroundExecutor):
    """ACT temporal ensembling over back-to-back background inferences (unimodal policies only)."""

    name = "ensemble"

    def __init__(self, policy: Policy, dt: float, backend: BackgroundInference,
                 n_action_steps: int | None = None, k: float = 0.01):
        super().__init__(policy, dt, backend, n_action_steps)
        self.k = float(k)
        # Oldest first; each is the remaining timestamped actions of one chunk.
        self.chunks: deque[deque[TimedAction]] = deque()

    def _forget(self) -> None:
        self.chunks.clear()

    def act(self, now: float, history: ObservationHistory, t_obs: float) -> np.ndarray | None:
        result = self._receive()
        if result is not None:
            self.chunks.append(deque(timestamp_chunk(result.chunk, result.t_obs, self.n_obs_steps,
                                                     self.dt)))
        if not self.backend.busy:
            self.backend.submit(history.stacked(), t_obs)
        predictions = [ta.action for ta in (self._take_due(chunk, now) for chunk in self.chunks)
                       if ta is not None]
        while self.chunks and not self.chunks[0]:
            self.chunks.popleft()
        if not predictions:
            self.stalls += int(self.inferences > 0)
            return None
        weights = np.exp(-self.k * np.arange(len(predictions)))
        return np.tensordot(weights / weights.sum(), np.stack(predictions).astype(np.float64), axes=1)


def make_executor(name: str, policy: Policy, dt: float, n_action_steps: int | None = None,
                  inference_delay_s: float = 0.0, now: Callable[[], float] = time.monotonic,
                  make_policy: Callable[[], Policy] | None = None, torch_threads: int = 1,
                  sleep: Callable[[float], None] = time.sleep, simulated: bool = False) -> Executor:
    """`make_policy` (picklable) runs background inference in its own process, else a thread.
    `simulated`: on the clock `now` (and `sleep`, for sync) of a simulation, every inference
    taking `inference_delay_s` of it and nothing else (`SimulatedLatency`)."""
    check_executor(name)
    if simulated and make_policy is not None:
        raise ValueError("a simulated clock runs inference on the caller's thread, not in a process")
    if name == "sync":
        return SyncExecutor(policy, dt, n_action_steps, delay_s=inference_delay_s, now=now, sleep=sleep)
    classes = {"async": AsyncExecutor, "rtc": RTCExecutor, "ensemble": EnsembleExecutor}
    resolve_n_action_steps(policy, n_action_steps)  # a config error before a process starts
    cls = classes[name]
    if make_policy is not None:
        backend: Any = ProcessInference(make_policy, inference_delay_s, torch_threads, guided=cls.guided)
    else:
        if cls.guided:
            require_guided(policy)
        backend = (SimulatedLatency(policy, inference_delay_s, now) if simulated
                   else BackgroundInference(policy, delay_s=inference_delay_s, now=now))
    return cls(policy, dt, backend, n_action_steps)
