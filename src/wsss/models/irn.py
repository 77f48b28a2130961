"""The inter-pixel relation network (IRN; Ahn, Cho & Kwak, CVPR 2019), any registered ResNet.

IRN (reference ``net/resnet50_irn.py`` of jiwoon-ahn/irn) puts two small branches on a **frozen**
backbone; both read the features of five levels, detached from the backbone:

=========  ==========================  =======  ===============  ====================
level      ResNet part                 stride   ResNet-50 chans  ``resnet18_w16``
=========  ==========================  =======  ===============  ====================
1          conv1 + bn + relu + maxpool 4        64               16
2          layer1                      4        256              16
3          layer2                      8        512              32
4          layer3                      16 (8)   1024             64
5          layer4                      16 (8)   2048             128
=========  ==========================  =======  ===============  ====================

(strides in brackets: a backbone at output stride 8.)

* **Boundary (edge) branch.** Each level: 1x1 conv to 32 channels (no bias), GroupNorm(4),
  bilinear upsampling to stride 4, ReLU; the five are concatenated (160 channels) and a 1x1 conv
  with bias gives one logit per stride-4 pixel. ``sigmoid`` of it is the class-boundary map B.
* **Displacement branch.** Levels 1-5: 1x1 conv + GroupNorm + ReLU to 64, 128, 256, 256, 256
  channels; levels 4 and 5 are upsampled to level 3's stride (8) and the three are fused by a
  1x1 conv (768 -> 256) and upsampled to stride 4; that is concatenated with levels 1 and 2
  (64 + 128 + 256 = 448) and mapped by 1x1 conv + GN + ReLU + 1x1 conv to two channels: the
  displacement (dy, dx) of each pixel to its instance centroid, in stride-4 pixels. In eval mode
  the mean displacement measured after training (``mean_shift``) is subtracted, as IRN.

Upsampling follows IRN exactly: bilinear by the integer stride ratio (``align_corners=False``),
then cropped to the stride-4 size, which is ``ceil(H / 4) x ceil(W / 4)`` for any input size.

For a backbone narrower than ResNet-50 the head scales with it: every head width is IRN's times
``head_width`` (default: stem width / 64, clipped to [0.25, 1], so 1 for ResNet-18/50/101 and 0.25
for the quarter-width ``resnet18_w16``), rounded to a multiple of its GroupNorm's groups.

Example:
    >>> net = IRNet("resnet50", weights="resnet50.pth")       # backbone frozen, heads trainable
    >>> edge_logits, displacement = net(images)                # (B, 1, h, w), (B, 2, h, w)
    >>> edge, disp = edge_and_displacement(net.eval(), image, torch.device("cpu"))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_image, scaled_size, to_chw_tensor
from wsss.errors import ConfigError, DataError
from wsss.io import atomic_write
from wsss.models.backbones import ResNet, create_backbone, stage_strides
from wsss.models.weights import load_torch_file
from wsss.stores.maps import strided_size

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "IRNet",
    "edge_and_displacement",
    "load_irn",
]

CHECKPOINT_FORMAT = "wsss.irn"
CHECKPOINT_VERSION = 1

# IRN resnet50_irn.py, per level: (edge channels, edge GN groups), (displacement channels, groups).
EDGE_WIDTH, EDGE_GROUPS = 32, 4
DISPLACEMENT_WIDTHS = (64, 128, 256, 256, 256)
DISPLACEMENT_GROUPS = (8, 16, 16, 16, 16)
FUSE_WIDTH, FUSE_GROUPS = 256, 16  # fc_dp6 and fc_dp7


def _width(base: int, scale: float, groups: int) -> int:
    """``base * scale`` rounded to a positive multiple of ``groups``."""
    return max(groups, int(round(base * scale / groups)) * groups)


def _conv_gn_relu(in_channels: int, out_channels: int, groups: int, upsample: int = 1) -> nn.Sequential:
    """1x1 conv (no bias) -> GroupNorm -> [bilinear upsample] -> ReLU, as IRN's head blocks."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.GroupNorm(groups, out_channels),
    ]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    """Subtracts a stored mean displacement in eval mode (IRN ``Net.MeanShift``)."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class IRNet(nn.Module):
    """Frozen ResNet + class-boundary branch + displacement branch.

    Args:
        backbone: a registered backbone name, or a built :class:`~wsss.models.backbones.ResNet`.
        output_stride: backbone output stride (IRN: 16, its ``strides=[2, 2, 2, 1]``); ``None`` for
            the backbone's default. Ignored for a built backbone.
        dilated: see :func:`wsss.models.backbones.stage_strides`. Ignored for a built backbone.
        weights: local backbone weights (torchvision format), e.g. ImageNet as IRN.
        head_width: multiplier of IRN's head widths; ``None`` for stem width / 64 in [0.25, 1].

    The backbone gets no gradient and stays in eval mode (BatchNorm on running statistics) even
    under ``train()``, as IRN.
    """

    def __init__(
        self,
        backbone: str | ResNet = "resnet50",
        *,
        output_stride: int | None = 16,
        dilated: bool | None = None,
        weights: str | os.PathLike | None = None,
        head_width: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(backbone, ResNet):
            self.backbone = backbone
            self._dilated = dilated
        else:
            self.backbone = create_backbone(backbone, output_stride, weights, dilated=dilated)
            self._dilated = dilated
        self.backbone.requires_grad_(False)
        stem_width = self.backbone.conv1.out_channels
        if head_width is None:
            head_width = min(1.0, max(0.25, stem_width / 64))
        if not head_width > 0:
            raise ConfigError(f"head_width must be positive, got {head_width}")
        self.head_width = float(head_width)

        channels = (stem_width, *self.backbone.stage_channels)
        strides = self.level_strides(self.backbone.output_stride)
        self._level_strides = strides

        edge_width = _width(EDGE_WIDTH, head_width, EDGE_GROUPS)
        self.edge_levels = nn.ModuleList(
            _conv_gn_relu(c, edge_width, EDGE_GROUPS, upsample=s // 4) for c, s in zip(channels, strides)
        )
        self.edge_out = nn.Conv2d(5 * edge_width, 1, 1, bias=True)

        dp = [_width(w, head_width, g) for w, g in zip(DISPLACEMENT_WIDTHS, DISPLACEMENT_GROUPS)]
        fuse = _width(FUSE_WIDTH, head_width, FUSE_GROUPS)
        # Levels 4 and 5 go up to level 3's stride (8) before fusion; the fusion goes up to 4.
        self.displacement_levels = nn.ModuleList(
            _conv_gn_relu(c, w, g, upsample=max(1, s // strides[2]) if i >= 3 else 1)
            for i, (c, w, g, s) in enumerate(zip(channels, dp, DISPLACEMENT_GROUPS, strides))
        )
        self.displacement_fuse = _conv_gn_relu(dp[2] + dp[3] + dp[4], fuse, FUSE_GROUPS,
                                               upsample=strides[2] // 4)
        self.mean_shift = MeanShift(2)
        self.displacement_out = nn.Sequential(
            nn.Conv2d(dp[0] + dp[1] + fuse, fuse, 1, bias=False),
            nn.GroupNorm(FUSE_GROUPS, fuse),
            nn.ReLU(inplace=True),
            nn.Conv2d(fuse, 2, 1, bias=False),
            self.mean_shift,
        )
        self.train(self.training)

    @staticmethod
    def level_strides(output_stride: int) -> tuple[int, int, int, int, int]:
        """Strides of the five levels (stem, layer1..layer4) of a ResNet at ``output_stride``."""
        strides, _ = stage_strides(output_stride)
        out = [4]
        current = 4
        for stride in strides:
            current *= stride
            out.append(current)
        return tuple(out)  # type: ignore[return-value]

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {
            "backbone": self.backbone.name,
            "output_stride": self.backbone.output_stride,
            "dilated": self._dilated,
            "head_width": self.head_width,
        }

    def train(self, mode: bool = True) -> "IRNet":
        super().train(mode)
        self.backbone.eval()  # IRN: the backbone is frozen, BatchNorm included
        return self

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five levels' features of normalised images, without gradient."""
        net = self.backbone
        with torch.no_grad():
            stem = net.maxpool(net.relu(net.bn1(net.conv1(images))))
            x1 = net.layer1(stem)
            x2 = net.layer2(x1)
            x3 = net.layer3(x2)
            x4 = net.layer4(x3)
        return [stem, x1, x2, x3, x4]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge logits (B, 1, h, w) and displacements (B, 2, h, w) at stride 4.

        ``h, w = ceil(H / 4), ceil(W / 4)`` for images (B, 3, H, W) of any size.
        """
        levels = self.levels(images)
        size = levels[0].shape[-2:]
        edges = [block(x)[..., : size[0], : size[1]] for block, x in zip(self.edge_levels, levels)]
        edge = self.edge_out(torch.cat(edges, dim=1))

        dps = [block(x) for block, x in zip(self.displacement_levels, levels)]
        mid = dps[2].shape[-2:]
        fused = self.displacement_fuse(
            torch.cat([dps[2], dps[3][..., : mid[0], : mid[1]], dps[4][..., : mid[0], : mid[1]]], dim=1)
        )[..., : size[0], : size[1]]
        displacement = self.displacement_out(torch.cat([dps[0], dps[1], fused], dim=1))
        return edge, displacement

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(edge-branch parameters, displacement-branch parameters); IRN gives the second 10x lr."""
        edge = [*self.edge_levels.parameters(), *self.edge_out.parameters()]
        displacement = [*self.displacement_levels.parameters(), *self.displacement_fuse.parameters(),
                        *self.displacement_out.parameters()]
        return edge, displacement

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint atomically: a plain dict that loads with ``weights_only=True``."""
        from wsss.models.cam_net import _plain

        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": _plain(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "extra": _plain(extra or {}),
        }
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_backbone_from_classifier(self, path: str | os.PathLike) -> None:
        """Copy the backbone of a CAM-classifier checkpoint (:mod:`wsss.models.cam_net`).

        Raises:
            DataError: not a CAM-network checkpoint.
            ConfigError: its backbone or output stride differs from this network's.
        """
        from wsss.models.cam_net import read_checkpoint

        checkpoint = read_checkpoint(path)
        config = checkpoint["config"]
        if config["backbone"] != self.backbone.name:
            raise ConfigError(
                f"classifier backbone {config['backbone']!r} differs from the IRN backbone "
                f"{self.backbone.name!r}", path,
            )
        if int(config["output_stride"]) != self.backbone.output_stride:
            raise ConfigError(
                f"classifier output stride {config['output_stride']} differs from the IRN backbone's "
                f"{self.backbone.output_stride}", path,
            )
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        try:
            self.backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise DataError(f"classifier backbone weights do not fit ({first})", path) from None


def load_irn(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> IRNet:
    """Rebuild an :class:`IRNet` saved with :meth:`IRNet.save` (``torch.load(weights_only=True)``).

    Raises:
        DataError: missing, unreadable or not an IRN checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("IRN checkpoint not found", path)
    checkpoint = load_torch_file(path, "wsss IRN checkpoint", map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError("not a wsss IRN checkpoint", path)
    if int(checkpoint.get("version", 0)) > CHECKPOINT_VERSION:
        raise DataError(f"IRN checkpoint version {checkpoint.get('version')} is newer than this wsss", path)
    config = checkpoint.get("config")
    if not isinstance(config, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DataError("IRN checkpoint has no config or weights", path)
    net = IRNet(config["backbone"], output_stride=int(config["output_stride"]),
                dilated=config.get("dilated"), head_width=float(config["head_width"]))
    try:
        net.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"IRN checkpoint weights do not match its own config ({first})", path) from None
    return net


@torch.no_grad()
def edge_and_displacement(
    model: IRNet,
    image: np.ndarray,
    device: torch.device | str,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    *,
    pad_to: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-boundary map and displacement field of one image, at stride 4, at any image size.

    IRN (``EdgeDisplacement``) runs one scale on [image, flipped image], averages the edge
    logits of the two (the flipped one flipped back) and takes the displacement of the unflipped
    image; it pads every input to 512 x 512, which crops larger images. Here nothing is cropped:
    the network runs on the image as it is (or padded at the bottom/right up to ``pad_to`` with
    the mean colour, to see what IRN's padding shows GroupNorm). Several scales average the edge
    logits and the displacements (divided by the scale, so they stay in stride-4 pixels of the
    original image) after bilinear resizing to the stride-4 grid.

    Args:
        model: the network, in eval mode (the caller's choice; it is not switched here).
        image: ``uint8`` (H, W, 3) RGB.
        device: where to run.
        scales: image scales (IRN: 1.0 only).
        flip: add the horizontally flipped image to each scale's batch (IRN: yes).
        pad_to: pad each input to at least this size (IRN: 512); ``None`` pads nothing.
        mean, std: normalisation.

    Returns:
        ``edge`` float32 (h, w) in [0, 1] and ``displacement`` float32 (2, h, w) as (dy, dx),
        with ``h, w = ceil(H / 4), ceil(W / 4)``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not scales:
        raise ConfigError("at least one scale is needed")
    device = torch.device(device)
    height, width = image.shape[:2]
    target = strided_size(height, width)
    edge_sum = torch.zeros(target, dtype=torch.float32, device=device)
    disp_sum = torch.zeros((2, *target), dtype=torch.float32, device=device)
    for scale in scales:
        size = scaled_size(height, width, float(scale))
        tensor = to_chw_tensor(normalize(resize_image(image, size), mean, std))
        batch = torch.stack([tensor, tensor.flip(-1)]) if flip else tensor[None]
        if pad_to is not None:
            batch = F.pad(batch, (0, max(0, pad_to - size[1]), 0, max(0, pad_to - size[0])))
        edge, displacement = model(batch.to(device))
        out = strided_size(*size)
        edge = edge[:, 0, : out[0], : out[1]].float()
        displacement = displacement[0, :, : out[0], : out[1]].float()
        logits = edge.mean(0) if not flip else (edge[0] + edge[1].flip(-1)) / 2
        if out != target:
            logits = F.interpolate(logits[None, None], target, mode="bilinear", align_corners=False)[0, 0]
            displacement = F.interpolate(displacement[None], target, mode="bilinear", align_corners=False)[0]
        displacement = displacement / float(scale)  # stride-4 pixels of the scaled -> original image
        edge_sum += logits
        disp_sum += displacement
    edge = torch.sigmoid(edge_sum / len(scales))
    return edge.cpu().numpy(), (disp_sum / len(scales)).cpu().numpy()

