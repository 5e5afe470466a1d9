"""The last `n_obs_steps` observations a policy conditions on, shared by evaluation and deployment."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class ObservationHistory:
    """`push` each new observation, `stacked()` gives `{key: (n_obs_steps, ...)}`.

    At the start of an episode the first observation is repeated to fill the window, matching the
    edge-repeat padding the policy saw in training (`pad_before = n_obs_steps - 1`).
    """

    def __init__(self, n_obs_steps: int, keys: Sequence[str] | None = None):
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        self.n_obs_steps = int(n_obs_steps)
        self.keys = list(keys) if keys is not None else None
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)

    def reset(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, obs: Mapping[str, Any]) -> None:
        keys = self.keys if self.keys is not None else list(obs)
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"observation is missing {missing} (has {sorted(obs)})")
        # Copy: robots may hand out views of buffers they overwrite on the next step.
        frame = {k: np.array(obs[k], copy=True) for k in keys}
        if not self._frames:
            self._frames.extend(frame for _ in range(self.n_obs_steps))
        else:
            self._frames.append(frame)

    def stacked(self) -> dict[str, np.ndarray]:
        if not self._frames:
            raise RuntimeError("ObservationHistory is empty: push an observation first")
        keys = list(self._frames[0])
        return {k: np.stack([f[k] for f in self._frames]) for k in keys}
