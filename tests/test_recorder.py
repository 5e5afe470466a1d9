"""The recorder streams an episode into the store while it runs: an uncommitted tail readers ignore,
committed with the store's protocol; memory bounded by its queue; a full disk and a SIGKILL lose
at most the episode in progress; committing writes only what was still queued and the record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from zarr.storage import LocalStore

import robodiff.data.recorder as recorder_module
from robodiff.data.integrity import validate_store
from robodiff.data.recorder import EpisodeRecorder
from robodiff.data.store import EpisodeStore
from robodiff.errors import StoreError
from tests.test_store import FEATURES, episode


def steps(k: int, length: int):
    ep = episode(k, length)
    return [{key: v[t] for key, v in ep.items()} for t in range(length)], ep


def test_an_episode_streams_as_a_tail_and_commits(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    store.append_episode(episode(0, 4))
    recorder = EpisodeRecorder(store)
    rows, expected = steps(1, 300)
    for row in rows:
        recorder.add(row)
    recorder.flush()
    # on disk during the episode, as a tail no reader counts
    assert store.array("image").shape[0] == 304 and store.array("state").shape[0] == 304
    assert EpisodeStore.open(tmp_path / "s.zarr").n_frames == 4
    assert store.uncommitted_tail() == dict.fromkeys(FEATURES, 300)
    assert len(recorder) == 300 and recorder.commit() == 1 and len(recorder) == 0
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert list(reopened.episode_ends) == [4, 304]
    for key in FEATURES:
        np.testing.assert_array_equal(reopened.read_episode(1)[key], expected[key])
    assert validate_store(tmp_path / "s.zarr")["valid"]
    recorder.close()


def test_committing_writes_only_what_was_left(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    recorder = EpisodeRecorder(store)
    rows, _ = steps(0, 50)
    for row in rows:
        recorder.add(row)
    recorder.flush()  # the writer kept up: every frame is on disk already
    written, real_set = [], LocalStore.set

    async def spy(self, key, value):
        written.append(key)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", spy)
    recorder.commit()
    assert not any(k.startswith("data/") for k in written), written
    assert {k.split("/")[0] for k in written} <= {"meta", ".zattrs", ".zgroup"}  # the record, the count
    recorder.close()


def test_discard_drops_the_tail_and_the_next_episode_takes_its_place(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    recorder = EpisodeRecorder(store)
    for row in steps(0, 20)[0]:
        recorder.add(row)
    recorder.discard()
    assert store.uncommitted_tail() == {} and store.array("image").shape[0] == 0
    rows, expected = steps(1, 7)
    for row in rows:
        recorder.add(row)
    assert recorder.commit() == 0
    np.testing.assert_array_equal(store.read_episode(0)["image"], expected["image"])
    recorder.close()


def test_memory_is_bounded_by_the_queue(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    rows, expected = steps(0, 40)
    step_bytes = sum(np.asarray(v).nbytes for v in rows[0].values())
    real, release = recorder_module.append_data_first, threading.Event()

    def slow_disk(arr, values):
        release.wait()
        real(arr, values)

    monkeypatch.setattr(recorder_module, "append_data_first", slow_disk)
    recorder = EpisodeRecorder(store, max_queue_bytes=5 * step_bytes)
    adder = threading.Thread(target=lambda: [recorder.add(r) for r in rows])
    adder.start()
    for _ in range(6000):  # until add waits for room (a condition, not a time: 60 s is only a cap)
        if recorder.waits or not adder.is_alive():
            break
        time.sleep(0.01)
    # waits for the disk instead of holding 40 steps: the queue's 5 and the block being written
    assert adder.is_alive() and len(recorder) <= 5 + recorder_module.IMAGE_BLOCK + 1
    assert recorder._queued_bytes <= 5 * step_bytes and recorder.waits >= 1
    release.set()
    adder.join()
    assert recorder.commit() == 0
    np.testing.assert_array_equal(store.read_episode(0)["state"], expected["state"])
    recorder.close()


def test_a_full_disk_loses_the_episode_in_progress_only(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    store.append_episode(episode(0, 5))
    recorder = EpisodeRecorder(store)
    real_set = LocalStore.set

    async def full(self, key, value):
        raise OSError(28, "No space left on device", key)

    monkeypatch.setattr(LocalStore, "set", full)
    for row in steps(1, 3)[0]:
        recorder.add(row)
    with pytest.raises(StoreError, match="writing the episode in progress failed \\(No space left on device\\); "
                                         "it is lost, the 1 committed episodes are intact"):
        recorder.commit()
    monkeypatch.setattr(LocalStore, "set", real_set)
    rows, expected = steps(2, 6)
    for row in rows:
        recorder.add(row)
    assert recorder.commit() == 1
    np.testing.assert_array_equal(store.read_episode(0)["state"], episode(0, 5)["state"])
    np.testing.assert_array_equal(store.read_episode(1)["state"], expected["state"])
    recorder.close()


RECORDING = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import FEATURES, episode
    from robodiff.data.recorder import EpisodeRecorder
    from robodiff.data.store import EpisodeStore
    store = EpisodeStore.create(sys.argv[1], FEATURES, fps=10)
    recorder = EpisodeRecorder(store)
    for k in range(3):
        ep = episode(k, 40)
        for t in range(40):
            recorder.add({{key: v[t] for key, v in ep.items()}})
        if k < 2:
            recorder.commit()
    recorder.flush()
    print("STREAMING", flush=True)
    import time; time.sleep(60)
""")


def test_sigkill_mid_episode_keeps_every_committed_episode(tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORDING.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert proc.stdout.readline().strip() == "STREAMING"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = EpisodeStore.open(path)
    assert store.n_episodes == 2 and store.uncommitted_tail() == dict.fromkeys(FEATURES, 40)
    for k in range(2):
        np.testing.assert_array_equal(store.read_episode(k)["image"], episode(k, 40)["image"])
    assert not validate_store(path)["valid"] and validate_store(path, repair=True)["valid"]
    with EpisodeStore.open(path, mode="r+") as store:
        recorder = EpisodeRecorder(store)
        for row in steps(5, 3)[0]:
            recorder.add(row)
        assert recorder.commit() == 2
        recorder.close()
