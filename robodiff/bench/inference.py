"""`robodiff bench inference`: p50/p99 latency of predict_action_chunk at batch 1.

Cases: the default image policy (diffusion_unet, ResNet-18, two 96x96 cameras + 2-d state,
2 obs steps, DDIM 10) and the low-dim policy (20-d state), random weights. Per case the
straightforward path (`DiffusionPolicy.predict_action_chunk`: diffusers scheduler.step, fp32,
no_grad), the fast path (`FastSampler`) and a consistency student of the same network through the
fast path for each of `sampling_steps` (what `robodiff distill` makes; the weights do not change
the time) alternate call by call, so load on the machine hits them alike. Also reported: the
largest action difference between each fast path and its straightforward one for the same noise.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from robodiff.config import CONF_DIR, bounded, compose, to_dict, validate
from robodiff.errors import ConfigError
from robodiff.features import Feature, Features
from robodiff.policy.diffusion import DiffusionPolicy
from robodiff.policy.distill import student_config
from robodiff.policy.factory import build_policy
from robodiff.policy.fast_inference import FastSampler
from robodiff.progress import progress_bar


@dataclass
class BenchInferenceConfig:
    iterations: int = bounded(20, ge=1)
    warmup: int = bounded(3, ge=0)
    threads: Optional[int] = bounded(None, ge=1)
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])
    cases: list[str] = field(default_factory=lambda: ["image", "lowdim"])
    precision_cpu: str = "auto"
    precision_cuda: str = "auto"
    cuda_graph: bool = True
    compile_cuda: bool = True
    sampling_steps: list[int] = bounded(ge=1, le=4, factory=lambda: [1])
    seed: int = bounded(0, ge=0)


CASES: dict[str, Features] = {
    "image": {"image": Feature("image", (96, 96, 3), "uint8"), "wrist_image": Feature("image", (96, 96, 3), "uint8"),
              "state": Feature("lowdim", (2,)), "action": Feature("action", (2,))},
    "lowdim": {"state": Feature("lowdim", (20,)), "action": Feature("action", (2,))},
}


def default_policy_cfg() -> dict[str, Any]:
    return to_dict(OmegaConf.load(CONF_DIR / "policy" / "diffusion_unet.yaml"))


def random_history(features: Features, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, f in features.items():
        if f.kind == "image":
            out[key] = rng.integers(0, 256, (steps, *f.shape), dtype=np.uint8)
        elif f.kind == "lowdim":
            out[key] = rng.standard_normal((steps, *f.shape)).astype(np.float32)
    return out


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# The keys of a student's figures, e.g. cpu_image_onestep_p50_ms beside DDIM's cpu_image_p50_ms.
STEP_WORDS = {1: "onestep", 2: "twostep", 3: "threestep", 4: "fourstep"}


def student_of(policy: DiffusionPolicy, steps: int) -> DiffusionPolicy:
    """A consistency student of `policy` sampled in `steps` steps, with its weights."""
    cfg = student_config(policy.policy_cfg, "none (bench inference: random weights)", 0, "consistency", None,
                         0.0, steps)
    student = build_policy(cfg, policy.features, None).to(policy.device).eval()
    student.load_state_dict(policy.state_dict())
    return student


def bench_case(device: str, case: str, cfg: Any, policy_cfg: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    features = CASES[case]
    policy = build_policy(policy_cfg, features, None)
    assert isinstance(policy, DiffusionPolicy)
    policy = policy.to(device).eval()
    precision = cfg.precision_cuda if device == "cuda" else cfg.precision_cpu
    # Straightforward and fast path of the teacher (DDIM), then of each student: the fast paths
    # set the process-wide CPU threads alike, so every path runs with the same setting.
    paths: dict[str, tuple[DiffusionPolicy, FastSampler]] = {}
    for name, eager in [("", policy)] + [(STEP_WORDS[k], student_of(policy, k)) for k in cfg.sampling_steps]:
        paths[name] = eager, FastSampler(eager, device=device, precision=precision, threads=cfg.threads or "auto",
                                         cuda_graph=cfg.cuda_graph, compile=device == "cuda" and cfg.compile_cuda)
    history = random_history(features, policy.n_obs_steps, np.random.default_rng(cfg.seed))

    batch = policy.obs_history_to_batch(history)
    noise = torch.randn(1, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(cfg.seed))
    max_diff, first_call = {}, 0.0
    for name, (eager, fast) in paths.items():
        with torch.no_grad():
            reference = eager.predict_action(batch, noise=noise, generator=torch.Generator().manual_seed(1)).float()
        t_build = time.perf_counter()
        got = fast(batch, noise=noise, generator=torch.Generator().manual_seed(1)).float().cpu()
        max_diff[name] = float((got - reference.cpu()).abs().max())
        if not name:
            first_call = time.perf_counter() - t_build  # first call: compilation and CUDA graph capture
    calls = [policy.predict_action_chunk] + [fast.predict_action_chunk for _, fast in paths.values()]
    for _ in range(cfg.warmup):
        for call in calls:
            call(history)
    seconds: list[list[float]] = [[] for _ in calls]
    for _ in progress_bar(range(cfg.iterations), desc=f"{device} {case}", leave=False):
        for call, times in zip(calls, seconds):
            t0 = time.perf_counter()
            call(history)  # ends with .cpu(): synchronous on CUDA too
            times.append(time.perf_counter() - t0)
    b50, b99 = percentiles(seconds[0])
    p50, p99 = percentiles(seconds[1])
    prefix = f"{device}_{case}"
    figures = {f"{prefix}_p50_ms": round(p50, 2), f"{prefix}_p99_ms": round(p99, 2),
               f"{prefix}_baseline_p50_ms": round(b50, 2), f"{prefix}_baseline_p99_ms": round(b99, 2),
               f"{prefix}_speedup": round(b50 / p50, 2), f"{prefix}_precision": paths[""][1].precision,
               f"{prefix}_max_abs_action_diff": round(max_diff[""], 5), f"{prefix}_first_call_s": round(first_call, 1)}
    for name, times in zip(list(paths)[1:], seconds[2:]):
        s50, s99 = percentiles(times)
        figures.update({f"{prefix}_{name}_p50_ms": round(s50, 2), f"{prefix}_{name}_p99_ms": round(s99, 2),
                        f"{prefix}_{name}_speedup_vs_ddim": round(p50 / s50, 2),
                        f"{prefix}_{name}_max_abs_action_diff": round(max_diff[name], 5)})
    return figures


SCHEMA = BenchInferenceConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_inference", overrides), BenchInferenceConfig)


def run(overrides: list[str], flags: set[str]) -> dict[str, Any]:
    cfg = load_config(overrides)
    for case in cfg.cases:
        if case not in CASES:
            raise ConfigError(f"bench_inference.cases entry '{case}' is not one of {', '.join(CASES)}")
    for device in cfg.devices:
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"bench_inference.devices entry '{device}' is not cpu or cuda")
    devices = [d for d in cfg.devices if d == "cpu" or torch.cuda.is_available()]
    policy_cfg = default_policy_cfg()
    result: dict[str, Any] = {"iterations": cfg.iterations,
                              "num_inference_steps": policy_cfg["noise_scheduler"]["num_inference_steps"],
                              "sampling_steps": list(cfg.sampling_steps)}
    if torch.cuda.is_available() and "cuda" in devices:
        result["cuda_device"] = torch.cuda.get_device_name()
    for device in devices:
        for case in cfg.cases:
            figures = bench_case(device, case, cfg, policy_cfg)
            result["threads"] = torch.get_num_threads()
            result.update(figures)
            p = f"{device}_{case}"
            print(f"{p:12s} fast p50 {figures[p + '_p50_ms']:8.2f} ms  p99 {figures[p + '_p99_ms']:8.2f} ms | "
                  f"straightforward p50 {figures[p + '_baseline_p50_ms']:8.2f} ms  "
                  f"p99 {figures[p + '_baseline_p99_ms']:8.2f} ms | x{figures[p + '_speedup']:.2f} "
                  f"({figures[p + '_precision']}, max |diff| {figures[p + '_max_abs_action_diff']})",
                  file=sys.stderr)
            for k in cfg.sampling_steps:
                q = f"{p}_{STEP_WORDS[k]}"
                print(f"{p:12s} student, {k} step(s): p50 {figures[q + '_p50_ms']:8.2f} ms  p99 "
                      f"{figures[q + '_p99_ms']:8.2f} ms | x{figures[q + '_speedup_vs_ddim']:.2f} over fast DDIM-"
                      f"{result['num_inference_steps']} (max |diff| {figures[q + '_max_abs_action_diff']})",
                      file=sys.stderr)
    return result
