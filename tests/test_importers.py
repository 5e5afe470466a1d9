import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from robodiff.data.importers import detect_format, import_dataset
from robodiff.data.store import EpisodeStore
from robodiff.data.video import TIME_TOLERANCE_S, read_video
from robodiff.errors import StoreError, UserError
from tests.importer_fixtures import (frame_index_of, make_demo_folder, make_dp_real, make_dp_zarr,
                                     make_lerobot_v21, make_lerobot_v30, make_robomimic)


def imported(dest: Path) -> list[dict[str, np.ndarray]]:
    with EpisodeStore.open(dest) as store:
        return list(store.iter_episodes())


def assert_no_leftovers(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(dest.name + ".tmp-*"))


# ------------------------------------------------------------------------------ importers
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("name", ["src.zarr", "src.zarr.zip"])
def test_dp_zarr_imports_identical_values(tmp_path: Path, zarr_format: int, name: str) -> None:
    src = tmp_path / name
    source = make_dp_zarr(src, zarr_format=zarr_format)
    assert detect_format(src) == "dp_zarr"
    result = import_dataset(src, tmp_path / "out.zarr")
    assert (result["format"], result["episodes"], result["frames"]) == ("dp_zarr", 3, 16)
    assert result["features"]["img"] == {"kind": "image", "shape": [12, 16, 3], "dtype": "uint8"}
    for got, want in zip(imported(tmp_path / "out.zarr"), source, strict=True):
        assert got["img"].dtype == np.uint8
        np.testing.assert_array_equal(got["img"], want["img"].astype(np.uint8))
        np.testing.assert_array_equal(got["state"], want["state"])
        np.testing.assert_array_equal(got["action"], want["action"])


def test_dp_zarr_with_jpeg2k_images(tmp_path: Path) -> None:
    """The reference real-robot stores compress images with imagecodecs (optional dependency)."""
    codecs = pytest.importorskip("imagecodecs.numcodecs")
    src = tmp_path / "jp2.zarr"
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 16, 3), dtype=np.uint8)
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    root.create_array("data/img", data=images, chunks=(1, 12, 16, 3), compressors=codecs.Jpeg2k(level=50))
    root.create_array("data/action", data=np.zeros((5, 2), np.float32))
    root.create_array("meta/episode_ends", data=np.array([2, 5]))
    import_dataset(src, tmp_path / "out.zarr")
    got = np.concatenate([e["img"] for e in imported(tmp_path / "out.zarr")])
    np.testing.assert_array_equal(got, zarr.open_group(str(src), mode="r")["data/img"][:])


def test_dp_real_resamples_video_onto_lowdim_timestamps(tmp_path: Path) -> None:
    source = make_dp_real(tmp_path / "real", video_fps=30.0, lowdim_fps=10.0)
    assert detect_format(tmp_path / "real") == "dp_real"
    result = import_dataset(tmp_path / "real", tmp_path / "out.zarr")
    assert result["episodes"] == 2 and result["frames"] == 18
    for k, (got, want) in enumerate(zip(imported(tmp_path / "out.zarr"), source, strict=True)):
        np.testing.assert_array_equal(got["timestamp"], want["timestamp"])
        np.testing.assert_array_equal(got["action"], want["action"])
        np.testing.assert_array_equal(got["robot_eef_pose"], want["robot_eef_pose"])
        # The last frame at or before each step, on a clock that starts at the first timestamp.
        expected = np.floor((want["timestamp"] - want["timestamp"][0]) * 30.0 + TIME_TOLERANCE_S).astype(int)
        assert len(set(expected)) == len(expected) and expected[-1] > len(expected)  # really resampled
        for camera in ("0", "1"):
            decoded, _ = read_video(tmp_path / "real" / "videos" / str(k) / f"{camera}.mp4")
            np.testing.assert_array_equal(frame_index_of(got[f"camera_{camera}"]), expected)
            np.testing.assert_array_equal(got[f"camera_{camera}"], decoded[expected])


@pytest.mark.parametrize("with_timestamp", [False, True])
def test_demo_folder(tmp_path: Path, with_timestamp: bool) -> None:
    src = tmp_path / "demos"
    source = make_demo_folder(src, fps=5.0, with_timestamp=with_timestamp)
    assert detect_format(src) == "demo_folder"
    result = import_dataset(src, tmp_path / "out.zarr")
    assert result["episodes"] == 2 and result["frames"] == 15
    with EpisodeStore.open(tmp_path / "out.zarr") as store:
        assert (store.fps, store.task) == (5.0, "demo_task")
    for k, (got, want) in enumerate(zip(imported(tmp_path / "out.zarr"), source, strict=True)):
        n = len(want["action"])
        np.testing.assert_array_equal(got["action"], want["action"])
        np.testing.assert_array_equal(got["joints"], want["joints"])
        np.testing.assert_array_equal(got["wrist"], want["wrist"])  # PNG: lossless
        expected_t = want["timestamp"] if with_timestamp else np.arange(n) / 5.0
        np.testing.assert_array_equal(got["timestamp"], expected_t)
        decoded, _ = read_video(src / f"episode_{k}" / "front.mp4")
        np.testing.assert_array_equal(frame_index_of(got["front"]), np.arange(n))
        np.testing.assert_array_equal(got["front"], decoded)


def test_robomimic_demos_in_numeric_order(tmp_path: Path) -> None:
    source = make_robomimic(tmp_path / "demo.hdf5", lengths=(4, 6, 3))
    assert detect_format(tmp_path / "demo.hdf5") == "robomimic"
    result = import_dataset(tmp_path / "demo.hdf5", tmp_path / "out.zarr")
    assert result["features"]["agentview"]["kind"] == "image"
    episodes = imported(tmp_path / "out.zarr")
    assert [len(e["action"]) for e in episodes] == [4, 6, 3]  # demo_0, demo_2, demo_10
    for got, want in zip(episodes, source, strict=True):
        np.testing.assert_array_equal(got["action"], want["action"].astype(np.float32))
        np.testing.assert_array_equal(got["robot0_eef_pos"], want["robot0_eef_pos"].astype(np.float32))
        np.testing.assert_array_equal(got["agentview"], want["agentview"])
        np.testing.assert_allclose(got["timestamp"], np.arange(len(want["action"])) / 20.0)


def _check_lerobot(src: Path, dest: Path, source: list[dict[str, np.ndarray]], video_of) -> None:
    assert detect_format(src) == "lerobot"
    result = import_dataset(src, dest)
    assert set(result["features"]) >= {"state", "action", "top", "timestamp"}
    assert result["features"]["state"]["names"] == ["a", "b", "c", "d"]
    for k, (got, want) in enumerate(zip(imported(dest), source, strict=True)):
        np.testing.assert_array_equal(got["state"], want["observation.state"])
        np.testing.assert_array_equal(got["action"], want["action"])
        np.testing.assert_array_equal(got["timestamp"], want["timestamp"].astype(np.float64))
        path, first = video_of(k)
        decoded, _ = read_video(path)
        n = len(want["action"])
        np.testing.assert_array_equal(frame_index_of(got["top"]), first + np.arange(n))
        np.testing.assert_array_equal(got["top"], decoded[first:first + n])


def test_lerobot_v21(tmp_path: Path) -> None:
    src = tmp_path / "lerobot21"
    source = make_lerobot_v21(src)
    videos = src / "videos" / "chunk-000" / "observation.images.top"
    _check_lerobot(src, tmp_path / "out.zarr", source, lambda k: (videos / f"episode_{k:06d}.mp4", 0))
    for got, want in zip(imported(tmp_path / "out.zarr"), source, strict=True):
        np.testing.assert_array_equal(got["wrist"], want["observation.images.wrist"])  # PNG in parquet


def test_lerobot_v30_many_episodes_per_file(tmp_path: Path) -> None:
    src = tmp_path / "lerobot30"
    source = make_lerobot_v30(src, lengths=(5, 3, 6))
    videos = src / "videos" / "observation.images.top" / "chunk-000"
    where = {0: (0, 0), 1: (0, 5), 2: (1, 0)}  # episode -> (file, first frame in it)
    _check_lerobot(src, tmp_path / "out.zarr", source,
                   lambda k: (videos / f"file-{where[k][0]:03d}.mp4", where[k][1]))


@pytest.mark.parametrize("make", [make_dp_real, make_demo_folder, make_lerobot_v21, make_lerobot_v30])
def test_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make) -> None:
    monkeypatch.chdir(tmp_path)
    source = make(Path("src"))
    result = import_dataset("src", "out.zarr")
    assert result["frames"] == sum(len(e["action"]) for e in source)
    assert (tmp_path / "out.zarr").is_dir()


# ------------------------------------------------------------------------------ atomic writes
def test_existing_dest_is_never_clobbered(tmp_path: Path) -> None:
    make_dp_zarr(tmp_path / "src.zarr")
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        import_dataset(tmp_path / "src.zarr", tmp_path / "out.zarr")
    assert (tmp_path / "out.zarr" / "keep.txt").read_text() == "mine"


def test_failure_midway_leaves_nothing_that_looks_valid(tmp_path: Path) -> None:
    src = tmp_path / "demos"
    make_demo_folder(src, lengths=(4, 4, 4))
    (src / "episode_2" / "front.mp4").write_bytes(b"broken")
    with pytest.raises(StoreError, match="episode_2"):
        import_dataset(src, tmp_path / "out.zarr")
    assert_no_leftovers(tmp_path / "out.zarr")


# ------------------------------------------------------------------------------ malformed input
def _truncate_chunk(src: Path) -> Path:
    chunk = src / "data" / "img" / "1.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    return chunk


def _dp_unequal(src: Path) -> None:
    zarr.open_group(str(src), mode="r+")["data/state"].resize((10, 5))


def _dp_no_action(src: Path) -> None:
    del zarr.open_group(str(src), mode="r+")["data/action"]


@pytest.mark.parametrize("damage, message", [
    (_truncate_chunk, r"data/img/1\.0\.0\.0.*chunk"),
    (_dp_unequal, "data/state has 10 frames, fewer than the .* that meta/episode_ends commits"),
    (_dp_no_action, "no 'action'"),
])
def test_malformed_dp_zarr(tmp_path: Path, damage, message: str) -> None:
    src = tmp_path / "src.zarr"
    make_dp_zarr(src, float_images=False)
    damage(src)
    with pytest.raises(UserError, match=message) as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(src) in str(err.value) and "\n" not in str(err.value)
    assert_no_leftovers(tmp_path / "out.zarr")


def test_demo_folder_unequal_lengths_and_missing_action(tmp_path: Path) -> None:
    src = tmp_path / "demos"
    make_demo_folder(src)
    steps = src / "episode_1" / "steps.npz"
    np.savez(steps, action=np.zeros((9, 3), np.float32), joints=np.zeros((7, 4), np.float32))
    with pytest.raises(UserError, match="unequal lengths") as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(steps) in str(err.value)
    np.savez(steps, joints=np.zeros((9, 4), np.float32))
    with pytest.raises(UserError, match="no 'action'") as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(steps) in str(err.value)
    assert_no_leftovers(tmp_path / "out.zarr")


def test_video_shorter_than_lowdim_data(tmp_path: Path) -> None:
    src = tmp_path / "real"
    make_dp_real(src, lengths=(10, 8))
    from robodiff.data.video import write_video
    from tests.importer_fixtures import grey_frames
    short = src / "videos" / "1" / "1.mp4"
    short.unlink()
    write_video(short, grey_frames(12), fps=30.0)  # 0.4 s of video for 0.8 s of steps
    with pytest.raises(StoreError, match="shorter") as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(short) in str(err.value)
    assert_no_leftovers(tmp_path / "out.zarr")


@pytest.mark.parametrize("layout, message", [
    ({"foo/bar": np.zeros(3)}, "no 'data' group"),
    ({"data/demo_0/obs/x": np.zeros((3, 2))}, "demo_0/actions missing"),
    ({"data/demo_0/actions": np.zeros((3, 2)), "data/demo_0/obs/x": np.zeros((4, 2))}, "unequal lengths"),
])
def test_wrong_hdf5_layout(tmp_path: Path, layout: dict, message: str) -> None:
    src = tmp_path / "bad.hdf5"
    with h5py.File(src, "w") as f:
        for key, value in layout.items():
            f.create_dataset(key, data=value)
    with pytest.raises(UserError, match=message) as err:
        import_dataset(src, tmp_path / "out.zarr", "robomimic")
    assert str(src) in str(err.value)
    assert_no_leftovers(tmp_path / "out.zarr")


def _real_no_timestamp(src: Path) -> Path:
    del zarr.open_group(str(src / "replay_buffer.zarr"), mode="r+")["data/timestamp"]
    return src / "replay_buffer.zarr"


def _real_missing_video(src: Path) -> Path:
    (src / "videos" / "1" / "0.mp4").unlink()
    return src / "videos" / "1" / "0.mp4"


def _demo_missing_png(src: Path) -> Path:
    (src / "episode_1" / "wrist" / "3.png").unlink()
    return src / "episode_1" / "wrist"


def _lerobot_truncated_parquet(src: Path) -> Path:
    path = src / "data" / "chunk-000" / "episode_000001.parquet"
    path.write_bytes(path.read_bytes()[:100])
    return path


def _empty_store(src: Path) -> Path:
    root = zarr.open_group(str(src), mode="r+")
    root["meta/episode_ends"].resize((0,))
    return src


@pytest.mark.parametrize("make, damage, message", [
    (make_dp_real, _real_no_timestamp, "no data/timestamp"),
    (make_dp_real, _real_missing_video, "missing"),
    (make_demo_folder, _demo_missing_png, "8 PNG frames for 9 steps"),
    (make_lerobot_v21, _lerobot_truncated_parquet, "unreadable parquet"),
    (make_dp_zarr, _empty_store, "episode_ends is empty but the arrays hold data"),
])
def test_more_malformed_sources(tmp_path: Path, make, damage, message: str) -> None:
    src = tmp_path / "src"
    make(src)
    named = damage(src)
    with pytest.raises(UserError, match=message) as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(named) in str(err.value) and "\n" not in str(err.value)
    assert_no_leftovers(tmp_path / "out.zarr")


def test_lerobot_without_action(tmp_path: Path) -> None:
    src = tmp_path / "lr"
    make_lerobot_v21(src)
    info = json.loads((src / "meta" / "info.json").read_text())
    del info["features"]["action"]
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="no 'action'") as err:
        import_dataset(src, tmp_path / "out.zarr")
    assert str(src / "meta" / "info.json") in str(err.value)


def test_non_store_path_and_unknown_format(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="cannot tell its format") as err:
        import_dataset(plain, tmp_path / "out.zarr")
    assert str(plain) in str(err.value)
    with pytest.raises(StoreError, match="not a Zarr episode store|not an episode store") as err:
        import_dataset(plain, tmp_path / "out.zarr", "dp_zarr")
    assert str(plain) in str(err.value)
    with pytest.raises(UserError, match="unknown format 'parquet'"):
        import_dataset(plain, tmp_path / "out.zarr", "parquet")
    with pytest.raises(UserError, match="no such file"):
        import_dataset(tmp_path / "missing", tmp_path / "out.zarr")
    assert_no_leftovers(tmp_path / "out.zarr")


# ------------------------------------------------------------------------------ command line
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.run([sys.executable, "-m", "robodiff.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.skipif(not (Path(__file__).parent.parent / "robodiff" / "commands" / "dataset.py").exists(),
                    reason="the `dataset` command module is not written yet")
def test_cli_import_and_error(tmp_path: Path) -> None:
    make_robomimic(tmp_path / "demo.hdf5")
    done = _cli("dataset", "import", str(tmp_path / "demo.hdf5"), str(tmp_path / "out.zarr"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["format"], result["episodes"], result["frames"]) == ("robomimic", 3, 13)
    assert result["dest"] == str(tmp_path / "out.zarr")
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("data/demo_0/obs/x", data=np.zeros((3, 2)))
    done = _cli("dataset", "import", str(tmp_path / "bad.hdf5"), str(tmp_path / "bad.zarr"),
                "format=robomimic")
    assert done.returncode == 2
    assert str(tmp_path / "bad.hdf5") in done.stderr and "Traceback" not in done.stderr
