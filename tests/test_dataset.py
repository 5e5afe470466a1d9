"""WindowDataset over a real store: values, dtypes, lazy per-worker opening, caching, crop."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from robodiff.data.dataset import WindowDataset
from robodiff.data.store import EpisodeStore
from robodiff.data.windows import WindowIndex
from robodiff.errors import UserError
from robodiff.features import Feature

FEATURES = {
    "cam": Feature("image", (12, 14, 3), "uint8"),
    "state": Feature("lowdim", (3,), "float32"),
    "action": Feature("action", (2,), "float64"),
}
LENGTHS = [7, 3, 10]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "s.zarr"
    store = EpisodeStore.create(path, FEATURES, fps=10)
    rng = np.random.default_rng(0)
    for n in LENGTHS:
        store.append_episode({"cam": rng.integers(0, 256, (n, 12, 14, 3), dtype=np.uint8),
                              "state": rng.normal(size=(n, 3)).astype(np.float32),
                              "action": rng.normal(size=(n, 2))})
    return path


def expected_item(path, i, horizon=6, n_obs=2, n_act=3):
    store = EpisodeStore.open(path)
    index = WindowIndex(store.episode_ends, horizon, n_obs, n_act)
    full = {k: store.read_slice(k, 0, store.n_frames) for k in FEATURES}
    return {"cam": full["cam"][index.steps(i, n_obs)], "state": full["state"][index.steps(i, n_obs)],
            "action": full["action"][index.steps(i, horizon)].astype(np.float32)}


def make(path, **kw):
    return WindowDataset(path, ["cam", "state"], horizon=6, n_obs_steps=2, n_action_steps=3, **kw)


def test_items_have_the_window_values_and_dtypes(store_path):
    ds = make(store_path)
    assert len(ds) == len(WindowIndex(np.cumsum(LENGTHS), 6, 2, 3))
    for i in [0, 5, len(ds) - 1]:
        item, ref = ds[i], expected_item(store_path, i)
        assert item["cam"].dtype == torch.uint8 and item["cam"].shape == (2, 12, 14, 3)
        assert item["state"].dtype == torch.float32 and item["action"].shape == (6, 2)
        assert item["action"].dtype == torch.float32
        for key in ref:
            np.testing.assert_array_equal(item[key].numpy(), ref[key])


def test_images_are_read_per_window_not_whole(store_path, monkeypatch):
    reads = []
    real = EpisodeStore.read_slice

    def spy(self, key, a, b):
        reads.append((key, b - a))
        return real(self, key, a, b)

    monkeypatch.setattr(EpisodeStore, "read_slice", spy)
    ds = make(store_path)
    assert ("cam", sum(LENGTHS)) not in reads  # only low-dim keys are loaded whole
    reads.clear()
    ds[4]
    assert reads == [("cam", 2)]  # one contiguous read of n_obs frames, low-dim from RAM
    reads.clear()
    cached = make(store_path, cache="memory")
    assert ("cam", sum(LENGTHS)) in reads
    reads.clear()
    for i in range(len(cached)):
        np.testing.assert_array_equal(cached[i]["cam"].numpy(), ds[i]["cam"].numpy())
    assert all(key == "cam" for key, _ in reads) and len(reads) == len(ds)  # only `ds` read disk


def test_random_crop(store_path):
    torch.manual_seed(0)
    ds = make(store_path, crop=(8, 9))
    full = make(store_path)[3]["cam"].numpy()
    offsets = set()
    for _ in range(20):
        crop = ds[3]["cam"].numpy()
        assert crop.shape == (2, 8, 9, 3)
        found = [(t, l) for t in range(5) for l in range(6)
                 if np.array_equal(full[:, t:t + 8, l:l + 9], crop)]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 1
    with pytest.raises(UserError, match="larger than image"):
        make(store_path, crop=(13, 4))


def test_episode_subset(store_path):
    ds = WindowDataset(store_path, ["state"], horizon=4, n_obs_steps=2, n_action_steps=2, episodes=[1])
    assert len(ds) == 3 - 4 + 1 + 1 + 1
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    state = EpisodeStore.open(store_path).read_slice("state", starts[1], starts[2])
    np.testing.assert_array_equal(ds[0]["state"].numpy(), state[[0, 0]])


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_a_subset_shares_the_arrays_in_memory_and_reads_its_own_episodes(store_path, cache):
    train = make(store_path, episodes=[0, 1], cache=cache)
    val = train.subset([2])
    fresh = make(store_path, episodes=[2], cache=cache)
    assert len(val) == len(fresh) > 0 and len(train) == len(make(store_path, episodes=[0, 1]))
    assert val._ram.keys() == train._ram.keys() and all(val._ram[k] is train._ram[k] for k in train._ram)
    for i in range(len(val)):
        for key, value in fresh[i].items():
            torch.testing.assert_close(val[i][key], value)


def test_unknown_key_and_cache_mode(store_path):
    with pytest.raises(UserError, match="no key 'wrist'"):
        WindowDataset(store_path, ["wrist"])
    with pytest.raises(UserError, match="cache"):
        make(store_path, cache="disk")


@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_with_workers(store_path, ctx):
    ds = make(store_path)
    ds[0]  # the parent opened the store before forking; workers must open their own
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False,
                        multiprocessing_context=multiprocessing.get_context(ctx))
    batches = list(loader)
    cams = torch.cat([b["cam"] for b in batches])
    actions = torch.cat([b["action"] for b in batches])
    assert cams.shape == (len(ds), 2, 12, 14, 3)
    for i in range(len(ds)):
        np.testing.assert_array_equal(cams[i].numpy(), ds[i]["cam"].numpy())
        np.testing.assert_array_equal(actions[i].numpy(), ds[i]["action"].numpy())
