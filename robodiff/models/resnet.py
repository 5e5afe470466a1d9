"""ResNet-18 with GroupNorm, named like torchvision's resnet18 so its pretrained weights load.

BatchNorm statistics drift between training batches and single-sample inference and break under
EMA; GroupNorm (groups = channels // 16) has neither problem. The affine parameters keep
torchvision's names (`bn1.weight`, `layer1.0.bn2.bias`, `layer2.0.downsample.1.weight`), so a
torchvision state dict loads by name; its running statistics and the `fc` head are skipped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robodiff.errors import UserError

SKIPPED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=max(1, channels // 16), num_channels=channels)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = group_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), group_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18GN(nn.Module):
    """Feature map trunk (no pooling, no fc): (B, 3, H, W) -> (B, 512, H/32, W/32)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = group_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, chans = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(chans, width, stride), BasicBlock(width, width, 1))
            setattr(self, f"layer{i}", layer)
            chans = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_torchvision(self, path: str | Path) -> list[str]:
        """Load a torchvision resnet18 state dict (.pth or .safetensors); returns the keys loaded."""
        state = read_state_dict(path)
        own = self.state_dict()
        loaded: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            if name.startswith("fc.") or name.endswith(SKIPPED_SUFFIXES):
                continue
            if name not in own:
                raise UserError(f"pretrained={path}: unexpected parameter '{name}' (not a resnet18 state dict?)")
            if own[name].shape != tensor.shape:
                raise UserError(f"pretrained={path}: '{name}' has shape {list(tensor.shape)}, "
                                f"expected {list(own[name].shape)}")
            loaded[name] = tensor
        missing = sorted(set(own) - set(loaded))
        if missing:
            raise UserError(f"pretrained={path}: missing parameter '{missing[0]}' ({len(missing)} missing)")
        self.load_state_dict(loaded)
        return sorted(loaded)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        # weights_only: a weights file must never run code on load.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a corrupt file
        raise UserError(f"pretrained={path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"pretrained={path}: not a state dict")
    return state
