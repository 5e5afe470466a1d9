"""Observation encoder: one vision trunk + spatial-softmax head per camera, low-dim concatenated.

Input is the normalizer's output: images float in [0, 1], (B, T, H, W, C); low-dim (B, T, D).
Output is one feature vector per observation step, (B, T, feature_dim).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robodiff.errors import ConfigError
from robodiff.features import Features
from robodiff.models.resnet import ResNet18GN
from robodiff.models.small_cnn import SmallCNN
from robodiff.models.spatial_softmax import SpatialSoftmax

BACKBONES = ("resnet18", "small_cnn")


def random_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Independent random crop of each (N, C, H, W) image (torch RNG, so seeded runs repeat)."""
    n, _, h, w = images.shape
    top = torch.randint(0, h - height + 1, (n,), device=images.device)
    left = torch.randint(0, w - width + 1, (n,), device=images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, :, None]
    cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top:top + height, left:left + width]


class CameraEncoder(nn.Module):
    """(N, C, H, W) float image -> (N, 2 * num_keypoints)."""

    def __init__(self, backbone: str, in_channels: int, image_hw: tuple[int, int], num_keypoints: int,
                 pretrained: str | None):
        super().__init__()
        if backbone == "resnet18":
            self.backbone: nn.Module = ResNet18GN(in_channels)
            if pretrained:
                self.backbone.load_torchvision(pretrained)
        elif backbone == "small_cnn":
            if pretrained:
                raise ConfigError("policy.encoder.pretrained is only supported with backbone=resnet18")
            self.backbone = SmallCNN(in_channels)
        else:
            raise ConfigError(f"policy.encoder.backbone '{backbone}' is not one of {', '.join(BACKBONES)}")
        with torch.no_grad():
            fmap = self.backbone(torch.zeros(1, in_channels, *image_hw))
        self.pool = SpatialSoftmax(fmap.shape[1], fmap.shape[2], fmap.shape[3], num_keypoints)
        self.out_dim = self.pool.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(images))


class ObsEncoder(nn.Module):
    def __init__(self, features: Features, obs_keys: list[str], cfg: dict[str, Any]):
        super().__init__()
        self.image_keys = [k for k in obs_keys if features[k].kind == "image"]
        self.lowdim_keys = [k for k in obs_keys if features[k].kind != "image"]
        self.share = bool(cfg.get("share_encoder", False))
        crop = cfg.get("crop_shape")
        self.crop: tuple[int, int] | None = None
        self.cameras = nn.ModuleDict()
        image_dim = 0
        for key in self.image_keys:
            h, w, c = features[key].shape
            if crop is not None:
                ch, cw = int(crop[0]), int(crop[1])
                if ch > h or cw > w:
                    raise ConfigError(f"policy.encoder.crop_shape {[ch, cw]} is larger than image '{key}' {[h, w]}")
                self.crop = (ch, cw)
            hw = self.crop or (h, w)
            if self.share and self.cameras:
                image_dim += next(iter(self.cameras.values())).out_dim
                continue
            self.cameras[key] = CameraEncoder(cfg.get("backbone", "resnet18"), c, hw,
                                              int(cfg.get("num_keypoints", 32)), cfg.get("pretrained"))
            image_dim += self.cameras[key].out_dim
        self.out_dim = image_dim + sum(int(torch.Size(features[k].shape).numel()) for k in self.lowdim_keys)

    def _camera(self, key: str) -> CameraEncoder:
        return next(iter(self.cameras.values())) if self.share else self.cameras[key]

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) -> cropped (N, C, h, w); the permute leaves it channels_last in memory."""
        x = images.permute(0, 3, 1, 2)
        if self.crop is None:
            return x
        if self.training:
            return random_crop(x, *self.crop)
        return center_crop(x, *self.crop)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        batch, steps = next(iter(obs[k] for k in self.image_keys + self.lowdim_keys)).shape[:2]
        if self.share and self.image_keys:
            # One trunk for all cameras: a single batched pass instead of one per camera.
            stacked = torch.cat([obs[k].flatten(0, 1) for k in self.image_keys])
            feats = self._camera(self.image_keys[0])(self.prepare_images(stacked))
            parts += [f.reshape(batch, steps, -1) for f in feats.chunk(len(self.image_keys))]
        else:
            for key in self.image_keys:
                feats = self.cameras[key](self.prepare_images(obs[key].flatten(0, 1)))
                parts.append(feats.reshape(batch, steps, -1))
        parts += [obs[k].reshape(batch, steps, -1).float() for k in self.lowdim_keys]
        return torch.cat(parts, dim=-1)
