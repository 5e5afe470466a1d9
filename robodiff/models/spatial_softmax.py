"""Spatial-softmax keypoint head: a feature map becomes the expected (x, y) of K learned keypoints.

Keeps the "where" of the image, which global pooling throws away and manipulation needs.
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) -> (B, 2 * num_kp) expected keypoint coordinates in [-1, 1]."""

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int = 32):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)
        self.num_kp = num_kp

    @property
    def out_dim(self) -> int:
        return 2 * self.num_kp

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        b = feature_map.shape[0]
        logits = self.keypoints(feature_map).flatten(2)  # (B, K, H*W)
        attention = torch.softmax(logits, dim=-1)
        return (attention @ self.pos).reshape(b, -1)
