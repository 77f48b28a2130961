"""BBAM: bounding box attribution maps (Lee, Yi, Shin and Yoon, CVPR 2021).

For every object (a box ``o`` of class ``c``) BBAM finds the smallest mask ``M`` of the image
that keeps the detector's answer about ``o``: its class probability and its box. Per object:

1. **Proposals.** ``proposals`` (1000) boxes jittered around ``o``, each coordinate moved by
   ``U(-jitter, jitter)`` (0.3) of the box's side and clipped to the image (reference
   ``tools/BBAM/BBAM_training_images_multi.py`` L119-137). One pass of the detector's heads on
   them without gradients; a proposal is kept when its arg-max class is ``c`` and its class-``c``
   regressed box has IoU > 0.9 with ``o`` (L147-162). When no more than ``max_proposals`` (100)
   pass, the selection is redone at 0.85, then 0.8; the first threshold with more than 100 keeps
   its first 100, otherwise the last threshold's set is kept (the reference's order).
2. **Mask.** A raw tensor at stride ``s = 16 + 48 sqrt(box area / image area)`` pixels of the
   detector's input, ``(int(h / s), int(w / s))`` cells (L183-184), 1 inside the regressed boxes of
   the kept proposals and 0 elsewhere (L185-189), clamped to [0, 1] after every step (L218).
3. **Perturbation** ``Phi(I, M)``: the mask upsampled bilinearly (``align_corners=True``) to the
   input and multiplied onto the *normalised* image, so a masked-out pixel becomes the mean
   colour (``data_utils.py`` L126-143, noise method ``constant``).
4. **Loss** (L197-216), with ``t`` the class-``c`` box deltas (the RoI heads' box coder units,
   weights 10, 10, 5, 5) and ``p`` the class-``c`` softmax probability, from the clean image
   (detached) and the perturbed one (tilde), averaged over the kept proposals::

       mean_i [ box_weight * mean_4 |t_i - t~_i| + class_weight * |p_i - p~_i| ]
           + l1_weight * sum |M| + tv_weight * TV_beta(M)

   ``box_weight = class_weight = 1/2``, ``l1_weight`` 0.007, ``tv_weight`` 1e-4, ``beta`` 3;
   :func:`tv_norm` is the reference's (``BBAM_utils.py`` ``tv_norm(diagonal=True, sum=True)``):
   rows, columns, and the two diagonals counted twice. Adam, lr 0.02, 300 steps.

**What differs from the reference** (same results, other cost or clearer edges):

* The optimisation runs the detector's backbone and RoI heads on the fixed proposals
  (:func:`wsss.models.detector.box_outputs`), not the whole detector: no transform, RPN or NMS
  per step (the reference runs its RPN every step and throws the result away). The image is
  normalised (and resized, if the detector resizes) once.
* Several objects of an image optimise in one batch (``objects_per_batch``): one batch row per
  object, its own mask and proposals. In eval mode the rows are independent and each mask's
  gradient is its own loss's, so the masks are those of one-by-one runs (to float rounding).
* The jitter is drawn from a generator seeded by ``seed`` and the image id (the reference draws
  from Python's unseeded ``random``), so a resumed or resharded run gives the same masks.
* IoU is computed on the float boxes (the reference truncates coordinates to integers); the
  initial mask clips the regressed boxes to the grid (the reference's ``int()`` of a negative
  coordinate indexes from the end).
* **No kept proposal**: the reference saves an all-zero mask (L163-179); so does this code, and
  the map file records 0 kept proposals for the box (``LocalizationMaps.proposals``). The
  pseudo-label stage fills such a box as the reference does (box-fill CRF, ``anno_utils.py``
  L140-168).
* An image without boxes gets a map file with no channels; a box that is empty (zero width or
  height, ``xmin = xmax``), not finite, outside its image or of an unknown class is a
  :class:`~wsss.errors.DataError` naming the image, before any work on it.

**Scale** (``scale="image"``, ``docs/scale.md``): the stride formula is in pixels of the
reference's input, VOC's 375 x 500 resized to a short side of 800 (800 x 1067,
:data:`REFERENCE_DETECTOR_INPUT`). At ``image`` the stride is multiplied by the input's diagonal
over that one's, so the mask has the reference's number of cells at every input size; at
``reference`` it is literal (a 128-px input then gets 4 x 4 cells for a box of a tenth of it).

Example:
    >>> detector = load_detector("work/bbam_detector.pt")
    >>> result = compute_bbam(detector, image, boxes, classes, config=BbamConfig(steps=100))
    >>> result.masks.shape, result.kept            # (N, H, W) in [0, 1]; kept proposals per box
    >>> make_bbam_maps(detector, dataset, "work/maps/bbam", scale="image")   # resumable
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from wsss.config import Settings, check_ranges, check_scale, run_only_field, with_settings
from wsss.errors import ConfigError
from wsss.models.detector import box_outputs, check_detection_boxes, head_outputs
from wsss.runtime import DistInfo, eval_mode, run_per_image
from wsss.stores.maps import LocalizationMaps, MapStore

log = logging.getLogger(__name__)

__all__ = [
    "REFERENCE_DETECTOR_INPUT",
    "BbamConfig",
    "BbamResult",
    "ObjectProblem",
    "PreparedObject",
    "bbam_losses",
    "bbam_summary",
    "compute_bbam",
    "detector_input",
    "initial_mask",
    "jitter_boxes",
    "make_bbam_maps",
    "mask_shape",
    "mask_stride",
    "optimise_masks",
    "prepare_objects",
    "select_proposals",
    "tv_norm",
    "upsample_mask",
]

REFERENCE_DETECTOR_INPUT = (800, 1067)
"""(H, W) of the detector input the reference's stride formula was set for: VOC's 375 x 500
photograph resized to the test short side of 800 (``BBAM_VOC_aug_FPN_R101_FasterRCNN_test.yaml``
``MIN_SIZE_TEST``; 500 * 800 / 375 = 1066.7). Diagonal 1333.6 px."""


@dataclass
class BbamConfig(Settings):
    """BBAM's attribution settings; defaults are the reference's
    (``tools/BBAM/BBAM_training_images_multi.py``) with the line."""

    option_name: ClassVar[str] = "bbam"

    proposals: int = 1000  # L125: 1000 jittered boxes per object
    jitter: float = 0.3  # L126: U(-0.3, 0.3) of the box's width / height per coordinate
    iou_thresholds: tuple[float, ...] = (0.9, 0.85, 0.8)  # L147
    max_proposals: int = 100  # L153-155
    stride_base: float = 16.0  # L183: stride = 16 + 48 sqrt(box area / image area)
    stride_slope: float = 48.0  # L183
    steps: int = 300  # --max_iter_mask
    lr: float = 0.02  # --lr_mask (Adam)
    box_weight: float = 0.5  # L207: mean |delta difference| / 2
    class_weight: float = 0.5  # L208: |probability difference| / 2
    l1_weight: float = 0.007  # l1_coeff (L92)
    tv_weight: float = 1e-4  # --tv_coeff
    tv_beta: float = 3.0  # --tv_beta
    seed: int = 0  # wsss: the jitter's generator (the reference's is unseeded)
    objects_per_batch: int = run_only_field(8)  # wsss: objects of an image optimised together (speed, memory)

    def validate(self) -> None:
        check_ranges(self, "bbam", positive=("lr", "stride_base"),
                     at_least={"proposals": 1, "jitter": 0, "max_proposals": 1, "stride_slope": 0, "steps": 0,
                               "box_weight": 0, "class_weight": 0, "l1_weight": 0, "tv_weight": 0,
                               "tv_beta": 1, "seed": 0, "objects_per_batch": 1})
        if self.jitter >= 0.5:
            raise ConfigError(f"bbam.jitter must be below 0.5 (a jittered box could be empty), got {self.jitter}")
        if not self.iou_thresholds or any(not 0 <= t < 1 for t in self.iou_thresholds):
            raise ConfigError(f"bbam.iou_thresholds must be values in [0, 1), got {list(self.iou_thresholds)}")


# ----------------------------------------------------------------------------------- pieces
def tv_norm(mask: torch.Tensor, beta: float = 3.0) -> torch.Tensor:
    """The reference's total variation: ``sum |difference| ** beta`` over vertical, horizontal and
    both diagonal neighbours, the diagonals counted twice (its four diagonal terms are two pairs
    of the same differences).

    Args:
        mask: (..., h, w).
        beta: the exponent (3).

    Returns:
        (...) one value per mask.
    """
    def total(difference: torch.Tensor) -> torch.Tensor:
        return difference.abs().pow(beta).sum(dim=(-2, -1))

    rows = total(mask[..., 1:, :] - mask[..., :-1, :])
    columns = total(mask[..., :, 1:] - mask[..., :, :-1])
    diagonals = total(mask[..., 1:, 1:] - mask[..., :-1, :-1]) + total(mask[..., 1:, :-1] - mask[..., :-1, 1:])
    return rows + columns + 2 * diagonals


def mask_stride(box_area: float, image_area: float, input_size: tuple[int, int], *, scale: str = "reference",
                base: float = 16.0, slope: float = 48.0) -> float:
    """The mask's stride in input pixels, ``base + slope sqrt(box_area / image_area)``; at
    ``scale="image"`` times the input's diagonal over :data:`REFERENCE_DETECTOR_INPUT`'s (equal
    to the literal value for an 800 x 1067 input)."""
    stride = base + slope * math.sqrt(max(float(box_area), 0.0) / float(image_area))
    if check_scale(scale) == "image":
        stride *= math.hypot(*input_size) / math.hypot(*REFERENCE_DETECTOR_INPUT)
    return stride


def mask_shape(input_size: tuple[int, int], stride: float) -> tuple[int, int]:
    """``(int(h / s), int(w / s))`` as the reference (L184), at least one cell per side."""
    height, width = input_size
    return max(1, int(height / stride)), max(1, int(width / stride))


def jitter_boxes(box: torch.Tensor, count: int, amount: float, input_size: tuple[int, int],
                 generator: torch.Generator) -> torch.Tensor:
    """``count`` boxes around ``box``: each coordinate moved by ``U(-amount, amount)`` of the box's
    width (x) or height (y), then clipped to the (h, w) input. float32 (count, 4) on ``box``'s device."""
    box = box.detach().to(torch.float64).cpu()
    sides = torch.stack([box[2] - box[0], box[3] - box[1]] * 2)
    shifts = (torch.rand(count, 4, generator=generator, dtype=torch.float64) * 2 - 1) * amount * sides
    jittered = box + shifts
    height, width = input_size
    limits = torch.tensor([width, height, width, height], dtype=torch.float64)
    jittered = torch.minimum(jittered.clamp(min=0), limits)
    return jittered.to(torch.float32)


def select_proposals(logits: torch.Tensor, regressed: torch.Tensor, target: torch.Tensor, cls: int,
                     thresholds: Sequence[float] = (0.9, 0.85, 0.8), max_count: int = 100
                     ) -> tuple[torch.Tensor, float | None]:
    """The proposals that explain an object, as the reference picks them.

    Args:
        logits: (n, K) class logits of the n proposals.
        regressed: (n, 4) their class-``cls`` regressed boxes.
        target: (4,) the object's box.
        cls: its class.
        thresholds: IoU thresholds tried in order.
        max_count: at most this many are kept.

    Returns:
        ``(indices, threshold)``: indices (in proposal order) whose arg-max class is ``cls`` and
        whose regressed box has IoU above the threshold with ``target``, for the first threshold
        where more than ``max_count`` pass (its first ``max_count``), else for the last one; and
        that threshold (None when nothing passed).
    """
    right = logits.argmax(dim=1) == int(cls)
    iou = box_iou(regressed.to(torch.float32), target.to(torch.float32).reshape(1, 4))[:, 0]
    chosen = torch.zeros(0, dtype=torch.long, device=logits.device)
    threshold = None
    for threshold in thresholds:
        chosen = torch.nonzero(right & (iou > threshold)).reshape(-1)
        if len(chosen) > max_count:
            chosen = chosen[:max_count]
            break
    return chosen, (float(threshold) if len(chosen) else None)


def initial_mask(regressed: torch.Tensor, stride: float, shape: tuple[int, int]) -> torch.Tensor:
    """(h, w) float32: 1 in the cells ``[int(y0 / s), int(y1 / s)) x [int(x0 / s), int(x1 / s))`` of
    every regressed box (the reference's L185-189; coordinates clipped to the grid), 0 elsewhere."""
    mask = torch.zeros(shape, dtype=torch.float32)
    cells = torch.floor(regressed.detach().to(torch.float64).cpu() / stride).to(torch.int64)
    height, width = shape
    for x0, y0, x1, y1 in cells.tolist():
        mask[min(max(y0, 0), height):min(max(y1, 0), height), min(max(x0, 0), width):min(max(x1, 0), width)] = 1
    return mask


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) bilinear with ``align_corners=True`` (the reference's
    ``UpsamplingBilinear2d``)."""
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    up = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=True)
    return up.reshape(*lead, *size)


def detector_input(detector: torch.nn.Module, image: np.ndarray, device: torch.device
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image as the detector sees it: ``(1, 3, Hp, Wp)`` normalised (resized if the detector
    resizes) and padded to a multiple of 32, and its (h, w) before padding."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device).float() / 255.0
    with eval_mode(detector), torch.no_grad():
        images, _ = detector.transform([tensor])
    height, width = images.image_sizes[0]
    return images.tensors, (int(height), int(width))


# ----------------------------------------------------------------------------------- optimisation
@dataclass
class ObjectProblem:
    """One object's optimisation: what :func:`optimise_masks` needs.

    Attributes:
        cls: the object's class.
        proposals: (n, 4) the kept jittered boxes, input pixels (on the detector's device).
        deltas: (n, 4) their class-``cls`` box deltas on the clean image.
        probabilities: (n,) their class-``cls`` probabilities on the clean image.
        mask: (h, w) the initial mask.
    """

    cls: int
    proposals: torch.Tensor
    deltas: torch.Tensor
    probabilities: torch.Tensor
    mask: torch.Tensor


@dataclass
class PreparedObject:
    """What selection found for one object: its kept proposals' problem (None when none was
    kept), how many, at which threshold, and its mask's stride and (h, w) cells."""

    problem: ObjectProblem | None
    kept: int
    threshold: float | None
    stride: float
    cells: tuple[int, int]


def prepare_objects(detector: torch.nn.Module, image: torch.Tensor, input_size: tuple[int, int],
                    targets: torch.Tensor, classes: Sequence[int], config: BbamConfig,
                    generator: torch.Generator, scale: str = "reference") -> list[PreparedObject]:
    """Jitter, select and initialise every object of one image (steps 1-2 of the module docstring),
    with one backbone pass of the clean image and one head pass per object, without gradients.

    Args:
        detector: in eval mode.
        image: (1, 3, Hp, Wp) the normalised, padded input.
        input_size: its (h, w) before padding.
        targets: (N, 4) the objects' boxes in input pixels.
        classes: (N,) their classes.
        config: proposals, jitter, thresholds, stride.
        generator: the jitter's random numbers (drawn object after object).
        scale: ``"reference"`` or ``"image"`` (:func:`mask_stride`).
    """
    height, width = input_size
    coder = detector.roi_heads.box_coder
    prepared = []
    with torch.no_grad():
        features = detector.backbone(image)
        for target, cls in zip(targets, classes):
            cls = int(cls)
            jittered = jitter_boxes(target, config.proposals, config.jitter, input_size, generator).to(image.device)
            logits, deltas = head_outputs(detector, features, [input_size], [jittered])
            regressed = coder.decode_single(deltas[:, cls], jittered)
            chosen, threshold = select_proposals(logits, regressed, target.to(image.device), cls,
                                                 config.iou_thresholds, config.max_proposals)
            area = float((target[2] - target[0]) * (target[3] - target[1]))
            stride = mask_stride(area, height * width, input_size, scale=scale, base=config.stride_base,
                                 slope=config.stride_slope)
            cells = mask_shape(input_size, stride)
            problem = None
            if len(chosen):
                problem = ObjectProblem(cls=cls, proposals=jittered[chosen], deltas=deltas[chosen, cls],
                                        probabilities=logits[chosen].softmax(dim=1)[:, cls],
                                        mask=initial_mask(regressed[chosen], stride, cells))
            prepared.append(PreparedObject(problem, len(chosen), threshold, stride, cells))
    return prepared


def bbam_losses(detector: torch.nn.Module, image: torch.Tensor, input_size: tuple[int, int],
                problems: Sequence[ObjectProblem], masks: Sequence[torch.Tensor], config: BbamConfig) -> torch.Tensor:
    """(B,) the loss of each object for its mask (the module docstring's formula), all objects of
    one image in one batch: row k is the image perturbed by ``masks[k]``, with object k's proposals.

    Args:
        detector: in eval mode.
        image: (1, 3, Hp, Wp) the normalised, padded input.
        input_size: its (h, w) before padding.
        problems: the objects.
        masks: (h_k, w_k) one mask per object (leaf tensors to differentiate).
        config: the loss weights.
    """
    height, width = input_size
    pad = (0, image.shape[-1] - width, 0, image.shape[-2] - height)
    full = torch.stack([F.pad(upsample_mask(mask, input_size), pad) for mask in masks])  # (B, Hp, Wp)
    logits, deltas = box_outputs(detector, image * full[:, None], [input_size] * len(problems),
                                 [problem.proposals for problem in problems])
    losses = []
    start = 0
    for problem, mask in zip(problems, masks):
        end = start + len(problem.proposals)
        probability = logits[start:end].softmax(dim=1)[:, problem.cls]
        box = (deltas[start:end, problem.cls] - problem.deltas).abs().mean(dim=1)
        detector_term = config.box_weight * box + config.class_weight * (probability - problem.probabilities).abs()
        losses.append(detector_term.mean() + config.l1_weight * mask.abs().sum()
                      + config.tv_weight * tv_norm(mask, config.tv_beta))
        start = end
    return torch.stack(losses)


def optimise_masks(detector: torch.nn.Module, image: torch.Tensor, input_size: tuple[int, int],
                   problems: Sequence[ObjectProblem], config: BbamConfig,
                   trace: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Optimise the masks of objects of one image together (one batch row per object).

    Args:
        detector: in eval mode; its parameters get no gradients.
        image: (1, 3, Hp, Wp) the normalised, padded input (:func:`detector_input`).
        input_size: its (h, w) before padding.
        problems: the objects, each with its proposals and initial mask.
        config: steps, learning rate and loss weights.
        trace: if given, the (B,) losses of every step are appended (detached).

    Returns:
        The final masks, (h_k, w_k) each, in [0, 1].
    """
    if not problems:
        return []
    masks = [problem.mask.to(image.device, torch.float32).clone().requires_grad_(True) for problem in problems]
    optimiser = torch.optim.Adam(masks, lr=config.lr)
    for _ in range(config.steps):
        losses = bbam_losses(detector, image, input_size, problems, masks, config)
        gradients = torch.autograd.grad(losses.sum(), masks)  # the masks' only: no detector gradients
        for mask, gradient in zip(masks, gradients):
            mask.grad = gradient
        optimiser.step()
        with torch.no_grad():
            for mask in masks:
                mask.clamp_(0, 1)
        if trace is not None:
            trace.append(losses.detach().cpu())
    return [mask.detach() for mask in masks]


# ----------------------------------------------------------------------------------- one image
@dataclass
class BbamResult:
    """BBAM of one image.

    Attributes:
        masks: float32 (N, H, W) in [0, 1], one per box, at the image's resolution.
        boxes: float32 (N, 4) the boxes, image pixels.
        classes: int64 (N,).
        kept: int64 (N,) the proposals kept per box (0: none; the mask is all zero).
        thresholds: float64 (N,) the IoU threshold the kept set came from (NaN where none).
        strides: float64 (N,) the mask's stride in input pixels.
        cells: int64 (N, 2) the mask's (h, w) cells.
    """

    masks: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    kept: np.ndarray
    thresholds: np.ndarray
    strides: np.ndarray
    cells: np.ndarray

    def to_maps(self) -> LocalizationMaps:
        """The map store's per-box maps (keys = classes, boxes, kept proposals; no strided maps)."""
        return LocalizationMaps(keys=self.classes, strided=None, high_res=self.masks, boxes=self.boxes,
                                proposals=self.kept)


def image_seed(seed: int, image_id: str) -> int:
    """The jitter generator's seed for an image: ``seed`` and the id's CRC-32 (stable across runs,
    processes and resumes)."""
    return (int(seed) * 0x9E3779B1 + zlib.crc32(str(image_id).encode())) % (2 ** 63)


def compute_bbam(
    detector: torch.nn.Module,
    image: np.ndarray,
    boxes: Any,
    classes: Any,
    *,
    config: BbamConfig | None = None,
    device: torch.device | str | None = None,
    scale: str = "reference",
    seed: int | None = None,
    where: str | os.PathLike | None = None,
    trace: list[torch.Tensor] | None = None,
    **settings: Any,
) -> BbamResult:
    """BBAM masks of every box of one image.

    Args:
        detector: a torchvision Faster R-CNN (:func:`wsss.training.detector.load_detector`); run
            in eval mode (its mode is restored), never modified.
        image: uint8 (H, W, 3) RGB.
        boxes: (N, 4) ``x0, y0, x1, y1`` image pixels (N may be 0).
        classes: (N,) class ids in 1..K.
        config: the settings (default: the reference's).
        device: where to run (default: the detector's).
        scale: ``"reference"`` or ``"image"`` (the mask stride; module docstring).
        seed: the jitter generator's seed (default: ``config.seed``).
        where: the file named in errors (the image's path).
        trace: if given, each batch's per-step losses are appended.
        **settings: :class:`BbamConfig` fields replacing ``config``'s.

    Raises:
        DataError: a box empty, outside the image or of a class the detector does not know.
    """
    config = with_settings(config, BbamConfig, settings, "BBAM")
    check_scale(scale)
    device = torch.device(device) if device is not None else next(detector.parameters()).device
    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    height, width = image.shape[:2]
    boxes, classes = check_detection_boxes(boxes, classes, (height, width), num_classes, where)
    count = len(boxes)
    generator = torch.Generator().manual_seed(config.seed if seed is None else int(seed))
    masks = np.zeros((count, height, width), dtype=np.float32)
    kept = np.zeros(count, dtype=np.int64)
    thresholds = np.full(count, np.nan)
    strides = np.zeros(count)
    cells = np.zeros((count, 2), dtype=np.int64)
    if count == 0:
        return BbamResult(masks, boxes, classes, kept, thresholds, strides, cells)

    with eval_mode(detector):
        tensor, input_size = detector_input(detector, image, device)
        h, w = input_size
        ratio = torch.tensor([w / width, h / height, w / width, h / height])
        prepared = prepare_objects(detector, tensor, input_size, torch.from_numpy(boxes) * ratio, classes, config,
                                   generator, scale)
        problems = []
        for index, item in enumerate(prepared):
            kept[index], strides[index], cells[index] = item.kept, item.stride, item.cells
            if item.problem is not None:
                thresholds[index] = item.threshold
                problems.append((index, item.problem))
        for start in range(0, len(problems), config.objects_per_batch):
            group = problems[start:start + config.objects_per_batch]
            finals = optimise_masks(detector, tensor, input_size, [p for _, p in group], config, trace)
            for (index, _), mask in zip(group, finals):
                masks[index] = _to_image(mask, input_size, (height, width))
    return BbamResult(masks, boxes, classes, kept, thresholds, strides, cells)


def _to_image(mask: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """A mask on the input grid -> float32 (H, W) in [0, 1] at the image's resolution: upsampled as
    in the optimisation, then resized bilinearly when the detector resized the image."""
    with torch.no_grad():
        full = upsample_mask(mask.float(), input_size)
        if tuple(input_size) != tuple(image_size):
            full = F.interpolate(full[None, None], size=image_size, mode="bilinear", align_corners=False)[0, 0]
        return full.clamp(0, 1).cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------------- a dataset
def make_bbam_maps(
    detector: torch.nn.Module,
    source: Any,
    store: MapStore | str | os.PathLike,
    *,
    config: BbamConfig | None = None,
    device: torch.device | str | None = None,
    ids: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    scale: str = "reference",
    **settings: Any,
) -> int:
    """BBAM maps of every image of ``source`` into a :class:`~wsss.stores.maps.MapStore`: per
    image one channel per box (keys = the boxes' classes, ``boxes``, ``proposals`` = kept counts).

    Resumable (an image whose file exists is skipped; a killed run loses at most the image it was
    on) and sharded by ``RANK``/``WORLD_SIZE`` (or ``dist``) with
    :func:`~wsss.runtime.run_per_image`. The jitter of an image is seeded by ``config.seed`` and
    its id, so its maps do not depend on the order, the number of processes or a resume.

    Args:
        detector: the trained detector (not modified).
        source: a dataset with ``ids``, ``classes``, ``load_image`` and ``boxes``.
        store: the map store or its folder.
        config, scale, **settings: as :func:`compute_bbam`.
        device: where to run (default: the detector's).
        ids: a subset of ``source.ids``.
        dist: this process's rank (default: from the environment).
        progress: a progress bar.

    Returns:
        How many images were processed in this call.

    Raises:
        ConfigError: the detector was trained on another number of classes.
        DataError: an image's boxes are unusable (naming the image), before its file is written.
    """
    config = with_settings(config, BbamConfig, settings, "BBAM")
    check_scale(scale)
    store = store if isinstance(store, MapStore) else MapStore(store)
    ids = list(source.ids if ids is None else ids)
    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    if len(source.classes) != num_classes:
        raise ConfigError(f"the dataset has {len(source.classes)} classes (background included), "
                          f"the detector {num_classes}")

    def work(image_id: str) -> None:
        where = source.image_path(image_id) if hasattr(source, "image_path") else image_id
        boxes, classes = source.boxes(image_id)
        result = compute_bbam(detector, source.load_image(image_id), boxes, classes, config=config,
                              device=device, scale=scale, seed=image_seed(config.seed, image_id), where=where)
        store.save(image_id, result.to_maps())

    return run_per_image(ids, work, store.has, desc="bbam", dist=dist, progress=progress)


def bbam_summary(store: MapStore | str | os.PathLike, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """What BBAM kept over a folder of its maps: objects, the share with no kept proposal (those
    the pseudo labels fill from the box), the mean number kept (over all objects and over those
    with some).

    Raises:
        DataError: a map file is unreadable or has no kept-proposal counts (not BBAM's).
    """
    from wsss.errors import DataError

    store = store if isinstance(store, MapStore) else MapStore(store)
    counts = []
    for image_id in (store.ids() if ids is None else ids):
        maps = store.load(image_id)
        if maps.proposals is None:
            raise DataError("not a BBAM map file (no kept-proposal counts)", store.path(image_id))
        counts.extend(int(c) for c in maps.proposals)
    counts_array = np.asarray(counts, dtype=np.float64)
    some = counts_array[counts_array > 0]
    return {
        "objects": len(counts),
        "no_proposal_share": float((counts_array == 0).mean()) if len(counts) else 0.0,
        "mean_kept": float(counts_array.mean()) if len(counts) else 0.0,
        "mean_kept_when_any": float(some.mean()) if len(some) else 0.0,
    }
