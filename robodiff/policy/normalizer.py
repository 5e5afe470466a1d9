"""Per-key affine normalization whose parameters travel inside checkpoints.

Low-dim and action keys map min/max to [-1, 1] (or mean/std to zero mean, unit variance); images
are uint8 and scale to [0, 1]. The parameters are torch buffers so they travel in the policy's
state dict: callers never normalize by hand. The statistics come from `robodiff.data.stats`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robodiff.errors import UserError
from robodiff.features import Features

MODES = ("minmax", "meanstd")
EPS = 1e-4


class Normalizer(nn.Module):
    """x_norm = x * scale + offset per key; `image` keys are uint8 -> [0, 1]."""

    def __init__(self, features: Features, stats: dict[str, dict] | None = None, mode: str = "minmax"):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"normalizer.mode '{mode}' is not one of {', '.join(MODES)}")
        self.mode = mode
        self.image_keys = [k for k, f in features.items() if f.kind == "image"]
        self.keys = [k for k, f in features.items() if f.kind in ("lowdim", "action")]
        for key in self.keys:
            shape = features[key].shape
            scale, offset = np.ones(shape), np.zeros(shape)
            if stats is not None:
                if key not in stats:
                    raise UserError(f"normalizer stats have no entry for '{key}'")
                scale, offset = self._affine(stats[key])
            self.register_buffer(f"scale_{key}", torch.as_tensor(scale, dtype=torch.float32))
            self.register_buffer(f"offset_{key}", torch.as_tensor(offset, dtype=torch.float32))

    def _affine(self, s: dict) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "minmax":
            lo, hi = np.asarray(s["min"]), np.asarray(s["max"])
            span = hi - lo
            # A constant dimension maps to 0 instead of dividing by zero.
            const = span < EPS
            scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, span))
            offset = np.where(const, -lo, -1.0 - lo * scale)
            return scale, offset
        mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        scale = 1.0 / np.maximum(std, EPS)
        return scale, -mean * scale

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"scale_{key}"), getattr(self, f"offset_{key}")

    def normalize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, x in batch.items():
            if key in self.image_keys:
                out[key] = x.float() / 255.0 if x.dtype == torch.uint8 else x
            elif key in self.keys:
                scale, offset = self._params(key)
                out[key] = x.float() * scale + offset
            else:
                out[key] = x
        return out

    def normalize_key(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        return x.float() * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        return (x - offset) / scale
