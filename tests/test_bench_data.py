"""`robodiff bench data` on tiny stores: the figures exist, and both readers agree."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from robodiff.bench.data import PlainWindowReader, build_stores, run
from robodiff.data.dataset import WindowDataset
from robodiff.errors import ConfigError

TINY = ["episodes=3", "steps=30", "lowdim_episodes=4", "seconds=0.3", "num_workers=0", "batch_size=8",
        "image_size=32"]


def test_plain_reader_and_window_dataset_agree(tmp_path):
    cfg = OmegaConf.create({"seed": 0, "cameras": 2, "image_size": 16, "noise": 4.0, "state_dim": 3,
                            "action_dim": 2, "episodes": 2, "lowdim_episodes": 1, "steps": 20})
    image_path, cams, _ = build_stores(cfg, tmp_path)
    ours = WindowDataset(image_path, [*cams, "state"], horizon=16, n_obs_steps=2, n_action_steps=8)
    plain = PlainWindowReader(image_path, [*cams, "state", "action"], ours.index)
    for i in (0, 7, len(ours) - 1):
        a, b = ours[i], plain[i]
        for key in (*cams, "state"):
            np.testing.assert_array_equal(a[key].numpy(), b[key][:2].numpy())
        np.testing.assert_array_equal(a["action"].numpy(), b["action"].numpy())
    assert not np.array_equal(ours[0][cams[0]][0].numpy(), ours[0][cams[1]][0].numpy())


def test_bench_reports_figures(tmp_path, capsys):
    result = run([*TINY, f"dir={tmp_path}"], set())
    for name in ("image", "lowdim"):
        assert result[f"{name}_windows_per_s"] > 0 and result[f"{name}_baseline_windows_per_s"] > 0
        assert result[f"{name}_speedup"] == pytest.approx(
            result[f"{name}_windows_per_s"] / result[f"{name}_baseline_windows_per_s"])
    # Low-dim windows come from RAM vs four zarr reads each: a gap no machine load closes.
    assert result["lowdim_speedup"] > 2
    assert 1 < result["image_compression_ratio"] < 20
    assert "WindowDataset" in capsys.readouterr().out


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="episodez"):
        run(["episodez=3"], set())
