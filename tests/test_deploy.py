"""`robodiff deploy` on the real simulated push_block robot (MuJoCo, real time) with small test
policies: sync and async runs, recording, a hanging policy held by the watchdog, e-stop by SIGINT,
and the command line's one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from robodiff.commands import deploy as deploy_command  # noqa: E402
from robodiff.commands.deploy import DeployConfig, check_features  # noqa: E402
from robodiff.config import compose, validate  # noqa: E402
from robodiff.control.safety import EStop  # noqa: E402
from robodiff.data.store import EpisodeStore  # noqa: E402
from robodiff.errors import UserError  # noqa: E402
from robodiff.features import Feature  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from policy_doubles import GoToPolicy, run_loop  # noqa: E402

TARGET = (100.0, 450.0)  # along the pusher's start row, clear of the block


def _cfg(**kw) -> DeployConfig:
    """deploy's config as the command line composes it (`safety_watchdog_s=` for `safety.watchdog_s=`)."""
    overrides = [f"{k.replace('safety_', 'safety.')}={'null' if v is None else v}" for k, v in kw.items()]
    return validate(compose("deploy", overrides), DeployConfig)


def build_robot(name, seed):
    return deploy_command.build_robot(name, seed, 10.0)


def deploy(policy, robot, cfg, robot_name, **kw):
    """The command's deploy at 10 Hz with the run's n_action_steps resolved as the command does."""
    n = policy.n_action_steps if cfg.n_action_steps is None else cfg.n_action_steps
    return deploy_command.deploy(policy, robot, cfg, 10.0, n, robot_name=robot_name, **kw)


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_deploy_moves_the_sim_robot_and_records_what_was_sent(executor, tmp_path):
    robot, outcome = build_robot("push_block", seed=3)
    policy = GoToPolicy(TARGET)
    store_path = tmp_path / "run.zarr"
    stats = deploy(policy, robot, _cfg(executor=executor, duration_s=2.0, record=str(store_path)),
                   "push_block", outcome=outcome, progress=False)
    for key in ("period_p50_ms", "period_p99_ms", "period_error_p99_ms", "overruns",
                "inference_p50_ms", "inference_p99_ms", "steps", "dropped_actions", "stalls",
                "success", "score"):
        assert key in stats, key
    assert 15 <= stats["steps"] <= 21 and stats["stop_reason"] == "duration"
    assert stats["executor"] == executor and stats["inferences"] >= 2
    assert stats["safety_rejected"] == 0
    if executor == "async":
        assert stats["dropped_actions"] >= 1  # each chunk arrives after its first tick passed
    with EpisodeStore.open(store_path) as store:
        assert store.n_episodes == 1 and store.n_frames == stats["steps"]
        ep = store.read_episode(0)
    assert np.all(np.diff(ep["timestamp"]) > 0)
    assert ep["image"].shape == (stats["steps"], 96, 96, 3)
    actions, states = ep["action"].astype(np.float64), ep["state"].astype(np.float64)
    assert np.all(actions >= 0) and np.all(actions <= 512)
    assert np.all(np.abs(np.diff(actions, axis=0)) <= 51.2 + 1e-3)  # default: 10 % of the range
    # The pusher really moved towards the target under the recorded commands.
    start, end = np.linalg.norm(states[0] - TARGET), np.linalg.norm(states[-1] - TARGET)
    assert end < start - 50 or end < 10


def test_sigint_holds_then_exits_cleanly(tmp_path):
    script = tmp_path / "run_deploy.py"
    script.write_text(textwrap.dedent('''
        import json, sys, threading
        import numpy as np
        from robodiff.commands.deploy import DeployConfig, build_robot, deploy
        from robodiff.config import compose, validate
        sys.path.insert(0, sys.argv[1])
        from policy_doubles import GoToPolicy

        class Announcing(GoToPolicy):
            def predict_action_chunk(self, obs_history):
                if self.calls == 0:
                    print("RUNNING", flush=True)
                return super().predict_action_chunk(obs_history)

        robot, outcome = build_robot("push_block", 0, 10.0)
        cfg = validate(compose("deploy", ["executor=async"]), DeployConfig)
        stats = deploy(Announcing((100.0, 450.0)), robot, cfg, 10.0, 8, "push_block", progress=False)
        print(json.dumps({"stop_reason": stats["stop_reason"], "holds": stats["holds"],
                          "connected": robot.is_connected, "steps": stats["steps"]}))
    '''))
    proc = subprocess.Popen([sys.executable, str(script), str(TESTS)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["stop_reason"] == "e-stop (SIGINT)"
    assert report["holds"] >= 1 and report["connected"] is False and report["steps"] >= 3


def test_feature_mismatch_is_a_one_line_error_naming_the_key():
    robot, _ = build_robot("push_block", seed=0)
    policy = GoToPolicy(TARGET)
    check_features(policy, robot, "ck", "push_block")
    policy.obs_keys = ["state", "wrist"]
    policy.features["wrist"] = Feature("image", (96, 96, 3), "uint8")
    with pytest.raises(UserError, match="'wrist'"):
        check_features(policy, robot, "ck", "push_block")
    policy.obs_keys = ["state"]
    policy.features = {"state": Feature("lowdim", (3,)), "action": Feature("action", (2,))}
    with pytest.raises(UserError, match=r"'state' of shape \[3\]"):
        check_features(policy, robot, "ck", "push_block")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robodiff.cli", "deploy", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["checkpoint=/no/such/run", "robot=push_block"], "/no/such/run"),
    (["checkpoint=x", "robot=push_block", "executor=fast"], "executor 'fast'"),
    (["robot=push_block", "speed=3"], "speed"),
    (["robot=push_block"], "checkpoint="),
    (["checkpoint=tests", "robot=push_block", "executor=sync", "device=gpu"], "device 'gpu'"),
])
def test_cli_errors_are_one_line(args, needle):
    proc = _cli(*args, "--json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def untrained_checkpoint(run_dir: Path, down_dims: list[int], state_dim: int = 2) -> Path:
    """A real (untrained) image diffusion checkpoint in the trainer's format, for the CLI path."""
    import torch
    import yaml

    from robodiff.features import features_to_dict
    from robodiff.policy.factory import build_policy
    from robodiff.policy.checkpoint import save_checkpoint

    cfg = yaml.safe_load((REPO / "robodiff/conf/policy/diffusion_unet.yaml").read_text())
    cfg["encoder"]["backbone"] = "small_cnn"
    cfg["denoiser"]["down_dims"] = down_dims
    cfg["obs_keys"] = ["image", "state"]
    features = {"image": Feature("image", (96, 96, 3), "uint8"), "state": Feature("lowdim", (state_dim,)),
                "action": Feature("action", (2,))}
    span = {"min": [0.0] * state_dim, "max": [512.0] * state_dim, "mean": [256.0] * state_dim,
            "std": [100.0] * state_dim}
    stats = {"state": span, "action": {k: v[:1] * 2 for k, v in span.items()}}
    torch.manual_seed(0)
    policy = build_policy(cfg, features, stats)
    meta = {"policy": cfg, "features": features_to_dict(features), "task": "push_block", "stats": stats}
    save_checkpoint(run_dir, 0, policy.state_dict(), None, meta, {})
    return run_dir


def test_cli_deploys_a_real_checkpoint_and_prints_json(tmp_path):
    run = untrained_checkpoint(tmp_path / "run", [16, 32, 64])
    proc = _cli(f"checkpoint={run}", "robot=push_block", "executor=async", "duration_s=2",
                "torch_threads=1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["steps"] >= 15 and report["inferences"] >= 2 and report["inference_p50_ms"] > 0
    assert report["success"] in (True, False) and 0.0 <= report["score"] <= 1.0
    assert report["config"]["executor"] == "async"


def test_a_checkpoint_whose_features_do_not_match_the_robot_is_rejected(tmp_path):
    from robodiff.commands.deploy import run

    ckpt = untrained_checkpoint(tmp_path / "run", [8, 16, 32], state_dim=3)
    with pytest.raises(UserError, match=r"'state' of shape \[3\], robot 'push_block' gives \[2\]"):
        run([], [f"checkpoint={ckpt}", "robot=push_block", "torch_threads=1"], set())


def test_the_chunk_spec_read_without_weights_matches_the_loaded_policy(tmp_path):
    from robodiff.policy.checkpoint import load_policy, read_chunk_spec

    run = untrained_checkpoint(tmp_path / "run", [8, 16, 32])
    spec, policy = read_chunk_spec(run), load_policy(run)
    for key in ("horizon", "n_obs_steps", "n_action_steps", "obs_keys", "action_key", "features"):
        assert getattr(spec, key) == getattr(policy, key), key


def _edit_meta(run: Path, edit) -> None:
    from robodiff.policy.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(run) / "policy.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["policy"]["noise_scheduler"].update(inference_scheduler="ddpm"), "executor=rtc needs a diffusion policy sampled with DDIM"),
    (lambda m: m["policy"].pop("horizon"), "policy config has no 'horizon' key"),
])
def test_rtc_and_chunk_spec_refuse_unfit_checkpoints_in_one_line(tmp_path, edit, needle):
    run = untrained_checkpoint(tmp_path / "run", [8, 16, 32])
    _edit_meta(run, edit)
    proc = _cli(f"checkpoint={run}", "robot=push_block", "executor=rtc", "duration_s=1",
                "torch_threads=1", "--json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_weights_the_inference_process_cannot_load_are_a_one_line_error(tmp_path):
    from robodiff.policy.checkpoint import resolve_checkpoint

    run = untrained_checkpoint(tmp_path / "run", [8, 16, 32])
    weights = resolve_checkpoint(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = _cli(f"checkpoint={run}", "robot=push_block", "executor=async", "duration_s=1",
                "torch_threads=1", "--json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not load the policy" in lines[0] and "model.safetensors" in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_measure_async_timing_over_60_s(delay, tmp_path):
    """The figures in docs/deployment.md (no timing asserts): `pytest -m slow -s -k measure`.
    A quickstart-shaped image diffusion policy (small CNN, UNet [64, 128, 256], DDIM 10, untrained
    weights: the same CPU load as trained ones) drives the real-time push_block robot for 60 s;
    the episode's end is ignored so that one run lasts the whole minute."""
    import functools

    from robodiff.commands.deploy import load_seeded_policy

    ckpt = str(untrained_checkpoint(tmp_path / "run", [64, 128, 256]))
    robot, _ = build_robot("push_block", seed=0)
    stats = deploy(load_seeded_policy(ckpt, "cpu", True, 0, None), robot,
                   _cfg(executor="async", duration_s=60.0, inference_delay_s=delay), "push_block",
                   progress=False, make_policy=functools.partial(load_seeded_policy, ckpt, "cpu", True, 0, None))
    keys = ["steps", "period_p50_ms", "period_p99_ms", "period_error_p50_ms", "period_error_p99_ms",
            "period_error_max_ms", "overruns", "inferences", "inference_p50_ms", "inference_p99_ms",
            "dropped_actions", "stalls", "watchdog_trips", "realtime_priority"]
    print(json.dumps({"inference_delay_s": delay, "load_avg_1m": os.getloadavg()[0],
                      **{k: stats[k] for k in keys}}))
    assert stats["steps"] >= 590


class SlowInEpisode(GoToPolicy):
    """GoToPolicy whose first inference of episode `slow_episode` takes `delay_s`."""

    def __init__(self, target, slow_episode, delay_s):
        super().__init__(target)
        self.episode, self.slow_episode, self.delay_s = 0, slow_episode, delay_s

    def reset(self):
        super().reset()
        self.episode += 1

    def predict_action_chunk(self, obs_history):
        if self.episode == self.slow_episode and self.calls == 0:
            time.sleep(self.delay_s)
        return super().predict_action_chunk(obs_history)


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_episodes_reset_with_consecutive_seeds_and_aggregate(executor, tmp_path):
    from robodiff.sim.env import SimEnv

    seed, n = 4, 3
    robot, outcome = build_robot("push_block", seed=seed)
    outcome.time_limit_s = 0.4  # short episodes: they end by the task's own rule, fast
    # Sync: episode 2's first inference outlasts the watchdog, which must be armed again per episode.
    policy = SlowInEpisode(TARGET, slow_episode=2, delay_s=0.4)
    store_path = tmp_path / "run.zarr"
    stats = deploy(policy, robot, _cfg(executor=executor, episodes=n, seed=seed, record=str(store_path),
                                       safety_watchdog_s=0.2),
                   "push_block", outcome=outcome, progress=False)
    rows = stats["episode_results"]
    assert stats["episodes"] == n and [r["seed"] for r in rows] == [seed + i for i in range(n)]
    assert stats["success_rate"] == pytest.approx(np.mean([r["success"] for r in rows]))
    assert stats["mean_score"] == pytest.approx(np.mean([r["score"] for r in rows]), abs=1e-4)
    assert stats["score"] == stats["mean_score"] and stats["success"] == all(r["success"] for r in rows)
    for r in rows:
        assert r["stop_reason"] == "episode done"
        assert r["success"] or r["episode_time_s"] >= outcome.time_limit_s
    # Loop statistics cover the whole run, not the last episode.
    assert stats["steps"] == sum(r["steps"] for r in rows) == stats["ticks"]
    assert stats["watchdog_trips"] == (1 if executor == "sync" else 0)
    assert stats["recorded_episodes"] == list(range(n))
    limits = robot.action_limits["action"]
    max_delta = 0.1 * (limits[1] - limits[0])
    with EpisodeStore.open(store_path) as store, SimEnv("push_block", render=False) as env:
        for i, r in enumerate(rows):
            ep = store.read_episode(i)
            assert len(ep["state"]) == r["steps"]
            # Each episode starts where `robodiff eval` starts the episode with that seed ...
            np.testing.assert_allclose(ep["state"][0], env.reset(r["seed"])["state"], atol=1.0)
            # ... and its first command is this episode's plan (at most one policy step from the
            # start, inside the rate limit restarted at the reset), not a leftover target.
            step = np.linalg.norm(ep["action"][0] - ep["state"][0])
            assert step <= min(policy.speed, np.linalg.norm(max_delta)) + 1e-3


def test_a_simulated_episode_lasts_the_tasks_time_budget_stalls_included():
    """The budget is robot time, as on hardware: sync inference that holds the robot 0.25 s per
    chunk leaves fewer actions in the same 1.5 s than the loop would play without stalls. On the
    simulated clock this is exact."""
    from robodiff.control.clock import SimulatedClock
    from robodiff.control.executors import make_executor
    from robodiff.sim.env import task_robot
    from robodiff.sim.outcome import TaskOutcome

    robot = task_robot("push_block", render=False)
    robot.connect()
    outcome = TaskOutcome(robot, max_steps=15, fps=10)
    outcome.reset(5)
    policy = GoToPolicy(TARGET)
    clock = SimulatedClock(0.1)
    executor = make_executor("sync", policy, clock, 2, delay_s=0.25)
    stats = run_loop(robot, executor, 100, clock=clock, outcome=outcome)
    assert stats["stop_reason"] == "episode done" and not stats["success"]
    assert stats["episode_time_s"] == 1.5 and stats["steps"] == 15
    # ticks 0-2 hold for chunk 1 and send its first action at tick 2; chunk k starts every 4 ticks
    # Each chunk costs its inference's tick (held), 3 more held ticks (0.25 s, to the nearest
    # period) the last of which sends its first action, then its second action: 5 ticks. In 15
    # ticks that is 3 inferences (8 without stalls), each a stall.
    assert stats["inferences"] == 3 and stats["stalls"] == 3


class SlowFirstCall(GoToPolicy):
    """Its very first inference (not per episode) is slow, like a CUDA graph capture."""

    def __init__(self, target):
        super().__init__(target)
        self.warm = False

    def predict_action_chunk(self, obs_history):
        if not self.warm:
            time.sleep(0.6)
            self.warm = True
        return super().predict_action_chunk(obs_history)


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_slow_first_inference_is_paid_before_the_first_episode_starts(executor):
    robot, outcome = build_robot("push_block", seed=6)
    outcome.time_limit_s = 1.0
    stats = deploy(SlowFirstCall(TARGET), robot, _cfg(executor=executor), "push_block",
                   outcome=outcome, progress=False)
    # Without the warm-up the first 0.6 s of the 1 s budget would pass holding still.
    assert stats["inference_p99_ms"] < 300 and stats["steps"] >= 9
    assert 0 <= stats["score"] <= 1 and stats["stop_reason"] == "episode done"


def test_an_estop_during_a_slow_warm_up_stops_before_anything_is_sent():
    robot, outcome = build_robot("push_block", seed=6)
    sent: list[float] = []
    original = robot._send_action
    robot._send_action = lambda action: sent.append(time.monotonic()) or original(action)
    disconnected = threading.Event()
    original_disconnect = robot._disconnect
    robot._disconnect = lambda: (disconnected.set(), original_disconnect())
    policy = GoToPolicy(TARGET, hang_on_call=1)  # the warm-up inference never returns by itself
    estop = EStop()
    errors: list[BaseException] = []

    def run():
        try:
            deploy(policy, robot, _cfg(executor="async"), "push_block", outcome=outcome, progress=False,
                   estop=estop)
        except UserError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert policy.hanging.wait(10.0)
        estop.trigger("test")
        # The robot is let go while the inference still hangs, not after the 300 s warm-up timeout.
        stopped = disconnected.wait(3.0)
    finally:
        policy.release.set()
        worker.join(10.0)
    assert stopped and not worker.is_alive()
    assert len(errors) == 1 and "e-stop (test) during the policy's warm-up" in str(errors[0])
    assert sent == []


def test_episodes_is_checked_in_one_line():
    robot, _ = build_robot("sim_pusher", seed=0)  # hardware: nothing to reset between episodes
    with pytest.raises(UserError, match="episodes=2.*not a simulated task"):
        deploy(GoToPolicy(TARGET), robot, _cfg(episodes=2), "sim_pusher", progress=False)
    assert not robot.is_connected
    proc = _cli("checkpoint=x", "robot=push_block", "episodes=0", "--json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'episodes' must be >= 1" in lines[0], proc.stderr
