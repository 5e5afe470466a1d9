"""Executors on a fake clock: chunk timestamps, async splicing and late-action dropping, sync
stalls, temporal ensembling; and the real background inference thread."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from robodiff.control.clock import SimulatedClock
from robodiff.control.executors import (AsyncExecutor, EnsembleExecutor, RTCExecutor, SyncExecutor,
                                        check_n_action_steps, make_executor, timestamp_chunk)
from robodiff.control.history import ObservationHistory
from robodiff.control.inference import BackgroundInference, ProcessInference, SimulatedLatency
from robodiff.errors import ConfigError, UserError
from robodiff.policy.guided import Guide

DT = 0.1
# The executors' clock where the test sets the time itself (`FakeBackend.now`): only its period
# and kind matter to them.
CLOCK = SimulatedClock(DT)
N = 8  # the run's n_action_steps


class StampPolicy:
    """Action i of a chunk is [chunk number, the time it is meant for], read from the newest obs."""

    n_obs_steps, horizon, n_action_steps = 2, 16, 8
    obs_keys = ["t"]

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def predict_action_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        assert obs_history["t"].shape == (self.n_obs_steps, 1)
        t_obs = float(obs_history["t"][-1, 0])
        steps = np.arange(self.horizon) - (self.n_obs_steps - 1)
        chunk = np.stack([np.full(self.horizon, self.calls), t_obs + steps * DT], axis=1)
        self.calls += 1
        return chunk


class GuidedStampPolicy(StampPolicy):
    """StampPolicy whose guided chunk entry `n_obs_steps + j` is `w frozen[j] + (1 - w) own[j]`."""

    def __init__(self) -> None:
        super().__init__()
        self.guides: list[Guide] = []

    def predict_action_chunk_guided(self, obs_history: dict[str, np.ndarray], frozen: np.ndarray,
                                    weights: np.ndarray | None = None) -> np.ndarray:
        weights = np.ones(len(frozen)) if weights is None else weights
        self.guides.append(Guide(frozen, weights))
        chunk = self.predict_action_chunk(obs_history)
        if frozen.size:
            span = slice(self.n_obs_steps, self.n_obs_steps + len(frozen))
            chunk[span] = weights[:, None] * frozen + (1 - weights[:, None]) * chunk[span]
        return chunk


class FakeBackend(SimulatedLatency):
    """`SimulatedLatency` on a clock the test sets (`now`), recording submit times."""

    def __init__(self, policy: StampPolicy, latency: float):
        self.now = 0.0
        super().__init__(policy, latency, now=lambda: self.now)
        self.submits: list[float] = []
        self.closed = False

    def submit(self, obs: dict[str, np.ndarray], t_obs: float, guide: Guide | None = None) -> None:
        self.submits.append(self.now)
        super().submit(obs, t_obs, guide)

    def close(self) -> None:
        super().close()
        self.closed = True


def _drive(executor, backend: FakeBackend | None, ticks: int,
           lag: float | Callable[[], float] = 0.0) -> list[tuple[float, np.ndarray | None]]:
    """`lag`: each observation is that much older than its tick (camera latency), or a function
    drawing that age per tick."""
    out = []
    for k in range(ticks):
        now = round(k * DT, 9)
        if backend is not None:
            backend.now = now
        t_obs = round(now - (lag() if callable(lag) else lag), 9)
        out.append((now, executor.act(now, {"t": np.array([t_obs])}, t_obs)))
    return out


def test_timestamp_chunk_starts_at_the_newest_observation():
    chunk = np.arange(16.0)[:, None]
    stamped = timestamp_chunk(chunk, 5.0, n_obs_steps=2, dt=DT, n_steps=8)
    assert [ta.action[0] for ta in stamped] == list(range(1, 9))
    assert [ta.t for ta in stamped] == pytest.approx([5.0 + i * DT for i in range(8)])
    with pytest.raises(ValueError):
        timestamp_chunk(np.zeros(16), 0.0, 2, DT)


@pytest.mark.parametrize("latency", [0.05, 0.25, 0.3, 0.65])
def test_async_splices_each_chunk_at_the_current_tick_and_drops_late_actions(latency):
    policy = StampPolicy()
    backend = FakeBackend(policy, latency)
    ex = AsyncExecutor(policy, CLOCK, N, backend)
    trace = _drive(ex, backend, 120)
    ready = math.ceil(latency / DT - 1e-9)  # first tick at which the first chunk is in
    assert all(a is None for _, a in trace[:ready])
    played = [(t, a) for t, a in trace[ready:]]
    # Never starved after the first chunk, and every action sent is the one stamped for its tick.
    assert all(a is not None for _, a in played)
    assert all(a[1] == pytest.approx(t) for t, a in played)
    # Chunks are used in order, and the newest chunk available wins.
    chunk_ids = [int(a[0]) for _, a in played]
    assert chunk_ids == sorted(chunk_ids) and len(set(chunk_ids)) > 5
    # Each splice dropped the actions stamped for the ticks its inference took.
    assert ex.dropped == ex.splices * ready
    assert ex.stats()["stalls"] == 0 and ex.inferences == ex.splices
    # Launched early enough: every chunk played for at least one tick, at most n_action_steps.
    runs = np.diff(np.flatnonzero(np.diff(chunk_ids)))
    assert runs.max() <= policy.n_action_steps
    ex.close()
    assert backend.closed


def test_async_holds_when_inference_is_slower_than_the_whole_chunk():
    policy = StampPolicy()
    backend = FakeBackend(policy, 2.0)  # 20 ticks > the 15 actions a chunk covers
    ex = AsyncExecutor(policy, CLOCK, N, backend)
    trace = _drive(ex, backend, 60)
    gaps = [t for t, a in trace[20:] if a is None]
    assert gaps and ex.stats()["stalls"] == len(gaps)
    assert all(a[1] == pytest.approx(t) for t, a in trace if a is not None)


def test_async_latency_estimate_sets_the_launch_lead():
    policy = StampPolicy()
    backend = FakeBackend(policy, 0.25)
    ex = AsyncExecutor(policy, CLOCK, N, backend, margin_steps=1)
    assert ex.lead_steps() == 1
    _drive(ex, backend, 40)
    assert ex.lead_steps() == 4  # ceil(0.25 / 0.1) + 1
    weights = ex.guide(backend.now, backend.now).weights
    assert weights[:2].tolist() == [1, 1] and 0 < weights[2] < 1  # 2 ticks before it is back, then blended


@pytest.mark.parametrize("latency,lag", [(0.15, 0.0), (0.25, 0.0), (0.45, 0.0), (0.25, 0.06), (0.25, 0.14)])
def test_rtc_keeps_the_actions_that_play_while_each_chunk_is_computed(latency, lag):
    policy = GuidedStampPolicy()
    backend = FakeBackend(policy, latency)
    ex = RTCExecutor(policy, CLOCK, N, backend)
    trace = _drive(ex, backend, 100, lag=lag)
    played = {round(t, 6): a for t, a in trace if a is not None}
    assert len(policy.guides) == len(backend.submits) > 10 and policy.calls == len(backend.submits)
    assert policy.guides[0].frozen.size == 0  # nothing planned yet at the first launch
    checked = 0
    for t_submit, guide in list(zip(backend.submits, policy.guides))[3:]:
        # The ticks before the chunk is back, plus the slot whose tick passed (an old observation).
        n_hard = math.ceil(latency / DT) - 1 + round(lag / DT)
        # Kept exactly while the inference runs, then blended out over the rest of the old plan.
        assert np.all(guide.weights[:n_hard] == 1) and np.all(np.diff(guide.weights[n_hard - 1:]) < 0)
        assert 0 < guide.weights[-1] < 1 and len(guide.frozen) > n_hard
        for j, action in enumerate(guide.frozen[:n_hard]):
            # frozen[j] is for the slot j + 1 periods after the observation, played at the
            # tick nearest to it.
            t = round(round((t_submit - lag + (j + 1) * DT) / DT) * DT, 6)
            if t in played:
                # Before and after the new chunk arrives, the robot plays exactly what was frozen:
                # the switch to the new chunk is seamless.
                np.testing.assert_array_equal(played[t], action)
                checked += 1
    assert checked > 10


def test_process_inference_carries_the_guide_to_a_guided_policy():
    backend = ProcessInference(functools.partial(GuidedStampPolicy), guided=True)
    try:
        history = ObservationHistory(2)
        history.push({"t": np.array([1.0])})
        frozen = np.array([[7.0, 1.1], [7.0, 1.2], [7.0, 1.3]])
        backend.submit(history.stacked(), 1.0, guide=Guide(frozen, np.array([1.0, 1.0, 0.5])))
        deadline = time.monotonic() + 10.0
        result = None
        while result is None and time.monotonic() < deadline:
            result = backend.poll()
            time.sleep(0.005)
        assert result is not None
        np.testing.assert_array_equal(result.chunk[2:4], frozen[:2])
        assert result.chunk[4] == pytest.approx([3.5, 1.3])  # half the old plan's 7, half its own 0
        assert result.chunk[5] == pytest.approx([0, 1.4])
    finally:
        backend.close()


def test_rtc_never_repeats_or_skips_an_action_at_a_switch_under_jittery_camera_latency():
    """Observations 0.04-0.06 s old: chunks are stamped on both sides of a tick's half-period,
    so which tick plays which entry changes from chunk to chunk."""

    def played_times(executor_cls, policy):
        backend = FakeBackend(policy, 0.25)
        rng = np.random.default_rng(0)
        trace = _drive(executor_cls(policy, CLOCK, N, backend), backend, 120, lag=lambda: rng.uniform(0.04, 0.06))
        return np.array([a[1] for _, a in trace if a is not None])

    steps = np.diff(played_times(RTCExecutor, GuidedStampPolicy()))
    assert np.all((steps > 0.5 * DT) & (steps < 1.5 * DT)), steps
    # Plain async, same draws: the new chunk's first action repeats or skips a slot now and then.
    steps = np.diff(played_times(AsyncExecutor, StampPolicy()))
    assert np.any((steps < 0.5 * DT) | (steps > 1.5 * DT))


def test_rtc_warms_up_the_guided_path_without_touching_the_plan():
    policy = GuidedStampPolicy()
    backend = FakeBackend(policy, 0.0)
    ex = RTCExecutor(policy, CLOCK, N, backend)
    ex.warm_up({"t": np.array([0.0])})
    assert len(policy.guides) == 1 and policy.guides[0].frozen.size == 0
    assert ex.inferences == 0 and not ex.plan and not ex.played and not backend.busy


def test_rtc_needs_a_guided_policy():
    with pytest.raises(ConfigError, match="guided sampling"):
        make_executor("rtc", StampPolicy(), CLOCK, N)
    with pytest.raises(UserError, match="guided sampling"):
        ProcessInference(functools.partial(StampPolicy), guided=True)


def test_sync_plays_n_action_steps_then_replans_and_counts_stalls():
    policy = StampPolicy()
    ex = SyncExecutor(policy, SimulatedClock(DT), N, delay_s=0.15)
    trace = _drive(ex, None, 24)
    ids = [int(a[0]) for _, a in trace]
    assert ids == [0] * 8 + [1] * 8 + [2] * 8
    assert [a[1] for _, a in trace[:8]] == pytest.approx([i * DT for i in range(8)])
    assert ex.stats()["stalls"] == 3 and ex.stats()["inference_p50_ms"] == pytest.approx(150.0)


def test_ensemble_weights_older_chunks_more():
    class ConstPolicy(StampPolicy):
        def predict_action_chunk(self, obs_history):
            self.calls += 1
            return np.full((self.horizon, 1), 10.0 * self.calls)

    policy = ConstPolicy()
    backend = FakeBackend(policy, 0.1)
    ex = EnsembleExecutor(policy, CLOCK, N, backend, k=0.5)
    trace = _drive(ex, backend, 4)
    w = np.exp(-0.5 * np.arange(3))
    assert trace[0][1] is None
    assert trace[1][1] == pytest.approx([10.0])
    assert trace[2][1] == pytest.approx([(w[0] * 10 + w[1] * 20) / w[:2].sum()])
    assert trace[3][1] == pytest.approx([(w[0] * 10 + w[1] * 20 + w[2] * 30) / w.sum()])


def test_background_inference_thread_measures_latency_with_injected_delay():
    policy = StampPolicy()
    backend = BackgroundInference(policy, delay_s=0.05)
    history = ObservationHistory(2)
    history.push({"t": np.array([1.0])})
    backend.submit(history.stacked(), 1.0)
    assert backend.busy
    with pytest.raises(RuntimeError):
        backend.submit(history.stacked(), 1.0)
    deadline = time.monotonic() + 2.0
    result = None
    while result is None and time.monotonic() < deadline:
        result = backend.poll()
        time.sleep(0.005)
    assert result is not None and not backend.busy
    assert result.t_obs == 1.0 and result.latency_s >= 0.05 and result.chunk.shape == (16, 2)
    backend.close()


def test_background_inference_surfaces_policy_errors():
    class Broken(StampPolicy):
        def predict_action_chunk(self, obs_history):
            raise ValueError("boom")

    backend = BackgroundInference(Broken())
    backend.submit({"t": np.zeros((2, 1))}, 0.0)
    deadline = time.monotonic() + 10.0
    with pytest.raises(RuntimeError, match="background thread"):
        while time.monotonic() < deadline:  # the error comes with the first poll after it happened
            backend.poll()
            time.sleep(0.005)


def test_config_errors():
    with pytest.raises(ConfigError, match="executor 'fast'"):
        make_executor("fast", StampPolicy(), CLOCK, N)
    with pytest.raises(ConfigError, match="n_action_steps=16"):
        check_n_action_steps(StampPolicy(), 16)
    with pytest.raises(ConfigError, match=r"n_action_steps=0 must be in 1\.\.15"):
        check_n_action_steps(StampPolicy(), 0)


def _broken_factory() -> StampPolicy:
    raise ValueError("no such weights")


def test_process_inference_runs_the_policy_in_a_child_process():
    backend = ProcessInference(functools.partial(StampPolicy), delay_s=0.05)
    try:
        history = ObservationHistory(2)
        history.push({"t": np.array([2.0])})
        backend.submit(history.stacked(), 2.0)
        assert backend.busy
        deadline = time.monotonic() + 10.0
        result = None
        while result is None and time.monotonic() < deadline:
            result = backend.poll()
            time.sleep(0.005)
        assert result is not None and not backend.busy and result.latency_s >= 0.05
        assert result.chunk[1] == pytest.approx([0, 2.0]) and result.t_obs == 2.0
    finally:
        backend.close()
    assert not backend._proc.is_alive()
    with pytest.raises(UserError, match="could not load the policy: ValueError: no such weights"):
        ProcessInference(_broken_factory)
