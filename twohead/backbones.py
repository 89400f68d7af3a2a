"""Backbone registry (timm-style): ``create_backbone(name, image_size=...)`` -> feature extractor.

Every backbone maps images [N, 3, S, S] to the *final feature map* F in R^{D x H x W} of the paper
(Sec. 2, Eq. 1): no global pooling and no classifier, because both heads of ``twohead.heads`` start from the
un-pooled map (the FBH convolves channel groups before its GAP). Each module exposes ``out_channels`` (= D).

Backbones (paper Sec. 3.1 / Table 5):

================== ====== =============================== ==========================================
name               D      map at 32 px (at 224 px)        used for
================== ====== =============================== ==========================================
resnet8            64     8x8                             CPU smoke runs (same family, n=1)
resnet20           64     8x8                             LDAM-DRW's smaller CIFAR ResNet
resnet32           64     8x8                             CIFAR-10/100-LT (as LDAM-DRW)
resnet110          64     8x8                             Table 5
resnet18           512    4x4 (7x7); 8x8 at 64 px         Tiny-ImageNet-LT
resnext50_32x4d    2048   4x4 (7x7)                       ImageNet-LT
vgg16              512    2x2 (7x7)                       Table 5
mobilenet_v2       1280   4x4 (7x7)                       Table 5
================== ====== =============================== ==========================================

The torchvision trunks get the usual small-input adaptations when ``image_size <= 64`` (see each builder).
Weights are always randomly initialised: nothing is ever downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BACKBONES",
    "SMALL_INPUT_MAX_SIZE",
    "MIN_IMAGE_SIZE",
    "FeatureTrunk",
    "CifarResNet",
    "CifarBasicBlock",
    "OptionAShortcut",
    "register_backbone",
    "list_backbones",
    "create_backbone",
]

BackboneBuilder = Callable[..., nn.Module]

#: name -> builder(image_size=..., **kw). Filled by :func:`register_backbone`.
BACKBONES: dict[str, BackboneBuilder] = {}

#: Inputs up to this size (CIFAR 32 px, Tiny-ImageNet 64 px) get the small-input stems.
SMALL_INPUT_MAX_SIZE = 64
#: Smallest input every registered backbone still maps to a non-empty (>= 1x1) feature map
#: (VGG-16 keeps 4 of its 5 max-pools at <= 64 px, i.e. a total stride of 16).
MIN_IMAGE_SIZE = 16


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator adding ``builder(image_size: int, **kw) -> nn.Module`` to :data:`BACKBONES` as ``name``."""

    def deco(builder: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered (by {BACKBONES[name].__qualname__})")
        BACKBONES[name] = builder
        return builder

    return deco


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(BACKBONES)


def create_backbone(name: str, *, image_size: int = 32, **kw: Any) -> nn.Module:
    """Build backbone ``name`` for square inputs of ``image_size`` px; extra ``kw`` go to its builder.

    The returned module maps [N, 3, S, S] to the final feature map [N, D, H, W] and has ``out_channels == D``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(list_backbones())}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size!r} for backbone {name!r} must be an int >= {MIN_IMAGE_SIZE} "
            "(smaller inputs leave no spatial extent after the trunk's downsampling)"
        )
    for key in ("weights", "pretrained"):
        if kw.get(key):
            # Offline by design (no internet on the training nodes); say so rather than hang on a download.
            raise ValueError(f"backbone {name!r}: {key}={kw[key]!r} is not supported; twohead never loads pretrained weights")
        kw.pop(key, None)
    model = BACKBONES[name](image_size=image_size, **kw)
    assert isinstance(getattr(model, "out_channels", None), int), f"backbone {name!r} lacks an int out_channels"
    return model


class FeatureTrunk(nn.Sequential):
    """An ``nn.Sequential`` of named stages whose output is the final feature map; adds ``out_channels``."""

    def __init__(self, stages: OrderedDict[str, nn.Module], out_channels: int) -> None:
        super().__init__(stages)
        self.out_channels = out_channels


# --------------------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, Sec. 4.2), layer for layer as LDAM-DRW ``models/resnet_cifar.py``
# (Cao et al. 2019, after Y. Idelbayev's pytorch_resnet_cifar10), minus the final pooling and linear layer.
# Module names match LDAM's so its state dicts load with ``strict=False`` (only ``linear.*`` is extra).
# --------------------------------------------------------------------------------------------------------


class OptionAShortcut(nn.Module):
    """He et al.'s option-A identity shortcut: subsample space by ``stride`` and zero-pad the new channels.

    Parameter-free (that is the point of option A: ResNet-32 stays at 0.46M parameters). LDAM-DRW writes this
    as ``LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))``; a real
    module is used here so the model pickles (Ray ships models and checkpoints between processes).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 2) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"option-A shortcut can only add channels, got {in_planes} -> {planes}")
        self.stride = stride
        # Split the extra channels evenly on both sides, as LDAM's (planes//4, planes//4) does for planes=2*in.
        self.pad_lo = (planes - in_planes) // 2
        self.pad_hi = planes - in_planes - self.pad_lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad_lo, self.pad_hi))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_lo}, {self.pad_hi})"


class CifarBasicBlock(nn.Module):
    """3x3-3x3 residual block with BN after each conv and ReLU after the sum (He et al. 2016, Fig. 2)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # LDAM's ``out += shortcut(x)``, written out of place (same values and gradients).
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32 px inputs: 3x3 16-ch stem, 3 stages of n blocks at 16/32/64 ch, strides 1/2/2.

    Returns the layer-3 map [N, 64, S/4, S/4] (8x8 at 32 px); LDAM's avg-pool + linear are the heads' job.
    """

    def __init__(self, num_blocks: tuple[int, int, int]) -> None:
        super().__init__()
        self.out_channels = 64
        self._in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        # LDAM's _weights_init: kaiming_normal_ with default (fan_in, gain sqrt(2)) for conv/linear; BN default.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(CifarBasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))


@register_backbone("resnet8")
def resnet8(image_size: int) -> CifarResNet:
    """ResNet-8 (n=1), 78k parameters: the same family at its smallest, for CPU smoke runs and tests."""
    return CifarResNet((1, 1, 1))


@register_backbone("resnet20")
def resnet20(image_size: int) -> CifarResNet:
    """ResNet-20 (n=3), 0.27M parameters (LDAM-DRW's ``resnet20``)."""
    return CifarResNet((3, 3, 3))


@register_backbone("resnet32")
def resnet32(image_size: int) -> CifarResNet:
    """ResNet-32 (n=5), 0.46M parameters: the CIFAR-LT backbone of LDAM-DRW and of the paper (Sec. 3.1).

    Fully convolutional with total stride 4, so ``image_size`` needs no adaptation (8x8 at 32, 16x16 at 64).
    """
    return CifarResNet((5, 5, 5))


@register_backbone("resnet110")
def resnet110(image_size: int) -> CifarResNet:
    """ResNet-110 (n=18), 1.7M parameters (paper Table 5)."""
    return CifarResNet((18, 18, 18))


# --------------------------------------------------------------------------------------------------------
# torchvision trunks (torchvision.models, weights=None), cut before global pooling.
# --------------------------------------------------------------------------------------------------------


def _torchvision_resnet_trunk(net: nn.Module, image_size: int) -> FeatureTrunk:
    """torchvision ResNet/ResNeXt up to ``layer4``.

    For inputs <= 64 px the ImageNet stem (7x7/2 conv + 3x3/2 max-pool, total stride 4) would leave a 1x1
    map at 32 px, so -- as the standard CIFAR/Tiny-ImageNet ResNets do (e.g. kuangliu/pytorch-cifar
    ``models/resnet.py``) -- conv1 becomes a 3x3/1 conv and the max-pool is dropped (total stride 8).
    """
    if image_size <= SMALL_INPUT_MAX_SIZE:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        # Same init torchvision gives every other conv of the trunk.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    out_channels = net.fc.in_features  # 512 (BasicBlock) / 2048 (Bottleneck): what the fc would have seen
    return FeatureTrunk(OrderedDict((n, getattr(net, n)) for n in names), out_channels)


@register_backbone("resnet18")
def resnet18(image_size: int, **kw: Any) -> FeatureTrunk:
    """torchvision ResNet-18 trunk, D=512 (paper Sec. 3.1: Tiny-ImageNet-LT); 8x8 map at 64 px."""
    from torchvision.models import resnet18 as tv_resnet18

    return _torchvision_resnet_trunk(tv_resnet18(weights=None, **kw), image_size)


@register_backbone("resnext50_32x4d")
def resnext50_32x4d(image_size: int, **kw: Any) -> FeatureTrunk:
    """torchvision ResNeXt-50 (32x4d) trunk, D=2048 (paper Sec. 3.1: ImageNet-LT); 7x7 map at 224 px."""
    from torchvision.models import resnext50_32x4d as tv_resnext50_32x4d

    return _torchvision_resnet_trunk(tv_resnext50_32x4d(weights=None, **kw), image_size)


@register_backbone("vgg16")
def vgg16(image_size: int) -> FeatureTrunk:
    """torchvision VGG-16-BN ``features``, D=512 (paper Table 5).

    Built with torchvision's own ``make_layers(cfgs["D"], batch_norm=True)`` -- exactly what ``vgg16_bn()``
    uses for ``.features`` -- because ``vgg16_bn()`` would also allocate and initialise the 120M-parameter
    classifier we throw away (~0.5 GB and ~1 s per worker). Its 5 max-pools (stride 32) would leave 1x1 at
    32 px; for inputs <= 64 px the last one is dropped so the map is 2x2 at 32 px (the CIFAR VGGs of e.g.
    kuangliu/pytorch-cifar instead pool that 1x1 map away).
    """
    from torchvision.models import vgg as tv_vgg

    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=True)
    for m in features.modules():
        # The conv init torchvision's VGG.__init__ applies (BN already defaults to weight 1, bias 0).
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    layers = list(features.named_children())
    if image_size <= SMALL_INPUT_MAX_SIZE:
        assert isinstance(layers[-1][1], nn.MaxPool2d), "torchvision VGG-16 features no longer end in a max-pool"
        layers = layers[:-1]
    # Keep torchvision's indices as names so state-dict keys match ``vgg16_bn().features``.
    return FeatureTrunk(OrderedDict(layers), out_channels=512)


@register_backbone("mobilenet_v2")
def mobilenet_v2(image_size: int, **kw: Any) -> FeatureTrunk:
    """torchvision MobileNet-V2 ``features`` (ending in the 1x1 conv to 1280 ch), D=1280 (paper Table 5).

    For inputs <= 64 px the stem conv and the first block of the 2nd inverted-residual stage (t=6, c=24)
    get stride 1 instead of 2 -- the CIFAR adaptation of kuangliu/pytorch-cifar ``models/mobilenetv2.py``
    -- so the total stride is 8 and 32 px gives a 4x4 map. Strides are changed in place on torchvision's
    modules (only the depthwise conv carries the stride; that block has no residual either way, 16 != 24 ch).
    """
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
    from torchvision.models.mobilenetv2 import InvertedResidual

    net = tv_mobilenet_v2(weights=None, **kw)
    features = net.features
    if image_size <= SMALL_INPUT_MAX_SIZE:
        stem_conv = features[0][0]
        assert isinstance(stem_conv, nn.Conv2d) and stem_conv.stride == (2, 2)
        stem_conv.stride = (1, 1)
        # The first strided inverted residual opens stage 2 (stage 1, t=1 c=16, has stride 1).
        block = next(m for m in features if isinstance(m, InvertedResidual) and m.stride == 2)
        assert block.out_channels == 24, "torchvision mobilenet_v2 layout changed"
        dw = next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2))
        dw.stride = (1, 1)
        block.stride = 1
    return FeatureTrunk(OrderedDict(features.named_children()), out_channels=net.last_channel)
