"""Record demonstrations in simulation into an episode store: `robodiff collect`.

Each step records the observation, the action the robot really executed (what `send_action`
returned after clamping, not what the teleop asked for) and the timestamp. An episode reaches the
store only through `EpisodeRecorder.commit`, so Ctrl-C or a kill mid-episode loses that episode and
nothing else.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from robodiff.data.store import EpisodeRecorder, EpisodeStore
from robodiff.errors import StoreError, UserError
from robodiff.features import Features, features_to_dict
from robodiff.hal.teleop import KEYBOARD_HELP, make_teleop


def store_features(task: Any) -> Features:
    """The task's observations, its action and the float64 timestamp."""
    return dict(task.features)


def open_or_create(out: Path, features: Features, task: Any, robot: str) -> EpisodeStore:
    """Append to an existing store only when its features are exactly the task's."""
    if not out.exists():
        return EpisodeStore.create(out, features, fps=float(task.fps), task=task.name, robot=robot)
    store = EpisodeStore.open(out, mode="r+")
    theirs, ours = features_to_dict(store.features), features_to_dict(features)
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise StoreError(f"{out}: feature '{key}' is {theirs.get(key)} in the store but "
                             f"{ours.get(key)} for task '{task.name}' (use a new out=PATH)")
    if store.uncommitted_tail():
        dropped = store.repair()
        print(f"{out}: dropped an uncommitted tail from an interrupted recording {dropped}", file=sys.stderr)
    return store


def record_episode(env: Any, teleop: Any, recorder: EpisodeRecorder, seed: int, keys: list[str],
                   action_key: str, pace_s: float | None) -> tuple[bool, float, str]:
    """Run one episode into `recorder`. Returns (success, max score, how it ended)."""
    obs = env.reset(seed)
    teleop.reset(seed)
    best, success, done, ending = 0.0, False, False, "done"
    next_tick = time.perf_counter()
    while not done:
        requested = teleop.get_action(obs)["action"]
        step_obs = obs
        obs, score, step_success, done, info = env.step(requested)
        recorder.add({**{k: step_obs[k] for k in keys}, action_key: info["sent_action"],
                      "timestamp": step_obs["timestamp"]})
        best = max(best, float(score))
        success = success or bool(step_success)
        event = teleop.pop_event() if hasattr(teleop, "pop_event") else None
        if event is not None:
            ending, done = event, True
        if pace_s:  # a person is driving: run at the task's control rate, not as fast as possible
            next_tick += pace_s
            time.sleep(max(0.0, next_tick - time.perf_counter()))
    return success, best, ending


def collect(task: Any, teleop: str = "expert", episodes: int = 10, out: str | os.PathLike = "demos.zarr",
            seed: int = 0, robot: str | None = None, keep_failed: bool | None = None,
            max_attempts: int | None = None) -> dict[str, Any]:
    """Record `episodes` kept episodes with `teleop`; for the expert, attempt i uses seed + i and
    failed attempts are dropped unless keep_failed."""
    from robodiff.sim.env import make_env
    from robodiff.sim.tasks import load_task

    spec = load_task(task) if isinstance(task, (str, os.PathLike)) else task
    if robot is not None and robot != spec.robot:
        raise UserError(f"robot={robot}: task '{spec.name}' is simulated with robot '{spec.robot}'; "
                        f"recording on other robots comes with `robodiff deploy record=...`")
    if episodes < 1:
        raise UserError(f"episodes={episodes}: need at least 1")
    keep_failed = (teleop != "expert") if keep_failed is None else keep_failed
    max_attempts = max_attempts or (2 * episodes + 10)
    out = Path(out)
    features = store_features(spec)
    env = make_env(spec, render=True)
    keys = list(spec.observation_keys)
    attempts = kept = successes = frames = 0
    interrupted = False
    try:
        # Connect the device before touching the store: a missing terminal or device leaves no
        # empty store behind.
        with make_teleop(teleop, spec, env) as device:
            store = open_or_create(out, features, spec, spec.robot)
            recorder = EpisodeRecorder(store)
            # A person needs the task's control rate; a script runs as fast as the sim goes.
            pace_s = 1.0 / float(spec.fps) if getattr(device, "human", False) else None
            if teleop == "keyboard":
                print(KEYBOARD_HELP, file=sys.stderr)
            bar = tqdm(total=episodes, desc=f"collect {spec.name} ({teleop})", unit="ep", dynamic_ncols=True)
            try:
                while kept < episodes and attempts < max_attempts:
                    success, _, ending = record_episode(env, device, recorder, seed + attempts, keys,
                                                                  spec.action_key, pace_s)
                    attempts += 1
                    successes += success
                    if ending in ("quit", "discard") or not (success or keep_failed):
                        recorder.discard()
                    else:
                        frames += len(recorder)
                        recorder.commit()
                        kept += 1
                        bar.update(1)
                    bar.set_postfix(attempts=attempts, success=f"{successes / attempts:.2f}")
                    if ending == "quit":
                        break
            except KeyboardInterrupt:
                recorder.discard()
                interrupted = True
                print(f"\ninterrupted: the episode in progress was dropped, {kept} kept", file=sys.stderr)
            finally:
                bar.close()
    finally:
        env.close()
    if kept < episodes and not interrupted and teleop == "expert":
        print(f"warning: only {kept} of {episodes} episodes succeeded in {attempts} attempts", file=sys.stderr)
    return {"out": str(out), "task": spec.name, "teleop": teleop, "episodes": kept, "frames": frames,
            "attempts": attempts, "success_rate": successes / attempts if attempts else 0.0,
            "store_episodes": store.n_episodes, "store_frames": store.n_frames,
            "interrupted": interrupted}
