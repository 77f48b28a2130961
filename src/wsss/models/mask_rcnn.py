"""Mask R-CNN with FPN on a registered backbone (torchvision's), whose mask loss skips ignore regions.

BBAM trains a Mask R-CNN on its pseudo instances: the object mask (th = 0.85) is the target, and
the band between it and the possible-object mask (th = 0.2) is unsure
(:mod:`wsss.refine.bbam_labels`). The reference (``maskrcnn-benchmark``,
``configs/pascal_voc/BBAM_VOC_aug_FPN_R101_MaskRCNN.yaml``) feeds both masks to a seed-growing
mask loss; torchvision's mask loss (``roi_heads.maskrcnn_loss``) has no ignore at all. Here the
unsure pixels are left out of the loss and nothing else changes.

**Encoding.** torchvision's transform resizes target ``masks`` with nearest-neighbour
interpolation and keeps their integer values, so each instance's target travels as one uint8 map
(:func:`encode_targets`): bit 0 = the object, bit 1 = ignored. Values: 0 background, 1 object,
2 ignored, 3 ignored (and marked object; the mark is never read).

**Loss** (:func:`ignore_mask_loss`, per positive proposal and M x M cell, projected with the same
``roi_align`` as torchvision): ``known`` = the cell's share of pixels not ignored, ``object`` =
its share of pixels that are object and not ignored, target ``object / known``; the binary
cross-entropy of the class's mask logit is weighted by ``known`` and the sum is divided by the
sum of the weights. Without ignored pixels (known = 1) this is torchvision's loss exactly; a cell
wholly inside the ignore region gets no gradient, and what an ignored pixel is marked never
matters.

:class:`IgnoreMaskRoIHeads` is torchvision's ``RoIHeads`` whose training pass computes this loss
(its inference is torchvision's, unchanged). :func:`build_mask_rcnn` assembles the model as
BBAM's detector is assembled (:mod:`wsss.models.rcnn`: the FPN body on a registered backbone,
frozen BatchNorm for a pretrained one, anchors scaled to the data, images at their own size
unless ``min_size`` is set).

Example:
    >>> model = build_mask_rcnn("resnet18_w16", num_classes=4, anchor_sizes=(8, 16, 32, 64, 128),
    ...                         fpn_channels=32)
    >>> losses = model([image01], [{"boxes": b, "labels": c, "masks": encode_targets(m, ignore)}])
    >>> found = predict_instances(model.eval(), [image01])[0]       # boxes, classes, scores, masks
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import roi_align

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.rcnn import ANCHOR_SIZES, RcnnTransform, anchor_generator, check_rcnn_sizes, fpn_backbone
from wsss.models.roi_align import use_dense_roi_align

__all__ = [
    "Detections",
    "IGNORE_BIT",
    "IgnoreMaskRoIHeads",
    "OBJECT_BIT",
    "build_mask_rcnn",
    "encode_targets",
    "ignore_mask_loss",
    "predict_instances",
    "rebuild_mask_rcnn",
]

OBJECT_BIT = 1
IGNORE_BIT = 2
MASK_THRESHOLD = 0.5  # torchvision / maskrcnn-benchmark: a pasted mask probability above 0.5 is the object


def encode_targets(masks: np.ndarray | torch.Tensor, ignore: np.ndarray | torch.Tensor | None = None
                   ) -> torch.Tensor:
    """One uint8 (N, H, W) target map per instance: bit 0 the object, bit 1 ignored.

    Args:
        masks: bool (N, H, W) object masks.
        ignore: bool (N, H, W) per-instance ignore regions, (H, W) for all instances, or None.
    """
    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).bool()
    coded = masks.to(torch.uint8) * OBJECT_BIT
    if ignore is not None:
        ignore = torch.as_tensor(np.asarray(ignore) if not isinstance(ignore, torch.Tensor) else ignore).bool()
        coded = coded | (ignore.expand_as(masks).to(torch.uint8) * IGNORE_BIT)
    return coded


def _project(region: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """Each proposal's share of ``region`` per M x M cell, as torchvision's ``project_masks_on_boxes``."""
    rois = torch.cat([matched[:, None].to(boxes), boxes], dim=1)
    return roi_align(region[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def ignore_mask_loss(mask_logits: torch.Tensor, proposals: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor],
                     gt_labels: Sequence[torch.Tensor], mask_matched_idxs: Sequence[torch.Tensor]) -> torch.Tensor:
    """torchvision's Mask R-CNN mask loss with ignored pixels left out (module docstring, "Loss").

    Takes the arguments of ``torchvision.models.detection.roi_heads.maskrcnn_loss``; ``gt_masks``
    are per image (n, H, W) uint8 maps from :func:`encode_targets`.
    """
    size = mask_logits.shape[-1]
    labels, known, target = [], [], []
    for coded, boxes, matched, classes in zip(gt_masks, proposals, mask_matched_idxs, gt_labels):
        labels.append(classes[matched])
        coded = coded.to(torch.uint8)
        unignored = (coded & IGNORE_BIT) == 0
        share = _project(unignored, boxes, matched, size)
        objects = _project(unignored & ((coded & OBJECT_BIT) != 0), boxes, matched, size)
        known.append(share)
        target.append(objects / share.clamp_min(1e-6))
    if not labels or sum(len(lab) for lab in labels) == 0:
        return mask_logits.sum() * 0
    labels_t = torch.cat(labels)
    weight = torch.cat(known)
    targets = torch.cat(target).clamp(0.0, 1.0)
    logits = mask_logits[torch.arange(len(labels_t), device=labels_t.device), labels_t]
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


class IgnoreMaskRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (box and mask branches) whose training loss is
    :func:`ignore_mask_loss`; inference is torchvision's own.

    Build it from a torchvision Mask R-CNN's heads with :meth:`from_heads`.
    """

    @classmethod
    def from_heads(cls, heads: RoIHeads) -> "IgnoreMaskRoIHeads":
        """The same modules and settings as ``heads`` (a Mask R-CNN's), with this training loss."""
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
        )

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: D102 - torchvision's
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None or not self.has_mask():
            raise ValueError("IgnoreMaskRoIHeads trains Mask R-CNN: it needs targets with masks")
        for target in targets:
            if not target["boxes"].is_floating_point() or target["labels"].dtype != torch.int64:
                raise TypeError("target boxes must be floating point and labels int64")
        # The box branch, as RoIHeads.forward in training.
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        # The mask branch on the positive proposals, with the ignore-aware loss.
        mask_proposals, positive_matched = [], []
        for image_proposals, image_labels, image_matched in zip(proposals, labels, matched_idxs):
            positive = torch.where(image_labels > 0)[0]
            mask_proposals.append(image_proposals[positive])
            positive_matched.append(image_matched[positive])
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        loss_mask = ignore_mask_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                     [t["labels"] for t in targets], positive_matched)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}


def build_mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    weights: str | os.PathLike | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_channels: int = 256,
    rois_per_image: int = 512,
    anchor_sizes: Sequence[int] = ANCHOR_SIZES,
    frozen: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> MaskRCNN:
    """A torchvision Mask R-CNN with FPN on a registered backbone and :class:`IgnoreMaskRoIHeads`.

    Args:
        backbone: a name from :func:`wsss.models.backbones.list_backbones`, built at output stride
            32; ``layer1``-``layer4`` feed the FPN (levels ``0``-``3``, plus ``pool``).
        num_classes: K + 1, background included.
        min_size, max_size: the transform's resize (short side, longest side); ``None`` (the
            default): every image keeps its own size (torchvision's 800 / 1333 would turn a
            128-px image into an 800-px one).
        weights: a local backbone weight file (torchvision format); ``None``: random.
        fpn_channels: FPN channels (torchvision, maskrcnn-benchmark: 256).
        representation_size: the box head's MLP width (both: 1024).
        mask_channels: channels of the mask head's four convolutions (both: 256).
        rois_per_image: RoIs sampled per training image for the box head, at most a quarter
            positive, and the positive ones for the mask head (both: 512). The mask head's four
            convolutions on up to a quarter of them are most of a step's work on small images.
        anchor_sizes: one anchor size per FPN level (five); aspect ratios 0.5, 1, 2.
        frozen: frozen BatchNorm, stem and ``layer1`` (for a pretrained backbone, as torchvision
            and maskrcnn-benchmark); ``None``: when ``weights`` is given.
        mean, std: the normalisation of ``[0, 1]`` RGB input.

    Returns:
        The model in training mode; ``wsss_config`` holds the arguments (without ``weights``)
        that rebuild it.

    Raises:
        ConfigError: fewer than two classes, not five anchor sizes, sizes below 1, ``max_size``
            without ``min_size``.
    """
    check_rcnn_sizes("Mask R-CNN", num_classes, min_size, max_size, anchor_sizes)
    frozen = weights is not None if frozen is None else bool(frozen)
    body = fpn_backbone(backbone, weights=weights, fpn_channels=fpn_channels, frozen=frozen)
    model = MaskRCNN(
        body, rpn_anchor_generator=anchor_generator(anchor_sizes),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        box_batch_size_per_image=int(rois_per_image),
    )
    model.roi_heads = use_dense_roi_align(IgnoreMaskRoIHeads.from_heads(model.roi_heads))
    model.transform = RcnnTransform(min_size, max_size, mean, std)
    model.wsss_config = {
        "backbone": backbone, "num_classes": int(num_classes), "min_size": min_size, "max_size": max_size,
        "fpn_channels": int(fpn_channels), "representation_size": int(representation_size),
        "mask_channels": int(mask_channels), "rois_per_image": int(rois_per_image), "anchor_sizes": [int(s) for s in anchor_sizes], "frozen": frozen,
        "mean": list(mean), "std": list(std),
    }
    return model


@dataclass
class Detections:
    """One image's predicted instances.

    Attributes:
        boxes: float32 (N, 4) ``x0, y0, x1, y1``.
        classes: int64 (N,) in 1..K.
        scores: float32 (N,), descending.
        masks: bool (N, H, W), the pasted mask probabilities above 0.5.
    """

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@torch.no_grad()
def predict_instances(model: MaskRCNN, images: Sequence[np.ndarray], *, device: torch.device | str = "cpu",
                      batch_size: int = 4) -> list[Detections]:
    """Mask R-CNN's detections of uint8 (H, W, 3) RGB images (the model must be in eval mode)."""
    if model.training:
        raise ValueError("predict_instances needs the model in eval mode (model.eval())")
    results = []
    for start in range(0, len(images), batch_size):
        chunk = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(device)
                 for image in images[start:start + batch_size]]
        for image, found in zip(chunk, model(chunk)):
            height, width = image.shape[1:]
            masks = found["masks"][:, 0] > MASK_THRESHOLD if len(found["scores"]) else torch.zeros(0, height, width,
                                                                                                  dtype=torch.bool)
            results.append(Detections(
                boxes=found["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4),
                classes=found["labels"].cpu().numpy().astype(np.int64),
                scores=found["scores"].cpu().numpy().astype(np.float32),
                masks=masks.cpu().numpy().astype(bool)))
    return results


def rebuild_mask_rcnn(config: dict[str, Any]) -> MaskRCNN:
    """The model :func:`build_mask_rcnn` made with ``config`` (its ``wsss_config``), untrained."""
    config = dict(config)
    return build_mask_rcnn(config.pop("backbone"), config.pop("num_classes"), **config)
