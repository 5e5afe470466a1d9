"""Paired comparison of evaluations on the same seeded episodes: each one's success (95 % Wilson
interval) and its difference from the first's with a paired interval and McNemar's p. Fifty
episodes cannot rank two policies a few points apart from their separate intervals; pairing on
the seeds removes the episodes both solve or both fail."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from robodiff.config import compose, validate
from robodiff.errors import ConfigError, UserError
from robodiff.eval.stats import paired_difference, wilson_interval


@dataclass
class BenchCompareConfig:
    evals: list[str] = MISSING
    labels: Optional[list[str]] = MISSING


SCHEMA = BenchCompareConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_compare", overrides), BenchCompareConfig)


def evaluated_task(spec: str) -> str | None:
    """The task an evaluation ran, from the summary.json beside its episodes (None if not said)."""
    path = Path(spec)
    summary = (path if path.is_dir() else path.parent) / "summary.json"
    try:
        task = json.loads(summary.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None
    return task if isinstance(task, str) else None


def read_episodes(spec: str) -> dict[int, dict[str, Any]]:
    """An evaluation's rows by seed, from its out= folder or its episodes.jsonl."""
    path = Path(spec)
    if path.is_dir():
        path = path / "episodes.jsonl"
    if not path.is_file():
        raise UserError(f"{spec}: no evaluation there (expected an eval out= folder or its episodes.jsonl)")
    rows: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            seed, success = row["seed"], row["success"]
        except (ValueError, TypeError, KeyError):
            raise UserError(f"{path}:{number}: not an episode row (JSON with 'seed' and 'success')") from None
        if not isinstance(seed, int) or not isinstance(success, bool):
            raise UserError(f"{path}:{number}: 'seed' must be an integer and 'success' true or false")
        if seed in rows:
            raise UserError(f"{path}:{number}: seed {seed} appears twice")
        rows[seed] = row
    if not rows:
        raise UserError(f"{path}: no episodes")
    return rows


def run(overrides: list[str], flags: set[str]) -> dict[str, Any]:
    cfg = load_config(overrides)
    specs = [str(e) for e in cfg.evals]
    if len(specs) < 2:
        raise ConfigError("bench_compare.evals needs at least two evaluations, the first the baseline: "
                          "evals=[runs/a/eval,runs/b/eval]")
    labels = [str(x) for x in cfg.labels] if cfg.labels is not None else specs
    if len(labels) != len(specs):
        raise ConfigError(f"bench_compare.labels has {len(labels)} names for {len(specs)} evaluations")
    evals = [read_episodes(s) for s in specs]
    tasks = {spec: task for spec in specs if (task := evaluated_task(spec))}
    if len(set(tasks.values())) > 1:
        raise UserError("the evaluations ran different tasks (" + ", ".join(f"{s}: {t}" for s, t in tasks.items())
                        + "): pairing compares the same episodes of one task")
    seeds = sorted(evals[0])
    for spec, rows in zip(specs[1:], evals[1:]):
        if set(rows) != set(seeds):
            missing = sorted(set(seeds) ^ set(rows))[0]
            raise UserError(f"{spec} and {specs[0]} did not evaluate the same seeded episodes "
                            f"(seed {missing} is in one only): pairing needs the same episodes=/seed=")
    base = [bool(evals[0][s]["success"]) for s in seeds]
    rows_out = []
    for label, spec, rows in zip(labels, specs, evals):
        success = [bool(rows[s]["success"]) for s in seeds]
        k = sum(success)
        lo, hi = wilson_interval(k, len(seeds))
        scores = [rows[s].get("score") for s in seeds]
        mean_score = sum(scores) / len(scores) if all(isinstance(x, (int, float)) for x in scores) else None
        paired = paired_difference(base, success)
        rows_out.append({"label": label, "eval": spec, "success_rate": k / len(seeds), "ci95": [lo, hi],
                         "mean_score": mean_score, "diff": paired["diff"], "diff_ci95": list(paired["ci95"]),
                         "only_baseline": paired["only_baseline"], "only_this": paired["only_other"],
                         "p": paired["p"]})
    width = max(len(r["label"]) for r in rows_out)
    print(f"{len(seeds)} episodes, seeds {seeds[0]}..{seeds[-1]}; differences paired against '{labels[0]}'")
    for r in rows_out:
        score = "" if r["mean_score"] is None else f", score {r['mean_score']:.3f}"
        line = f"{r['label']:<{width}}  success {r['success_rate']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}){score}"
        if r is not rows_out[0]:
            line += (f"  diff {r['diff']:+.2f} ({r['diff_ci95'][0]:+.2f} to {r['diff_ci95'][1]:+.2f}), "
                     f"wins {r['only_this']} / losses {r['only_baseline']}, p={r['p']:.3f}")
        print(line)
    return {"bench": "compare", "episodes": len(seeds), "baseline": labels[0], "rows": rows_out}
