"""A three-layer CNN trunk for fast CPU runs (tests, quickstart); same interface as ResNet18GN."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """(B, 3, H, W) -> (B, 64, H/8, W/8)."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, 2, 2), nn.GroupNorm(max(1, width // 16), width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 64, 3, 2, 1), nn.GroupNorm(4, 64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 2, 1), nn.GroupNorm(4, 64), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
