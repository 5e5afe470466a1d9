"""Inputs a careless user (or a foreign tool) produces, found by probing the commands: each is one
line and a non-zero exit, or is handled as a user would expect; never a traceback, never silent."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from robodiff.cli import main
from robodiff.data.importers import import_dataset
from robodiff.data.store import EpisodeStore
from robodiff.errors import StoreError, UserError
from robodiff.features import Feature

FEATURES = {"state": Feature("lowdim", (2,)), "action": Feature("action", (2,))}


def small_store(path: Path, episodes: int = 3, length: int = 20) -> Path:
    store = EpisodeStore.create(path, FEATURES, fps=10, task="toy")
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        walk = np.cumsum(rng.normal(size=(length, 2)), 0).astype(np.float32)
        store.append_episode({"state": walk, "action": walk + 1})
    store.close()
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert code != 0 and len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------ stores
def test_an_array_without_frames_is_named(tmp_path, capsys):
    path = small_store(tmp_path / "s.zarr")
    zarr.open_group(str(path), mode="r+")["data"].create_array("odd", shape=(), dtype="float32")
    for argv, code in ((["dataset", "info", str(path)], 0), (["dataset", "validate", str(path)], 1)):
        assert main(argv) == code  # info lists it among the problems; validate finds the store invalid
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "data/odd is a scalar" in captured.out + captured.err


def test_zero_chunk_metadata_and_bad_fps_are_one_line(tmp_path, capsys):
    path = small_store(tmp_path / "s.zarr")
    meta = json.loads((path / "data" / "state" / ".zarray").read_text())
    (path / "data" / "state" / ".zarray").write_text(json.dumps({**meta, "chunks": [0, 2]}))
    assert "chunk shape [0, 2]" in one_line_error(capsys, ["dataset", "view", str(path), "episode=0",
                                                          f"out={tmp_path / 'v.mp4'}"])
    other = small_store(tmp_path / "t.zarr")
    root = zarr.open_group(str(other), mode="r+")
    root.attrs["robodiff"] = {**root.attrs["robodiff"], "fps": "fast"}
    assert "attribute 'fps' is 'fast'" in one_line_error(capsys, ["dataset", "info", str(other)])


def test_nothing_is_written_inside_a_store(tmp_path, capsys):
    path = small_store(tmp_path / "s.zarr")
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    inner = path / "data" / "inner.zarr"
    assert "inside the episode store" in one_line_error(
        capsys, ["collect", "task=push_block", "episodes=1", f"out={inner}"])
    assert "inside the episode store" in one_line_error(
        capsys, ["train", f"dataset={path}", f"run_dir={path / 'data' / 'run'}", "training.steps=1"])
    assert "inside the episode store" in one_line_error(capsys, ["dataset", "import", str(path), str(path / "copy")])
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert "drop the .zip" in one_line_error(capsys, ["collect", "task=push_block", "episodes=1",
                                                      f"out={tmp_path / 'b.zarr.zip'}"])
    assert not (tmp_path / "b.zarr.zip").exists()


def test_a_damaged_store_is_not_called_foreign(tmp_path):
    path = small_store(tmp_path / "s.zarr")
    (path / ".zgroup").write_text("{garbage")
    with pytest.raises(StoreError, match="damaged store metadata"):
        EpisodeStore.open(path)


def test_a_zip_with_a_top_folder_opens(tmp_path):
    path = small_store(tmp_path / "s.zarr")
    archive = tmp_path / "s.zarr.zip"
    with zipfile.ZipFile(archive, "w") as z:  # as `zip -r s.zarr.zip s.zarr` makes it
        for file in path.rglob("*"):
            if file.is_file():
                z.write(file, f"s.zarr/{file.relative_to(path)}")
    with EpisodeStore.open(archive) as store:
        assert store.n_episodes == 3


# ------------------------------------------------------------------------------ imports
def demo_folder(root: Path, episodes: list[dict[str, np.ndarray]], meta: dict | None = None) -> Path:
    root.mkdir()
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    for i, steps in enumerate(episodes):
        (root / f"episode_{i}").mkdir()
        np.savez(root / f"episode_{i}" / "steps.npz", **steps)
    return root


def test_images_in_0_1_or_channels_first_import_as_images(tmp_path):
    rng = np.random.default_rng(0)
    float01 = rng.uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)
    chw = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    src = demo_folder(tmp_path / "demos", [{"action": np.zeros((5, 2)), "cam": float01, "wrist": chw}])
    import_dataset(src, tmp_path / "out.zarr")
    with EpisodeStore.open(tmp_path / "out.zarr") as store:
        assert store.features["cam"] == Feature("image", (8, 8, 3), "uint8")
        assert store.features["wrist"] == Feature("image", (8, 8, 3), "uint8")
        np.testing.assert_array_equal(store.read_slice("cam", 0, 5), np.rint(float01 * 255).astype(np.uint8))
        np.testing.assert_array_equal(store.read_slice("wrist", 0, 5), np.moveaxis(chw, 1, -1))


@pytest.mark.parametrize("episodes, meta, words", [
    ([{"action": np.zeros((3, 2))}, {"action": np.zeros((3, 2)), "extra": np.zeros((3, 1))}], None,
     "has 'extra', which the first episode has not"),
    ([{"action": np.zeros((3, 2)), "note": np.array(["a", "b", "c"])}], None, "'note' has dtype <U1"),
    ([{"action": np.zeros((3, 2)) + 1j}], None, "'action' has dtype complex128"),
    ([{"action": np.zeros((3, 2)), "timestamp": np.array([0.0, 0.2, 0.1])}], None,
     "'timestamp' does not increase at step 2"),
    ([{"action": np.zeros((3, 2))}], {"fps": float("inf")}, "fps is inf, expected a positive number"),
])
def test_malformed_demo_folders_are_one_line(tmp_path, episodes, meta, words):
    src = demo_folder(tmp_path / "demos", episodes, meta)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        import_dataset(src, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_a_changed_foreign_dataset_is_imported_again(tmp_path, capsys):
    steps = {"state": np.cumsum(np.ones((20, 2)), 0), "action": np.ones((20, 2))}
    src = demo_folder(tmp_path / "demos", [steps, steps])
    args = [f"dataset={src}", "training.steps=1", "training.batch_size=4", "logging.progress=false",
            "policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16"]
    assert main(["train", *args, f"run_dir={tmp_path / 'a'}"]) == 0
    (src / "episode_2").mkdir()
    np.savez(src / "episode_2" / "steps.npz", **steps)
    capsys.readouterr()
    assert main(["train", *args, f"run_dir={tmp_path / 'b'}"]) == 0
    assert "changed since it was imported" in capsys.readouterr().err
    with EpisodeStore.open(tmp_path / "demos.robodiff.zarr") as store:
        assert store.n_episodes == 3


# ------------------------------------------------------------------------------ training and checkpoints
def test_a_run_records_its_dataset_absolutely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_store(tmp_path / "a.zarr")
    assert main(["train", "dataset=a.zarr", "run_dir=run", "training.steps=2", "training.batch_size=4",
                 "logging.progress=false", "policy.denoiser.down_dims=[16,32]"]) == 0
    assert f"dataset: {tmp_path / 'a.zarr'}" in (tmp_path / "run" / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    small_store(elsewhere / "a.zarr", episodes=2)  # same name and features, other data
    monkeypatch.chdir(elsewhere)
    assert main(["train", f"run_dir={tmp_path / 'run'}", "resume=true", "training.steps=3"]) == 0
    meta = json.loads((tmp_path / "run" / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["dataset"] == str(tmp_path / "a.zarr")


def test_nan_weights_never_act_or_train_on(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    small_store(tmp_path / "a.zarr")
    run = tmp_path / "run"
    assert main(["train", f"dataset={tmp_path / 'a.zarr'}", f"run_dir={run}", "training.steps=2",
                 "training.batch_size=4", "logging.progress=false", "policy.denoiser.down_dims=[16,32]"]) == 0
    weights = run / "checkpoints" / "latest" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.startswith("ema.") and tensors[k].is_floating_point())
    tensors[name][...] = float("nan")
    save_file(tensors, str(weights))
    capsys.readouterr()
    assert "holds NaN/Inf" in one_line_error(capsys, ["eval", "task=push_block", f"checkpoint={run}",
                                                      "episodes=1", "n_videos=0"])
    assert "the weights hold NaN/Inf" in one_line_error(capsys, ["train", f"run_dir={run}", "resume=true",
                                                                 "training.steps=4"])


def test_a_damaged_stats_cache_is_computed_again(tmp_path):
    from robodiff.data.stats import cached_stats

    path = small_store(tmp_path / "a.zarr")
    with EpisodeStore.open(path) as store:
        good = cached_stats(store, ["state"])
        cache = Path(str(path) + ".stats.json")
        broken = json.loads(cache.read_text())
        broken["stats"]["state"]["std"] = [float("nan"), 1.0]
        cache.write_text(json.dumps(broken))
        assert cached_stats(store, ["state"]) == good


# ------------------------------------------------------------------------------ commands
def test_empty_value_unsets_the_key(capsys):
    assert "`dataset=` is required" in one_line_error(capsys, ["train", "dataset="])


def test_unknown_command_with_json_prints_json(capsys):
    assert main(["trian", "--json"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["error"].startswith("unknown command 'trian'")


def test_collect_that_keeps_nothing_fails_and_leaves_no_store(tmp_path, capsys):
    task = tmp_path / "hard.yaml"
    from robodiff.sim.tasks import load_task

    src = load_task("push_block").path
    text = src.read_text().replace("scene: push_block.xml", f"scene: {src.parent / 'push_block.xml'}")
    task.write_text(text.replace("max_steps: 100", "max_steps: 2"))  # no expert succeeds in 2 steps
    words = one_line_error(capsys, ["collect", f"task={task}", "episodes=2", "max_attempts=2",
                                    f"out={tmp_path / 'none.zarr'}"])
    assert "no episode was kept (2 attempts" in words and not (tmp_path / "none.zarr").exists()


def test_view_names_its_video_after_the_whole_store(tmp_path, capsys):
    for name in ("v.1.zarr", "v.2.zarr"):
        path = small_store(tmp_path / name)
        assert main(["dataset", "view", str(path), "episode=0"]) == 0
    assert (tmp_path / "v.1.zarr_episode0.mp4").is_file() and (tmp_path / "v.2.zarr_episode0.mp4").is_file()


def test_eval_into_the_same_out_leaves_no_stale_video(tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "task=push_block", "policy=expert", "episodes=1", "n_videos=1", f"out={out}"]) == 0
    assert list((out / "videos").glob("*.mp4"))
    assert main(["eval", "task=push_block", "policy=random", "episodes=1", "n_videos=0", f"out={out}"]) == 0
    assert not (out / "videos").exists()
    shutil.rmtree(out)
