"""Faster R-CNN with FPN on a registered backbone (torchvision's detector), for BBAM.

BBAM (Lee et al., CVPR 2021) explains a Faster R-CNN: its reference trains maskrcnn-benchmark's
R-101-FPN detector (``configs/pascal_voc/BBAM_VOC_aug_FPN_R101_FasterRCNN.yaml``). Here the
detector is torchvision's :class:`~torchvision.models.detection.FasterRCNN`, whose RoI heads have
the same structure (7 x 7 multi-scale RoIAlign over FPN levels ``0``-``3``, a two-layer MLP head,
a predictor giving ``K`` class logits and ``4 K`` class-specific box deltas, a box coder with
weights (10, 10, 5, 5)), on a backbone of :mod:`wsss.models.backbones` at output stride 32.

Sizes, anchors, the FPN body and frozen BatchNorm are those of :mod:`wsss.models.rcnn`, which
the Mask R-CNN shares: images keep their own size unless ``min_size`` is set, anchors are
torchvision's scaled to the data (:func:`~wsss.models.rcnn.scaled_anchor_sizes`), and a backbone
from a weight file gets frozen BatchNorm, stem and ``layer1``. The detector runs in eval mode
for attribution, where every image of a batch is independent of the others.

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
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import DataError
from wsss.models.rcnn import (
    ANCHOR_SIZES,
    RcnnTransform,
    anchor_generator,
    check_rcnn_sizes,
    fpn_backbone,
)
from wsss.models.roi_align import use_dense_roi_align

log = logging.getLogger(__name__)

__all__ = [
    "box_outputs",
    "build_detector",
    "check_detection_boxes",
    "head_outputs",
    "load_detector_weights",
]

def build_detector(
    backbone: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    rois_per_image: int = 512,
    min_size: int | None = None,
    max_size: int | None = None,
    anchor_sizes: Sequence[int] = ANCHOR_SIZES,
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
        rois_per_image: RoIs sampled per training image for the box head, a quarter at most
            positive (both: 512).
        min_size, max_size: the transform's resize; ``None``: images keep their size.
        anchor_sizes: one anchor size per FPN level (five), aspect ratios 0.5, 1, 2.
        frozen: frozen BatchNorm, stem and ``layer1``; ``None``: when ``weights`` is given.
        mean, std: the normalisation of ``[0, 1]`` RGB input (ImageNet's).

    Returns:
        The detector in training mode, with ``wsss_config`` (the arguments, without ``weights``)
        to rebuild it.
    """
    check_rcnn_sizes("a detector", num_classes, min_size, max_size, anchor_sizes)
    frozen = weights is not None if frozen is None else bool(frozen)
    body = fpn_backbone(backbone, weights=weights, fpn_channels=fpn_channels, frozen=frozen)
    head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    detector = FasterRCNN(body, rpn_anchor_generator=anchor_generator(anchor_sizes), box_head=head,
                          box_predictor=FastRCNNPredictor(representation_size, num_classes),
                          box_batch_size_per_image=int(rois_per_image))
    use_dense_roi_align(detector.roi_heads)  # torchvision's RoIAlign as matrix products (the same values)
    detector.transform = RcnnTransform(min_size, max_size, mean, std)
    detector.wsss_config = {
        "backbone": backbone, "num_classes": int(num_classes), "fpn_channels": int(fpn_channels),
        "representation_size": int(representation_size), "rois_per_image": int(rois_per_image), "min_size": min_size, "max_size": max_size,
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
