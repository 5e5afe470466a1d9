"""Every command against every kind of damaged episode store: it works correctly or exits non-zero
with one line (no traceback), never changes a chunk it was not asked to, and `--repair` only ever
removes frames past the last committed episode end."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from file_digests import digests
import zarr

from robodiff.cli import main
from robodiff.data.store import LOCK_FILE, EpisodeStore
from robodiff.sim.tasks import load_task

LENGTHS = (12, 12, 12)  # three episodes of the push_block task's features
N = sum(LENGTHS)
TRAIN_ARGS = ["task=push_block", "training.steps=2", "training.batch_size=4", "training.val_ratio=0",
              "logging.progress=false", "logging.tensorboard=false", "policy.encoder.backbone=small_cnn",
              "policy.encoder.crop_shape=null", "policy.denoiser.down_dims=[16,32]",
              "policy.denoiser.diffusion_step_embed_dim=16"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store.zarr"
    task = load_task("push_block")
    store = EpisodeStore.create(path, dict(task.features), fps=task.fps, task="push_block", robot="sim_pusher")
    rng = np.random.default_rng(0)
    for n in LENGTHS:
        store.append_episode({
            "image": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
            "state": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "timestamp": np.arange(n) / 10.0})
    store.close()
    return path


def _group(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r+")


def _rewrite(path: Path, key: str, values: np.ndarray) -> None:
    data = _group(path)["data"]
    del data[key]
    data.create_array(key, shape=values.shape, dtype=values.dtype, chunks=(1024, *values.shape[1:]))[:] = values


def valid(path):
    pass


def tail(path):
    # An interrupted recording: frames beyond the last commit in some arrays.
    data = _group(path)["data"]
    data["state"].append(np.ones((4, 2), np.float32))
    data["image"].append(np.ones((2, 96, 96, 3), np.uint8))


def missing_action_chunk(path):
    (path / "data" / "action" / "0.0").unlink()


def missing_image_chunk(path):
    (path / "data" / "image" / "13.0.0.0").unlink()


def truncated_chunk(path):
    chunk = path / "data" / "image" / "5.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:50])


def garbage_metadata(path):
    (path / "data" / "state" / ".zarray").write_text("{not json")


def non_monotonic_ends(path):
    _group(path)["meta/episode_ends"][1] = 5


def ends_past_data(path):
    _group(path)["meta/episode_ends"][2] = N + 10


def short_array(path):
    _group(path)["data/state"].resize((N - 5, 2))


def nan_values(path):
    arr = _group(path)["data/action"]
    arr[3, 0] = np.nan
    arr[20, 1] = np.inf


def wrong_dtype(path):
    _rewrite(path, "state", _group(path)["data/state"][:].astype(np.float64))


def wrong_shape(path):
    _rewrite(path, "state", np.zeros((N, 3), np.float32))


def empty_ends(path):
    _group(path)["meta/episode_ends"].resize((0,))


def foreign_missing_chunk(path):
    # A store that does not vouch for every chunk (older or foreign writers skip fill-value chunks).
    root = _group(path)
    attrs = dict(root.attrs["robodiff"])
    del attrs["complete_chunks"]
    root.attrs["robodiff"] = attrs
    (path / "data" / "image" / "13.0.0.0").unlink()


COMMANDS = ("info", "validate", "repair", "view", "train", "collect")
# case -> (commands that must succeed, the words every failing command's line must hold)
CASES = {
    valid: (set(COMMANDS), None),
    tail: ({"info", "repair", "view", "train", "collect"}, r"uncommitted tail beyond frame 36"),
    missing_action_chunk: ({"info"}, r"data/action: chunk file 0\.0 is missing \(frames 0-35, episodes 0-2\)"),
    missing_image_chunk: ({"info"}, r"data/image: chunk file 13\.0\.0\.0 is missing \(frames 13-13, episode 1\)"),
    truncated_chunk: ({"info", "collect"}, r"image/5\.0\.0\.0: corrupt chunk .*truncated blosc chunk"),
    garbage_metadata: (set(), r"data/state has unreadable array metadata"),
    non_monotonic_ends: ({"info"}, r"meta/episode_ends is not increasing at index 1 \(12 -> 5"),
    ends_past_data: ({"info"}, r"data/\w+ has 36 frames, fewer than the 46 that meta/episode_ends commits"),
    short_array: ({"info"}, r"data/state has 31 frames, fewer than the 36 .*\(episode 2 lack"),
    nan_values: ({"info", "view"}, r"data/action has 2 NaN/Inf values \(first at frame 3, episode 0\)"),
    wrong_dtype: ({"info"}, r"data/state has dtype float64, its feature says float32"),
    wrong_shape: ({"info"}, r"data/state has per-step shape \[3\], its feature says \[2\]"),
    empty_ends: ({"info"}, r"meta/episode_ends holds 0 episodes but 3 were committed"),
    foreign_missing_chunk: (set(COMMANDS), None),
}


def committed(path: Path) -> dict[str, np.ndarray]:
    """The committed low-dim values (image chunks are compared file by file)."""
    with EpisodeStore.open(path) as store:
        return {k: store.read_slice(k, 0, N) for k, f in store.features.items() if f.kind != "image"}


def run(command: str, store: Path, work: Path, capsys) -> tuple[int, str]:
    argv = {
        "info": ["dataset", "info", str(store)],
        "validate": ["dataset", "validate", str(store)],
        "repair": ["dataset", "validate", str(store), "--repair"],
        "view": ["dataset", "view", str(store), "episode=0", f"out={work / 'view.mp4'}"],
        "train": ["train", f"dataset={store}", f"run_dir={work / 'run'}", *TRAIN_ARGS],
        "collect": ["collect", "task=push_block", "teleop=expert", "episodes=1", f"out={store}", "seed=3"],
    }[command]
    code = main(argv)  # an exception escaping here is a traceback a user would see
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(CASES), ids=lambda f: f.__name__)
def test_command_on_damaged_store(damage, command, pristine, tmp_path, capsys):
    store = tmp_path / "store.zarr"
    shutil.copytree(pristine, store)
    damage(store)
    before = digests(store, skip=(LOCK_FILE,))
    values_before = committed(store) if damage in (valid, tail, truncated_chunk, foreign_missing_chunk) else None
    must_work, words = CASES[damage]

    code, err = run(command, store, tmp_path, capsys)

    assert "Traceback" not in err
    if command in must_work:
        assert code == 0, err
    else:
        assert code != 0
        if command not in ("validate", "repair"):  # validate lists its problems on stdout, exit 1
            lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
            assert len(lines) == 1 and lines[0].startswith(f"robodiff {argv0(command)}: error:"), err
            assert re.search(words, lines[0]), lines[0]
    after = digests(store, skip=(LOCK_FILE,))
    if command == "collect" and code == 0:
        # The committed frames are untouched; only the new episode (and the metadata) was added.
        np.testing.assert_equal(committed(store), values_before)
        with EpisodeStore.open(store) as reopened:
            assert reopened.n_episodes == 4 and not reopened.uncommitted_tail()
        for name, digest in before.items():
            if re.fullmatch(r"data/image/\d+\.0\.0\.0", name) and int(name.split("/")[-1].split(".")[0]) < N:
                assert after.get(name) == digest, name
    elif command == "repair" and damage is tail:
        np.testing.assert_equal(committed(store), values_before)
        removed = set(before) - set(after)
        assert removed == {f"data/image/{i}.0.0.0" for i in (N, N + 1)}
        changed = {k for k in after if before[k] != after[k]}
        assert changed <= {"data/image/.zarray", "data/state/.zarray"}, changed
    else:
        assert after == before  # read-only, refused, or nothing to repair: not one byte changed


def argv0(command: str) -> str:
    return {"info": "dataset", "view": "dataset", "train": "train", "collect": "collect"}[command]


def test_validate_reports_each_damage_and_repair_refusal(pristine, tmp_path, capsys):
    """`validate` names each problem (the words above); `--repair` on a lost commit record refuses
    and says what it would have deleted."""
    import json

    for damage, (_, words) in CASES.items():
        if words is None:
            continue
        store = tmp_path / f"{damage.__name__}.zarr"
        shutil.copytree(pristine, store)
        damage(store)
        code = main(["dataset", "validate", str(store), "--json"] + (["--repair"] if damage is empty_ends else []))
        out, _ = capsys.readouterr()
        report = json.loads(out.strip().splitlines()[-1])
        if damage is tail:
            assert code == 1 and any(re.search(words, p) for p in report["problems"]), report
            continue
        assert code == 1 and report["valid"] is False
        assert any(re.search(words, p) for p in report["problems"]), (damage.__name__, report["problems"])
        if damage is empty_ends:
            assert any("refusing to repair" in p and "would delete 36 frames of data/action" in p
                       for p in report["problems"]), report["problems"]
