"""Vision encoders, denoisers and EMA (small configs: these run on a shared 2-core CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from robodiff.errors import ConfigError, UserError
from robodiff.features import Feature
from robodiff.models.ema import EMAModel
from robodiff.models.obs_encoder import ObsEncoder, center_crop, random_crop
from robodiff.models.resnet import ResNet18GN
from robodiff.models.spatial_softmax import SpatialSoftmax
from robodiff.models.transformer import TransformerDenoiser
from robodiff.models.unet1d import ConditionalUnet1D

def torchvision_resnet18_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision.models.resnet18().state_dict(), written out by its naming rules."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g)
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    in_ch = 64
    for layer, out_ch in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            first_in = in_ch if block == 0 else out_ch
            sd[f"{p}.conv1.weight"] = torch.randn(out_ch, first_in, 3, 3, generator=g)
            bn(f"{p}.bn1", out_ch)
            sd[f"{p}.conv2.weight"] = torch.randn(out_ch, out_ch, 3, 3, generator=g)
            bn(f"{p}.bn2", out_ch)
            if block == 0 and layer > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(out_ch, in_ch, 1, 1, generator=g)
                bn(f"{p}.downsample.1", out_ch)
        in_ch = out_ch
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_resnet18_shapes_and_groupnorm():
    net = ResNet18GN()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.bn1.num_groups == 4 and net.layer4[0].bn1.num_groups == 32
    assert net(torch.rand(2, 3, 84, 84)).shape == (2, 512, 3, 3)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet18_loads_torchvision_weights_by_name(tmp_path, suffix):
    sd = torchvision_resnet18_state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    net = ResNet18GN()
    loaded = net.load_torchvision(path)
    assert "fc.weight" not in loaded and not any("running" in k for k in loaded)
    own = net.state_dict()
    for name in ("conv1.weight", "bn1.bias", "layer3.0.downsample.0.weight", "layer4.1.bn2.weight"):
        assert torch.equal(own[name], sd[name])
    assert len(loaded) == len(own)


def test_resnet18_rejects_bad_weights(tmp_path):
    sd = torchvision_resnet18_state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="layer1.0.conv1.weight"):
        ResNet18GN().load_torchvision(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="no such file"):
        ResNet18GN().load_torchvision(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        ResNet18GN().load_torchvision(tmp_path / "junk.pth")


def test_spatial_softmax_finds_the_peak():
    head = SpatialSoftmax(1, 5, 9, num_kp=1)
    with torch.no_grad():
        head.keypoints.weight.fill_(1.0)
        head.keypoints.bias.zero_()
    fmap = torch.zeros(1, 1, 5, 9)
    fmap[0, 0, 4, 0] = 100.0  # bottom-left corner
    xy = head(fmap)
    assert xy.shape == (1, 2)
    assert torch.allclose(xy, torch.tensor([[-1.0, 1.0]]), atol=1e-3)


def test_crops():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    c = center_crop(images, 6, 6)
    assert torch.equal(c, images[:, :, 1:7, 1:7])
    torch.manual_seed(0)
    r = random_crop(images, 6, 6)
    assert r.shape == (2, 3, 6, 6)
    # Each crop is a contiguous window of its own image, all channels aligned.
    for n in range(2):
        top = int((r[n, 0, 0, 0] - images[n, 0, 0, 0]) // 8)
        left = int((r[n, 0, 0, 0] - images[n, 0, 0, 0]) % 8)
        assert torch.equal(r[n], images[n, :, top:top + 6, left:left + 6])


def test_obs_encoder_per_camera_and_shared():
    feats = {"a": Feature("image", (32, 32, 3), "uint8"), "b": Feature("image", (32, 32, 3), "uint8"),
             "state": Feature("lowdim", (3,))}
    cfg = {"backbone": "small_cnn", "num_keypoints": 8, "crop_shape": [28, 28], "share_encoder": False}
    enc = ObsEncoder(feats, ["a", "b", "state"], cfg)
    shared = ObsEncoder(feats, ["a", "b", "state"], {**cfg, "share_encoder": True})
    assert enc.out_dim == shared.out_dim == 16 + 16 + 3
    assert sum(p.numel() for p in shared.parameters()) * 2 == sum(p.numel() for p in enc.parameters())
    obs = {"a": torch.rand(4, 2, 32, 32, 3), "b": torch.rand(4, 2, 32, 32, 3), "state": torch.randn(4, 2, 3)}
    for e in (enc, shared):
        assert e(obs).shape == (4, 2, 35)
    enc.eval()
    assert torch.equal(enc(obs), enc(obs))  # centre crop at inference: no randomness
    with pytest.raises(ConfigError, match="crop_shape"):
        ObsEncoder(feats, ["a"], {**cfg, "crop_shape": [40, 40]})
    with pytest.raises(ConfigError, match="backbone"):
        ObsEncoder(feats, ["a"], {**cfg, "backbone": "vit"})


def test_unet_shapes_and_horizon_check():
    unet = ConditionalUnet1D(3, 10, 16, down_dims=[16, 32, 64], kernel_size=5, n_groups=8, diffusion_step_embed_dim=16)
    out = unet(torch.randn(2, 16, 3), torch.tensor([1, 50]), torch.randn(2, 2, 5))
    assert out.shape == (2, 16, 3)
    with pytest.raises(ConfigError, match="policy.horizon=10"):
        ConditionalUnet1D(3, 10, 10, down_dims=[16, 32, 64])
    ConditionalUnet1D(3, 10, 12, down_dims=[16, 32])  # 12 is divisible by 2


def test_transformer_shapes_and_causality():
    torch.manual_seed(0)
    net = TransformerDenoiser(3, 5, 8, 2, n_layer=2, n_head=2, n_emb=16, p_drop_attn=0.0).eval()
    x = torch.randn(1, 8, 3)
    cond = torch.randn(1, 2, 5)
    out = net(x, torch.tensor(3), cond)
    assert out.shape == (1, 8, 3)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # causal: earlier action tokens cannot see later ones
    out2 = net(x2, torch.tensor(3), cond)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-5)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])
    with pytest.raises(ConfigError, match="n_head"):
        TransformerDenoiser(3, 5, 8, 2, n_head=3, n_emb=16)


def test_ema_schedule_and_update():
    model = torch.nn.Linear(2, 1)
    ema = EMAModel(model, power=0.75, max_value=0.9999)
    assert ema.get_decay(0) == 0.0 and ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema.get_decay(10) == pytest.approx(1 - 10 ** -0.75)
    assert ema.get_decay(10**9) == 0.9999
    ema.step(model)  # decay 0: a copy
    assert torch.equal(ema.averaged_model.weight, model.weight)
    for step in range(1, 5):
        before = ema.averaged_model.weight.clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.step(model)
        d = ema.get_decay(step)
        assert ema.decay == pytest.approx(d)
        assert torch.allclose(ema.averaged_model.weight, d * before + (1 - d) * model.weight)
    state = ema.state_dict()
    other = EMAModel(torch.nn.Linear(2, 1))
    other.load_state_dict(state)
    assert other.optimization_step == 5
    assert torch.equal(other.averaged_model.weight, ema.averaged_model.weight)
