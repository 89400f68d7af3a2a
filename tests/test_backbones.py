"""Backbone registry: feature-map shapes, gradients, channels_last / bf16 autocast, CIFAR ResNet parity."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twohead import config
from twohead.backbones import (
    BACKBONES,
    CifarResNet,
    OptionAShortcut,
    create_backbone,
    list_backbones,
    register_backbone,
)

# (name, image_size, D, H=W of the final map). Sizes > 64 px check that the ImageNet stems are kept there.
SHAPES = [
    ("resnet32", 32, 64, 8),
    ("resnet110", 32, 64, 8),
    ("resnet18", 32, 512, 4),
    ("resnet18", 64, 512, 8),
    ("resnet18", 96, 512, 3),
    ("resnext50_32x4d", 32, 2048, 4),
    ("resnext50_32x4d", 64, 2048, 8),
    ("vgg16", 32, 512, 2),
    ("vgg16", 96, 512, 3),
    ("mobilenet_v2", 32, 1280, 4),
    ("mobilenet_v2", 96, 1280, 3),
]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cifar_resnet_trunk_params(n: int) -> int:
    """Parameter count of ResNet-(6n+2) without the classifier, from the architecture (He et al. Sec. 4.2):
    bias-free 3x3 convs (9*cin*cout), BN = weight+bias (2*c), option-A shortcuts parameter-free."""
    conv = lambda cin, cout: 9 * cin * cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 16) + bn(16)
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, planes) + bn(planes) + conv(planes, planes) + bn(planes)
            cin = planes
    return total


def test_config_accepts_exactly_the_registered_backbones() -> None:
    # model.backbone is validated against the registry itself: every valid config is buildable.
    assert list_backbones() == sorted(BACKBONES)
    for name in list_backbones():
        assert config.apply_overrides(config.TrainConfig(), {"model.backbone": name}).model.backbone == name
    with pytest.raises(config.ConfigError, match=r"model.backbone='resnet33': unknown backbone; registered: .*resnet32"):
        config.apply_overrides(config.TrainConfig(), {"model.backbone": "resnet33"})


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="'resnet33'") as ei:
        create_backbone("resnet33")
    for name in list_backbones():
        assert name in str(ei.value)


@pytest.mark.parametrize("bad", [0, 8, 32.0, True])
def test_bad_image_size(bad: object) -> None:
    with pytest.raises(ValueError, match="image_size"):
        create_backbone("resnet32", image_size=bad)  # type: ignore[arg-type]


def test_pretrained_refused_and_duplicate_registration() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        create_backbone("resnet18", image_size=64, weights="IMAGENET1K_V1")
    assert create_backbone("resnet18", image_size=64, weights=None).out_channels == 512
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet32")(lambda image_size: nn.Identity())
    assert BACKBONES["resnet32"].__name__ == "resnet32"


@pytest.mark.parametrize(("name", "size", "depth", "hw"), SHAPES, ids=[f"{n}-{s}" for n, s, *_ in SHAPES])
def test_feature_map_shape_and_backward(name: str, size: int, depth: int, hw: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, image_size=size)
    assert model.out_channels == depth
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, depth, hw, hw)
    out.square().mean().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("resnext50_32x4d", 32), ("resnext50_32x4d", 224)])
def test_resnet_stem_adaptation(name: str, size: int) -> None:
    model = create_backbone(name, image_size=size)
    conv = first_conv(model)
    if size <= 64:  # 3x3/1 conv, no max-pool (total stride 8)
        assert (conv.kernel_size, conv.stride) == ((3, 3), (1, 1))
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    else:  # untouched ImageNet stem
        assert (conv.kernel_size, conv.stride) == ((7, 7), (2, 2))
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 1


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_channels_last_and_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        cl = model(xcl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(xcl)
    scale = ref.abs().max()
    assert torch.allclose(cl, ref, atol=1e-4 * scale, rtol=1e-4)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert bf.dtype == torch.bfloat16 and torch.isfinite(bf).all()
    cos = F.cosine_similarity(bf.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, f"{name}: bf16 autocast diverges from fp32 (cos={cos:.4f})"
    # Training step under autocast from channels_last input: gradients reach the stem in fp32.
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(xcl).float().square().mean()
    loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_resnet32_matches_ldam_parameter_count() -> None:
    model = create_backbone("resnet32")
    # LDAM-DRW's resnet32 has 464,154 parameters including its 64->10 linear (64*10 + 10 = 650).
    assert cifar_resnet_trunk_params(5) == 464_154 - 650
    assert n_params(model) == 464_154 - 650
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 31  # 31 convs + the linear = 32 layers


def test_resnet110_parameter_count() -> None:
    model = create_backbone("resnet110")
    assert n_params(model) == cifar_resnet_trunk_params(18)
    assert round((n_params(model) + 650) / 1e6, 1) == 1.7  # He et al. Table 6: 1.7M
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 109


def test_option_a_shortcut_is_parameter_free_zero_padding() -> None:
    model = create_backbone("resnet32")
    assert isinstance(model, CifarResNet)
    shortcuts = [m for m in model.modules() if isinstance(m, OptionAShortcut)]
    assert len(shortcuts) == 2  # entry of stage 2 (16->32) and stage 3 (32->64)
    assert all(n_params(s) == 0 and not list(s.buffers()) for s in shortcuts)
    for stage in (model.layer2, model.layer3):
        block = stage[0]
        parts = (block.conv1, block.bn1, block.conv2, block.bn2)
        assert n_params(block) == sum(n_params(m) for m in parts)

    x = torch.randn(2, 16, 8, 8)
    y = shortcuts[0](x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])  # identity on subsampled pixels, centred
    assert not y[:, :8].any() and not y[:, 24:].any()  # new channels are zeros


def test_cifar_resnet_init_and_pickle() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet32")
    # kaiming_normal_ (fan_in, gain sqrt(2)): std sqrt(2 / (9 * 64)) for the 64->64 convs, not PyTorch's default
    # kaiming_uniform(a=sqrt(5)) whose std would be 1 / sqrt(3 * fan_in), about 2.4x smaller.
    w = torch.cat([b.conv2.weight.flatten() for b in model.layer3])
    expected = (2 / (9 * 64)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.05
    assert torch.equal(model.bn1.weight, torch.ones(16)) and not model.bn1.bias.any()
    # Ray ships models between processes: the option-A shortcut must not be a lambda.
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_mobilenet_v2_small_input_strides() -> None:
    def strided(model: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in model.modules())

    assert strided(create_backbone("mobilenet_v2", image_size=224)) == 5  # stem + stages 2, 3, 4, 6
    small = create_backbone("mobilenet_v2", image_size=32)
    assert strided(small) == 3  # stem and stage 2 set to stride 1
    assert first_conv(small).stride == (1, 1)


def test_vgg16_is_torchvision_vgg16_bn_features() -> None:
    # vgg16 builds torchvision's features without the 120M-param classifier; same layers and init otherwise.
    from torchvision.models import vgg16_bn

    torch.manual_seed(0)
    ref = vgg16_bn(weights=None).features
    ours = create_backbone("vgg16", image_size=96)  # > 64 px: all 5 max-pools kept
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert [type(m) for m in ours] == [type(m) for m in ref]
    convs = [k for k, v in ref_sd.items() if v.dim() == 4]
    ref_std = torch.stack([ref_sd[k].std() for k in convs])
    ours_std = torch.stack([ours_sd[k].std() for k in convs])
    assert torch.allclose(ours_std, ref_std, rtol=0.1)  # kaiming_normal_(fan_out), not PyTorch's default
    small = create_backbone("vgg16", image_size=32)
    assert [type(m) for m in small] == [type(m) for m in ref][:-1]  # only the last max-pool dropped
