"""The one training loop for every policy: single process, or DDP when launched by torchrun.

Everything that can be wrong with the inputs (config keys, dataset, task features, policy shapes)
is checked in `prepare` before the first step, so a bad run fails in seconds with one line.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from robodiff.config import to_dict
from robodiff.data.dataset import WindowDataset
from robodiff.data.integrity import require_valid
from robodiff.data.stats import cached_stats
from robodiff.data.store import EpisodeStore, store_around
from robodiff.data.windows import split_episodes
from robodiff.errors import ConfigError, UserError, one_line
from robodiff.features import Features, features_to_dict
from robodiff.models.ema import EMAModel
from robodiff.policy.factory import build_policy
from robodiff.policy import checkpoint as ckpt_io
from robodiff.policy.fast_inference import cpu_has_native_bf16
from robodiff.train import distributed as dist_util
from robodiff.train.config import check, load_yaml, tri_state
from robodiff.train.data import choose_obs_keys, resolve_store
from robodiff.train.metrics import MetricsLogger, plot_loss
from robodiff.train.objective import objective_for, teacher_meta
from robodiff.train.rng import capture_rng, restore_rng
from robodiff.train.sampler import ResumableSampler
from robodiff.train.stopping import LossWindow, StopRequest, TrainingDiverged, ignore_interrupts, parameters_finite
from robodiff.progress import progress_bar
from robodiff.paths import write_text_atomic
from robodiff import jsonio

RUNS_DIR = "runs"
# rollout(policy, out_dir, device) -> an evaluation summary (the command builds it on `robodiff.eval`)
Rollout = Callable[[Any, str, str], dict[str, Any]]
SUMMARY_FILE = "summary.json"


@dataclass
class Run:
    """Everything `prepare` resolved; the loop only reads it."""

    cfg: DictConfig
    info: dist_util.DistInfo
    run_dir: Path
    task_arg: str | None  # as given (name or YAML path); None when the dataset alone decides
    task_name: str
    rollout: Rollout | None
    store_path: Path
    policy: nn.Module
    features: Features
    stats: dict[str, dict]
    train_ds: WindowDataset
    val_ds: WindowDataset | None
    batch_size: int
    num_workers: int
    amp: bool
    resume_from: Path | None
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_run_dir(task_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / f"{task_name or 'run'}-{stamp}"


def _resolve_run(cfg: DictConfig, info: dist_util.DistInfo) -> tuple[Path | None, Path | None, DictConfig | None]:
    """(run dir or None for the default, checkpoint to resume from, the run's saved config)."""
    if cfg.resume:
        if not cfg.run_dir:
            raise ConfigError("resume=true needs run_dir= (the run to continue)")
        run_dir = Path(cfg.run_dir)
        latest = ckpt_io.latest_checkpoint(run_dir)
        if latest is None:
            raise UserError(f"run_dir {run_dir}: no checkpoint to resume from")
        saved = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
        return run_dir, latest, saved
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        inside = store_around(run_dir.resolve())
        if inside is not None:
            raise ConfigError(f"run_dir {run_dir} is inside the episode store {inside}; choose a path outside it")
        if ckpt_io.latest_checkpoint(run_dir) is not None:
            raise ConfigError(f"run_dir {run_dir} already has checkpoints: pass resume=true to continue it, "
                              f"or choose another run_dir")
        return run_dir, None, None
    return None, None, None


def _image_bytes(store: EpisodeStore, keys: list[str]) -> int:
    return sum(store.n_frames * int(np.prod(store.features[k].shape)) for k in keys)


def saved_task(cfg: DictConfig) -> str | None:
    """The task a run trains for: `task=`, else (resume) the one its config.yaml saved."""
    if cfg.task is not None or not cfg.resume or not cfg.run_dir:
        return cfg.task
    saved = Path(cfg.run_dir) / "config.yaml"
    return load_yaml(saved).get("task") if saved.is_file() else None


def _require_same_features(features: Features, trained: dict[str, Any], store_path: Path, who: str) -> None:
    """`who` trained on `trained` (a checkpoint's features): "the run" resumed, "the teacher" of a student."""
    for key, feat in features.items():
        had = trained.get(key, {})
        now = {"kind": feat.kind, "shape": list(feat.shape), "dtype": feat.dtype}
        if {k: had.get(k) for k in now} != now:
            raise ConfigError(f"feature '{key}' of dataset {store_path} is {now}, {who} was trained on "
                              f"{ {k: had.get(k) for k in now} }: the network keeps its features")


def prepare(cfg: DictConfig, info: dist_util.DistInfo, task_name: str, task_keys: list[str] | None,
            rollout: Rollout | None) -> Run:
    t = cfg.training
    run_dir, resume_from, saved = _resolve_run(cfg, info)
    task = saved_task(cfg)
    dataset = cfg.dataset if cfg.dataset is not None else (saved.dataset if saved is not None else None)
    if dataset is None:
        raise ConfigError("`dataset=` is required (an episode store or an importable dataset)")

    # One process imports a foreign dataset; the others wait and open the result.
    store_path = resolve_store(dataset, may_import=info.is_main) if info.is_main else None
    dist_util.barrier(info)
    if store_path is None:
        store_path = resolve_store(dataset, may_import=False)

    if resume_from is not None:
        # The network must be the one the checkpoint holds, whatever the policy group says now.
        policy_cfg = dict(ckpt_io.read_policy_meta(resume_from)["policy"])
    else:
        policy_cfg = to_dict(cfg.policy)
    with EpisodeStore.open(store_path) as store:
        obs_keys = choose_obs_keys(store.features, store_path, task_name, task_keys, policy_cfg.get("obs_keys"))
        action_key = policy_cfg.get("action_key") or "action"
        # A perturbed demonstration (collect noise.scale > 0) says which array is the label: the
        # intended action, not the perturbed one that was sent.
        action_array = store.attrs.get("action_label") or action_key
        if action_array not in store.features:
            raise UserError(f"dataset {store_path} has no action feature '{action_array}' "
                            f"(it has {', '.join(store.features) or 'none'})")
        features = {**{k: store.features[k] for k in obs_keys}, action_key: store.features[action_array]}
        if resume_from is not None:
            _require_same_features(features, ckpt_io.read_policy_meta(resume_from)["features"], store_path, "the run")
        image_keys = [k for k in obs_keys if features[k].kind == "image"]
        arrays = {**{k: k for k in obs_keys}, action_key: action_array}
        numeric = [arrays[k] for k, f in features.items() if f.kind != "image"]
        # The arrays trained on, before any step: low-dim values are read whole (they are held
        # in RAM), images are checked for presence here and decode when they are read.
        require_valid(store, list(arrays.values()), numeric)
        if store.n_episodes == 0:
            raise UserError(f"dataset {store_path} has no committed episodes")
        task_name = task_name or store.task or Path(store_path).name.split(".")[0]
        if info.is_main:
            stats = cached_stats(store, numeric)
        dist_util.barrier(info)
        if not info.is_main:
            stats = cached_stats(store, numeric)
        stats = {k: stats[a] for k, a in arrays.items() if a in stats}
        n_episodes = store.n_episodes
        fits_ram = _image_bytes(store, image_keys) < t.cache_max_gb * 2**30
        meta_extra = {"fps": store.fps, "robot": store.robot}
    teacher = teacher_meta(policy_cfg)
    if teacher is not None:
        # A student works in its teacher's normalized action space: the teacher's statistics,
        # whatever the dataset's are now.
        _require_same_features(features, teacher["features"], store_path, "the teacher")
        stats = teacher["stats"]
    policy_cfg["obs_keys"] = obs_keys
    policy_cfg["action_key"] = action_key

    # Same initial weights on every rank (DDP would broadcast rank 0's anyway; EMA copies them first).
    seed_everything(int(t.seed))
    policy = build_policy(policy_cfg, features, stats)
    seed_everything(int(t.seed) + info.rank)

    train_eps, val_eps = split_episodes(n_episodes, float(t.val_ratio), int(t.seed))
    cache = t.cache if t.cache != "auto" else ("memory" if fits_ram else "none")
    window_args = dict(obs_keys=obs_keys, action_key=action_key, action_array=action_array, horizon=policy.horizon,
                       n_obs_steps=policy.n_obs_steps, n_action_steps=policy.n_action_steps)
    train_ds = WindowDataset(store_path, episodes=train_eps, cache=cache, **window_args)
    val_ds = train_ds.subset(val_eps) if val_eps else None

    batch_size = int(t.batch_size) if t.batch_size is not None else (64 if image_keys else 256)
    per_rank = math.ceil(len(train_ds) / info.world_size)
    if per_rank < batch_size:
        if info.is_main:
            print(f"warning: only {per_rank} training windows per process: batch_size {batch_size} -> {per_rank}",
                  file=sys.stderr)
        batch_size = per_rank
    if t.num_workers is not None:
        num_workers = int(t.num_workers)
    elif cache == "memory" or not image_keys:
        num_workers = 0  # windows are slices of arrays in RAM: workers would only add IPC
    else:
        num_workers = min(8, max(1, (os.cpu_count() or 2) // info.world_size - 1))

    amp_choice = tri_state(t.amp, "training.amp")
    native = info.device.type == "cuda" or (info.device.type == "cpu" and cpu_has_native_bf16())
    amp = native if amp_choice is None else amp_choice

    if run_dir is None:
        run_dir = Path(dist_util.broadcast_object(info, str(default_run_dir(task_name))))
    meta = {"policy": policy.policy_cfg, "features": features_to_dict(features), "task": task_name,
            "stats": stats, "dataset": str(store_path), "action_label": action_array, **meta_extra}
    return Run(cfg=cfg, info=info, run_dir=run_dir, task_arg=task, task_name=task_name, rollout=rollout, store_path=store_path, policy=policy,
               features=features, stats=stats, train_ds=train_ds, val_ds=val_ds, batch_size=batch_size,
               num_workers=num_workers, amp=amp, resume_from=resume_from, meta=meta)


# ------------------------------------------------------------------------------ pieces of the loop
def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(run: Run):
    return torch.autocast(run.info.device.type, dtype=torch.bfloat16) if run.amp else nullcontext()


def _fork_rng(run: Run, seed: int):
    """Validation and rollouts draw noise too; keep them off the training RNG stream."""
    devices = [run.info.device] if run.info.device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    class _Seeded:
        def __enter__(self) -> None:
            ctx.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc: object) -> None:
            ctx.__exit__(*exc)

    return _Seeded()


@torch.no_grad()
def validation_loss(run: Run, objective: nn.Module, model: nn.Module) -> float | None:
    if run.val_ds is None:
        return None
    sampler = ResumableSampler(len(run.val_ds), run.info.rank, run.info.world_size, shuffle=False)
    loader = DataLoader(run.val_ds, batch_size=run.batch_size, sampler=sampler, num_workers=0)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with _fork_rng(run, int(run.cfg.training.seed) + 1):
        for i, batch in enumerate(loader):
            if i >= int(run.cfg.training.val_batches):
                break
            with _autocast(run):
                total += float(objective.loss(model, _to_device(batch, run.info.device)))
            count += 1
    model.train(was_training)
    return dist_util.all_reduce_mean(run.info, total / max(count, 1))


def rollout_eval(run: Run, policy: nn.Module, step: int) -> dict[str, float]:
    """Simulated episodes with the EMA policy (rank 0), through the command's rollout callback."""
    if run.rollout is None:
        print("warning: eval.every_steps is set but this task has no simulated rollouts; skipping",
              file=sys.stderr)
        return {}
    try:
        with _fork_rng(run, int(run.cfg.eval.seed)):
            result = run.rollout(policy, str(run.run_dir / "eval" / f"step_{step}"), str(run.info.device))
    except Exception as exc:  # noqa: BLE001 - a crashed simulator must not end hours of training
        print(f"warning: the rollouts at step {step} failed ({one_line(exc)}); training goes on", file=sys.stderr)
        return {}
    finally:
        policy.eval()
    return {f"eval.{k}": float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _improves(result: dict[str, float], best: dict[str, Any] | None) -> bool:
    """Rollouts that succeed more often (ties: a higher mean score) than the best so far.
    Validation loss misleads for diffusion policies; success is what a user wants."""
    if "eval.success_rate" not in result:
        return False
    if best is None:
        return True
    ours = (result["eval.success_rate"], result.get("eval.mean_score", 0.0))
    return ours > (best["success_rate"], best.get("mean_score") or 0.0)


def _recorded_best(run_dir: Path) -> dict[str, Any] | None:
    note = run_dir / ckpt_io.CHECKPOINTS / f"{ckpt_io.BEST}.json"
    try:
        return json.loads(note.read_text()) if note.is_file() else None
    except ValueError:
        return None  # a damaged note: the next rollouts start the comparison afresh


def _train_state(step: int, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMAModel | None,
                 objective: nn.Module, epoch: int, batch_in_epoch: int, batch_size: int, rngs: list[Any],
                 world_size: int) -> dict[str, Any]:
    return {"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "ema": None if ema is None else {"optimization_step": ema.optimization_step, "decay": ema.decay},
            "objective": objective.train_state(),
            "sampler": {"epoch": epoch, "batch": batch_in_epoch, "batch_size": batch_size},
            "rng": rngs, "world_size": world_size}


def save(run: Run, step: int, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMAModel | None,
         objective: nn.Module, epoch: int, batch_in_epoch: int) -> Path | None:
    # Every rank's RNG is gathered (a collective, so all ranks call this) and rank 0 writes.
    rngs = [capture_rng()]
    if run.info.enabled:
        rngs = [None] * run.info.world_size
        torch.distributed.all_gather_object(rngs, capture_rng())
    if not run.info.is_main:
        return None
    state = _train_state(step, optimizer, scheduler, ema, objective, epoch, batch_in_epoch, run.batch_size, rngs,
                         run.info.world_size)
    return ckpt_io.save_checkpoint(run.run_dir, step, run.policy.state_dict(),
                                   None if ema is None else ema.averaged_model.state_dict(), run.meta, state)


def _restore(run: Run, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMAModel | None,
             objective: nn.Module) -> tuple[int, int, int]:
    """Load weights, optimizer, scheduler, EMA, the objective's state and RNG; returns (step,
    epoch, batch in epoch)."""
    assert run.resume_from is not None
    state = ckpt_io.read_train_state(run.resume_from)
    weights = ckpt_io.read_weights(run.resume_from)
    try:
        run.policy.load_state_dict(weights["model"])
        if ema is not None:
            ema_tensors = weights["ema"]
            if ema_tensors:
                ema.averaged_model.load_state_dict(ema_tensors)
                ema.optimization_step = int(state["ema"]["optimization_step"])
                ema.decay = float(state["ema"]["decay"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        objective.load_train_state(state.get("objective", {}))  # none in checkpoints from before objectives
        sampler_state = state["sampler"]
        step, epoch, batch = int(state["step"]), int(sampler_state["epoch"]), int(sampler_state["batch"])
        same_layout = state["world_size"] == run.info.world_size and sampler_state["batch_size"] == run.batch_size
        rngs = state["rng"]
        if not parameters_finite(list(run.policy.parameters()) + (list(ema.averaged_model.parameters()) if ema else [])):
            raise UserError(f"{run.resume_from}: the weights hold NaN/Inf; resume from an earlier checkpoint "
                            f"(checkpoints/<step>)")
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # weights or state of another run
        first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise UserError(f"{run.resume_from}: cannot resume from this checkpoint ({type(exc).__name__}: "
                        f"{first})") from None
    if same_layout:
        restore_rng(rngs[run.info.rank])
        return step, epoch, batch
    # A different number of processes or batch size cannot replay the same batches: start a new epoch.
    if run.info.is_main:
        print("warning: resuming with a different world size or batch size: the data order restarts at a "
              "new epoch (the run is not bit-identical to an uninterrupted one)", file=sys.stderr)
    return step, epoch + 1, 0


# ------------------------------------------------------------------------------ the loop
def train(cfg: DictConfig | dict, task_name: str = "", task_keys: list[str] | None = None,
          rollout: Rollout | None = None) -> dict[str, Any]:
    """Train as configured by `conf/train.yaml`; returns the summary (the same on every rank).

    `task_name` / `task_keys`: the task's name and the observations a policy for it reads (the
    command resolves them; none: the dataset's features decide). `rollout(policy, out_dir,
    device) -> summary` runs the simulated episodes of `eval.every_steps`."""
    cfg = check(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))
    if cfg.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = dist_util.init(str(cfg.device))
    try:
        run = prepare(cfg, info, task_name, task_keys, rollout)
        return _loop(run)
    finally:
        dist_util.shutdown(info)


def _loop(run: Run) -> dict[str, Any]:
    cfg, info, t = run.cfg, run.info, run.cfg.training
    device = info.device
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    policy = run.policy.to(device)
    has_images = any(f.kind == "image" for f in run.features.values())
    cl_choice = tri_state(t.channels_last, "training.channels_last")
    if (device.type == "cuda" and has_images) if cl_choice is None else cl_choice:
        policy.to(memory_format=torch.channels_last)
    policy.train()
    # Built before the EMA copies the policy: a student starts as its teacher.
    objective = objective_for(policy, device)

    ema_cfg = dict(run.meta["policy"].get("ema") or {})
    ema = None
    if ema_cfg.get("enabled", True):
        ema = EMAModel(policy, power=float(ema_cfg.get("power", 0.75)), max_value=float(ema_cfg.get("max_value", 0.9999)),
                       update_after_step=int(ema_cfg.get("update_after_step", 0)),
                       inv_gamma=float(ema_cfg.get("inv_gamma", 1.0)))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=float(t.lr), betas=tuple(t.betas),
                                  weight_decay=float(t.weight_decay), fused=device.type == "cuda" or None)
    from diffusers.optimization import get_scheduler

    try:
        scheduler = get_scheduler(str(t.lr_scheduler), optimizer, num_warmup_steps=int(t.lr_warmup_steps),
                                  num_training_steps=int(t.steps))
    except ValueError as exc:
        raise ConfigError(f"config key 'training.lr_scheduler': {str(exc).splitlines()[0]}") from None

    step, epoch, batch_in_epoch = 0, 0, 0
    if run.resume_from is not None:
        step, epoch, batch_in_epoch = _restore(run, optimizer, scheduler, ema, objective)
    if step >= int(t.steps):
        raise ConfigError(f"run_dir {run.run_dir} is already at step {step} >= training.steps={t.steps}; "
                          f"raise training.steps to train longer")

    if info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        saved_cfg = OmegaConf.to_container(cfg, resolve=True)
        saved_cfg["policy"] = run.meta["policy"]
        # Absolute: a resume from another directory must find this dataset, not one of the same name.
        saved_cfg["dataset"] = str(Path(cfg.dataset if cfg.dataset is not None else run.store_path).expanduser().resolve())
        saved_cfg["task"] = run.task_arg
        write_text_atomic(run.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(saved_cfg)))
    logger = MetricsLogger(run.run_dir, enabled=info.is_main, tensorboard=bool(cfg.logging.tensorboard),
                           resume_step=step)

    model: nn.Module = objective
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.distributed.find_unused_parameters))

    sampler = ResumableSampler(len(run.train_ds), info.rank, info.world_size, seed=int(t.seed))
    loader_gen = torch.Generator()
    loader = DataLoader(run.train_ds, batch_size=run.batch_size, sampler=sampler, drop_last=True,
                        num_workers=run.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=run.num_workers > 0, generator=loader_gen,
                        prefetch_factor=4 if run.num_workers > 0 else None,
                        worker_init_fn=ignore_interrupts if run.num_workers > 0 else None)

    def start_epoch(e: int, skip_batches: int):
        sampler.set_position(e, skip_batches * run.batch_size)
        # Worker seeds come from this generator, never from the global RNG the loss draws from.
        loader_gen.manual_seed(int(t.seed) * 1_000_003 + e * 1009 + info.rank)
        return iter(loader)

    params = [p for p in policy.parameters() if p.requires_grad]
    ema_params = list(ema.averaged_model.parameters()) if ema is not None else []
    clip = float(t.grad_clip_norm) if t.grad_clip_norm is not None else None
    samples_per_step = run.batch_size * info.world_size
    total_steps = int(t.steps)
    bar = progress_bar(total=total_steps, initial=step, desc="train",
                       disable=not (info.is_main and cfg.logging.progress))
    losses = LossWindow(int(t.log_every), device)
    last_loss = float("nan")
    val_loss = None
    saved_at = -1
    timed_from_step, timed_from = step, time.perf_counter()
    paused = 0.0
    started = time.perf_counter()
    first_step = step
    interrupted = False
    # The checkpoint whose rollouts (eval.every_steps) succeeded most, kept as checkpoints/best.
    best = _recorded_best(run.run_dir) if run.resume_from is not None else None

    def require_finite() -> None:
        """Before a save (and at every log line): no rank saw a non-finite loss since the last
        check, and the weights are finite. A collective: every rank calls it at the same step."""
        bad = losses.first_bad()
        first = dist_util.all_reduce_min(info, float(bad[0]) if bad else math.inf)
        weights_ok = math.isfinite(first) or parameters_finite(params + ema_params)
        if math.isfinite(first) or not weights_ok:
            what = (f"the loss is {bad[1] if bad and bad[0] == first else 'not finite'}" if math.isfinite(first)
                    else "the weights hold NaN/Inf")
            at = int(first) if math.isfinite(first) else step
            last = (f"the last checkpoint, {run.run_dir / ckpt_io.CHECKPOINTS / str(saved_at)}, is from step "
                    f"{saved_at}" if saved_at >= 0 else "no checkpoint was written")
            raise TrainingDiverged(f"training stopped at step {at}: {what}; {last} (lower "
                                   f"training.lr, or check the data with `robodiff dataset validate`)")

    stop = StopRequest().install()
    try:
        it = start_epoch(epoch, batch_in_epoch)
        while step < total_steps:
            try:
                batch = next(it)
            except StopIteration:
                epoch, batch_in_epoch = epoch + 1, 0
                it = start_epoch(epoch, 0)
                continue
            batch_in_epoch += 1
            batch = _to_device(batch, device)
            with _autocast(run):
                loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            scheduler.step()
            objective.after_step()
            if ema is not None:
                ema.step(policy)
            step += 1
            losses.add(step, loss)
            if step == first_step + 1:
                # The first step pays for allocation and kernel selection: time from the second on.
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timed_from_step, timed_from = step, time.perf_counter()
            bar.update(1)

            log_now = step % int(t.log_every) == 0 or step == total_steps
            if log_now:
                require_finite()
                last_loss = dist_util.all_reduce_mean(info, losses.take_mean())
                elapsed = time.perf_counter() - timed_from - paused
                rate = (step - timed_from_step) * samples_per_step / elapsed if step > timed_from_step else float("nan")
                lr = scheduler.get_last_lr()[0]
                logger.log(step, {"loss": last_loss, "lr": lr, "samples_per_s": rate, "epoch": epoch})
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.0f}", refresh=False)
            # One process stops at the step it is on; ranks agree at log steps (a collective there).
            stopping = dist_util.any_rank(info, stop.requested) if (info.enabled and log_now) else \
                (stop.requested and not info.enabled)
            pause_from = time.perf_counter()
            if not stopping and (step % int(t.val_every) == 0 or step == total_steps):
                val_loss = validation_loss(run, objective, ema.averaged_model if ema is not None else policy)
                if val_loss is not None:
                    logger.log(step, {"val_loss": val_loss})
            improved = False
            if not stopping and int(cfg.eval.every_steps) > 0 and step % int(cfg.eval.every_steps) == 0:
                result = {}
                if info.is_main:
                    result = rollout_eval(run, ema.averaged_model if ema is not None else policy, step)
                    logger.log(step, result)
                # Rank 0 judged the rollouts; every rank takes part in saving that step.
                improved = bool(dist_util.broadcast_object(info, info.is_main and _improves(result, best)))
                if improved and info.is_main:
                    best = {"step": step, "success_rate": result["eval.success_rate"],
                            "mean_score": result.get("eval.mean_score")}
            if saved_at != step and (improved or stopping or step % int(t.checkpoint_every) == 0
                                     or step == total_steps):
                require_finite()
                save(run, step, optimizer, scheduler, ema, objective, epoch, batch_in_epoch)
                saved_at = step
            if improved and info.is_main:
                ckpt_io.link_checkpoint(run.run_dir / ckpt_io.CHECKPOINTS / str(step), ckpt_io.BEST, best)
            if step > timed_from_step:
                # samples_per_s is optimizer-step throughput: validation, rollouts and saving excluded.
                paused += time.perf_counter() - pause_from
            if stopping:
                interrupted = True
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        stop.uninstall()
        bar.close()
        logger.close()
    train_seconds = time.perf_counter() - started
    rate = (step - timed_from_step) * samples_per_step / (time.perf_counter() - timed_from - paused) \
        if step > timed_from_step else float("nan")
    digests = dist_util.gather_digests(info, dist_util.parameter_digest(policy))
    summary: dict[str, Any] = {
        "run_dir": str(run.run_dir), "steps": step, "final_loss": last_loss, "val_loss": val_loss,
        "train_seconds": round(train_seconds, 3), "samples_per_s": round(rate, 2),
        "batch_size": run.batch_size, "world_size": info.world_size, "device": str(device),
        "checkpoint": str(run.run_dir / ckpt_io.CHECKPOINTS / ckpt_io.LATEST) if saved_at >= 0 else None,
        "resumed_from": str(run.resume_from) if run.resume_from is not None else None,
        "interrupted": interrupted,
        "best_checkpoint": str(run.run_dir / ckpt_io.CHECKPOINTS / ckpt_io.BEST) if best else None,
        "best_step": best["step"] if best else None,
        "best_success_rate": best["success_rate"] if best else None,
        "param_digests": digests, "ranks_in_sync": len(set(digests)) == 1,
    }
    if info.is_main:
        plot_loss(run.run_dir)
        write_text_atomic(run.run_dir / SUMMARY_FILE, jsonio.dumps(summary, indent=1))
    summary = dist_util.broadcast_object(info, summary)
    dist_util.barrier(info)
    return summary
