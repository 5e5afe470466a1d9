"""Normalizer: exact ranges, mean/std, constant dimensions, streaming stats, stats cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robodiff.data.stats import RunningStats, cached_stats, compute_stats
from robodiff.policy.normalizer import Normalizer
from robodiff.data.store import EpisodeStore
from robodiff.errors import UserError
from robodiff.features import Feature

FEATURES = {
    "image": Feature("image", (4, 4, 3), "uint8"),
    "state": Feature("lowdim", (3,), "float32"),
    "action": Feature("action", (2,), "float32"),
}


def episode(rng, n):
    state = rng.normal(5.0, 3.0, size=(n, 3)).astype(np.float32)
    state[:, 2] = 7.5  # a constant dimension
    return {"image": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), "state": state,
            "action": rng.uniform(-20, 40, size=(n, 2)).astype(np.float32)}


@pytest.fixture
def store(tmp_path):
    s = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    rng = np.random.default_rng(1)
    for n in (50, 31, 77):
        s.append_episode(episode(rng, n))
    return s


def full(store, key):
    return store.read_slice(key, 0, store.n_frames).astype(np.float64)


def test_streaming_stats_equal_numpy(store):
    stats = compute_stats(store, ["state", "action"], rows_per_read=13)
    for key in ("state", "action"):
        x = full(store, key)
        np.testing.assert_allclose(stats[key]["min"], x.min(0))
        np.testing.assert_allclose(stats[key]["max"], x.max(0))
        np.testing.assert_allclose(stats[key]["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats[key]["std"], x.std(0), rtol=1e-10, atol=1e-12)
        assert stats[key]["count"] == store.n_frames


def test_minmax_maps_the_data_range_to_minus_one_one(store):
    norm = Normalizer(FEATURES, compute_stats(store, ["state", "action"]))
    for key in ("state", "action"):
        x = torch.from_numpy(full(store, key)).float()
        y = norm.normalize_key(key, x)
        varying = [d for d in range(x.shape[1]) if x[:, d].max() > x[:, d].min()]
        np.testing.assert_allclose(y[:, varying].min(0).values, -1.0, atol=1e-5)
        np.testing.assert_allclose(y[:, varying].max(0).values, 1.0, atol=1e-5)
        torch.testing.assert_close(norm.unnormalize(key, y), x, atol=1e-4, rtol=1e-5)
    constant = norm.normalize_key("state", torch.from_numpy(full(store, "state")).float())[:, 2]
    assert torch.isfinite(constant).all() and torch.all(constant == 0)


def test_meanstd_and_images(store):
    norm = Normalizer(FEATURES, compute_stats(store, ["state", "action"]), mode="meanstd")
    y = norm.normalize_key("action", torch.from_numpy(full(store, "action")).float())
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0, unbiased=False), 1.0, atol=1e-4)
    state = norm.normalize_key("state", torch.from_numpy(full(store, "state")).float())
    assert torch.isfinite(state).all()  # std 0 is floored, not divided by
    batch = norm.normalize({"image": torch.tensor([[0, 255]], dtype=torch.uint8), "other": torch.ones(1)})
    torch.testing.assert_close(batch["image"], torch.tensor([[0.0, 1.0]]))
    assert torch.equal(batch["other"], torch.ones(1))
    with pytest.raises(UserError, match="normalizer.mode"):
        Normalizer(FEATURES, None, mode="robust")


def test_buffers_travel_in_the_state_dict(store):
    stats = compute_stats(store, ["state", "action"])
    norm = Normalizer(FEATURES, stats)
    fresh = Normalizer(FEATURES, None)
    fresh.load_state_dict(norm.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(fresh.normalize_key("action", x), norm.normalize_key("action", x))


def test_cache_is_reused_and_invalidated_when_the_store_grows(store):
    cache = store.path.parent / (store.path.name + ".stats.json")
    first = cached_stats(store, ["state", "action"])
    assert cache.exists()
    doctored = json.loads(cache.read_text())
    doctored["stats"]["action"]["min"] = [-123.0, -123.0]
    cache.write_text(json.dumps(doctored))
    assert cached_stats(store, ["action"])["action"]["min"] == [-123.0, -123.0]  # reused, not recomputed
    store.append_episode(episode(np.random.default_rng(9), 20))
    grown = cached_stats(store, ["state", "action"])
    assert grown["action"]["min"] != [-123.0, -123.0]
    assert grown["state"]["count"] == first["state"]["count"] + 20
    np.testing.assert_allclose(grown["action"]["min"], full(store, "action").min(0))


def test_running_stats_scalar_feature():
    rs = RunningStats(())
    for part in np.array_split(np.arange(10.0), 3):
        rs.update(part)
    d = rs.as_dict()
    assert d["min"] == 0.0 and d["max"] == 9.0 and d["mean"] == pytest.approx(4.5)


def test_cache_is_invalidated_when_the_store_is_recreated(tmp_path):
    rng = np.random.default_rng(0)
    eps = [episode(rng, 10), episode(rng, 10)]
    for ep in eps:  # same path, same episode lengths, different data
        store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, overwrite=True)
        store.append_episode(ep)
        stats = cached_stats(store, ["action"])
        np.testing.assert_allclose(stats["action"]["max"], ep["action"].max(0), rtol=1e-6)

