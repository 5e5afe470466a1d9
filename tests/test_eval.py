"""Evaluation: observation history, receding-horizon execution, and `robodiff eval` end to end in
real MuJoCo episodes (the acceptance figures of issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from policy_doubles import TickRobot, run_loop

from robodiff.cli import main
from robodiff.control.history import ObservationHistory
from robodiff.features import Feature
from robodiff.control.clock import SimulatedClock
from robodiff.control.executors import make_executor
from robodiff.config import compose
from robodiff import eval as eval_api
from robodiff.eval.evaluation import check_policy_features
from robodiff.policy.checkpoint import read_chunk_spec
from robodiff.eval.rollouts import COUNTERS
from robodiff.eval.stats import wilson_interval
from robodiff.errors import UserError


def run_cli(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    payload = json.loads(lines[-1]) if code == 0 and "--json" in argv else None
    return code, payload, captured.err


def evaluate(task, **kw):
    """`robodiff.eval.evaluate` with eval's safety defaults and the policy's own n_action_steps,
    as the command resolves them."""
    if "checkpoint" in kw:
        kw.setdefault("n_action_steps", read_chunk_spec(kw["checkpoint"]).n_action_steps)
    elif "policy" in kw:
        kw.setdefault("n_action_steps", kw["policy"].n_action_steps)
    return eval_api.evaluate(task, compose("eval", []).safety, **kw)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ units
def test_history_repeats_first_observation_then_slides():
    h = ObservationHistory(3, keys=["state"])
    h.push({"state": np.array([0.0]), "image": np.zeros((2, 2, 3), np.uint8)})
    np.testing.assert_array_equal(h.stacked()["state"][:, 0], [0, 0, 0])
    assert list(h.stacked()) == ["state"]
    for t in (1.0, 2.0, 3.0):
        h.push({"state": np.array([t])})
    np.testing.assert_array_equal(h.stacked()["state"][:, 0], [1, 2, 3])
    h.reset()
    h.push({"state": np.array([7.0])})
    np.testing.assert_array_equal(h.stacked()["state"][:, 0], [7, 7, 7])


def test_history_copies_observations():
    h = ObservationHistory(2)
    buf = np.array([1.0, 2.0])
    h.push({"state": buf})
    buf[:] = 5.0
    np.testing.assert_array_equal(h.stacked()["state"], [[1, 2], [1, 2]])


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(50, 50)
    assert lo == pytest.approx(0.9287, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


class ChunkRecorder:
    """A policy that records what it is asked and answers chunk rows [call * 100 + row]."""

    n_obs_steps, horizon, n_action_steps = 2, 6, 3
    obs_keys = ["state"]
    action_key = "action"
    features = {"state": Feature("lowdim", (1,)), "action": Feature("action", (1,))}

    def __init__(self):
        self.calls: list[np.ndarray] = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def predict_action_chunk(self, obs_history):
        self.calls.append(obs_history["state"][:, 0].copy())
        base = 100 * (len(self.calls) - 1)
        return np.arange(base, base + self.horizon, dtype=np.float32)[:, None]


def played(robot: TickRobot) -> list[float]:
    return [float(a[0]) for a in robot.sent]


def episode(policy, executor: str = "sync", latency_s: float = 0.0, ticks: int = 10, n_action_steps=None):
    """One episode of `policy` through `executor` on the simulated clock, as eval runs it."""
    robot = TickRobot()
    clock = SimulatedClock(0.1)
    source = make_executor(executor, policy, clock, n_action_steps or policy.n_action_steps, delay_s=latency_s)
    stats = run_loop(robot, source, ticks, clock=clock)
    return played(robot), stats


def test_plain_eval_executes_n_action_steps_from_the_newest_observation():
    policy = ChunkRecorder()
    executed, stats = episode(policy, ticks=7)
    # chunk[n_obs_steps-1 : n_obs_steps-1+n_action_steps] = rows 1..3 of each chunk
    assert executed == [1, 2, 3, 101, 102, 103, 201]
    assert [c.tolist() for c in policy.calls] == [[1000, 1000], [1002, 1003], [1005, 1006]]
    assert stats["steps"] == 7 and stats["inferences"] == 3
    # n_action_steps is the run's: 2 re-plans after two actions
    assert episode(ChunkRecorder(), ticks=5, n_action_steps=2)[0] == [1, 2, 101, 102, 201]


def test_sync_on_the_episode_clock_holds_the_robot_through_each_inference():
    policy = ChunkRecorder()
    # Each inference blocks the loop for 3 ticks (0.25 s): the robot holds (first where it is),
    # then the chunk plays from its first action; the observations of blocked ticks are never seen.
    sent, stats = episode(policy, "sync", 0.25, 12)
    assert sent == [1000, 1000, 1000, 1, 2, 3, 3, 3, 3, 101, 102, 103]
    assert {k: stats[k] for k in COUNTERS} == {"inferences": 2, "dropped_actions": 0, "stalls": 2}
    assert [c.tolist() for c in policy.calls] == [[1000, 1000], [1005, 1006]]
    # The action goes out when the inference ends, at the nearest tick: 0.04 s costs no tick
    # (deploy sends it within the period), 0.17 s two.
    assert episode(ChunkRecorder(), "sync", 0.04, 4)[0] == [1, 2, 3, 101]
    assert episode(ChunkRecorder(), "sync", 0.17, 6)[0] == [1000, 1000, 1, 2, 3, 3]


def test_async_on_the_episode_clock_drops_the_actions_that_passed_while_it_inferred():
    policy = ChunkRecorder()
    sent, stats = episode(policy, "async", 0.25, 10)
    # Chunk k (from the observation of tick t_k) arrives 3 ticks later; its actions for ticks
    # already past are dropped, so it plays from its 4th; with nothing due the robot holds.
    assert sent == [1000, 1000, 1000, 4, 5, 5, 104, 105, 105, 204]
    # Three chunks arrived, 3 actions of each dropped; ticks 5 and 8 held with nothing due
    # (the holds before the first chunk are not stalls, as in deploy).
    assert {k: stats[k] for k in COUNTERS} == {"inferences": 3, "dropped_actions": 9, "stalls": 2}
    assert [c.tolist() for c in policy.calls] == [[1000, 1000], [1002, 1003], [1005, 1006], [1008, 1009]]
    # The same episode again gives the same actions: nothing depends on the wall clock.
    assert episode(ChunkRecorder(), "async", 0.25, 10)[0] == sent


def test_policy_features_must_match_the_task():
    from types import SimpleNamespace

    policy = ChunkRecorder()
    task = SimpleNamespace(name="t", features={"state": Feature("lowdim", (2,)), "action": Feature("action", (1,))})
    with pytest.raises(UserError, match="feature 'state'"):
        check_policy_features(policy.features, policy.obs_keys, policy.action_key, task)
    task.features = {"action": Feature("action", (1,))}
    with pytest.raises(UserError, match="expects feature 'state'"):
        check_policy_features(policy.features, policy.obs_keys, policy.action_key, task)


# ------------------------------------------------------------------------------ end to end (real MuJoCo)
CI_EPISODES = 10


def test_expert_succeeds_and_random_fails_on_push_block(tmp_path, capsys):
    code, expert, err = run_cli(["eval", "task=push_block", "policy=expert", f"episodes={CI_EPISODES}",
                                 f"out={tmp_path / 'expert'}", "n_videos=1", "--json"], capsys)
    assert code == 0, err
    assert expert["episodes"] == CI_EPISODES and expert["success_rate"] >= 0.95
    lo, hi = expert["ci95"]
    assert lo <= expert["success_rate"] <= hi
    rows = read_rows(tmp_path / "expert")
    assert [r["seed"] for r in rows] == list(range(CI_EPISODES))
    assert all(r["length"] > 0 for r in rows)
    assert expert["mean_score"] == pytest.approx(np.mean([r["score"] for r in rows]))
    summary = json.loads((tmp_path / "expert" / "summary.json").read_text())
    assert summary["success_rate"] == expert["success_rate"]
    assert (tmp_path / "expert" / "eval.png").stat().st_size > 10_000

    code, rand, err = run_cli(["eval", "task=push_block", "policy=random", f"episodes={CI_EPISODES}",
                               f"out={tmp_path / 'random'}", "n_videos=0", "--json"], capsys)
    assert code == 0, err
    assert rand["success_rate"] <= 0.1 and rand["mean_score"] < expert["mean_score"]
    assert rand["videos"] == []


def test_video_reads_back_and_shows_the_scene_moving(tmp_path):
    from robodiff.data.video import read_video
    result = evaluate("push_block", policy_name="expert", episodes=1, seed=3, out=tmp_path,
                      n_videos=1, video_size=128)
    (row,) = read_rows(tmp_path)
    frames, times = read_video(result["videos"][0])
    assert frames.shape == (row["length"] + 1, 128, 128, 3)
    assert np.all(np.diff(times) > 0)
    assert min(f.astype(np.float32).std() for f in frames) > 5.0  # a scene, not a blank image
    moved = np.abs(frames[-1].astype(np.int16) - frames[0].astype(np.int16)).mean()
    assert moved > 0.5  # the pusher and the block moved between the first and last frames


def test_same_seed_same_rows_and_parallel_equals_serial(tmp_path):
    common = dict(policy_name="random", episodes=4, seed=11, n_videos=0)
    serial = evaluate("push_block", out=tmp_path / "a", n_envs=1, **common)
    again = evaluate("push_block", out=tmp_path / "b", n_envs=1, **common)
    parallel = evaluate("push_block", out=tmp_path / "c", n_envs=2, **common)
    a, b, c = (read_rows(tmp_path / d) for d in "abc")
    assert a == b == c
    assert [r["seed"] for r in a] == [11, 12, 13, 14]
    assert len({r["score"] for r in a}) > 1  # distinct seeds really give distinct episodes
    assert serial["success_rate"] == again["success_rate"] == parallel["success_rate"]
    assert parallel["n_envs"] == 2


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_cli(["eval", "task=no_such_task", "policy=expert", "episodes=1"], capsys)
    assert code == 2 and "no_such_task" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["eval", "task=push_block", "policy=expert", "episodez=1"], capsys)
    assert code == 2 and "episodez" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["eval", "task=push_block", "policy=greedy", "episodes=1"], capsys)
    assert code == 2 and "greedy" in err
    code, _, err = run_cli(["eval", "task=push_block", f"checkpoint={tmp_path / 'nope'}"], capsys)
    assert code == 2 and "nope" in err
    code, _, err = run_cli(["eval", "task=push_block"], capsys)
    assert code == 2 and "checkpoint=" in err


@pytest.mark.slow
def test_acceptance_50_episodes(tmp_path, capsys):
    code, expert, err = run_cli(["eval", "task=push_block", "policy=expert", "episodes=50", "n_envs=2",
                                 f"out={tmp_path / 'e'}", "--json"], capsys)
    assert code == 0, err
    assert expert["success_rate"] >= 0.95
    code, rand, err = run_cli(["eval", "task=push_block", "policy=random", "episodes=50", "n_envs=2",
                               f"out={tmp_path / 'r'}", "--json"], capsys)
    assert code == 0, err
    assert rand["success_rate"] <= 0.1


def save_small_diffusion_checkpoint(run_dir: Path, state_dim: int = 2) -> Path:
    """A real checkpoint (random weights) of a small state-only diffusion policy."""
    import torch

    from robodiff.config import compose, to_dict
    from robodiff.features import features_to_dict
    from robodiff.policy.factory import build_policy
    from robodiff.policy.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = to_dict(compose("train", ["policy=diffusion_unet", "policy.obs_keys=[state]", "policy.horizon=8",
                                    "policy.n_action_steps=4", "policy.denoiser.down_dims=[16,32]",
                                    "policy.denoiser.diffusion_step_embed_dim=16",
                                    "policy.noise_scheduler.num_inference_steps=2"]))["policy"]
    features = {"state": Feature("lowdim", (state_dim,)), "action": Feature("action", (2,))}
    stats = {k: {"min": [0.0] * f.shape[0], "max": [512.0] * f.shape[0], "mean": [256.0] * f.shape[0],
                 "std": [150.0] * f.shape[0], "count": 1} for k, f in features.items()}
    policy = build_policy(cfg, features, stats)
    meta = {"policy": cfg, "features": features_to_dict(features), "stats": stats, "task": "push_block"}
    save_checkpoint(run_dir, 1, policy.state_dict(), None, meta, {})
    return run_dir


def test_checkpoint_rollouts_are_seeded_and_parallel_equals_serial(tmp_path):
    from robodiff.sim.tasks import load_task

    run = save_small_diffusion_checkpoint(tmp_path / "run")
    task = load_task("push_block")
    task.max_steps = 30  # short episodes keep CI fast; the seeding logic is the same
    common = dict(checkpoint=run, episodes=2, seed=4, n_videos=0)
    evaluate(task, out=tmp_path / "a", n_envs=1, **common)
    evaluate(task, out=tmp_path / "b", n_envs=2, **common)
    a, b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert a == b and [r["seed"] for r in a] == [4, 5]
    assert all(r["length"] == 30 for r in a)  # random weights never succeed: full-length episodes


def test_checkpoint_through_a_deployment_executor_with_latency(tmp_path, capsys):
    from robodiff.sim.tasks import load_task

    run = save_small_diffusion_checkpoint(tmp_path / "run")
    task = load_task("push_block")
    task.max_steps = 20
    common = dict(checkpoint=run, episodes=1, seed=4, n_videos=0)
    rtc = evaluate(task, out=tmp_path / "rtc", executor="rtc", latency_s=0.3, **common)
    assert rtc["executor"] == "rtc" and rtc["latency_s"] == 0.3 and rtc["mean_length"] == 20
    row = read_rows(tmp_path / "rtc")[0]
    assert row["inferences"] == rtc["inferences"] > 0 and row["dropped_actions"] == rtc["dropped_actions"] > 0
    evaluate(task, out=tmp_path / "a", executor="async", latency_s=0.3, **common)
    evaluate(task, out=tmp_path / "b", executor="async", latency_s=0.3, **common)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")  # repeatable to the episode

    class StayPut(ChunkRecorder):
        features = {"state": Feature("lowdim", (2,)), "action": Feature("action", (2,))}

        def predict_action_chunk(self, obs_history):
            self.calls.append(obs_history["state"][-1].copy())
            return np.repeat(obs_history["state"][-1:], self.horizon, axis=0)

    # 20 ticks re-planning every 3 actions: 7 inferences; through sync with 0.3 s per inference
    # the robot also holds 3 ticks per chunk: 4.
    counts = []
    for extra in ({}, {"executor": "sync", "latency_s": 0.3}):
        policy = StayPut()
        evaluate(task, policy=policy, episodes=1, seed=4, n_videos=0, out=tmp_path / "p", **extra)
        counts.append(len(policy.calls))
    assert counts == [7, 4]
    policy = StayPut()  # n_action_steps=2 re-plans every 2 of the 20 ticks
    evaluate(task, policy=policy, n_action_steps=2, episodes=1, seed=4, n_videos=0, out=tmp_path / "q")
    assert len(policy.calls) == 10
    capsys.readouterr()
    for bad, words in ((["executor=async", "policy=expert"], "checkpoint=PATH"),
                       ([f"checkpoint={run}", "latency_s=0.3"], "latency_s= needs executor="),
                       ([f"checkpoint={run}", "executor=fast"], "executor 'fast'"),
                       ([f"checkpoint={run}", "executor=sync", "latency_s=-1"], "'latency_s' must be >= 0"),
                       ([f"checkpoint={run}", "n_action_steps=0"], "'n_action_steps' must be >= 1"),
                       ([f"checkpoint={run}", "n_action_steps=8"], "n_action_steps=8 must be in 1..7"),
                       (["policy=expert", "n_action_steps=4"], "n_action_steps= is for a learned policy")):
        code, _, err = run_cli(["eval", "task=push_block", "episodes=1", *bad], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_bench_latency_plots_success_against_latency_per_executor(tmp_path, capsys):
    run = save_small_diffusion_checkpoint(tmp_path / "run")
    code, result, err = run_cli(["bench", "latency", f"checkpoint={run}", "episodes=1", "n_envs=1",
                                 "latencies=[0.3,0]", "executors=[async,sync]", f"out={tmp_path / 'b'}",
                                 "--json"], capsys)
    assert code == 0, err
    assert result["task"] == "push_block"  # from the checkpoint
    assert [(r["executor"], r["latency_s"]) for r in result["rows"]] == [
        ("async", 0.0), ("async", 0.3), ("sync", 0.0), ("sync", 0.3)]
    assert all(0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1 for r in result["rows"])
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "b" / "latency.json").read_text())["rows"] == result["rows"]
    assert len(read_rows(tmp_path / "b" / "sync_0.3s")) == 1
    for bad, words in ((["executors=[fast]"], "executor 'fast'"), (["latencies=[-1]"], "latencies"),
                       (["executors=[]"], "executors is empty"), (["latencies=[]"], "latencies"),
                       ([], "checkpoint=")):
        args = [f"checkpoint={run}", *bad] if bad else []
        code, _, err = run_cli(["bench", "latency", *args], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    # rtc on a checkpoint that cannot be guided is refused before the other executors' episodes.
    from robodiff.policy.checkpoint import resolve_checkpoint

    meta_path = resolve_checkpoint(run) / "policy.json"
    meta = json.loads(meta_path.read_text())
    meta["policy"]["noise_scheduler"]["inference_scheduler"] = "ddpm"
    meta_path.write_text(json.dumps(meta))
    code, _, err = run_cli(["bench", "latency", f"checkpoint={run}", "executors=[async,rtc]",
                            f"out={tmp_path / 'ddpm'}"], capsys)
    assert code == 2 and "executor=rtc needs" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ddpm").exists()


def test_checkpoint_with_other_features_names_the_key(tmp_path, capsys):
    run = save_small_diffusion_checkpoint(tmp_path / "run", state_dim=3)
    code, _, err = run_cli(["eval", "task=push_block", f"checkpoint={run}", "episodes=1", "n_videos=0",
                            f"out={tmp_path / 'e'}"], capsys)
    assert code == 2 and "'state'" in err and len(err.strip().splitlines()) == 1


def test_a_failed_evaluation_leaves_the_earlier_results(tmp_path, monkeypatch):
    from robodiff.eval.rollouts import EpisodeRunner

    out = tmp_path / "out"
    first = evaluate("push_block", policy_name="random", episodes=2, n_videos=1, out=out)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.name for p in files} >= {"episodes.jsonl", "summary.json", "eval.png", Path(first["videos"][0]).name}
    real_run = EpisodeRunner.run

    def crash_on_second(self, index, seed):
        if index == 1:
            raise RuntimeError("the simulator died")
        return real_run(self, index, seed)

    monkeypatch.setattr(EpisodeRunner, "run", crash_on_second)
    with pytest.raises(RuntimeError, match="simulator died"):
        evaluate("push_block", policy_name="random", episodes=2, n_videos=1, out=out, seed=7)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    second = evaluate("push_block", policy_name="random", episodes=2, n_videos=1, out=out, seed=7)
    assert json.loads((out / "summary.json").read_text())["seed"] == 7 == second["seed"]
    assert Path(second["videos"][0]).is_file() and Path(second["videos"][0]).parent == out / "videos"
