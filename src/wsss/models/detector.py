"""Faster R-CNN with FPN on a registered backbone (torchvision's detector), for BBAM.

BBAM (Lee et al., CVPR 2021) explains a Faster R-CNN: its reference trains maskrcnn-benchmark's
R-101-FPN detector (``configs/pascal_voc/BBAM_VOC_aug_FPN_R101_FasterRCNN.yaml``). Here the
detector is torchvision's :class:`~torchvision.models.detection.FasterRCNN`, whose RoI heads have
the same structure (7 x 7 multi-scale RoIAlign over FPN levels ``0``-``3``, a two-layer MLP head,
a predictor giving ``K`` class logits and ``4 K`` class-specific box deltas, a box coder with
weights (10, 10, 5, 5)), on a backbone of :mod:`wsss.models.backbones` at output stride 32.

Sizes: torchvision's transform resizes every image to a short side of 800 (at most 1333 long),
which turns a 128-px image into an 800-px one. Here ``min_size=None`` (the default) keeps every
image at its own size; an integer restores torchvision's resizing (the reference: 800 at test).

Anchors: torchvision's sizes 32 ... 512 per FPN level are for 800-px inputs;
:func:`scaled_anchor_sizes` shrinks them in proportion to the data's short side.

BatchNorm: a backbone initialised from a weight file gets frozen BatchNorm and a frozen stem and
``layer1`` (torchvision's ``FrozenBatchNorm2d``; maskrcnn-benchmark ``FREEZE_CONV_BODY_AT: 2``);
one trained from scratch trains all of it, BatchNorm included. Either way the detector runs in
eval mode for attribution, where every image of a batch is independent of the others.

For BBAM the detector runs as :func:`box_outputs`: backbone, RoIAlign, box head and predictor on
*fixed* proposals, without the transform, the RPN or NMS.

Example:
    >>> detector = build_detector("resnet18_w16", num_classes=4, anchor_sizes=(8, 16, 32, 64, 128))
    >>> images, _ = detector.eval().transform([image01])            # normalise (+ resize) and pad
    >>> logits, deltas = box_outputs(detector, images.tensors, images.image_sizes, [proposals])
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError, DataError
from wsss.models.backbones import create_backbone

log = logging.getLogger(__name__)

__all__ = [
    "DETECTOR_ANCHOR_SIZES",
    "DetectorTransform",
    "box_outputs",
    "build_detector",
    "check_detection_boxes",
    "head_outputs",
    "load_detector_weights",
    "scaled_anchor_sizes",
]

DETECTOR_ANCHOR_SIZES = (32, 64, 128, 256, 512)
"""torchvision's anchor sizes per FPN level (``faster_rcnn.py`` ``_default_anchorgen``), for a
short side of 800 (:data:`DETECTOR_REFERENCE_SHORT_SIDE`)."""
DETECTOR_REFERENCE_SHORT_SIDE = 800  # torchvision's default min_size; BBAM's test min-size (``_test.yaml``)
TORCHVISION_MAX_SIZE = 1333  # torchvision's default max_size (faster_rcnn.py)
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # torchvision and maskrcnn-benchmark


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize, pad to a multiple of 32), with
    ``min_size=None`` meaning *no resize*: every image keeps its own size."""

    def __init__(self, min_size: int | None, max_size: int | None, image_mean: Sequence[float],
                 image_std: Sequence[float]) -> None:
        if min_size is not None and max_size is None:
            max_size = TORCHVISION_MAX_SIZE
        super().__init__(min_size if min_size is not None else 0,
                         max_size if max_size is not None else 0, list(image_mean), list(image_std))
        self.keep_size = min_size is None

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if self.keep_size:
            return image, target
        return super().resize(image, target)


def scaled_anchor_sizes(short_side: float, sizes: Sequence[int] = DETECTOR_ANCHOR_SIZES) -> tuple[int, ...]:
    """torchvision's anchor sizes scaled by ``short_side / 800`` (at least 4 px each): the anchors
    cover the same share of the image as torchvision's do on its 800-px inputs."""
    factor = float(short_side) / DETECTOR_REFERENCE_SHORT_SIDE
    return tuple(max(4, int(round(size * factor))) for size in sizes)


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` of its statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = _freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def build_detector(
    backbone: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    min_size: int | None = None,
    max_size: int | None = None,
    anchor_sizes: Sequence[int] = DETECTOR_ANCHOR_SIZES,
    frozen: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> FasterRCNN:
    """A torchvision Faster R-CNN with FPN on a registered backbone.

    Args:
        backbone: a name from :func:`wsss.models.backbones.list_backbones`; built at output stride
            32, its ``layer1``-``layer4`` feed the FPN (levels ``0``-``3``, plus ``pool``).
        num_classes: K + 1, background included.
        weights: a local backbone weight file (torchvision format); ``None``: random.
        fpn_channels: FPN channels (maskrcnn-benchmark and torchvision: 256).
        representation_size: the box head's MLP width (both: 1024).
        min_size, max_size: the transform's resize; ``None``: images keep their size.
        anchor_sizes: one anchor size per FPN level (five), aspect ratios 0.5, 1, 2.
        frozen: frozen BatchNorm, stem and ``layer1``; ``None``: when ``weights`` is given.
        mean, std: the normalisation of ``[0, 1]`` RGB input (ImageNet's).

    Returns:
        The detector in training mode, with ``wsss_config`` (the arguments, without ``weights``)
        to rebuild it.
    """
    if num_classes < 2:
        raise ConfigError(f"a detector needs at least one foreground class, got num_classes={num_classes}")
    if len(anchor_sizes) != 5:
        raise ConfigError(f"anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}")
    if min_size is None and max_size is not None:
        raise ConfigError("max_size needs min_size (min_size=None keeps every image at its own size)")
    frozen = weights is not None if frozen is None else bool(frozen)
    trunk = create_backbone(backbone, output_stride=32, weights=weights)
    if frozen:
        _freeze_batchnorm(trunk)
        for module in (trunk.conv1, trunk.bn1, trunk.layer1):
            module.requires_grad_(False)
    fpn = BackboneWithFPN(trunk, {f"layer{i}": str(i - 1) for i in range(1, 5)}, list(trunk.stage_channels),
                          fpn_channels)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ASPECT_RATIOS,) * len(anchor_sizes))
    head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    detector = FasterRCNN(fpn, rpn_anchor_generator=anchors, box_head=head,
                          box_predictor=FastRCNNPredictor(representation_size, num_classes))
    detector.transform = DetectorTransform(min_size, max_size, mean, std)
    detector.wsss_config = {
        "backbone": backbone, "num_classes": int(num_classes), "fpn_channels": int(fpn_channels),
        "representation_size": int(representation_size), "min_size": min_size, "max_size": max_size,
        "anchor_sizes": [int(s) for s in anchor_sizes], "frozen": frozen, "mean": list(mean), "std": list(std),
    }
    return detector


def load_detector_weights(detector: FasterRCNN, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a whole-detector state dict (e.g. torchvision's COCO ``fasterrcnn_resnet50_fpn``
    weights, saved locally) into ``detector``: every tensor whose name and shape match; the rest
    (the predictor of another class count, another backbone's layers) stays as it is.

    Returns:
        ``{"loaded": [...], "skipped": [...]}`` tensor names.

    Raises:
        DataError: the file is missing or unreadable, or matches less than half the detector.
    """
    from wsss.models.weights import read_state_dict

    state = read_state_dict(path)
    own = detector.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(loaded) < 0.5 * len(own):
        raise DataError(f"matches {len(loaded)} of the detector's {len(own)} tensors: not weights of "
                        "this detector's architecture", path)
    detector.load_state_dict(loaded, strict=False)
    skipped = sorted(set(state) - set(loaded))
    if skipped:
        log.info("%s: %d tensors not loaded (other shapes or names), e.g. %s", path, len(skipped), skipped[:3])
    return {"loaded": sorted(loaded), "skipped": skipped}


def box_outputs(detector: FasterRCNN, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]],
                proposals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The box head's outputs on fixed proposals: backbone -> RoIAlign -> box head -> predictor.

    No transform (``images`` are already normalised and padded), no RPN, no NMS: what BBAM needs
    at every optimisation step. Outputs of different images of the batch are independent when
    the detector is in eval mode.

    Args:
        detector: from :func:`build_detector` (any torchvision ``FasterRCNN``).
        images: (B, 3, H, W) normalised, padded input (``detector.transform``'s ``tensors``).
        image_sizes: (h, w) of each image before padding.
        proposals: B tensors (n_b, 4) ``x0, y0, x1, y1`` in input pixels.

    Returns:
        ``(logits (N, K), deltas (N, K, 4))`` for the N = sum n_b proposals in order: raw class
        logits and the class-specific box deltas in the box coder's weighted units.
    """
    return head_outputs(detector, detector.backbone(images), image_sizes, proposals)


def head_outputs(detector: FasterRCNN, features: Mapping[str, torch.Tensor],
                 image_sizes: Sequence[tuple[int, int]], proposals: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`box_outputs` from the backbone's features (FPN levels), e.g. to pool several sets of
    proposals from one backbone pass."""
    heads = detector.roi_heads
    pooled = heads.box_roi_pool(features, list(proposals), [tuple(map(int, s)) for s in image_sizes])
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    return logits, deltas.reshape(len(deltas), -1, 4)


def check_detection_boxes(boxes: Any, classes: Any, image_size: tuple[int, int], num_classes: int,
                          where: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes a detector can learn from or BBAM can explain, as float32 (N, 4) and int64 (N,).

    An image may have no boxes (N = 0).

    Raises:
        DataError: a shape other than (N, 4), a class count that differs, a non-finite or empty
            box (``x1 <= x0`` or ``y1 <= y0``, a zero-area box included), a box outside the
            image, or a class outside 1..K; one line naming ``where`` and the box.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    classes = np.asarray(classes)
    height, width = image_size
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {boxes.shape}", where)
    if classes.shape != (len(boxes),):
        raise DataError(f"{len(boxes)} boxes but class ids of shape {classes.shape}", where)
    for number, (box, cls) in enumerate(zip(boxes, classes), start=1):
        x0, y0, x1, y1 = (float(v) for v in box)
        shown = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if not np.isfinite(box).all() or x1 <= x0 or y1 <= y0:
            raise DataError(f"box {number} {shown} is empty (zero width or height) or not finite", where)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise DataError(f"box {number} {shown} lies outside the {width}x{height} image", where)
        if int(cls) != cls or not 1 <= int(cls) < num_classes:
            raise DataError(f"box {number} has class {cls}, not a foreground class id in 1..{num_classes - 1}",
                            where)
    return boxes.astype(np.float32), classes.astype(np.int64)
