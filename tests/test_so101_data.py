"""LeRobot SO-101 datasets (v2.1, v3.0; degrees and range100) import with units= and rename=,
validate, train for the arm's task, and a policy refuses an arm in the other convention."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from robodiff.cli import main
from robodiff.data.importers import import_dataset
from robodiff.data.store import EpisodeStore
from robodiff.data.integrity import validate_store
from robodiff.errors import UserError
from tests.lerobot_so101 import make_lerobot_so101

TRAIN = ["task=so101_pick_place", "training.steps=2", "training.batch_size=4", "logging.progress=false",
         "logging.tensorboard=false", "policy.encoder.backbone=small_cnn", "policy.encoder.crop_shape=[88,120]",
         "policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16", "--json"]


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
@pytest.mark.parametrize("units", ["degrees", "range100"])
def test_an_so101_dataset_imports_in_the_units_it_was_recorded_in(tmp_path, version, units):
    src = tmp_path / "lerobot"
    written = make_lerobot_so101(src, version, units)
    with pytest.raises(UserError, match="so101 dataset.*degrees or range100.*units=degrees\\|range100") as err:
        import_dataset(src, tmp_path / "no_units.zarr")
    assert "\n" not in str(err.value) and not (tmp_path / "no_units.zarr").exists()
    result = import_dataset(src, tmp_path / "arm.zarr", units=units, rename={"top": "front"})
    assert result["episodes"] == 2
    with EpisodeStore.open(tmp_path / "arm.zarr") as store:
        assert sorted(store.features) == ["action", "front", "state", "timestamp", "wrist"]
        assert store.features["state"].units == units and store.features["action"].units == units
        assert store.features["front"].units is None and store.features["front"].shape == (96, 128, 3)
        assert store.robot == "so101" and store.fps == 30
        for k, episode in enumerate(written):
            data = store.read_episode(k)
            np.testing.assert_array_equal(data["state"], episode["state"])
            np.testing.assert_array_equal(data["action"], episode["action"])
    assert validate_store(str(tmp_path / "arm.zarr"), repair=False)["valid"]


def test_the_two_conventions_hold_the_same_motion(tmp_path):
    from robodiff.hal.hardware import load_hardware

    hardware = load_hardware("so101")
    imported = {}
    for units in ("degrees", "range100"):
        make_lerobot_so101(tmp_path / units, "v3.0", units)
        import_dataset(tmp_path / units, tmp_path / f"{units}.zarr", units=units)
        with EpisodeStore.open(tmp_path / f"{units}.zarr") as store:
            imported[units] = hardware.with_units(units).units.to_radians(store.read_episode(0)["state"])
    np.testing.assert_allclose(imported["degrees"], imported["range100"], atol=1e-5)


def test_bad_import_options_are_one_line_errors(tmp_path, capsys):
    src = tmp_path / "lerobot"
    make_lerobot_so101(src, "v2.1", "degrees", lengths=(5,))
    with pytest.raises(UserError, match="rename=laptop:front: .* has no feature 'laptop' \\(it has"):
        import_dataset(src, tmp_path / "a.zarr", units="degrees", rename={"laptop": "front"})
    with pytest.raises(UserError, match="two features would be named alike"):
        import_dataset(src, tmp_path / "a.zarr", units="degrees", rename={"top": "wrist"})
    with pytest.raises(UserError, match="units=radians: one of degrees, range100"):
        import_dataset(src, tmp_path / "a.zarr", units="radians")
    assert not (tmp_path / "a.zarr").exists()
    for args, needle in [([], "units=degrees|range100"), (["units=degrees", "rename=top"], "OLD:NEW pairs")]:
        assert main(["dataset", "import", str(src), str(tmp_path / "b.zarr"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert main(["dataset", "import", str(src), str(tmp_path / "b.zarr"), "units=range100",
                 "rename=top:front", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["features"]["state"]["units"] == "range100"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A (two-step) policy trained for the arm's task on each convention's imported data."""
    root = tmp_path_factory.mktemp("so101_runs")
    runs = {}
    for units in ("degrees", "range100"):
        make_lerobot_so101(root / f"src_{units}", "v3.0", units, lengths=(20, 16))
        import_dataset(root / f"src_{units}", root / f"{units}.zarr", units=units, rename={"top": "front"})
        assert main(["train", f"dataset={root / f'{units}.zarr'}", f"run_dir={root / units}", *TRAIN]) == 0
        runs[units] = root / units
    return runs


def test_imported_data_trains_for_the_arm_and_keeps_its_units(trained):
    from robodiff.policy.checkpoint import read_policy_meta

    for units, run in trained.items():
        meta = read_policy_meta(run)
        assert meta["policy"]["obs_keys"] == ["front", "wrist", "state"]
        assert meta["features"]["state"]["units"] == units and meta["features"]["action"]["units"] == units


def test_a_policy_refuses_an_arm_in_the_other_convention(trained):
    import robodiff.sim  # noqa: F401  (registers the task robots)
    from robodiff.commands.deploy import check_features
    from robodiff.eval.evaluation import check_policy_features
    from robodiff.hal import make_robot
    from robodiff.policy.checkpoint import load_policy
    from robodiff.sim.tasks import load_task

    robot = make_robot("so101_pick_place")  # the simulated arm works in degrees
    task = load_task("so101_pick_place")
    degrees, range100 = load_policy(trained["degrees"]), load_policy(trained["range100"])
    check_features(degrees, robot, "degrees-run", "so101_pick_place")
    check_policy_features(degrees.features, degrees.obs_keys, degrees.action_key, task)
    with pytest.raises(UserError, match="'state': the checkpoint's is in units 'range100', robot "
                                        "'so101_pick_place''s in units 'degrees'") as err:
        check_features(range100, robot, "range100-run", "so101_pick_place")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="units 'range100'.*task 'so101_pick_place''s in units 'degrees'"):
        check_policy_features(range100.features, range100.obs_keys, range100.action_key, task)
