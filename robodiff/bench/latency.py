"""Success against inference latency: every (executor, latency) pair is one seeded evaluation on
the simulated clock (`evaluate(executor=E, latency_s=L)`), the same episodes for every pair, so
the curves differ only by what the latency does. Writes latency.png (success with its 95 %
interval against latency, one line per executor), latency.json, and each pair's eval folder."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodiff.commands.eval import evaluate_with
from robodiff.commands.eval import load_config as eval_load_config
from robodiff.config import bounded, compose, require, validate
from robodiff.control.executors import EXECUTORS, check_executor
from robodiff.errors import ConfigError, UserError
from robodiff.eval.report import default_out
from robodiff.policy.checkpoint import read_policy_meta, require_guided_checkpoint
from robodiff.sim.tasks import load_task
from robodiff.paths import replaced, write_text_atomic
from robodiff import jsonio


@dataclass
class BenchLatencyConfig:
    checkpoint: str | None = None
    task: str | None = None
    executors: list[str] = field(default_factory=lambda: ["async", "sync"])
    latencies: list[float] = bounded(ge=0, factory=lambda: [0.03, 0.1, 0.2, 0.33])
    episodes: int = bounded(50, ge=1)
    seed: int = bounded(100000, ge=0)
    n_envs: int = bounded(2, ge=1)
    sampling_steps: int | None = bounded(None, ge=1)
    out: str | None = None


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for executor in dict.fromkeys(r["executor"] for r in rows):
        mine = [r for r in rows if r["executor"] == executor]
        x = [r["latency_s"] for r in mine]
        ax.plot(x, [r["success_rate"] for r in mine], marker="o", label=executor)
        ax.fill_between(x, [r["ci95"][0] for r in mine], [r["ci95"][1] for r in mine], alpha=0.15)
    ax.set_xlabel("inference latency (s, simulated clock)")
    ax.set_ylabel("success rate (95 % interval)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with replaced(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


SCHEMA = BenchLatencyConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_latency", overrides), BenchLatencyConfig)


def run(overrides: list[str], flags: set[str]) -> dict[str, Any]:
    cfg = load_config(overrides)
    checkpoint = str(require(cfg, "checkpoint", "bench latency"))
    if not cfg.executors:
        raise ConfigError(f"bench_latency.executors is empty: name at least one of {', '.join(EXECUTORS)}")
    for executor in cfg.executors:
        check_executor(executor)
        if executor == "rtc":  # before hours of the other executors' episodes, not after
            require_guided_checkpoint(checkpoint, cfg.sampling_steps)
    latencies = sorted(float(x) for x in cfg.latencies)
    if not latencies or any(x < 0 or not math.isfinite(x) for x in latencies):
        raise ConfigError(f"bench_latency.latencies={list(cfg.latencies)}: need finite seconds >= 0")
    task = cfg.task or read_policy_meta(checkpoint).get("task")
    if not task:
        raise ConfigError(f"checkpoint {checkpoint} names no task: give task=T")
    if not cfg.task:
        try:
            load_task(task)
        except UserError as exc:
            raise ConfigError(f"checkpoint {checkpoint} was trained for task '{task}': {exc}; give task=T") from None
    out = Path(cfg.out) if cfg.out else default_out("bench", f"latency_{Path(checkpoint).name}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for executor in cfg.executors:
        for latency in latencies:
            summary = evaluate_with(eval_load_config([
                f"task={task}", f"checkpoint={checkpoint}", f"episodes={cfg.episodes}", f"seed={cfg.seed}",
                f"n_envs={cfg.n_envs}", f"out={out / f'{executor}_{latency:g}s'}", "n_videos=0",
                f"executor={executor}", f"latency_s={latency}", f"sampling_steps={cfg.sampling_steps or 'null'}"]))
            row = {"executor": executor, "latency_s": latency, "success_rate": summary["success_rate"],
                   "mean_score": round(summary["mean_score"], 4), "ci95": [round(v, 4) for v in summary["ci95"]]}
            rows.append(row)
            print(f"{executor} at {latency:g} s: success {row['success_rate']:.2f} "
                  f"({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f}), mean score {row['mean_score']:.3f}")
    plot(rows, out / "latency.png", f"{task} / {checkpoint}: {cfg.episodes} episodes per point")
    result = {"bench": "latency", "checkpoint": checkpoint, "task": str(task), "sampling_steps": cfg.sampling_steps,
              "episodes": cfg.episodes,
              "seed": cfg.seed, "rows": rows, "plot": str(out / "latency.png"), "out": str(out),
              "seconds": round(time.perf_counter() - started, 1)}
    write_text_atomic(out / "latency.json", jsonio.dumps(result, indent=2) + "\n")
    print(f"plot: {out / 'latency.png'}")
    return result
