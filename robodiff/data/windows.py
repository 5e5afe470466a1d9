"""Training windows over episodes, with the same indices as the reference DP SequenceSampler.

A window of `horizon` steps may start up to `pad_before = n_obs_steps - 1` steps before its
episode and end up to `pad_after = n_action_steps - 1` steps after it; the missing steps repeat the
episode's first / last frame. Every window needs only a contiguous slice of each array: the first
`n_obs_steps` steps for observations, the whole horizon for the action.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robodiff.errors import UserError


class WindowIndex:
    """`starts[i]` is window i's first step as a global frame index (may precede its episode);
    `ep_start[i]` / `ep_end[i]` bound the episode it lies in."""

    def __init__(self, episode_ends: np.ndarray, horizon: int, n_obs_steps: int, n_action_steps: int,
                 episodes: Sequence[int] | None = None):
        if horizon < 1 or n_obs_steps < 1 or n_action_steps < 1:
            raise UserError(f"horizon ({horizon}), n_obs_steps ({n_obs_steps}) and "
                            f"n_action_steps ({n_action_steps}) must be >= 1")
        if n_obs_steps > horizon or n_action_steps > horizon:
            # Beyond that, padding would make windows that hold no frame of their episode.
            raise UserError(f"n_obs_steps ({n_obs_steps}) and n_action_steps ({n_action_steps}) "
                            f"must not exceed horizon ({horizon})")
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.pad_before = n_obs_steps - 1
        self.pad_after = n_action_steps - 1
        ends = np.asarray(episode_ends, dtype=np.int64)
        begins = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        chosen = np.arange(len(ends)) if episodes is None else np.asarray(sorted(set(episodes)), dtype=np.int64)
        if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(ends)):
            raise UserError(f"episode index out of range (store has {len(ends)} episodes)")
        starts, ep_start, ep_end = [], [], []
        for k in chosen:
            begin, end = int(begins[k]), int(ends[k])
            # Local starts -pad_before .. length - horizon + pad_after, as in DP's create_indices.
            local = np.arange(-self.pad_before, end - begin - horizon + self.pad_after + 1)
            starts.append(local + begin)
            ep_start.append(np.full(len(local), begin))
            ep_end.append(np.full(len(local), end))
        empty = np.zeros(0, dtype=np.int64)
        self.starts = np.concatenate(starts).astype(np.int64) if starts else empty
        self.ep_start = np.concatenate(ep_start).astype(np.int64) if ep_start else empty
        self.ep_end = np.concatenate(ep_end).astype(np.int64) if ep_end else empty
        self.episodes = chosen

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, i: int, length: int) -> tuple[int, int, np.ndarray]:
        """The contiguous frames [lo, hi) to read for the first `length` steps of window i, and
        the positions in that slice that make up the edge-padded steps."""
        first, begin, end = int(self.starts[i]), int(self.ep_start[i]), int(self.ep_end[i])
        lo, hi = max(first, begin), min(first + length, end)
        take = np.clip(np.arange(first, first + length), begin, end - 1) - lo
        return lo, hi, take

    def steps(self, i: int, length: int) -> np.ndarray:
        """Global frame index of each of the first `length` steps of window i (edge-padded)."""
        lo, _, take = self.span(i, length)
        return take + lo


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded train/val split by episode. The train set is never empty; a positive ratio with at
    least two episodes gives at least one validation episode."""
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if n_episodes < 1:
        raise UserError("cannot split a store with no episodes")
    n_val = 0 if val_ratio == 0 else min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    order = np.random.default_rng(seed).permutation(n_episodes)
    val = sorted(int(k) for k in order[:n_val])
    train = sorted(int(k) for k in order[n_val:])
    return train, val
