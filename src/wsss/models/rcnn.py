"""What wsss's two torchvision R-CNNs share: BBAM's Faster R-CNN (:mod:`wsss.models.detector`)
and the Mask R-CNN trained on its instances (:mod:`wsss.models.mask_rcnn`).

* **Backbone** (:func:`fpn_backbone`): a network of :mod:`wsss.models.backbones` at output stride
  32 whose ``layer1``-``layer4`` feed an FPN (levels ``0``-``3``, plus ``pool``), as torchvision's
  ``resnet_fpn_backbone`` and maskrcnn-benchmark's R-FPN bodies.
* **Frozen BatchNorm** (:func:`freeze_batchnorm`): a backbone initialised from a weight file gets
  torchvision's ``FrozenBatchNorm2d`` and a frozen stem and ``layer1`` (maskrcnn-benchmark
  ``FREEZE_CONV_BODY_AT: 2``); one trained from scratch trains all of it, BatchNorm included.
* **Sizes** (:class:`RcnnTransform`): torchvision's transform resizes every image to a short side
  of 800 (at most 1333 long), which turns a 128-px image into an 800-px one. Here
  ``min_size=None`` (the default of both models) keeps every image at its own size; an integer
  restores torchvision's resizing (BBAM's detector: 800 at test; its Mask R-CNN: 512).
* **Anchors** (:func:`scaled_anchor_sizes`): torchvision's sizes 32 ... 512 per FPN level are for
  800-px inputs; they shrink in proportion to the data's short side.
"""

from __future__ import annotations

import os
from typing import Sequence

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from wsss.errors import ConfigError
from wsss.models.backbones import create_backbone

__all__ = [
    "ANCHOR_SIZES",
    "ASPECT_RATIOS",
    "REFERENCE_SHORT_SIDE",
    "RcnnTransform",
    "anchor_generator",
    "check_rcnn_sizes",
    "fpn_backbone",
    "freeze_batchnorm",
    "scaled_anchor_sizes",
]

ANCHOR_SIZES = (32, 64, 128, 256, 512)
"""torchvision's anchor sizes per FPN level (``faster_rcnn.py`` ``_default_anchorgen``), for a
short side of 800 (:data:`REFERENCE_SHORT_SIDE`)."""
REFERENCE_SHORT_SIDE = 800  # torchvision's default min_size; BBAM's detector test min-size (``_test.yaml``)
TORCHVISION_MAX_SIZE = 1333  # torchvision's default max_size (faster_rcnn.py)
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # torchvision and maskrcnn-benchmark


class RcnnTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize, pad to a multiple of 32), with
    ``min_size=None`` meaning *no resize*: every image keeps its own size (and so do its
    targets and the predictions mapped back to it)."""

    def __init__(self, min_size: int | None, max_size: int | None, image_mean: Sequence[float],
                 image_std: Sequence[float]) -> None:
        if min_size is not None and max_size is None:
            max_size = TORCHVISION_MAX_SIZE
        super().__init__(min_size if min_size is not None else 0,
                         max_size if max_size is not None else 0, list(image_mean), list(image_std))
        self.keep_size = min_size is None

    def resize(self, image, target=None):
        if self.keep_size:
            return image, target
        return super().resize(image, target)


def check_rcnn_sizes(what: str, num_classes: int, min_size: int | None, max_size: int | None,
                     anchor_sizes: Sequence[int]) -> None:
    """The build arguments both models check, as one :class:`ConfigError` line naming ``what``."""
    if num_classes < 2:
        raise ConfigError(f"{what} needs at least one foreground class, got num_classes={num_classes}")
    if len(anchor_sizes) != len(ANCHOR_SIZES) or min(int(s) for s in anchor_sizes) < 1:
        raise ConfigError(f"anchor_sizes needs one positive size per FPN level ({len(ANCHOR_SIZES)}), "
                          f"got {list(anchor_sizes)}")
    if min_size is None and max_size is not None:
        raise ConfigError("max_size needs min_size (min_size=None keeps every image at its own size)")
    if min_size is not None and (int(min_size) < 1 or (max_size is not None and int(max_size) < int(min_size))):
        raise ConfigError(f"need 1 <= min_size <= max_size, got {min_size} and {max_size}")


def scaled_anchor_sizes(short_side: float, sizes: Sequence[int] = ANCHOR_SIZES) -> tuple[int, ...]:
    """torchvision's anchor sizes scaled by ``short_side / 800`` (at least 4 px each): the anchors
    cover the same share of the image as torchvision's do on its 800-px inputs (a 128-px short
    side gets 5 ... 82; BBAM's VOC Mask R-CNN at 512-800, 21 ... 332 in its supplement)."""
    factor = float(short_side) / REFERENCE_SHORT_SIDE
    return tuple(max(4, int(round(size * factor))) for size in sizes)


def anchor_generator(sizes: Sequence[int]) -> AnchorGenerator:
    """One anchor size per FPN level, aspect ratios 0.5, 1, 2 at each."""
    return AnchorGenerator(tuple((int(s),) for s in sizes), (ASPECT_RATIOS,) * len(sizes))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` of its statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def fpn_backbone(backbone: str, *, weights: str | os.PathLike | None, fpn_channels: int,
                 frozen: bool) -> BackboneWithFPN:
    """A registered backbone at output stride 32 under an FPN of ``fpn_channels``.

    Args:
        backbone: a name from :func:`wsss.models.backbones.list_backbones`.
        weights: a local backbone weight file (torchvision format); ``None``: random.
        fpn_channels: the FPN's channels (torchvision and maskrcnn-benchmark: 256).
        frozen: frozen BatchNorm, stem and ``layer1`` (module docstring).
    """
    trunk = create_backbone(backbone, output_stride=32, weights=weights)
    if frozen:
        freeze_batchnorm(trunk)
        for module in (trunk.conv1, trunk.bn1, trunk.layer1):
            module.requires_grad_(False)
    return BackboneWithFPN(trunk, {f"layer{i}": str(i - 1) for i in range(1, 5)}, list(trunk.stage_channels),
                           fpn_channels)
