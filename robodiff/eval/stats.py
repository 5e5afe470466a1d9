"""Success-rate statistics."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95 % Wilson score interval: honest at small n and at rates near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; floating point would leave it a hair inside.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def paired_difference(baseline: list[bool], other: list[bool], z: float = Z_95) -> dict:
    """Success of `other` minus `baseline` on the same episodes, episode by episode.

    Only the discordant episodes (one succeeds, the other fails) carry information about the
    difference, so two evaluations 5 points apart can be told apart when they fail on the same
    hard seeds, which two independent intervals cannot show. The interval is the Wald interval of a
    paired difference; `p` is McNemar's exact test (a two-sided sign test on the discordant pairs)."""
    if len(baseline) != len(other):
        raise ValueError("paired_difference needs the same episodes on both sides")
    n = len(baseline)
    only_baseline = sum(1 for a, b in zip(baseline, other) if a and not b)
    only_other = sum(1 for a, b in zip(baseline, other) if b and not a)
    discordant = only_baseline + only_other
    diff = (only_other - only_baseline) / n if n else 0.0
    se = math.sqrt(max(discordant - (only_other - only_baseline) ** 2 / n, 0.0)) / n if n else 0.0
    tail = sum(math.comb(discordant, i) for i in range(min(only_baseline, only_other) + 1))
    p = min(1.0, 2 * tail / 2 ** discordant) if discordant else 1.0
    return {"diff": diff, "ci95": (max(-1.0, diff - z * se), min(1.0, diff + z * se)),
            "only_baseline": only_baseline, "only_other": only_other, "p": p}
