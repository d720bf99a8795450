"""Three ImageNet classifiers written from their papers' layer tables, with seeded weights.

- ResNet-18: He, Zhang, Ren, Sun 2015, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385),
  Table 1 ("18-layer" column): basic blocks of two 3×3 convolutions, a 1×1 projection shortcut where
  the shape changes (option B). 11.7 M parameters.
- MobileNetV3-Large: Howard et al. 2019, "Searching for MobileNetV3" (arXiv:1905.02244), Table 1:
  inverted-residual bottlenecks with squeeze-and-excitation (squeeze to a quarter of the expansion,
  hard-sigmoid gate) and hard-swish in the later stages; 1×1 head convolutions without BatchNorm. 5.5 M.
- EfficientNet-B0: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks" (arXiv:1905.11946), Table 1: MBConv blocks (Sandler et al. 2018) with SiLU and
  squeeze-and-excitation to a quarter of the block's input channels. 5.3 M.

Weights are seeded (He-normal convolutions, normal classifier); :func:`build` then sets every
BatchNorm's running statistics from seeded random images normalised like ImageNet
(:func:`imagenet_like`), so activations keep a sane scale through the depth as trained networks do.
There are no trained weights here: the networks serve to time and compare numerics, not to classify.

Example:
    >>> m = build("resnet18", stats_batches=0)
    >>> sum(p.numel() for p in m.parameters())
    11689512
    >>> m(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ARCHS", "PUBLISHED_PARAMS", "build", "imagenet_like"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Parameter counts the papers give (1000 classes).
PUBLISHED_PARAMS = {"resnet18": 11.7e6, "mobilenetv3-large": 5.5e6, "efficientnet-b0": 5.3e6}


def _divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, never below 90% of ``v`` (the MobileNet channel rule)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ---- ResNet-18 (He et al. 2015, Table 1) ----
# (output channels, first block's stride) per stage; two basic blocks each.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and the identity (or 1×1 projection) shortcut, ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride, act=nn.ReLU)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet18(num_classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in RESNET18_STAGES:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


# ---- Squeeze-and-excitation and the inverted residual both mobile networks use ----
class SqueezeExcite(nn.Module):
    """Global average pool, 1×1 reduce + activation, 1×1 expand + gate, channel-wise scale (Hu et al. 2018)."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1×1 expansion (skipped when ``expanded == cin``), k×k depthwise, optional SE, 1×1 linear projection;
    the input is added back when stride is 1 and the channels match (Sandler et al. 2018)."""

    def __init__(
        self, cin: int, expanded: int, cout: int, k: int, stride: int, act: type[nn.Module], se: nn.Module | None
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
        if se is not None:
            layers.append(se)
        layers.append(_conv_bn(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# ---- MobileNetV3-Large (Howard et al. 2019, Table 1) ----
# kernel, expansion size, output channels, squeeze-and-excite, nonlinearity ("RE" ReLU / "HS" h-swish), stride
MOBILENETV3_LARGE = (
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)


def mobilenetv3_large(num_classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
    cin = 16
    for k, exp, cout, se, nl, stride in MOBILENETV3_LARGE:
        act = nn.ReLU if nl == "RE" else nn.Hardswish
        squeeze = SqueezeExcite(exp, _divisible(exp / 4), nn.ReLU, nn.Hardsigmoid) if se else None
        layers.append(InvertedResidual(cin, exp, cout, k, stride, act, squeeze))
        cin = cout
    layers += [
        _conv_bn(cin, 960, 1, act=nn.Hardswish),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(960, 1280),  # the table's "conv2d 1×1, NBN" on a 1×1 map
        nn.Hardswish(),
        nn.Linear(1280, num_classes),
    ]
    return nn.Sequential(*layers)


# ---- EfficientNet-B0 (Tan & Le 2019, Table 1) ----
# expansion ratio (MBConv1 / MBConv6), kernel, output channels, layers, first layer's stride
EFFICIENTNET_B0 = (
    (1, 3, 16, 1, 1),
    (6, 3, 24, 2, 2),
    (6, 5, 40, 2, 2),
    (6, 3, 80, 3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
)


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2, act=nn.SiLU)]
    cin = 32
    for ratio, k, cout, repeats, stride in EFFICIENTNET_B0:
        for i in range(repeats):
            se = SqueezeExcite(cin * ratio, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
            layers.append(InvertedResidual(cin, cin * ratio, cout, k, stride if i == 0 else 1, nn.SiLU, se))
            cin = cout
    layers += [_conv_bn(cin, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


ARCHS = {"resnet18": resnet18, "mobilenetv3-large": mobilenetv3_large, "efficientnet-b0": efficientnet_b0}


def imagenet_like(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random RGB images in [0, 1], normalised with the ImageNet mean and std: ``[n, 3, size, size]``.

    Example:
        >>> imagenet_like(2, 8).shape
        torch.Size([2, 3, 8, 8])
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build(arch: str, seed: int = 0, stats_batches: int = 2, size: int = 224, batch: int = 8) -> nn.Module:
    """Network ``arch`` (one of :data:`ARCHS`) with seeded weights, in eval mode.

    He-normal convolution weights (He et al. 2015, arXiv:1502.01852), normal(0, 0.01) classifier weights,
    then BatchNorm running statistics averaged over ``stats_batches`` batches of :func:`imagenet_like`
    images (cumulative average; 0 keeps mean 0 / variance 1).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    model = ARCHS[arch]()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    if stats_batches:
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over the batches below
        model.train()
        with torch.no_grad():
            for i in range(stats_batches):
                model(imagenet_like(batch, size, seed=seed + 1000 + i))
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()
