"""Checkpoints that load without unpickling anything, and a `latest` that a crash cannot destroy.

    runs/<name>/checkpoints/<step>/   model.safetensors  (model.* and ema.* tensors)
                                      policy.json        (policy config, features, task, stats)
                                      train_state.pt     (optimizer, scheduler, RNG, sampler)
    runs/<name>/checkpoints/latest/   the same files as the newest <step>/

Every checkpoint is written into a temporary directory, flushed, and renamed into place. `latest`
is replaced by renaming the old one away before renaming the new one in; a reader that finds no
`latest` (a crash between those two renames) falls back to the highest numbered step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robodiff.errors import ConfigError, UserError
from robodiff.features import features_from_dict
from robodiff.paths import write_text_atomic
from robodiff.policy.base import ChunkSpec
from robodiff.policy.factory import build_policy, guidance_refusal, with_sampling_steps
from robodiff.policy.schema import check_policy_config

WEIGHTS = "model.safetensors"
META = "policy.json"
TRAIN_STATE = "train_state.pt"
LATEST = "latest"
BEST = "best"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1


# ------------------------------------------------------------------ writing
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a copy per tensor sidesteps both.
    return {f"{prefix}.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is renamed away first and deleted last."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _clean_stale(ckpt_root: Path) -> None:
    """Temporary and renamed-away dirs left by a crash while saving."""
    for p in ckpt_root.glob(".*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor] | None, meta: dict[str, Any],
                    train_state: dict[str, Any]) -> Path:
    """Write `checkpoints/<step>/` and replace `checkpoints/latest/` with it. Returns the step dir."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = root / f".tmp-{step}-{os.getpid()}"
    tmp.mkdir()
    tensors = _state_tensors("model", model_state)
    if ema_state is not None:
        tensors.update(_state_tensors("ema", ema_state))
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "robodiff", "step": str(step)})
    (tmp / META).write_text(json.dumps({**meta, "step": step, "format_version": FORMAT_VERSION}, indent=1))
    torch.save(train_state, tmp / TRAIN_STATE)
    for name in (WEIGHTS, META, TRAIN_STATE):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    step_dir = root / str(step)
    _replace_dir(tmp, step_dir)
    link_checkpoint(step_dir, LATEST)
    return step_dir


def link_checkpoint(step_dir: Path, name: str, note: dict[str, Any] | None = None) -> Path:
    """Point `checkpoints/<name>/` (`latest`, `best`) at the step dir, replacing it atomically;
    `note` is written beside it as `<name>.json` (why this step). Hard links make the alias cost
    no extra disk and survive deletion of the step dir."""
    root = step_dir.parent
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    for file in (WEIGHTS, META, TRAIN_STATE):
        try:
            os.link(step_dir / file, tmp / file)
        except OSError:
            shutil.copy2(step_dir / file, tmp / file)
    _fsync_dir(tmp)
    _replace_dir(tmp, root / name)
    if note is not None:
        write_text_atomic(root / f"{name}.json", json.dumps(note, indent=1))
    return root / name


# ------------------------------------------------------------------ locating
def _step_dirs(ckpt_root: Path) -> list[Path]:
    return sorted((p for p in ckpt_root.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir, or a run dir (its `latest`, else its highest step)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint or run directory")
    if (p / WEIGHTS).exists() or (p / META).exists():
        return _check_complete(p)
    root = p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p
    if (root / LATEST).is_dir():
        return _check_complete(root / LATEST)
    if root.is_dir():
        steps = _step_dirs(root)
        if steps:
            return _check_complete(steps[-1])
    raise UserError(f"{p}: not a checkpoint (no {WEIGHTS}) or a run directory (no {CHECKPOINTS}/)")


def _check_complete(ckpt: Path) -> Path:
    for name in (WEIGHTS, META):
        if not (ckpt / name).is_file():
            raise UserError(f"{ckpt}: checkpoint is missing {name}")
    return ckpt


def pinned_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint `path` names (`resolve_checkpoint`), absolute, and as its numbered step
    dir when it resolves to `latest`, which moves on if the run is trained further."""
    ckpt = resolve_checkpoint(path)
    step_dir = ckpt.parent / str(read_policy_meta(ckpt).get("step"))
    return (step_dir if ckpt.name == LATEST and (step_dir / WEIGHTS).is_file() else ckpt).resolve()


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    try:
        return resolve_checkpoint(root)
    except UserError:
        return None


# ------------------------------------------------------------------ reading
def read_policy_meta(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path)
    try:
        meta = json.loads((ckpt / META).read_text())
    except UnicodeDecodeError:
        raise UserError(f"{ckpt / META}: not a text file (expected JSON)") from None
    except ValueError as exc:
        raise UserError(f"{ckpt / META}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{ckpt / META}: expected a JSON object, got {type(meta).__name__}")
    for key in ("policy", "features"):
        if not isinstance(meta.get(key), dict):
            raise UserError(f"{ckpt / META}: missing or malformed '{key}'")
    return meta


def read_weights(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """`{"model": {...}, "ema": {...}}` from one read of `model.safetensors`, prefixes stripped."""
    ckpt = resolve_checkpoint(path)
    try:
        tensors = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{ckpt / WEIGHTS}: unreadable ({exc})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
    for name, tensor in tensors.items():
        prefix, _, rest = name.partition(".")
        groups.setdefault(prefix, {})[rest] = tensor
    return groups


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path)
    file = ckpt / TRAIN_STATE
    if not file.is_file():
        raise UserError(f"{ckpt}: checkpoint is missing {TRAIN_STATE} (cannot resume from it)")
    try:
        # weights_only: tensors and plain containers only, so a tampered file cannot run code.
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise UserError(f"{file}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _features(meta: dict[str, Any], ckpt: Path) -> Any:
    try:
        return features_from_dict(meta["features"])
    except UserError as exc:
        raise UserError(f"{ckpt / META}: malformed features ({exc})") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{ckpt / META}: malformed features ({type(exc).__name__}: {exc})") from None


def read_chunk_spec(path: str | os.PathLike) -> ChunkSpec:
    """The checkpoint's chunk lengths, keys and features, without building or loading the network."""
    ckpt = resolve_checkpoint(path)
    meta = read_policy_meta(ckpt)
    try:
        return ChunkSpec.from_config(meta["policy"], _features(meta, ckpt))
    except UserError as exc:
        raise UserError(f"{ckpt / META}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{ckpt / META}: malformed policy config ({type(exc).__name__}: {exc})") from None


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True,
                sampling_steps: int | None = None) -> torch.nn.Module:
    """Rebuild the policy from `policy.json` and load its (EMA) weights; returned in eval mode.
    `sampling_steps`: a diffusion policy's denoising steps at inference (None: the checkpoint's)."""
    ckpt = resolve_checkpoint(path)
    meta = read_policy_meta(ckpt)
    features = _features(meta, ckpt)
    try:
        policy_cfg = with_sampling_steps(meta["policy"], sampling_steps)
        check_policy_config(policy_cfg)
        policy = build_policy(policy_cfg, features, meta.get("stats"))
    except UserError as exc:
        raise UserError(f"{ckpt / META}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:  # stats or a config that the schema lets through
        raise UserError(f"{ckpt / META}: does not build a policy ({type(exc).__name__}: {exc})") from None
    weights = read_weights(ckpt)
    state = (weights["ema"] if ema else {}) or weights["model"]
    broken = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if broken is not None:
        raise UserError(f"{ckpt / WEIGHTS}: tensor '{broken}' holds NaN/Inf; this checkpoint cannot act")
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = str(exc).strip().splitlines()
        raise UserError(f"{ckpt / WEIGHTS}: weights do not fit the policy in {META} "
                        f"({' '.join(line.strip() for line in first[:2])})") from None
    if missing or unexpected:
        raise UserError(f"{ckpt / WEIGHTS}: weights do not fit the policy in {META} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return policy.to(device).eval()


def require_guided_checkpoint(checkpoint: str | os.PathLike, sampling_steps: int | None = None) -> None:
    """`executor=rtc` needs guided sampling (the fast sampler's, `guidance_refusal`) from the
    checkpoint sampled with `sampling_steps` (None: its own)."""
    policy_cfg = read_policy_meta(checkpoint)["policy"]
    refusal = guidance_refusal(with_sampling_steps(policy_cfg, sampling_steps))
    if refusal is not None:
        raise ConfigError(f"executor=rtc needs {refusal}: checkpoint {checkpoint} (or use executor=async)")
