"""The command-line contract: every command listed and helpful; user errors are one line, exit 2."""

import json
import subprocess
import sys

import pytest

from robodiff.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robodiff.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"robodiff {command}" in out


def test_unknown_command_is_one_line_error():
    proc = run_cli("fly")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown command 'fly'" in proc.stderr


def test_unknown_flag_is_one_line_error():
    proc = run_cli("bench", "data", "--fast")
    assert proc.returncode == 2
    assert "--fast" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_requires_a_known_bench():
    proc = run_cli("bench", "everything", "--json")
    assert proc.returncode == 2
    assert "data, train, inference, sim" in proc.stderr


def test_json_is_last_stdout_line_for_dataset_info(tmp_path):
    import numpy as np

    from robodiff.data.store import EpisodeStore
    from robodiff.features import Feature

    store = EpisodeStore.create(tmp_path / "s.zarr", {"state": Feature("lowdim", (2,)),
                                                      "action": Feature("action", (2,))}, fps=10)
    store.append_episode({"state": np.zeros((5, 2)), "action": np.ones((5, 2))})
    proc = run_cli("dataset", "info", str(tmp_path / "s.zarr"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["episodes"] == 1 and info["frames"] == 5


def test_no_arguments_is_usage_and_a_failure(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: robodiff <command>")


def test_unknown_policy_lists_the_policies(capsys):
    assert main(["train", "policy=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["robodiff train: error: policy=nope: no such policy (one of diffusion_transformer, "
                   "diffusion_unet, regression)"]


def test_user_error_with_json_is_a_json_line(capsys):
    assert main(["eval", "episodes=0", "--json"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"error": "config key 'episodes' must be >= 1, got 0", "exit_code": 2}


def test_progress_in_a_log_is_whole_lines_not_redraws(monkeypatch):
    import io

    from robodiff import progress

    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    with progress.progress_bar(total=500, desc="train", file=log) as bar:
        for i in range(500):
            if i == 250:  # a rollout's bar inside training's: tqdm moves the cursor for it
                with progress.progress_bar(total=2, desc="eval", file=log, leave=False) as inner:
                    inner.update(2)
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[-1].startswith("train: 100%") and all(line.startswith(("train:", "eval:")) for line in lines)
    monkeypatch.undo()
    quiet = io.StringIO()  # shorter than the interval: nothing but the command's own summary
    with progress.progress_bar(total=5, desc="eval", file=quiet) as bar:
        for i in range(5):
            bar.update(1)
            bar.set_postfix(success=i)  # tqdm would redraw at once for this
    assert quiet.getvalue() == ""
