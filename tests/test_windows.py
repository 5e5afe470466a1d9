"""Window index: the reference DP SequenceSampler's windows, edge padding, episode split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robodiff.data.store import EpisodeStore
from robodiff.data.windows import WindowIndex, split_episodes
from robodiff.errors import UserError
from robodiff.features import Feature


def reference_windows(episode_ends, horizon, pad_before, pad_after, data):
    """Direct re-derivation of DP's create_indices + sample_sequence (zero-init, edge fill)."""
    out = []
    for i, end in enumerate(episode_ends):
        start = 0 if i == 0 else episode_ends[i - 1]
        length = end - start
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            buf_start = max(idx, 0) + start
            buf_end = min(idx + horizon, length) + start
            sample_start = buf_start - (idx + start)
            sample_end = horizon - ((idx + horizon + start) - buf_end)
            sample = data[buf_start:buf_end]
            window = np.zeros((horizon, *data.shape[1:]), dtype=data.dtype)
            window[:sample_start] = sample[0]
            window[sample_end:] = sample[-1]
            window[sample_start:sample_end] = sample
            out.append(window)
    return out


def test_matches_reference_sampler_on_a_three_episode_store(tmp_path):
    feats = {"action": Feature("action", (2,), "float32")}
    store = EpisodeStore.create(tmp_path / "s.zarr", feats, fps=10)
    lengths = [5, 1, 9]
    for k, n in enumerate(lengths):
        store.append_episode({"action": (np.arange(n * 2).reshape(n, 2) + 100 * k).astype(np.float32)})
    data = store.read_slice("action", 0, store.n_frames)
    for horizon, n_obs, n_act in [(4, 2, 3), (16, 2, 8), (1, 1, 1), (6, 3, 1)]:
        index = WindowIndex(store.episode_ends, horizon, n_obs, n_act)
        expected = reference_windows(list(store.episode_ends), horizon, n_obs - 1, n_act - 1, data)
        assert len(index) == len(expected)
        for i, ref in enumerate(expected):
            lo, hi, take = index.span(i, horizon)
            np.testing.assert_array_equal(store.read_slice("action", lo, hi)[take], ref)
            # Observations need only the first n_obs steps: a shorter contiguous read.
            lo_o, hi_o, take_o = index.span(i, n_obs)
            assert hi_o - lo_o <= n_obs
            np.testing.assert_array_equal(store.read_slice("action", lo_o, hi_o)[take_o], ref[:n_obs])


@settings(max_examples=60, deadline=None, database=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4), horizon=st.integers(1, 8),
       n_obs=st.integers(1, 4), n_act=st.integers(1, 8))
def test_matches_reference_for_any_lengths(lengths, horizon, n_obs, n_act):
    n_obs, n_act = min(n_obs, horizon), min(n_act, horizon)
    ends = np.cumsum(lengths)
    data = np.arange(ends[-1])
    index = WindowIndex(ends, horizon, n_obs, n_act)
    expected = reference_windows(list(ends), horizon, n_obs - 1, n_act - 1, data)
    assert [list(index.steps(i, horizon)) for i in range(len(index))] == [list(w) for w in expected]


def test_episode_subset_and_bad_arguments():
    ends = np.array([4, 10, 13])
    index = WindowIndex(ends, 4, 2, 2, episodes=[2])
    assert set(index.ep_start) == {10} and len(index) == 3 - 4 + 1 + 1 + 1
    with pytest.raises(UserError, match="out of range"):
        WindowIndex(ends, 4, 2, 2, episodes=[3])
    with pytest.raises(UserError, match="must not exceed"):
        WindowIndex(ends, 2, 3, 1)
    with pytest.raises(UserError, match="must not exceed"):
        WindowIndex(ends, 2, 1, 3)


def test_split_is_deterministic_by_episode_and_keeps_train():
    train, val = split_episodes(20, 0.2, seed=3)
    assert (train, val) == split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and sorted(train + val) == list(range(20))
    assert split_episodes(20, 0.2, seed=4) != (train, val)
    assert split_episodes(1, 0.5, seed=0) == ([0], [])
    assert split_episodes(2, 0.9, seed=0)[0] != []
    assert split_episodes(5, 0.0, seed=0) == (list(range(5)), [])
    with pytest.raises(UserError):
        split_episodes(5, 1.0)
