"""Where a policy's inferences run for an executor: on the control thread (`infer`), on a
background thread (`BackgroundInference`), in a child process (`ProcessInference`, what deploy
uses: no GIL shared with the control loop), or on a simulated clock (`SimulatedLatency`: computed
at once, handed out a fixed latency later, so a latency study repeats to the episode).

A background backend has `busy`, `submit(obs_history, t_obs, guide=None)`, `poll() -> ChunkResult
| None` and `close()`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robodiff.errors import UserError, one_line
from robodiff.policy.base import Policy
from robodiff.policy.guided import Guide, require_guided

INFERENCE_NICE = 10


@dataclass(frozen=True)
class ChunkResult:
    chunk: np.ndarray
    t_obs: float
    latency_s: float


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
