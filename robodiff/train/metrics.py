"""Training metrics: `metrics.jsonl` (one object per logged step), TensorBoard events, `loss.png`.

Only rank 0 logs; other ranks get a logger whose methods do nothing, so the loop has no branches.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from robodiff.paths import replaced, write_text_atomic
from robodiff import jsonio

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class MetricsLogger:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if resume_step and path.exists():
            # Steps logged after the checkpoint we resume from will be logged again.
            _truncate_after(path, resume_step)
        self._file = open(path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step or None)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        assert self._file is not None
        self._file.write(jsonio.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key.replace(".", "/"), value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(run_dir: str | os.PathLike) -> Path | None:
    """Training loss (and validation loss when logged) against step, as a PNG in the run dir;
    beside it, when training ran rollouts (eval.every_steps), their success rate and mean score."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    rollouts = [(r["step"], r["eval.success_rate"], r.get("eval.mean_score")) for r in records
                if "eval.success_rate" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if rollouts else 1, figsize=(11 if rollouts else 6, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    for series, label in ((train, "train"), (val, "validation")):
        if series:
            steps, losses = zip(*series)
            ax.plot(steps, losses, label=label, marker="o" if len(series) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(loss > 0 for _, loss in train + val):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if rollouts:
        ax = axes[0][1]
        steps, success, score = zip(*rollouts)
        ax.plot(steps, success, marker="o", label="success rate")
        if all(v is not None for v in score):
            ax.plot(steps, score, marker=".", linestyle="--", label="mean score")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step")
        ax.set_title("rollouts during training (EMA policy)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / LOSS_PLOT
    with replaced(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out
