"""Typed schema of `conf/train.yaml`: a wrong type or an unknown key names itself before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from robodiff.config import bounded, compose, validate
from robodiff.errors import ConfigError
from robodiff.policy.schema import check_policy_config


@dataclass
class TrainingConfig:
    steps: int = bounded(5000, ge=1)
    batch_size: Optional[int] = bounded(None, ge=1)
    num_workers: Optional[int] = bounded(None, ge=0)
    cache: str = "auto"
    cache_max_gb: float = bounded(4.0, ge=0)
    lr: float = bounded(1e-4, gt=0)
    betas: list[float] = bounded(ge=0, lt=1, factory=lambda: [0.95, 0.999])
    weight_decay: float = bounded(1e-6, ge=0)
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = bounded(500, ge=0)
    grad_clip_norm: Optional[float] = bounded(1.0, gt=0)
    amp: Any = "auto"  # auto | true | false
    channels_last: Any = "auto"  # auto | true | false
    deterministic: bool = False
    seed: int = bounded(42, ge=0)
    log_every: int = bounded(50, ge=1)
    val_every: int = bounded(500, ge=1)
    val_ratio: float = bounded(0.1, ge=0, lt=1)
    val_batches: int = bounded(16, ge=1)
    checkpoint_every: int = bounded(1000, ge=1)


@dataclass
class EvalConfig:
    every_steps: int = bounded(0, ge=0)
    episodes: int = bounded(10, ge=1)
    seed: int = bounded(200000, ge=0)
    n_envs: int = bounded(1, ge=1)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistributedConfig:
    find_unused_parameters: bool = False


@dataclass
class TrainConfig:
    task: Any = None
    dataset: Any = None
    run_dir: Any = None
    resume: bool = False
    device: str = "auto"
    policy: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def tri_state(value: Any, key: str) -> bool | None:
    """`auto` -> None (decide by device), true/on -> True, false/off -> False."""
    text = str(value).lower()
    if text == "auto":
        return None
    if text in ("true", "on", "1"):
        return True
    if text in ("false", "off", "0"):
        return False
    raise ConfigError(f"config key '{key}' is '{value}', not one of auto, true, false")


def check(cfg: DictConfig) -> DictConfig:
    """Schema types and ranges plus the value checks a schema cannot express."""
    cfg = validate(cfg, TrainConfig)
    check_policy_config(cfg.policy)
    t = cfg.training
    if t.cache not in ("auto", "memory", "none"):
        raise ConfigError(f"config key 'training.cache' is '{t.cache}', not one of auto, memory, none")
    for key in ("amp", "channels_last"):
        tri_state(t[key], f"training.{key}")
    if len(t.betas) != 2:
        raise ConfigError(f"config key 'training.betas' needs two values, got {list(t.betas)}")
    return cfg


def load(overrides: list[str]) -> DictConfig:
    """The run's config: `conf/train.yaml` with the overrides; with `resume=true`, the run's own
    recorded config.yaml with only the keys given again applied (a run keeps its task and network)."""
    cfg = check(compose("train", overrides))
    return resumed(cfg, overrides) if cfg.resume else cfg


# A resumed run cannot change these: the checkpoint's network and the task it is trained for.
FIXED_ON_RESUME = ("task", "policy")


def given_keys(overrides: list[str]) -> list[str]:
    keys = [item.partition("=")[0].lstrip("+~") for item in overrides]
    return [k for k in keys if k not in ("resume", "run_dir")]


def resumed(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    if not cfg.run_dir:
        raise ConfigError("resume=true needs run_dir= (the run to continue)")
    path = Path(str(cfg.run_dir)) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir {cfg.run_dir}: no config.yaml, so nothing to resume")
    saved = load_yaml(path)
    for key in given_keys(overrides):
        new, old = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        if key.split(".")[0] in FIXED_ON_RESUME:
            if key == "policy":  # a group override: compare the policy it names
                new, old = cfg.policy.get("name"), OmegaConf.select(saved, "policy.name")
            plain_new = OmegaConf.to_container(new) if isinstance(new, (DictConfig, ListConfig)) else new
            plain_old = OmegaConf.to_container(old) if isinstance(old, (DictConfig, ListConfig)) else old
            if plain_new != plain_old:
                raise ConfigError(f"config key '{key}' is {plain_old!r} in run {cfg.run_dir}, not {plain_new!r}: a "
                                  f"resumed run keeps its task and network (start a new run_dir to change them)")
            continue
        OmegaConf.update(saved, key, new, force_add=True)
    saved.resume = True
    saved.run_dir = str(cfg.run_dir)
    try:
        return check(saved)
    except ConfigError as exc:
        raise ConfigError(f"{path} (the run's recorded config): {exc}") from None


def load_yaml(path: Path) -> DictConfig:
    """A config file we wrote, read back; damage is a one-line error naming the file."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - yaml and OmegaConf raise many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: unreadable ({type(exc).__name__}: {first})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return loaded


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
