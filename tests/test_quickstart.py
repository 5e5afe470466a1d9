"""The main job at tiny budgets: every stage runs and writes its artifacts; interrupts leave nothing
that looks finished."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY = ["demos=3", "train_steps=4", "batch_size=8", "eval.episodes=2", "eval.n_envs=1",
        "eval.n_videos=1", "down_dims=[16,32,64]", "diffusion_step_embed_dim=16", "select.every_steps=0"]


def run_quickstart(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "robodiff", "quickstart", f"out={out}", *TINY, *extra,
                           "--json"], capture_output=True, text=True, timeout=timeout, env=env)


def test_quickstart_runs_every_stage(tmp_path):
    out = tmp_path / "qs"
    proc = run_quickstart(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["demos"] == 3 and result["eval_episodes"] == 2
    assert 0.0 <= result["success_rate"] <= 1.0 and result["train_seconds"] > 0
    report = (out / "report.md").read_text()
    assert "success rate" in report
    for linked in ["run/loss.png", "eval/eval.png"]:
        assert (out / linked).stat().st_size > 0 and linked in report
    videos = list((out / "eval").rglob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert (out / "run" / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert not list(out.glob("*.partial"))

    # A rerun with the same settings reuses the demonstrations and the policy.
    again = run_quickstart(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["demos"] == 3


def test_interrupted_quickstart_leaves_nothing_that_looks_finished(tmp_path, terminal_sigint):
    out = tmp_path / "qs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robodiff", "quickstart", f"out={out}", *TINY,
                             "train_steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=terminal_sigint)
    deadline = time.monotonic() + 300
    while not (out / "run.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (out / "run.partial").exists(), "training never started"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    # The finished demos stage stays; the unfinished training never appears under its final name.
    assert (out / "demos" / "quickstart_stage.json").is_file()
    assert not (out / "run").exists()
    assert not (out / "report.md").exists()


def test_quickstart_picks_the_checkpoint_by_rollouts_on_other_seeds(tmp_path):
    out = tmp_path / "qs"
    proc = run_quickstart(out, "train_steps=6", "select.every_steps=3", "select.episodes=2", "select.n_envs=1",
                          "noise.scale=0.01", "noise.keep_failed=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    best = out / "run" / "checkpoints" / "best"
    assert result["checkpoint"] == str(best) and result["best_step"] in (3, 6)
    note = json.loads((out / "run" / "checkpoints" / "best.json").read_text())
    assert note["step"] == result["best_step"]
    logged = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval.success_rate" in r] == [3, 6]
    assert all(r["eval.seed"] == 200000 for r in logged if "eval.seed" in r)
    report = (out / "report.md").read_text()
    assert f"step {result['best_step']}, whose rollouts during training" in report
    assert "noise.scale=0.01" in report  # the reproduce lines record how the demos were made
    # Choosing on the evaluation's own seeds is refused before anything runs.
    clash = run_quickstart(tmp_path / "clash", "select.every_steps=3", "select.seed=99990")
    assert clash.returncode == 2 and "overlaps the evaluation's seeds 100000..100001" in clash.stderr
