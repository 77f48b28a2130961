"""RIB: reducing the information bottleneck (Lee et al., NeurIPS 2021), per-image fine-tuning.

A CAM classifier trained with a sigmoid loss stops growing the logits of regions it already
finds discriminative; RIB removes that last activation and briefly fine-tunes the classifier on
each image so that the less discriminative parts of the object light up too. For every target
image ``x`` with classes ``S``, starting each time from the trained weights ``theta_0``:

* step ``t = 0 .. T-1`` (``T = steps``, reference 10) forwards ``x`` at every CAM scale with its
  flip, with ``theta_t``, and adds ``A_t = relu(L[0]) + flip(relu(L[1]))`` (``L`` the raw maps
  ``conv2d(features, W)``) to the accumulated maps: the result is ``sum_t CAM_{theta_t}``, with
  ``t = 0`` the plain CAM, assembled and normalised as CAM extraction
  (:func:`~wsss.attribution.cam.assemble_maps`, :func:`~wsss.attribution.cam.normalise_maps`);
* the loss is the negative sum of the *raw* pooled logits of the positive classes,
  ``L_RIB = - sum_rows sum_{c in labels(row)} y_row,c``, over the target at the loss scales
  (1.0, 1.5, 2.0; not 0.5) with flips plus ``B`` other images that share no class with ``x``
  (``batch_size``, reference 20; each with its own labels). There is no sigmoid, so the
  gradient of a positive logit never saturates;
* pooling is GNDRP (global non-discriminative region pooling):
  ``y_c = (1 / hw) sum_p L_c(p) [L_c(p) / max L_c < tau]`` for positive classes (``tau`` =
  ``score_threshold``, 0.4), i.e. pixels already discriminative are left out but the sum is
  still divided by all ``hw`` pixels; other classes get plain GAP. The mask is a constant for
  autograd;
* SGD updates the last two backbone stages (layer3, layer4) and the classifier, lr 8e-6 and 10x
  for the classifier, weight decay 1e-4, poly decay (power 0.9 over ``T`` updates). The earlier
  stages are frozen and BatchNorm uses its running statistics (the model must be in eval mode);
* it stops after ``T`` maps, or when the target's pooled positive logits pass the margin
  (``|sum y| > margin``, 600), or, from step 1 on, when the map explodes: the union over ``S`` of
  ``A_t / (max A_t + 1e-5) > 0.3`` at the first scale covers more than 70% of its pixels. An
  exploded step adds no map but, as in the reference, its first scale's (see below).

Which other images: :class:`DisjointClassIndex` finds the images sharing no class with the
target (built once per dataset); every step takes a fresh batch of ``B`` of them from a seeded
shuffle of that list (the reference's ``DataLoader(shuffle=True)`` epoch; the shuffle restarts
if the list is shorter than the steps need), each with IRN's training augmentation (random
long-side resize, flip, crop). The seed is derived from ``seed`` and the image id, so sharding
and resuming change nothing.

Where the reference (``jbeomlee93/RIB``, ``obtain_RIB_CAM.py``) departs from what it meant
(``docs/quirks.md``): quirks that change the published computation are reproduced by default and
a setting gives the intended computation; a hard-coded class count is fixed by default.

* ``PolyOptimizer`` passes the weight decay where SGD takes the momentum, so the reference runs
  with momentum 1e-4: the default (``reference_momentum_quirk=True``); ``False``: no momentum.
* The explode check runs after the first scale's map of the exploded step was already added, so
  that scale gets one extra, exploded map: the default (``reference_explode_accumulation=True``);
  ``False``: the exploded step adds nothing.
* GNDRP's class loop is ``range(20)``: on COCO, positive classes 21..80 keep a zero mask and
  fall back to plain GAP. A hard-coded class count, fixed by default; ``gndrp_class_limit=20``
  reproduces it (only changes results when K > 20).
* ``--p_disjoint < 1`` was meant to mix in images holding the target's classes, but its draw
  (``random.randrange(0, 1)``) is always 0 and it indexes one list with another list's index,
  so the joint images are never used (or get the wrong labels). Here ``disjoint_probability``
  does what was meant; the default 1 is the reference's. The broken behaviour is not
  reproduced: at the default it never runs.

What makes this fast compared with the reference's loop (kept in
:mod:`wsss.attribution.rib_reference`): the disjoint index is built once per dataset (the
reference scans the whole list per image); the model is never copied nor modified: the
fine-tuned stages run with :func:`torch.func.functional_call` on working copies of their
parameters, allocated once and reset in place per image; the target's frozen-stage features are
computed once per image instead of once per step (BatchNorm is frozen, so they do not change),
as are the other images' when the same batch is reused (``resample_others=False``); scale 0.5
(not in the loss) runs without autograd; the step that ends the run (last step, margin or
explosion) makes no update, so it skips the other images and the backward pass; GNDRP is one
vectorised expression instead of a loop over images and classes; the fine-tuned stages'
BatchNorm is folded into their convolutions (:class:`FoldedBatchNorm`, same function and
gradients); on a CPU the images are channels-last (oneDNN's layout). Most of the time is still
the convolutions of layer3/layer4, forward and backward, on the ``B`` other images and the
target's loss scales, which no exact implementation can skip (about 87% of the CPU time): on a
CPU with every step taken this is 1.1-1.3x faster than the reference's loop, more when runs stop
early. ``bfloat16=True`` (default off, not in the reference) runs the fine-tuned stages' forward
and backward under bfloat16 autocast: about 2x the reference's loop on a CPU with AVX-512 BF16,
with maps within about 1e-2 of float32's and the same seeds (``docs/speed.md``,
``benchmarks/rib_speed.py``).

Learning rate and margin that follow the network's logit scale (``scale="image"``,
``docs/scale.md``): the loss is a sum of raw logits and the margin a bound on them, so both are in
the units of this network's logits, which the reference set for an ImageNet ResNet-50 on VOC. The
scale is measured per image at step 0: ``c = z / z_ref``, ``z`` the mean over the loss rows
(loss scales x flips) and the target's classes of the plain pooled logit (the classifier's own
output), ``z_ref`` its reference value (:data:`REFERENCE_TARGET_LOGIT`, an estimate, see there).
Then the margin is ``c * margin``, the backbone's learning rate ``lr / c`` and the classifier's
``c * classifier_lr_mult * lr``, with the weight decays ``c * weight_decay`` and
``weight_decay / c`` (:func:`scaled_settings`). Why these: a network whose classifier weights
are c times the reference's has c times its logits, c times its backbone gradients and the same
classifier gradients; with those settings it takes exactly the reference's steps in its own
units, so its normalised maps, stop and explosion are the same (tested). At ``c = 1`` every
value is the literal one. A target whose pooled logit is not positive (the classifier does not
see its class) keeps the literal values.

Example:
    >>> net.eval()
    >>> config = RibConfig()
    >>> make_ribs(net, VOCDataset(root, "train_aug"), "work/maps/rib", config=config, seed=0)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from wsss.attribution.cam import (
    CAM_SCALES,
    NORMALISE_EPS,
    CamResult,
    _check_eval_mode,
    _image_keys,
    assemble_maps,
    check_keys,
    merge_flips,
    multiscale_inputs,
    normalise_maps,
)
from wsss.data.transforms import TrainTransform
from wsss.config import check_scale, with_settings
from wsss.errors import ConfigError, DataError
from wsss.runtime import DistInfo, eval_mode, run_per_image
from wsss.stores.maps import MapStore
from wsss.training.schedule import build_sgd, poly_lr_scheduler

log = logging.getLogger(__name__)

__all__ = [
    "DisjointClassIndex",
    "FoldedBatchNorm",
    "OtherBatch",
    "OtherImageBatches",
    "REFERENCE_TARGET_LOGIT",
    "RibConfig",
    "RibResult",
    "RibSettings",
    "RibTuner",
    "climb_report",
    "compute_rib",
    "draw_other_images",
    "gap_pool",
    "gndrp_pool",
    "make_ribs",
    "map_explodes",
    "pool_logits",
    "rib_loss",
    "scaled_settings",
]

REFERENCE_TARGET_LOGIT = 4.6
"""``z_ref``: the reference classifier's pooled logit for a labelled class at step 0 (mean over
the loss scales 1.0, 1.5, 2.0 and their flips). An estimate, not a measurement (no VOC
classifier was at hand): ``log(99) = 4.6``, where a sigmoid gives 0.99, the confidence a
classifier trained with a sigmoid loss reaches on its own training images. One measurement with
the reference's ResNet-50 on VOC train would replace it; at ``scale="reference"`` it plays no part."""


@dataclass
class RibConfig:
    """RIB settings; defaults are the reference's VOC values (``obtain_RIB_CAM.py``) unless noted."""

    steps: int = 10  # --RIB_iter: at most T maps (theta_0..theta_{T-1}), T - 1 updates
    lr: float = 8e-6  # --RIB_lr (COCO: 5e-6), the fine-tuned backbone stages
    classifier_lr_mult: float = 10.0  # obtain_RIB_CAM.py: the classifier group gets 10 x RIB_lr
    weight_decay: float = 1e-4  # --cam_weight_decay
    poly_power: float = 0.9  # misc/torchutils.PolyOptimizer: lr_t = lr (1 - t / T) ** 0.9
    batch_size: int = 20  # --RIB_batch (COCO: 15): other images per step, B; 0 = the target alone
    pooling: Literal["gndrp", "gap"] = "gndrp"  # --pooling gndp (the paper's GNDRP) or gap
    score_threshold: float = 0.4  # --score_th (COCO: 0.5), tau: GNDRP drops pixels >= tau * max
    margin: float = 600.0  # --stop_th (COCO: 1000): stop when |target's positive logit sum| > margin
    explode_threshold: float = 0.3  # --explode_th
    explode_ratio: float = 0.7  # --explode_ratio (COCO: 0.8): stop when more of the map is above
    scales: tuple[float, ...] = CAM_SCALES  # --cam_scales: maps accumulated at these scales
    loss_scales: tuple[float, ...] = (1.0, 1.5, 2.0)  # RIB_learn: every cam scale but 0.5 in the loss
    flip: bool = True  # reference: every scale with its horizontal flip
    trainable_stages: int = 2  # reference: layer3, layer4 (stage2(x).detach()) and the classifier
    other_crop_size: int | None = 512  # VOC12RIBDataset crop_size (IRN training crop)
    other_resize_long: tuple[int, int] | None = (320, 640)  # VOC12RIBDataset resize_long
    other_flip: bool = True  # VOC12RIBDataset hor_flip
    disjoint_probability: float = 1.0  # --p_disjoint: else an image holding every target class
    resample_others: bool = True  # reference: a new batch every step; False: one batch, reused
    # reference: PolyOptimizer gives SGD momentum = weight decay (the published computation); False: none
    reference_momentum_quirk: bool = True
    gndrp_class_limit: int | None = None  # reference: 20 (for ccc in range(20)); later classes GAP
    # reference: the exploded step's first-scale map is kept (the published computation); False: dropped
    reference_explode_accumulation: bool = True
    # not in the reference: the fine-tuned stages' forward and backward under bfloat16 autocast
    # (1.4-1.9x faster on a CPU with AVX-512 BF16, about 2x the reference loop; maps change by
    # about 1e-2, seeds not measurably: docs/speed.md)
    bfloat16: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` on settings that cannot work."""
        if self.steps < 1:
            raise ConfigError(f"rib.steps must be at least 1, got {self.steps}")
        if self.lr < 0 or self.classifier_lr_mult < 0 or self.weight_decay < 0 or self.poly_power < 0:
            raise ConfigError("rib.lr, rib.classifier_lr_mult, rib.weight_decay and rib.poly_power "
                              "must be non-negative")
        if self.batch_size < 0:
            raise ConfigError(f"rib.batch_size must be non-negative, got {self.batch_size}")
        if self.pooling not in ("gndrp", "gap"):
            raise ConfigError(f"rib.pooling must be 'gndrp' or 'gap', got {self.pooling!r}")
        if not 0 < self.score_threshold <= 1:
            raise ConfigError(f"rib.score_threshold must be in (0, 1], got {self.score_threshold}")
        if self.margin < 0:
            raise ConfigError(f"rib.margin must be non-negative, got {self.margin}")
        if not 0 <= self.explode_threshold <= 1 or not 0 <= self.explode_ratio <= 1:
            raise ConfigError("rib.explode_threshold and rib.explode_ratio must be in [0, 1]")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"rib.scales must be positive, got {list(self.scales)}")
        if not self.loss_scales or any(s not in self.scales for s in self.loss_scales):
            raise ConfigError(f"rib.loss_scales {list(self.loss_scales)} must be a non-empty subset of "
                              f"rib.scales {list(self.scales)}")
        if not 1 <= self.trainable_stages <= 4:
            raise ConfigError(f"rib.trainable_stages must be in 1..4, got {self.trainable_stages}")
        if self.other_crop_size is not None and self.other_crop_size < 1:
            raise ConfigError(f"rib.other_crop_size must be positive, got {self.other_crop_size}")
        resize = self.other_resize_long
        if resize is not None and not 1 <= resize[0] <= resize[1]:
            raise ConfigError(f"rib.other_resize_long must be (low, high) with 1 <= low <= high, "
                              f"got {list(self.other_resize_long)}")
        if not 0 <= self.disjoint_probability <= 1:
            raise ConfigError(f"rib.disjoint_probability must be in [0, 1], got {self.disjoint_probability}")
        if self.gndrp_class_limit is not None and self.gndrp_class_limit < 0:
            raise ConfigError(f"rib.gndrp_class_limit must be non-negative, got {self.gndrp_class_limit}")


@dataclass
class RibResult(CamResult):
    """RIB maps of one image (as :class:`~wsss.attribution.cam.CamResult`) and how the run ended.

    Attributes:
        steps: how many steps' maps were accumulated (``theta_0 .. theta_{steps-1}``).
        stop: ``"steps"`` (all steps, or the other images ran out), ``"margin"`` or ``"explode"``.
        logit_scale: ``c``, the network's logit scale against the reference's (1 at
            ``scale="reference"``; see :func:`scaled_settings`).
        trace: one entry per step whose maps were computed: ``target_sum`` (what the margin
            bounds), ``score`` (per class, the pooled logit's mean over the loss rows) and
            ``area`` (per class, the share of the first scale's map above 0.3 of its max).
    """

    steps: int = 0
    stop: str = "steps"
    logit_scale: float = 1.0
    trace: list[dict[str, float | list[float]]] = field(default_factory=list)


@dataclass
class OtherBatch:
    """The other images of one step: normalised, augmented images and their labels.

    Attributes:
        images: (B, 3, S, S) float, normalised as the classifier's input.
        labels: (B, K) multi-hot over the foreground classes (channel ``c - 1`` for class ``c``).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 2 or len(self.images) != len(self.labels):
            raise ValueError(f"other images (B, 3, H, W) and labels (B, K) expected, got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")


@dataclass(frozen=True)
class RibSettings:
    """The settings in logit units RIB runs one image with (see :func:`scaled_settings`)."""

    backbone_lr: float
    classifier_lr: float
    backbone_weight_decay: float
    classifier_weight_decay: float
    margin: float
    logit_scale: float = 1.0


def positive_mean(logits: torch.Tensor) -> float | None:
    """The mean of the positive entries of ``logits`` (a target's step-0 logits over its loss
    rows, flips and classes), or None if none is positive.

    Only the classes the classifier sees on the image measure its logit scale: a labelled class
    it misses has a negative logit that says nothing about how large its logits run, and would
    shrink ``c`` towards 0 (a margin near 0 and a backbone rate many times the reference's).
    """
    positive = logits[logits > 0]
    return float(positive.mean()) if positive.numel() else None


def scaled_settings(config: RibConfig, target_logit: float | None = None, scale: str = "reference"
                    ) -> RibSettings:
    """Learning rates, weight decays and margin for a target whose step-0 pooled logit is
    ``target_logit`` (:func:`positive_mean` over the loss rows, flips and its classes).

    ``scale="reference"``, or a logit that is not positive: the literal values (backbone
    ``lr``, classifier ``classifier_lr_mult * lr``, ``weight_decay`` for both, ``margin``).
    ``scale="image"``: with ``c = target_logit / REFERENCE_TARGET_LOGIT``, backbone ``lr / c``
    with decay ``c * weight_decay``, classifier ``c * classifier_lr_mult * lr`` with decay
    ``weight_decay / c``, margin ``c * margin``; exactly the literal values at ``c = 1``.
    """
    literal = RibSettings(config.lr, config.lr * config.classifier_lr_mult, config.weight_decay,
                          config.weight_decay, config.margin)
    if check_scale(scale) == "reference" or target_logit is None or not target_logit > 0:
        return literal
    c = float(target_logit) / REFERENCE_TARGET_LOGIT
    return RibSettings(literal.backbone_lr / c, literal.classifier_lr * c, literal.backbone_weight_decay * c,
                       literal.classifier_weight_decay / c, literal.margin * c, c)


# ---------------------------------------------------------------------------------------------
# The loss pieces


def gndrp_pool(maps: torch.Tensor, discriminative: torch.Tensor, threshold: float) -> torch.Tensor:
    """Global non-discriminative region pooling of raw class maps.

    ``y_c = (1 / hw) sum_p L_c(p) [L_c(p) / max_p L_c < tau]`` for the classes flagged in
    ``discriminative``, plain GAP for the others; the mask is detached (the reference's
    ``gndp2d``, which also divides by ``max`` without a guard).

    Args:
        maps: raw maps (B, C, h, w).
        discriminative: bool (B, C) or (C,): classes whose discriminative pixels are dropped.
        threshold: tau.

    Returns:
        (B, C) pooled logits.
    """
    values = maps.detach()
    keep = values / values.amax(dim=(-2, -1), keepdim=True) < threshold
    keep = keep | ~discriminative.to(torch.bool).expand(maps.shape[:2])[..., None, None]
    return (maps * keep).mean(dim=(-2, -1))


def gap_pool(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) spatial mean (IRN's ``gap2d``)."""
    return maps.mean(dim=(-2, -1))


def pool_logits(maps: torch.Tensor, positive: torch.Tensor, channels: torch.Tensor, config: RibConfig
                ) -> torch.Tensor:
    """Pooled logits (B, C) of raw maps (B, C, h, w) whose channels are classifier ``channels``
    (C,), ``positive`` (B, C) or (C,) the labelled ones, as ``config.pooling`` says."""
    if config.pooling == "gap":
        return gap_pool(maps)
    positive = positive.to(torch.bool)
    if config.gndrp_class_limit is not None:  # the reference's range(20): later classes get GAP
        positive = positive & (channels < config.gndrp_class_limit)
    return gndrp_pool(maps, positive, config.score_threshold)


def rib_loss(pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``L_RIB = - sum_rows sum_c labels[row, c] pooled[row, c]``: raw positive logits, no sigmoid."""
    return -(pooled * labels).sum()


def map_explodes(maps: torch.Tensor, threshold: float, ratio: float) -> bool:
    """Whether the union over classes of ``maps / (max + 1e-5) > threshold`` covers more than
    ``ratio`` of the pixels; ``maps`` (C, h, w) flip-merged, ReLU'd maps of the target's classes."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    union = (maps / (peak + NORMALISE_EPS) > threshold).any(dim=0)
    return bool(union.to(torch.float64).mean() > ratio)


# ---------------------------------------------------------------------------------------------
# Which other images


class DisjointClassIndex:
    """Image-level labels of a pool of images as a (N, K) boolean matrix, to find quickly the
    images that share no class with a target (or that hold all of its classes).

    Build it once per dataset; the reference rescans the whole list for every target image.

    Args:
        ids: the pool's image ids.
        labels: (N, K) bool, ``labels[i, c - 1]`` when image ``i`` holds class ``c``.
    """

    def __init__(self, ids: Sequence[str], labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=bool)
        if labels.ndim != 2 or labels.shape[0] != len(ids):
            raise ValueError(f"labels must be ({len(ids)}, K), got {labels.shape}")
        self.ids = list(ids)
        self.labels = labels
        self._position = {image_id: i for i, image_id in enumerate(self.ids)}
        self._disjoint: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    @classmethod
    def from_source(cls, source, ids: Sequence[str] | None = None, num_classes: int | None = None
                    ) -> "DisjointClassIndex":
        """The index over ``ids`` (default: all) of a dataset with ``image_labels`` or ``label_vector``.

        Raises:
            ConfigError: a class id outside 1..K.
        """
        ids = list(source.ids if ids is None else ids)
        if num_classes is None:
            num_classes = len(source.classes) - 1
        labels = np.zeros((len(ids), num_classes), dtype=bool)
        for row, image_id in enumerate(ids):
            keys = np.asarray(_image_keys(source, image_id), dtype=np.int64).reshape(-1)
            if keys.size and (keys.min() < 1 or keys.max() > num_classes):
                where = source.image_path(image_id) if hasattr(source, "image_path") else image_id
                raise ConfigError(f"class id(s) {keys.tolist()} outside 1..{num_classes}", where)
            labels[row, keys - 1] = True
        return cls(ids, labels)

    def position(self, image_id: str) -> int | None:
        return self._position.get(image_id)

    def disjoint(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions (sorted) of the images holding none of the classes ``keys`` (1..K)."""
        keys = tuple(sorted({int(k) for k in np.asarray(keys).reshape(-1)}))
        found = self._disjoint.get(keys)
        if found is None:  # many images share a label set: cache by it
            found = np.flatnonzero(~self.labels[:, np.asarray(keys, dtype=np.int64) - 1].any(axis=1))
            self._disjoint[keys] = found
        return found

    def containing(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions (sorted) of the images holding every class of ``keys`` (1..K)."""
        columns = np.asarray(sorted({int(k) for k in np.asarray(keys).reshape(-1)}), dtype=np.int64) - 1
        return np.flatnonzero(self.labels[:, columns].all(axis=1))


def _image_entropy(seed: int, image_id: str) -> list[int]:
    """Seed material for one image: the run seed and a stable hash of the id (not Python's
    ``hash``, which changes between processes)."""
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    return [int(seed), *(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))]


def draw_other_images(
    index: DisjointClassIndex,
    image_id: str,
    keys: Sequence[int] | np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    disjoint_probability: float = 1.0,
    where: str | os.PathLike | None = None,
) -> np.ndarray:
    """Positions in ``index`` of the other images of each step, (steps, batch_size).

    Batches are consecutive slices of a seeded shuffle of the images sharing no class with the
    target (as one epoch of the reference's shuffled loader; reshuffled when exhausted, so a
    short list still fills every batch). With ``disjoint_probability < 1`` each slot is
    replaced, with probability ``1 - p``, by a random other image holding every target class.
    The draw depends only on ``seed``, ``image_id`` and ``keys``.

    Raises:
        DataError: no image shares no class with the target (naming ``where`` or the id).
    """
    rng = np.random.default_rng([*_image_entropy(seed, image_id), 0])
    pool = index.disjoint(keys)
    if batch_size == 0 or steps == 0:
        return np.zeros((steps, batch_size), dtype=np.int64)
    if pool.size == 0:
        names = ", ".join(str(int(k)) for k in np.asarray(keys).reshape(-1))
        raise DataError(f"each of the {len(index.ids)} images shares a class with this one "
                        f"(classes {names}); RIB needs other images without them "
                        "(rib.batch_size=0 uses the image alone)",
                        where if where is not None else image_id)
    need = steps * batch_size
    order = [rng.permutation(pool) for _ in range(-(-need // pool.size))]
    batches = np.concatenate(order)[:need].reshape(steps, batch_size)
    if disjoint_probability < 1:
        joint = index.containing(keys)
        own = index.position(image_id)
        joint = joint[joint != own] if own is not None else joint
        swap = rng.random((steps, batch_size)) >= disjoint_probability
        if joint.size and swap.any():
            batches[swap] = rng.choice(joint, size=int(swap.sum()))
    return batches


class OtherImageBatches(SequenceABC):
    """The other images of one target, step by step, loaded and augmented when first asked for.

    A sequence of :class:`OtherBatch` of length ``config.steps`` for :func:`compute_rib`; step
    ``t``'s augmentation has its own seed, so the batches do not depend on which were loaded.
    With ``config.resample_others=False`` every step returns the same batch (the first).

    Args:
        source: the dataset (``load_image``).
        index: the pool's :class:`DisjointClassIndex` (its ids are ``source`` ids).
        image_id: the target's id; keys: its classes.
        config: RIB settings (steps, batch size, augmentation, disjoint probability).
        seed: the run's seed.
        where: the target's path, for error messages.
    """

    def __init__(self, source, index: DisjointClassIndex, image_id: str, keys: np.ndarray,
                 config: RibConfig, *, seed: int = 0, where: str | os.PathLike | None = None) -> None:
        self.source = source
        self.index = index
        self.config = config
        self._entropy = _image_entropy(seed, image_id)
        draws = 1 if not config.resample_others else config.steps
        self.positions = draw_other_images(index, image_id, keys, steps=draws, batch_size=config.batch_size,
                                           seed=seed, disjoint_probability=config.disjoint_probability,
                                           where=where)
        self.transform = TrainTransform(crop_size=config.other_crop_size,
                                        resize_long=config.other_resize_long, hflip=config.other_flip)
        self._cache: dict[int, OtherBatch] = {}

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> OtherBatch:  # type: ignore[override]
        if not -len(self) <= step < len(self):
            raise IndexError(step)
        draw = step % len(self) if self.config.resample_others else 0
        if draw not in self._cache:
            self._cache.clear()  # steps are asked for in order: keep only the current one
            self._cache[draw] = self._load(draw)
        return self._cache[draw]

    def ids(self, step: int) -> list[str]:
        """The ids of step ``step``'s images."""
        draw = step if self.config.resample_others else 0
        return [self.index.ids[p] for p in self.positions[draw]]

    def _load(self, draw: int) -> OtherBatch:
        rng = np.random.default_rng([*self._entropy, 1, draw])
        positions = self.positions[draw]
        images = [self.transform(self.source.load_image(self.index.ids[p]), rng) for p in positions]
        if not images:
            return OtherBatch(torch.zeros(0, 3, 1, 1), torch.zeros(0, self.index.num_classes))
        if len({tuple(image.shape) for image in images}) > 1:
            raise ConfigError("rib.other_crop_size is null but the other images differ in size; "
                              "set a crop size to batch them")
        labels = torch.from_numpy(self.index.labels[positions].astype(np.float32))
        return OtherBatch(torch.stack(images), labels)


# ---------------------------------------------------------------------------------------------
# Fine-tuning without touching the model


class FoldedBatchNorm:
    """A module in eval mode run with given parameters, each BatchNorm folded into the convolution
    before it: ``conv(x, W s) + (beta - mean s)`` with ``s = gamma / sqrt(var + eps)``, the same
    function as ``bn(conv(x, W))`` with one pass less over the features, forward and backward.

    The folded weights are computed from the given parameters at every call, so gradients reach
    ``W``, ``gamma`` and ``beta`` as through the module. A BatchNorm is folded when the module's
    traced graph (:mod:`torch.fx`) feeds it the output of a bias-free convolution that nothing
    else uses; a module that does not trace runs as it is.

    Args:
        module: e.g. the fine-tuned stages of a ResNet; it is not modified.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.folds: list[tuple[str, str, str, nn.BatchNorm2d]] = []  # (new conv, conv, bn names, bn)
        self.runs = module
        try:
            traced = torch.fx.symbolic_trace(module)
        except Exception:  # any module fx cannot trace (data-dependent control flow) runs unfolded
            return
        modules = dict(module.named_modules())
        for node in list(traced.graph.nodes):
            norm = modules.get(node.target) if node.op == "call_module" else None
            source = node.args[0] if node.args else None
            if not (isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.track_running_stats
                    and isinstance(source, torch.fx.Node) and source.op == "call_module"
                    and len(source.users) == 1):
                continue
            conv = modules.get(source.target)
            if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.padding_mode != "zeros":
                continue
            name = f"folded_{len(self.folds)}"
            traced.add_submodule(name, nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True, device="meta"))
            self.folds.append((name, source.target, node.target, norm))
            source.target = name
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
        if self.folds:
            traced.graph.lint()
            traced.recompile()
            traced.delete_all_unused_submodules()
            self.runs = traced

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``module`` with ``params`` (named as its own parameters) on ``x``."""
        if not self.folds:
            return functional_call(self.module, params, (x,))
        params = dict(params)
        for name, conv, norm_name, norm in self.folds:
            scale = params.pop(f"{norm_name}.weight") * torch.rsqrt(norm.running_var + norm.eps)
            params[f"{name}.weight"] = params.pop(f"{conv}.weight") * scale[:, None, None, None]
            params[f"{name}.bias"] = params.pop(f"{norm_name}.bias") - norm.running_mean * scale
        return functional_call(self.runs, params, (x,))


class RibTuner:
    """The part of a CAM classifier RIB fine-tunes, run on working copies of its parameters.

    The frozen stages (all but the last ``trainable_stages``) run as they are, without autograd;
    the last stages (their BatchNorm folded, :class:`FoldedBatchNorm`) and the classifier run
    through :func:`torch.func.functional_call` with working tensors allocated once and reset in
    place from the model's own parameters before every image. The model itself is never
    modified, so it is exactly as before after every image, even when one fails halfway.

    Args:
        model: a :class:`~wsss.models.cam_net.CamNet` (``backbone.stages``, ``classifier``).
        trainable_stages: how many of the last backbone stages are fine-tuned (reference: 2).
    """

    def __init__(self, model: nn.Module, trainable_stages: int = 2) -> None:
        stages = list(model.backbone.stages)
        split = len(stages) - trainable_stages
        self.model = model
        self.trainable_stages = trainable_stages
        self.frozen_part = nn.Sequential(*stages[:split])
        self.tuned_part = nn.Sequential(*stages[split:])
        self.folded_part = FoldedBatchNorm(self.tuned_part)
        self._sources = dict(self.tuned_part.named_parameters())
        self.backbone_params = {name: p.detach().clone().requires_grad_(True)
                                for name, p in self._sources.items()}
        self.classifier_weight = model.classifier.weight.detach().clone().requires_grad_(True)

    def reset(self) -> None:
        """Working parameters := the model's parameters; gradients cleared."""
        with torch.no_grad():
            for name, working in self.backbone_params.items():
                working.copy_(self._sources[name])
                working.grad = None
            self.classifier_weight.copy_(self.model.classifier.weight)
            self.classifier_weight.grad = None

    @torch.no_grad()
    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        """Features after the frozen stages; constant while fine-tuning (BatchNorm is frozen)."""
        return self.frozen_part(images)

    def maps(self, features: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """Raw class maps from frozen-stage features, with the working parameters."""
        features = self.folded_part(self.backbone_params, features)
        weight = self.classifier_weight
        if channels is not None:
            weight = weight.index_select(0, channels)
        return F.conv2d(features, weight)

    def optimizer(self, config: RibConfig, settings: RibSettings | None = None):
        """A fresh SGD over the working parameters (classifier lr x ``classifier_lr_mult``) and its
        poly schedule over ``config.steps`` updates, as the reference's ``PolyOptimizer``;
        ``settings`` (:func:`scaled_settings`) replace the groups' learning rates and decays."""
        optimizer = build_sgd([(self.backbone_params.values(), 1.0),
                               ([self.classifier_weight], config.classifier_lr_mult)],
                              config.lr, weight_decay=config.weight_decay,
                              reference_momentum_quirk=config.reference_momentum_quirk)
        if settings is not None and settings.logit_scale != 1.0:
            for group in optimizer.param_groups:
                classifier = any(p is self.classifier_weight for p in group["params"])
                group["lr"] = settings.classifier_lr if classifier else settings.backbone_lr
                group["weight_decay"] = (settings.classifier_weight_decay if classifier
                                         else settings.backbone_weight_decay)
        return optimizer, poly_lr_scheduler(optimizer, config.steps, config.poly_power)


def _as_batches(other_images, steps: int) -> tuple[Sequence[OtherBatch | None], int]:
    """(batches per step, number of steps): a sequence gives ``min(steps, len)`` steps (the
    reference's loop ends with its loader); one batch or ``None`` is reused at every step."""
    if other_images is None or isinstance(other_images, OtherBatch):
        return [other_images] * steps, steps
    if len(other_images) == 0:
        raise ValueError("other_images is an empty sequence; pass None to fine-tune on the image alone")
    return other_images, min(steps, len(other_images))


def _layout(device: torch.device) -> torch.memory_format:
    """The images' memory format: channels-last on a CPU (oneDNN's own layout), where it is
    faster in bfloat16 and no slower in float32 (``docs/speed.md``)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _autocast(device: torch.device, config: RibConfig):
    """bfloat16 autocast for the fine-tuned stages when ``config.bfloat16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bfloat16)


def _fine_tune(tuner: RibTuner, image: np.ndarray, keys: np.ndarray, other_images, config: RibConfig,
               device: torch.device, scale: str = "reference", trace: bool = False) -> RibResult:
    """The RIB loop for checked inputs; ``tuner`` is reset first. ``scale="image"`` measures the
    logit scale at step 0 (:func:`scaled_settings`); ``trace`` fills the result's trace."""
    tuner.reset()
    dtype = tuner.classifier_weight.dtype
    channels = torch.as_tensor(keys - 1, device=device)
    target_positive = torch.ones(len(keys), dtype=torch.bool, device=device)
    batches, steps = _as_batches(other_images, config.steps)
    loss_scale = [scale in config.loss_scales for scale in config.scales]
    # the target at every scale, through the frozen stages once for all steps
    layout = _layout(device)
    inputs = multiscale_inputs(image, config.scales, flip=config.flip)
    frozen = [tuner.frozen(x.to(device, dtype).contiguous(memory_format=layout)) for x in inputs]
    settings = scaled_settings(config)  # literal until step 0 has measured the logits
    optimizer = schedule = None  # made before the first update, once the settings are known
    accumulated: list[torch.Tensor | None] = [None] * len(frozen)
    cached_batch, cached_features = None, None
    taken, stop = 0, "steps"
    steps_trace: list[dict[str, float | list[float]]] = []
    for step in range(steps):
        update = step < steps - 1  # the last step's update would never be used
        step_maps, target_logits, plain_logits = [], [], []
        for index, features in enumerate(frozen):
            with torch.set_grad_enabled(update and loss_scale[index]), _autocast(device, config):
                raw = tuner.maps(features, channels).to(dtype)  # (2, C, h, w)
            step_maps.append(merge_flips(F.relu(raw.detach())))
            if index == 0 and step > 0 and map_explodes(step_maps[0], config.explode_threshold,
                                                        config.explode_ratio):
                stop = "explode"
                break
            if update and loss_scale[index]:
                target_logits.append(pool_logits(raw, target_positive, channels, config))
            if loss_scale[index] and (trace or (step == 0 and scale == "image")):
                plain_logits.append(gap_pool(raw.detach()))  # (2, C): the classifier's own logits
        if stop == "explode":
            if config.reference_explode_accumulation:  # the reference added it before checking
                accumulated[0] = accumulated[0] + step_maps[0]
            break
        if step == 0 and scale == "image":
            settings = scaled_settings(config, positive_mean(torch.cat(plain_logits)), scale)
        accumulated = [m if a is None else a + m for a, m in zip(accumulated, step_maps)]
        taken += 1
        if trace:
            steps_trace.append(_trace_entry(target_logits, plain_logits, step_maps[0]))
        if not update:
            break
        target_sum = torch.stack([y.sum() for y in target_logits]).sum()
        if abs(float(target_sum.detach())) > settings.margin:
            stop = "margin"
            break
        if optimizer is None:
            optimizer, schedule = tuner.optimizer(config, settings)
        loss = -target_sum
        batch = batches[step]
        if batch is not None and len(batch.images):
            if batch is not cached_batch:  # a reused batch keeps its frozen-stage features
                images = batch.images.to(device, dtype).contiguous(memory_format=layout)
                cached_batch, cached_features = batch, tuner.frozen(images)
            labels = batch.labels.to(device, dtype)
            with _autocast(device, config):
                raw = tuner.maps(cached_features).to(dtype)
            all_channels = torch.arange(raw.shape[1], device=device)
            loss = loss + rib_loss(pool_logits(raw, labels > 0.5, all_channels, config), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    strided, high_res = assemble_maps(accumulated, image.shape[:2], tuner.model.output_stride)
    return RibResult(keys=keys, strided=normalise_maps(strided).float().cpu(),
                     high_res=normalise_maps(high_res).float().cpu(), steps=taken, stop=stop,
                     logit_scale=settings.logit_scale, trace=steps_trace)


def _trace_entry(target_logits: list[torch.Tensor], plain_logits: list[torch.Tensor], first_scale: torch.Tensor,
                 area_threshold: float = 0.3) -> dict[str, float | list[float]]:
    """One step of :attr:`RibResult.trace`."""
    target_sum = float(torch.stack([y.detach().sum() for y in target_logits]).sum()) if target_logits else None
    score = torch.cat(plain_logits).mean(dim=0)  # (C,) over the loss rows
    peak = first_scale.amax(dim=(-2, -1), keepdim=True)
    area = ((first_scale > area_threshold * peak) & (peak > 0)).to(torch.float64).mean(dim=(-2, -1))
    return {"target_sum": target_sum, "score": score.double().cpu().tolist(), "area": area.cpu().tolist()}


def compute_rib(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    other_images: Sequence[OtherBatch] | OtherBatch | None,
    config: RibConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    where: str | os.PathLike | None = None,
    tuner: RibTuner | None = None,
    scale: str = "reference",
    trace: bool = False,
    **settings,
) -> RibResult:
    """RIB maps of one image for its labelled classes.

    Args:
        model: the CAM classifier (:class:`~wsss.models.cam_net.CamNet`), in eval mode, on
            ``device``; computation runs in its parameters' dtype. It is not modified.
        image: ``uint8`` (H, W, 3) RGB.
        keys: the image's labelled foreground class ids (1..K).
        other_images: the other images of each step (step ``t`` uses item ``t``; a shorter
            sequence ends the run early, as the reference's loader), or one batch for every
            step, or ``None`` for the target alone. See :class:`OtherImageBatches`.
        config: RIB settings (default: the reference's).
        device: where to run the network.
        where: the image's path or id, for error messages.
        tuner: a :class:`RibTuner` of ``model`` to reuse (saves allocating working parameters).
        scale: ``"reference"``: the literal learning rates and margin; ``"image"``: in this
            network's logit units, measured on the image (see the module docstring).
        trace: record the class scores and map areas of every step (:attr:`RibResult.trace`).
        **settings: :class:`RibConfig` fields replacing ``config``'s.

    Returns:
        A :class:`RibResult` (float32, CPU) with the number of steps taken and why it stopped.

    Raises:
        DataError: no labelled class. ConfigError: a class id outside 1..K, a model in training
        mode, a bad setting.
    """
    config = with_settings(config, RibConfig, settings, "RIB")
    check_scale(scale)
    _check_eval_mode(model)
    keys = check_keys(keys, model.num_classes, where)
    weight = model.classifier.weight
    working = None if tuner is None else tuner.classifier_weight
    if (tuner is None or tuner.model is not model or tuner.trainable_stages != config.trainable_stages
            or working.dtype != weight.dtype or working.device != weight.device):
        tuner = RibTuner(model, config.trainable_stages)
    return _fine_tune(tuner, image, keys, other_images, config, torch.device(device), scale, trace)


def make_ribs(
    model: nn.Module,
    source,
    store: MapStore | str | os.PathLike,
    *,
    config: RibConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    pool=None,
    index: DisjointClassIndex | None = None,
    scale: str = "reference",
    **settings,
) -> int:
    """Write RIB maps for every image of ``source`` into a :class:`~wsss.stores.maps.MapStore`.

    Other images are drawn from all of ``pool``'s images (default: ``source``'s; the reference
    takes targets and other images from the same train_aug list). Resumable and sharded by
    ``RANK``/``WORLD_SIZE`` (or ``dist``) through
    :func:`~wsss.runtime.run_per_image`; the other images of an image depend only on
    ``seed`` and its id, so the maps do not depend on sharding or resuming. The model is switched
    to eval mode for the run and back afterwards, and is otherwise not modified.

    Args:
        model: the classifier, on ``device``.
        source: a dataset with ``ids``, ``classes``, ``load_image`` and ``image_labels`` (or
            ``label_vector``).
        store: the map store or its directory.
        config: RIB settings.
        device: where to run the network.
        progress: show a progress bar.
        seed: the run's seed (other images and their augmentation).
        ids: the target images, a subset of ``source.ids`` (default: all).
        dist: this process's rank (default: from the environment).
        pool: the dataset the other images come from (default: ``source``), e.g. the classifier's
            training split when the targets are another split.
        index: a prebuilt :class:`DisjointClassIndex` over ``pool`` (default: built here, once).
        scale: ``"reference"`` or ``"image"``, as :func:`compute_rib`.
        **settings: :class:`RibConfig` fields replacing ``config``'s.

    Returns:
        How many images were processed in this call.

    Raises:
        DataError: an image without labelled class, or with no image sharing no class with it.
    """
    config = with_settings(config, RibConfig, settings, "RIB")
    check_scale(scale)
    store = store if isinstance(store, MapStore) else MapStore(store)
    targets = list(source.ids if ids is None else ids)
    pool = source if pool is None else pool
    for dataset in (source, pool):
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) - 1 != model.num_classes:
            raise ConfigError(
                f"the dataset has {len(classes) - 1} foreground classes, the classifier {model.num_classes}"
            )
    if index is not None and index.num_classes != model.num_classes:
        raise ConfigError(f"the disjoint-class index has {index.num_classes} classes, the classifier "
                          f"{model.num_classes}")
    device = torch.device(device)
    built: dict[str, object] = {}
    stops: dict[str, int] = {}

    def where(image_id: str):
        return source.image_path(image_id) if hasattr(source, "image_path") else image_id

    def work(image_id: str) -> None:
        if "index" not in built:  # once per run, and only when some image is left to do
            built["index"] = index or DisjointClassIndex.from_source(pool, num_classes=model.num_classes)
            built["tuner"] = RibTuner(model, config.trainable_stages)
        keys = check_keys(_image_keys(source, image_id), model.num_classes, where(image_id))
        others = OtherImageBatches(pool, built["index"], image_id, keys, config, seed=seed,
                                   where=where(image_id)) if config.batch_size else None
        result = _fine_tune(built["tuner"], source.load_image(image_id), keys, others, config, device, scale)
        log.debug("rib %s: %d steps, stop: %s, logit scale %.3g", image_id, result.steps, result.stop,
                  result.logit_scale)
        stops[result.stop] = stops.get(result.stop, 0) + 1
        store.save(image_id, result.to_maps())

    with eval_mode(model):
        done = run_per_image(targets, work, store.has, desc="rib", dist=dist, progress=progress)
    if done:  # every image exploding at step 1, or stopping on the margin at step 0, is worth seeing
        ended = ", ".join(f"{reason}: {count}" for reason, count in sorted(stops.items()))
        log.info("rib: %d images; ended by %s", done, ended)
    return done


def climb_report(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    other_images: Sequence[OtherBatch] | OtherBatch | None,
    config: RibConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    where: str | os.PathLike | None = None,
    **settings,
) -> dict[str, RibResult]:
    """How RIB climbs on one image at both settings: ``{"reference": ..., "image": ...}``, each a
    :class:`RibResult` whose ``trace`` holds the target's logit sum, class scores and map areas
    at every step and whose ``logit_scale`` is the ``c`` used (arguments as :func:`compute_rib`)."""
    return {scale: compute_rib(model, image, keys, other_images, config, device=device, where=where,
                               scale=scale, trace=True, **settings)
            for scale in ("reference", "image")}
