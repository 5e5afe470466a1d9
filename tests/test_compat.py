"""What earlier versions wrote keeps loading and behaving the same.

`fixtures/a4bd1c6/` was written by robodiff at commit a4bd1c6 (before the one episode loop and the
normalizer's move into `policy/`): a 2-episode expert store (`robodiff collect task=push_block
teleop=expert episodes=2 seed=0`), a small state diffusion checkpoint trained on it for 30 steps,
and what that code computed from them (`expected.json`: one chunk, and the rows of `robodiff eval
task=push_block checkpoint=... episodes=2 seed=100`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from robodiff.commands.collect import CollectConfig, collect_with
from robodiff.commands.eval import evaluate_with, load_config
from robodiff.config import compose, validate
from robodiff.data.store import EpisodeStore
from robodiff.data.integrity import validate_store
from robodiff.policy.checkpoint import load_policy
from robodiff.sim.experts import EXPERTS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "a4bd1c6"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_an_old_store_opens_validates_and_reads_as_written():
    store = EpisodeStore.open(FIXTURES / "store.zarr")
    assert store.n_episodes == 2 and store.n_frames == 109 and store.task == "push_block"
    assert set(store.features) == {"image", "state", "action", "timestamp"}
    assert validate_store(FIXTURES / "store.zarr")["valid"]


def test_collect_today_records_the_old_stores_arrays_from_its_actions(tmp_path, monkeypatch):
    """Same resets, physics, rendering, timestamps and layout. The push_block expert has changed
    its strategy since a4bd1c6, so its recorded actions are played back in its place."""
    old = EpisodeStore.open(FIXTURES / "store.zarr")
    recorded = iter([old.read_episode(k)["action"] for k in range(old.n_episodes)])

    class Playback:
        def __init__(self, task, seed):
            self.actions = iter(next(recorded)) if seed is not None else iter(())

        def reset(self):
            pass

        def act(self, obs, robot):
            return next(self.actions)

    monkeypatch.setitem(EXPERTS, "push_block", Playback)
    out = tmp_path / "store.zarr"
    collect_with(validate(compose("collect", ["task=push_block", "teleop=expert", "episodes=2", "seed=0",
                                              f"out={out}"]), CollectConfig))
    new = EpisodeStore.open(out)
    assert old.features == new.features and new.n_episodes == 2
    for k in range(2):
        a, b = old.read_episode(k), new.read_episode(k)
        for key in old.features:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_old_checkpoint_loads_and_predicts_the_same_chunk():
    policy = load_policy(FIXTURES / "checkpoint")
    episode = EpisodeStore.open(FIXTURES / "store.zarr").read_episode(0)
    torch.manual_seed(0)
    policy.reset()
    chunk = np.asarray(policy.predict_action_chunk({"state": np.asarray(episode["state"][4:6])}))
    np.testing.assert_allclose(chunk, np.asarray(EXPECTED["chunk"]), rtol=0, atol=1e-4)


def test_an_old_checkpoint_evaluates_to_the_same_rows(tmp_path):
    run = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "checkpoint", run)
    e = EXPECTED["eval"]
    evaluate_with(load_config([f"task={e['task']}", f"checkpoint={run}", f"episodes={e['episodes']}",
                               f"seed={e['seed']}", "n_videos=0", f"out={tmp_path / 'eval'}"]))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert rows == e["rows"]
