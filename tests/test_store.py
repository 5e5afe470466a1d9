"""Episode store: layout, formats, reference-layout compatibility and crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from robodiff.data.recorder import EpisodeRecorder
from robodiff.data.store import EpisodeStore
from robodiff.errors import StoreError
from robodiff.features import Feature

FEATURES = {
    "image": Feature("image", (8, 10, 3), "uint8"),
    "state": Feature("lowdim", (3,), "float32"),
    "action": Feature("action", (2,), "float32"),
    "timestamp": Feature("timestamp", (), "float64"),
}


def episode(k: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    return {
        "image": rng.integers(0, 256, (length, 8, 10, 3), dtype=np.uint8),
        "state": rng.normal(size=(length, 3)).astype(np.float32),
        "action": rng.normal(size=(length, 2)).astype(np.float32),
        "timestamp": np.arange(length) / 10.0,
    }


def make_store(path: Path, lengths: list[int]) -> EpisodeStore:
    store = EpisodeStore.create(path, FEATURES, fps=10, task="t", robot="r")
    for k, n in enumerate(lengths):
        store.append_episode(episode(k, n))
    return store


def test_create_append_read_iterate(tmp_path):
    store = make_store(tmp_path / "s.zarr", [5, 3, 7])
    assert store.n_episodes == 3 and store.n_frames == 15
    assert list(store.episode_ends) == [5, 8, 15]
    assert store.episode_bounds(1) == (5, 8) and store.episode_bounds(-1) == (8, 15)
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert reopened.features == FEATURES and reopened.fps == 10 and reopened.task == "t"
    for k, ep in enumerate(reopened.iter_episodes()):
        expected = episode(k, [5, 3, 7][k])
        for key in FEATURES:
            np.testing.assert_array_equal(ep[key], expected[key])
    np.testing.assert_array_equal(reopened.read_slice("state", 4, 6),
                                  np.concatenate([episode(0, 5)["state"][4:], episode(1, 3)["state"][:1]]))
    with pytest.raises(StoreError, match="out of range"):
        reopened.episode_bounds(3)
    with pytest.raises(StoreError, match="read-only"):
        reopened.append_episode(episode(9, 2))


def test_format_2_written_with_one_frame_per_image_chunk(tmp_path):
    make_store(tmp_path / "s.zarr", [4])
    zarray = json.loads((tmp_path / "s.zarr" / "data" / "image" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["chunks"] == [1, 8, 10, 3]
    assert zarray["compressor"]["id"] == "blosc"  # plain readers know it
    assert EpisodeStore.open(tmp_path / "s.zarr").info()["zarr_format"] == 2


def test_recorder_commits_and_rejects_bad_episodes(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    rec = EpisodeRecorder(store)
    ep = episode(0, 4)
    for t in range(4):
        rec.add({k: v[t] for k, v in ep.items()})
    assert len(rec) == 4 and rec.commit() == 0 and len(rec) == 0
    np.testing.assert_array_equal(store.read_episode(0)["action"], ep["action"])
    with pytest.raises(StoreError, match="missing"):
        rec.add({"state": ep["state"][0]})
    bad = episode(1, 3)
    bad["state"] = bad["state"][:2]
    with pytest.raises(StoreError, match="unequal lengths"):
        store.append_episode(bad)
    with pytest.raises(StoreError, match="shape"):
        store.append_episode({**episode(1, 3), "state": np.zeros((3, 4))})
    assert store.n_episodes == 1 and store.uncommitted_tail() == {}  # nothing half-written


def _plain_reference_store(path: Path, zarr_format: int) -> dict[str, np.ndarray]:
    """A store written the way the reference DP code does: plain zarr, no robodiff attrs."""
    rng = np.random.default_rng(0)
    arrays = {"img": rng.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8),
              "state": rng.normal(size=(9, 5)), "action": rng.normal(size=(9, 2))}
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for key, arr in arrays.items():
        root.create_array(f"data/{key}", data=arr, chunks=(4, *arr.shape[1:]))
    root.create_array("meta/episode_ends", data=np.array([4, 9], dtype=np.int64))
    return arrays


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_reference_layout_opens_with_inferred_features(tmp_path, zarr_format):
    arrays = _plain_reference_store(tmp_path / "ref.zarr", zarr_format)
    store = EpisodeStore.open(tmp_path / "ref.zarr")
    assert not store.declared_features and store.fps is None
    assert store.features["img"].kind == "image" and store.features["action"].kind == "action"
    assert store.features["state"] == Feature("lowdim", (5,), "float32")
    assert store.info()["zarr_format"] == zarr_format
    ep = store.read_episode(1)
    for key, arr in arrays.items():
        np.testing.assert_array_equal(ep[key], arr[4:9])
    writable = EpisodeStore.open(tmp_path / "ref.zarr", mode="r+")
    new = {k: v[:3] for k, v in arrays.items()}
    assert writable.append_episode(new) == 2
    again = EpisodeStore.open(tmp_path / "ref.zarr").read_episode(2)
    for key, arr in new.items():
        np.testing.assert_array_equal(again[key], arr)  # written at the arrays' own dtype


def test_zip_store_is_read(tmp_path):
    arrays = _plain_reference_store(tmp_path / "ref.zarr", 2)
    zpath = tmp_path / "ref.zarr.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((tmp_path / "ref.zarr").rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tmp_path / "ref.zarr").as_posix())
    with EpisodeStore.open(zpath) as store:
        assert store.n_episodes == 2
        np.testing.assert_array_equal(store.read_episode(0)["state"], arrays["state"][:4])
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(zpath, mode="r+")


def test_our_store_reads_with_plain_zarr(tmp_path):
    make_store(tmp_path / "s.zarr", [5, 3])
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    ends = root["meta"]["episode_ends"][:]
    assert list(ends) == [5, 8]
    np.testing.assert_array_equal(root["data"]["action"][ends[0]:ends[1]], episode(1, 3)["action"])
    np.testing.assert_array_equal(root["data"]["image"][:5], episode(0, 5)["image"])


def test_non_store_paths_name_the_path(tmp_path):
    with pytest.raises(StoreError, match="no such episode store"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="plain"):
        EpisodeStore.open(tmp_path / "plain")
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(StoreError, match="x.zip"):
        EpisodeStore.open(tmp_path / "x.zip")


def test_corrupt_chunk_names_the_file(tmp_path):
    make_store(tmp_path / "s.zarr", [5])
    chunk = tmp_path / "s.zarr" / "data" / "image" / "2.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    store = EpisodeStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read_slice("image", 0, 2), episode(0, 5)["image"][:2])
    with pytest.raises(StoreError, match="2.0.0.0: corrupt chunk"):
        store.read_slice("image", 1, 4)


def test_tail_is_ignored_and_repaired(tmp_path):
    store = make_store(tmp_path / "s.zarr", [4, 4])
    store.array("state").append(np.ones((3, 3), np.float32))
    store.array("action").append(np.ones((3, 2), np.float32))
    store.close()  # one writer at a time
    reopened = EpisodeStore.open(tmp_path / "s.zarr", mode="r+")
    assert reopened.n_frames == 8 and reopened.uncommitted_tail() == {"state": 3, "action": 3}
    assert reopened.repair() == {"state": 3, "action": 3}
    assert reopened.uncommitted_tail() == {} and reopened.array("state").shape == (8, 3)
    reopened.append_episode(episode(2, 2))
    np.testing.assert_array_equal(reopened.read_episode(2)["state"], episode(2, 2)["state"])


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import FEATURES, episode
    from robodiff.data.store import EpisodeStore
    import robodiff.data.store as store_module
    store = EpisodeStore.create(sys.argv[1], FEATURES, fps=10)
    if sys.argv[2] == "pause_before_commit":
        real, commits = store_module.append_data_first, []
        def paused(arr, values):
            commits.append(1)
            if len(commits) > 3:
                print("DATA_WRITTEN", flush=True)
                import time; time.sleep(60)
            real(arr, values)
        store_module.append_data_first = paused
    k = 0
    while True:
        store.append_episode(episode(k, 37 + k % 5))
        print("COMMITTED", k, flush=True)
        k += 1
""")


def _run_writer(tmp_path: Path, mode: str) -> tuple[Path, int]:
    path = tmp_path / f"{mode}.zarr"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdout=subprocess.PIPE, text=True)
    committed = -1
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("COMMITTED"):
                committed = int(line.split()[1])
                # pause_before_commit waits for its tail to be written: its third commit comes first.
                if committed >= 2 and mode == "random":
                    time.sleep(random.uniform(0.0, 0.05))  # land anywhere inside the next episode
                    break
            elif line.startswith("DATA_WRITTEN"):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return path, committed


@pytest.mark.parametrize("mode", ["random", "pause_before_commit"])
def test_sigkill_mid_episode_keeps_committed_episodes(tmp_path, mode):
    from robodiff.data.integrity import validate_store

    path, committed = _run_writer(tmp_path, mode)
    store = EpisodeStore.open(path)
    assert store.n_episodes >= max(committed + 1, 1)
    for k in range(store.n_episodes):
        ep = store.read_episode(k)
        expected = episode(k, 37 + k % 5)
        for key in FEATURES:
            np.testing.assert_array_equal(ep[key], expected[key])
    report = validate_store(path)
    if mode == "pause_before_commit":
        assert store.n_episodes == 3 and not report["valid"]
        assert any("uncommitted tail" in p for p in report["problems"])
    repaired = validate_store(path, repair=True)
    assert repaired["valid"], repaired["problems"]
    assert validate_store(path)["valid"]
    assert EpisodeStore.open(path).n_episodes == store.n_episodes


def test_direct_frame_reads_match_zarr(tmp_path):
    store = make_store(tmp_path / "s.zarr", [4, 3])
    store.array("image").resize((9, 8, 10, 3))  # two frames never written: the fill value
    plain = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["data"]["image"]
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert reopened._frame_chunks("image") and not reopened._frame_chunks("state")
    for a, b in [(0, 9), (2, 5), (6, 20), (8, 8)]:
        np.testing.assert_array_equal(reopened.read_slice("image", a, b), plain[a:b])


def test_episode_ends_chunk_lands_before_its_shape(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr", [3, 4])

    def killed_before_metadata(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr.Array, "resize", killed_before_metadata)
    with pytest.raises(KeyboardInterrupt):
        store.append_episode(episode(2, 5))
    monkeypatch.undo()
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert list(reopened.episode_ends) == [3, 7]  # not [3, 7, 0]: no torn commit
    assert reopened.uncommitted_tail() == {k: 5 for k in FEATURES}


def test_truncated_episode_ends_is_named(tmp_path):
    make_store(tmp_path / "s.zarr", [3, 4])
    chunk = tmp_path / "s.zarr" / "meta" / "episode_ends" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(StoreError, match="cannot read meta/episode_ends"):
        EpisodeStore.open(tmp_path / "s.zarr").n_episodes


def test_every_chunk_is_written_and_a_missing_one_is_an_error(tmp_path):
    store = make_store(tmp_path / "s.zarr", [3])
    zeros = {k: np.zeros_like(v) for k, v in episode(1, 2).items()}  # all fill value: still written
    store.append_episode(zeros)
    store.close()
    assert (tmp_path / "s.zarr" / "data" / "image" / "4.0.0.0").is_file()
    (tmp_path / "s.zarr" / "data" / "image" / "4.0.0.0").unlink()
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert reopened.complete_chunks
    with pytest.raises(StoreError, match=r"image/4\.0\.0\.0: chunk file is missing \(data/image frame 4, episode 1\)"):
        reopened.read_slice("image", 0, 5)


def test_one_writer_at_a_time(tmp_path):
    store = make_store(tmp_path / "s.zarr", [3])
    with pytest.raises(StoreError, match="another process .* is writing to this store"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="r+")
    code = ("import sys; from robodiff.data.store import EpisodeStore\n"
            "try:\n    EpisodeStore.open(sys.argv[1], mode='r+')\n"
            "except Exception as e:\n    print(e); sys.exit(3)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.zarr")], capture_output=True, text=True)
    assert proc.returncode == 3 and f"pid {os.getpid()}" in proc.stdout
    EpisodeStore.open(tmp_path / "s.zarr").close()  # readers are never refused
    store.close()
    EpisodeStore.open(tmp_path / "s.zarr", mode="r+").close()


def test_read_only_store_is_one_line(tmp_path, monkeypatch):
    make_store(tmp_path / "s.zarr", [3]).close()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".robodiff.lock") and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StoreError, match="cannot be written \\(Permission denied\\); a read-only store"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="r+")
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1


def test_full_disk_keeps_committed_episodes(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    store = make_store(tmp_path / "s.zarr", [4, 5])
    before = {k: store.read_slice(k, 0, 9) for k in FEATURES}
    real_set = LocalStore.set
    writes = []

    async def full_after_two(self, key, value):
        writes.append(key)
        if len(writes) > 2:
            raise OSError(28, "No space left on device", key)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_after_two)
    with pytest.raises(StoreError, match="could not write episode 2 \\(no space left on the device\\); "
                                         "the 2 committed episodes are intact"):
        store.append_episode(episode(2, 6))
    monkeypatch.undo()
    store.close()
    reopened = EpisodeStore.open(tmp_path / "s.zarr", mode="r+")
    # Even shrinking the partial frames back needs a metadata write, which a full disk refuses:
    # they are an uncommitted tail, ignored by readers and dropped by the next append.
    assert reopened.n_episodes == 2
    for key in FEATURES:
        np.testing.assert_array_equal(reopened.read_slice(key, 0, 9), before[key])
    reopened.append_episode(episode(2, 6))  # space is back: the store takes the episode
    assert reopened.n_episodes == 3


def test_ctrl_c_waits_for_the_commit(tmp_path, monkeypatch, terminal_sigint):
    store = make_store(tmp_path / "s.zarr", [3])
    arr_cls = type(store.array("state"))
    real_append = arr_cls.append

    def interrupted_append(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of writing the episode
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(arr_cls, "append", interrupted_append)
    with pytest.raises(KeyboardInterrupt):
        store.append_episode(episode(1, 4))
    monkeypatch.undo()
    assert store.n_episodes == 2 and store.uncommitted_tail() == {}


def test_repair_refuses_when_the_commit_record_was_lost(tmp_path):
    make_store(tmp_path / "s.zarr", [4, 5]).close()
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["meta/episode_ends"].resize((1,))
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="r+")
    with pytest.raises(StoreError, match="refusing to repair: meta/episode_ends holds 1 episodes but 2 were "
                                         "committed; truncating to the commit record would delete 5 frames"):
        store.repair()
    assert store.array("state").shape == (9, 3)
