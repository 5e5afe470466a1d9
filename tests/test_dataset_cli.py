"""`robodiff dataset info|validate|view|import` on real stores, including broken ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from robodiff.cli import main
from robodiff.data.store import EpisodeStore
from robodiff.data.video import read_video
from robodiff.features import Feature

FEATURES = {
    "front": Feature("image", (16, 20, 3), "uint8"),
    "wrist": Feature("image", (16, 16, 3), "uint8"),
    "state": Feature("lowdim", (3,), "float32"),
    "action": Feature("action", (2,), "float32"),
    "timestamp": Feature("timestamp", (), "float64"),
}


def make_store(path, features=FEATURES, lengths=(6, 9)):
    store = EpisodeStore.create(path, features, fps=5, task="push", robot="sim")
    rng = np.random.default_rng(0)
    for n in lengths:
        ep = {"front": rng.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8),
              "wrist": np.full((n, 16, 16, 3), 40, np.uint8),
              "state": np.cumsum(rng.normal(size=(n, 3)), axis=0).astype(np.float32),
              "action": np.linspace(-1, 1, n * 2).reshape(n, 2).astype(np.float32),
              "timestamp": np.arange(n) / 5.0}
        store.append_episode({k: ep[k] for k in features})
    return store


def cli(capsys, *argv):
    code = main(["dataset", *map(str, argv), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code in (0, 1) else None, err


def test_info_json_contract(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    code, result, _ = cli(capsys, "info", tmp_path / "s.zarr")
    assert code == 0
    assert result["episodes"] == 2 and result["frames"] == 15 and result["fps"] == 5
    assert result["features"]["front"] == {"shape": [16, 20, 3], "dtype": "uint8", "kind": "image"}
    assert result["features"]["timestamp"] == {"shape": [], "dtype": "float64", "kind": "timestamp"}


def test_validate_valid_store(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    code, result, _ = cli(capsys, "validate", tmp_path / "s.zarr")
    assert code == 0 and result == {"valid": True, "episodes": 2, "problems": [], "warnings": []}


def _tail(path):
    root = zarr.open_group(str(path), mode="r+")
    root["data/state"].append(np.zeros((4, 3), np.float32))
    root["data/front"].append(np.zeros((2, 16, 20, 3), np.uint8))


def _non_increasing(path):
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"][1] = 3


def _unequal(path):
    zarr.open_group(str(path), mode="r+")["data/state"].resize((10, 3))


def _nan(path):
    zarr.open_group(str(path), mode="r+")["data/action"][8, 1] = np.inf


def _dtype(path):
    store = EpisodeStore.open(path, mode="r+")
    feats = {k: f.to_dict() for k, f in store.features.items()}
    feats["state"]["dtype"] = "float64"
    store.set_attrs(features=feats)


def _truncated(path):
    chunk = path / "data" / "front" / "7.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:100])


@pytest.mark.parametrize("break_it, expected", [
    (_tail, "uncommitted tail beyond frame 15 (data/front +2, data/state +4)"),
    (_non_increasing, "meta/episode_ends is not increasing at index 1 (6 -> 3"),
    (_unequal, "data/state has 10 frames, fewer than the 15"),
    (_nan, "data/action has 1 NaN/Inf values (first at frame 8, episode 1)"),
    (_dtype, "data/state has dtype float32, its feature says float64"),
    (_truncated, "front/7.0.0.0: corrupt chunk (ValueError: truncated blosc chunk"),
])
def test_validate_finds_each_problem(tmp_path, capsys, break_it, expected):
    path = tmp_path / "s.zarr"
    make_store(path)
    break_it(path)
    code, result, _ = cli(capsys, "validate", path)
    assert code == 1 and result["valid"] is False and result["episodes"] == 2
    assert any(expected in p for p in result["problems"]), result["problems"]
    code, result, _ = cli(capsys, "validate", path, "--repair")
    assert (code == 0) == (break_it is _tail)  # --repair only ever truncates a tail
    if break_it is _tail:
        assert result == {"valid": True, "episodes": 2, "problems": [], "warnings": []}
        assert zarr.open_group(str(path), mode="r")["data/state"].shape == (15, 3)


def test_validate_missing_action(tmp_path, capsys):
    make_store(tmp_path / "s.zarr", {k: f for k, f in FEATURES.items() if k != "action"})
    code, result, _ = cli(capsys, "validate", tmp_path / "s.zarr")
    assert code == 1 and any("no data/action" in p for p in result["problems"])


def test_non_store_is_a_one_line_error(tmp_path):
    (tmp_path / "notes").mkdir()
    for target in (tmp_path / "missing.zarr", tmp_path / "notes"):
        proc = subprocess.run([sys.executable, "-m", "robodiff.cli", "dataset", "validate", str(target), "--json"],
                              capture_output=True, text=True)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(target) in lines[0] and "Traceback" not in proc.stderr


def test_bad_arguments(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    assert main(["dataset", "view", str(tmp_path / "s.zarr"), "episode=0", "speed=2"]) == 2
    assert "unknown key 'speed'" in capsys.readouterr().err
    assert main(["dataset", "view", str(tmp_path / "s.zarr"), "episode=5"]) == 2
    assert "episode 5 out of range" in capsys.readouterr().err
    assert main(["dataset", "info", str(tmp_path / "s.zarr"), "--repair"]) == 2
    assert main(["dataset", "frobnicate"]) == 2


def test_view_writes_cameras_and_traces(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr")
    out = tmp_path / "ep1.mp4"
    code, result, _ = cli(capsys, "view", tmp_path / "s.zarr", "episode=1", f"out={out}")
    assert code == 0 and result["frames"] == 9 and out.exists()
    frames, timestamps = read_video(out)
    assert frames.shape == (9, 240, 300 + 240 + 360, 3)
    np.testing.assert_allclose(np.diff(timestamps), 0.2, atol=1e-3)
    ep = store.read_episode(1)
    front = np.repeat(np.repeat(ep["front"][4], 15, axis=0), 15, axis=1)
    assert np.abs(frames[4, :, :300].astype(int) - front).mean() < 12  # lossy codec, same picture
    assert np.abs(frames[4, :, 300:540].astype(int) - 40).mean() < 3
    panel = frames[:, :, 540:].astype(int)
    dark = (panel.sum(axis=3) < 200).sum(axis=1)  # the cursor is the only full-height dark column
    cursor = dark.argmax(axis=1)
    assert np.all(np.diff(cursor) > 0)


def test_import_reference_store(tmp_path, capsys):
    root = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=2)
    root.create_array("data/state", data=np.arange(20.0).reshape(10, 2))
    root.create_array("data/action", data=np.ones((10, 2)))
    root.create_array("meta/episode_ends", data=np.array([4, 10]))
    code, result, _ = cli(capsys, "import", tmp_path / "ref.zarr", tmp_path / "ours.zarr", "format=auto")
    assert code == 0
    store = EpisodeStore.open(tmp_path / "ours.zarr")
    assert store.n_episodes == 2
    np.testing.assert_array_equal(store.read_episode(1)["state"], np.arange(8.0, 20.0).reshape(6, 2))


def test_view_needs_an_mp4_path(tmp_path, capsys):
    make_store(tmp_path / "s.zarr").close()
    code = main(["dataset", "view", str(tmp_path / "s.zarr"), "episode=0", f"out={tmp_path / 'clip'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"robodiff dataset: error: out={tmp_path / 'clip'}: the episode is written as an "
                                 f"mp4 video; give a path ending in .mp4"]
    assert not (tmp_path / "clip").exists()
