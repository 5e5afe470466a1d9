"""What an evaluation leaves for people: the score plot and the output folder's name."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robodiff.paths import replaced  # noqa: E402


def plot_results(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    scores = np.array([r["score"] for r in rows])
    ok = np.array([r["success"] for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.bar(np.arange(len(rows)), scores, color=np.where(ok, "tab:green", "tab:red"))
    ax1.set_xlabel("episode")
    ax1.set_ylabel("max score")
    ax1.set_title("score by episode (green: success)")
    ax2.hist(scores, bins=20, color="tab:blue")
    ax2.set_xlabel("max score")
    ax2.set_ylabel("episodes")
    ax2.set_title("score histogram")
    fig.suptitle(title)
    fig.tight_layout()
    with replaced(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def default_out(folder: str, name: str) -> Path:
    """runs/<folder>/<name>_<UTC time>: a fresh output folder per run."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / folder / f"{name}_{stamp}"
