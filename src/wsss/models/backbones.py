"""Backbones: a small registry and one factory.

Every backbone is a ResNet whose parameter names follow torchvision's layout (``conv1``,
``bn1``, ``layer1`` ... ``layer4``, blocks with ``conv1``/``bn1``/.../``downsample.0``), so a
torchvision-format state dict loads into ``resnet50`` and ``resnet101`` unchanged. Strides sit on
the 3x3 convolution of the first block of a stage (torchvision's "ResNet v1.5", as IRN).

The output stride is an argument, not a hand edit:

* 32: the classic layout.
* 16: layer4 keeps stride 1. IRN's CAM network does this **without** dilation (its
  ``strides=(2, 2, 2, 1)``); pass ``dilated=True`` for the DeepLab-v3 variant (layer4 dilation 2).
* 8: layer3 and layer4 keep stride 1, dilated by 2 and 4 (DeepLab) unless ``dilated=False``.

Example:
    >>> backbone = create_backbone("resnet50", output_stride=16, weights="resnet50.pth")
    >>> features = backbone(images)            # (B, 2048, H/16, W/16)
    >>> stem_and_layer1, layer2, layer3, layer4 = backbone.stages
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from wsss.errors import ConfigError

__all__ = [
    "BackboneSpec",
    "ResNet",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, with a residual (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def stage_strides(output_stride: int, dilated: bool | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strides and dilations of layer1..layer4 for an output stride (the stem always strides 4).

    Args:
        output_stride: 8, 16 or 32.
        dilated: dilate the stages whose stride was removed. ``None`` means the conventional
            choice: no dilation at 16 (IRN's CAM network), dilation at 8 (DeepLab).

    Returns:
        (strides, dilations) of the four stages.
    """
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if dilated is None:
        dilated = output_stride == 8
    if output_stride == 32:
        return (1, 2, 2, 2), (1, 1, 1, 1)
    if output_stride == 16:
        return (1, 2, 2, 1), ((1, 1, 1, 2) if dilated else (1, 1, 1, 1))
    return (1, 2, 1, 1), ((1, 1, 2, 4) if dilated else (1, 1, 1, 1))


class ResNet(nn.Module):
    """A ResNet trunk without the classification head, in torchvision's parameter layout.

    Attributes:
        out_channels: channels of the last stage's features.
        stage_channels: channels after each of the four stages.
        output_stride: input size / feature size.
        name: the registry name it was built under (``""`` when built directly).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        output_stride: int = 32,
        dilated: bool | None = None,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError("a ResNet has four stages: give four depths and four widths")
        stem_width = widths[0] if stem_width is None else stem_width
        strides, dilations = stage_strides(output_stride, dilated)
        self.name = ""
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem_width
        stage_channels = []
        for index, (depth, width, stride, dilation) in enumerate(zip(depths, widths, strides, dilations)):
            layer, channels = _make_stage(block, channels, width, depth, stride, dilation)
            self.add_module(f"layer{index + 1}", layer)
            stage_channels.append(channels)
        self.stage_channels = tuple(stage_channels)
        self.out_channels = stage_channels[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convolutions; the last BN of each residual branch starts at zero so a fresh
        # network is close to the identity per block, which makes training from scratch stable.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    @property
    def stages(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """The four stages (stem + layer1, layer2, layer3, layer4), sharing this module's weights."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool, self.layer1)
        return stem, self.layer2, self.layer3, self.layer4

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features after each of the four stages."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the last stage, (B, out_channels, ceil(H / os), ceil(W / os))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _make_stage(block: type[BasicBlock] | type[Bottleneck], in_channels: int, width: int,
                depth: int, stride: int, dilation: int) -> tuple[nn.Sequential, int]:
    out_channels = width * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    # The first block of a stage keeps dilation 1 (as torchvision and IRN); later blocks dilate.
    first_dilation = 1 if dilation == 1 else max(1, dilation // 2)
    blocks = [block(in_channels, width, stride=stride, dilation=first_dilation, downsample=downsample)]
    for _ in range(1, depth):
        blocks.append(block(out_channels, width, dilation=dilation))
    return nn.Sequential(*blocks), out_channels


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a registered backbone.

    Attributes:
        name: registry name.
        builder: ``builder(output_stride=..., dilated=...) -> ResNet``.
        default_output_stride: used when the caller passes ``output_stride=None``.
        description: one line for ``list_backbones``.
    """

    name: str
    builder: Callable[..., ResNet]
    default_output_stride: int
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, default_output_stride: int = 16, description: str = ""
                      ) -> Callable[[Callable[..., ResNet]], Callable[..., ResNet]]:
    """Decorator adding a builder to the registry under ``name``."""

    def decorate(builder: Callable[..., ResNet]) -> Callable[..., ResNet]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(name, builder, default_output_stride, description)
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; a :class:`ConfigError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def create_backbone(
    name: str,
    output_stride: int | None = None,
    weights: str | os.PathLike | None = None,
    *,
    dilated: bool | None = None,
) -> ResNet:
    """Build a registered backbone, optionally loading weights from a local file.

    Args:
        name: a name from :func:`list_backbones` (``resnet50``, ``resnet101``, ``resnet18_w16``...).
        output_stride: 8, 16 or 32; ``None`` for the backbone's default (16 for the ImageNet
            layouts, as IRN; 8 for the small from-scratch ``*_w16`` ones).
        weights: a local ``.pth``/``.pt``/``.safetensors`` file in torchvision's format, or
            ``None`` for random initialisation. Nothing is ever downloaded.
        dilated: see :func:`stage_strides`.

    Returns:
        The backbone, with ``name``, ``output_stride``, ``out_channels`` and ``stages``.
    """
    spec = backbone_spec(name)
    stride = spec.default_output_stride if output_stride is None else int(output_stride)
    backbone = spec.builder(output_stride=stride, dilated=dilated)
    backbone.name = name
    if weights is not None:
        from wsss.models.weights import load_backbone_weights

        load_backbone_weights(backbone, weights)
    return backbone


@register_backbone("resnet18", 16, "ResNet-18, torchvision layout (64-512 channels)")
def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_backbone("resnet34", 16, "ResNet-34, torchvision layout (64-512 channels)")
def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_backbone("resnet50", 16, "ResNet-50, torchvision layout; IRN's CAM backbone")
def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_backbone("resnet101", 16, "ResNet-101, torchvision layout; DeepLab-v2's backbone")
def resnet101(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_backbone("resnet18_w16", 8, "ResNet-18 at quarter width (16-128 channels), from scratch")
def resnet18_w16(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), widths=(16, 32, 64, 128), **kwargs)


@register_backbone("resnet18_w32", 8, "ResNet-18 at half width (32-256 channels), from scratch")
def resnet18_w32(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), widths=(32, 64, 128, 256), **kwargs)
