"""BANA's stage-1 classifier: background-aware pooling (BAP) over boxes, vectorised and as a loop.

Oh, Kim & Ham, "Background-Aware Pooling and Noise-Aware Loss for Weakly-Supervised Semantic
Segmentation", CVPR 2021 (reference: ``cvlab-yonsei/BANA`` ``models/ClsNet.py``, ``stage1.py``).

Notation: features ``f`` (B, D, h, w) of a backbone at stride ``s``; boxes ``(x0, y0, x1, y1)`` in
input pixels with classes in 1..K; classifier ``W`` (K + 1, D), background = row 0, bias-free
(``ClsNet.py`` L32: ``Conv2d(1024, 21, 1, bias=False)``).

1. **Definite background** ``m``: the pixels outside every box of the image (the reference's
   precomputed ``BgMaskfromBoxes``), nearest-resampled to the feature size (``ClsNet.py``
   ``F.interpolate(bg_mask, (fH, fW))``), then zero-padded to a multiple of N (``pad_for_grid``:
   split evenly when the padding is even, all at the end otherwise).
2. **Background prototypes** over an N x N grid (N = 4, ``configs/stage1.yml`` GRID_SIZE):
   ``q_j = sum_{p in cell j} m(p) f(p) / sum_{p in cell j} m(p)``, only for cells with
   ``sum m > 0`` (``get_denom_and_indices`` / ``get_bg_prototypes``).
3. **Attention** at every point p sampled inside a box:
   ``A(p) = 1/|J| sum_{j in J} ReLU(cos(f(p), q_j))`` over the image's valid cells J
   (``ClsNet.py`` BAP, not detached).
4. **Foreground prototypes**: weighted mean in 2 x 2 cells of the box (``ROI_SIZE [2, 2]``):
   ``r_c = sum_{p in cell c} (1 - A(p)) f(p) / sum_{p in cell c} (1 - A(p))``.
5. **GAP fallback**: weight 1 everywhere for an image without a valid background cell
   (``ClsNet.py`` L101-103) or whose background fraction (at input resolution) is <= 0.125
   (``stage1.py`` L103, "because VGG16 has output stride of 8").
   ``pooling="gap"`` applies it to every image: the baseline of the supplement's Sec. 2 and
   Table 2 (GAP against BAP), each 2 x 2 cell prototype the plain mean of the box's features in
   that cell (so their mean is the plain mean over the box) and the background cells classified
   as with BAP; only the attention weighting is gone.
6. **Loss** (:func:`bap_loss`): cross-entropy, averaged over all prototypes of the batch, of the
   box prototypes (target: the box's class) and of every valid background cell (target 0),
   background cells of fallback images included, as the reference (``stage1.py`` L104-110).

Where this departs from the reference, on purpose:

* **Sampling.** The reference resamples each box in a Python loop with ``grid_sample`` at its own
  feature extent (``ceil(x1) - floor(x0)`` points) and pools with strided windows that overlap or
  drop a column for odd extents. Here every box is sampled on the same ``box_samples`` x
  ``box_samples`` grid of bin centres with one ``torchvision.ops.roi_align`` call (one sample per
  bin, ``aligned=True``: input pixel edge ``x`` is feature coordinate ``x / s - 0.5``), and each
  of the 2 x 2 cells is exactly a quarter of the grid. Default 16 points a side (ours): a box up
  to 16 feature cells wide (128 px at stride 8) is sampled at least as densely as the reference
  samples it; a wider one (a 321-px VOC crop is 41 cells) more sparsely, at a fixed cost.
* **Coordinates.** The reference normalises boxes with ``(W - 1) / 2`` and samples with
  ``grid_sample``'s default corners; at 321 px and stride 8 its scale is exactly ``1 / 8``, the
  ``1 / s`` used here.

:func:`bap` is the vectorised version; :func:`bap_reference` computes the same thing with plain
loops over images, cells and boxes (``grid_sample`` per box), and the tests hold them equal.

Example:
    >>> net = BapNet("resnet18_w16", num_classes=K + 1)
    >>> out = net(images, boxes, box_image)             # boxes (M, 4) pixels, box_image (M,)
    >>> loss = bap_loss(out, box_classes)
    >>> maps = net.class_maps(images)                   # (B, K + 1, h, w), raw w_c . f
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError, DataError

__all__ = [
    "BACKGROUND_FRACTION_MIN",
    "BOX_SAMPLES",
    "GRID_SIZE",
    "POOLINGS",
    "POOL_CELLS",
    "BapNet",
    "BapOutput",
    "background_mask",
    "background_prototypes",
    "bap",
    "bap_loss",
    "bap_reference",
    "box_masks",
    "check_boxes",
    "check_pooling",
]

GRID_SIZE = 4  # BANA configs/stage1.yml MODEL.GRID_SIZE (training); stage 2 uses 1
POOL_CELLS = (2, 2)  # BANA configs/stage1.yml MODEL.ROI_SIZE [2, 2]
BACKGROUND_FRACTION_MIN = 0.125  # BANA stage1.py L103: BAP only where bg_mask.mean() > 0.125
BOX_SAMPLES = 16  # ours: points per box side (module docstring, "Sampling")
EPS = 1e-12  # BANA ClsNet.py weighted_avg_pool_2d and get_bg_prototypes: + 1e-12
POOLINGS = ("bap", "gap")  # BAP (the paper), GAP inside each box (the supplement's Sec. 2 baseline)
VGG_NAME = "vgg16_largefov"  # BANA models/Layers.py VGG16(dilation=1): fc6 dilation 1, 1024-d, stride 8


# --------------------------------------------------------------------------------- boxes
def check_boxes(boxes: np.ndarray | torch.Tensor, classes: np.ndarray | torch.Tensor,
                image_size: tuple[int, int], num_classes: int,
                where: str | os.PathLike | None = None) -> None:
    """Raise :class:`DataError` for a box that BANA cannot use.

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1`` in pixels.
        classes: (N,) class ids.
        image_size: (H, W).
        num_classes: K + 1 (background included).
        where: the file named in the error.

    Raises:
        DataError: no boxes, a shape other than (N, 4), a non-finite, empty (``x1 <= x0``) or
            out-of-image box, or a class outside 1..K. One line, naming the box.
    """
    boxes = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    classes = np.asarray(classes.detach().cpu() if isinstance(classes, torch.Tensor) else classes)
    height, width = image_size
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise DataError(f"BANA needs at least one (x0, y0, x1, y1) box, got shape {boxes.shape}", where)
    if classes.shape != (len(boxes),):
        raise DataError(f"{len(boxes)} boxes but class ids of shape {classes.shape}", where)
    for number, (box, cls) in enumerate(zip(boxes, classes), start=1):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not np.isfinite(box).all() or x1 <= x0 or y1 <= y0:
            raise DataError(f"box {number} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or not finite", where)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise DataError(f"box {number} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
                            f"{width}x{height} image", where)
        if int(cls) != cls or not 1 <= int(cls) < num_classes:
            raise DataError(f"box {number} has class {cls}, not a foreground class id in 1..{num_classes - 1}",
                            where)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W) bool: the pixels each box touches (``floor(x0) <= col < ceil(x1)``, rows alike).

    For VOC's integer boxes (``x0 = xmin - 1``, ``x1 = xmax``) these are exactly the box's
    pixels, the reference's ``[hmin:hmax, wmin:wmax]`` (``stage2.py``).
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64, device=boxes.device)
    rows = torch.arange(height, dtype=torch.float64, device=boxes.device)
    x0, y0 = boxes[:, 0].floor()[:, None], boxes[:, 1].floor()[:, None]
    x1, y1 = boxes[:, 2].ceil()[:, None], boxes[:, 3].ceil()[:, None]
    inside_x = (cols[None] >= x0) & (cols[None] < x1)  # (N, W)
    inside_y = (rows[None] >= y0) & (rows[None] < y1)  # (N, H)
    return inside_y[:, :, None] & inside_x[:, None, :]


def background_mask(boxes: torch.Tensor, box_image: torch.Tensor, batch: int, height: int, width: int
                    ) -> torch.Tensor:
    """(B, H, W) bool definite background: outside every box of each image."""
    box_image = torch.as_tensor(box_image, dtype=torch.long)
    background = torch.ones(batch, height, width, dtype=torch.bool, device=torch.as_tensor(boxes).device)
    if len(box_image):
        inside = box_masks(boxes, height, width).to(background.device)
        for b in range(batch):
            chosen = box_image == b
            if chosen.any():
                background[b] &= ~inside[chosen.to(inside.device)].any(dim=0)
    return background


# --------------------------------------------------------------------------------- BAP
@dataclass
class BapOutput:
    """What :func:`bap` (and :meth:`BapNet.forward`) returns.

    Attributes:
        fg_prototypes: (M, P, D) foreground prototypes, P = cells (2 x 2 -> 4, row-major).
        bg_prototypes: (Q, D) the valid background cells of the batch, image by image, cell by cell.
        bg_image: (Q,) the image of each background prototype.
        attention: (M, S, S) background attention A at each box's sample points (0 where the
            image falls back to GAP).
        weights: (M, S, S) the pooling weight (1 - A, or 1 under GAP).
        uses_bap: (B,) bool, False where the image falls back to GAP.
        background_fraction: (B,) share of the image's pixels that are definite background.
        fg_logits, bg_logits: classifier scores of the prototypes (only from :class:`BapNet`).
    """

    fg_prototypes: torch.Tensor
    bg_prototypes: torch.Tensor
    bg_image: torch.Tensor
    attention: torch.Tensor
    weights: torch.Tensor
    uses_bap: torch.Tensor
    background_fraction: torch.Tensor
    fg_logits: torch.Tensor | None = None
    bg_logits: torch.Tensor | None = None


def _grid_padding(size: int, grid: int) -> tuple[int, int]:
    """(before, after) zero padding to a multiple of ``grid``: BANA ``pad_for_grid`` splits an even
    padding evenly and puts an odd one at the end."""
    pad = (-size) % grid
    before = pad // 2 if pad % 2 == 0 else 0
    return before, pad - before


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`; else a one-line :class:`ConfigError`."""
    if pooling not in POOLINGS:
        raise ConfigError(f"BANA pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def _check_args(features: torch.Tensor, boxes: torch.Tensor, box_image: torch.Tensor,
                background: torch.Tensor, grid_size: int, cells: Sequence[int], samples: int,
                pooling: str) -> None:
    check_pooling(pooling)
    if features.ndim != 4:
        raise ValueError(f"features must be (B, D, h, w), got {tuple(features.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or box_image.shape != (boxes.shape[0],):
        raise ValueError(f"boxes must be (M, 4) with box_image (M,), got {tuple(boxes.shape)} "
                         f"and {tuple(box_image.shape)}")
    if background.ndim != 3 or background.shape[0] != features.shape[0]:
        raise ValueError(f"background must be (B, H, W) for B = {features.shape[0]}, got {tuple(background.shape)}")
    if grid_size < 1:
        raise ConfigError(f"BAP grid_size must be at least 1, got {grid_size}")
    if len(cells) != 2 or any(int(c) < 1 or samples % int(c) for c in cells):
        raise ConfigError(f"BAP box_samples ({samples}) must be a multiple of each pooling cell count {list(cells)}")


def _feature_background(background: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) float definite background at feature size (nearest, as the reference)."""
    return F.interpolate(background[:, None].float(), size=size, mode="nearest")[:, 0]


def background_prototypes(features: torch.Tensor, background: torch.Tensor, grid_size: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell mean background features over an N x N grid, vectorised.

    Args:
        features: (B, D, h, w).
        background: (B, h, w) float in {0, 1}, at feature size.
        grid_size: N.

    Returns:
        ``(prototypes (B, N*N, D), counts (B, N*N))``; a cell is valid where its count is > 0.
    """
    batch, dims, height, width = features.shape
    top, bottom = _grid_padding(height, grid_size)
    left, right = _grid_padding(width, grid_size)
    mask = F.pad(background[:, None], (left, right, top, bottom))
    padded = F.pad(features, (left, right, top, bottom))
    cell_h, cell_w = padded.shape[2] // grid_size, padded.shape[3] // grid_size
    sums = (padded * mask).reshape(batch, dims, grid_size, cell_h, grid_size, cell_w).sum(dim=(3, 5))
    counts = mask.reshape(batch, 1, grid_size, cell_h, grid_size, cell_w).sum(dim=(3, 5))
    prototypes = sums / (counts + EPS)
    return prototypes.flatten(2).transpose(1, 2), counts.flatten(1)


def bap(
    features: torch.Tensor,
    boxes: torch.Tensor,
    box_image: torch.Tensor,
    background: torch.Tensor,
    *,
    stride: float,
    grid_size: int = GRID_SIZE,
    cells: Sequence[int] = POOL_CELLS,
    box_samples: int = BOX_SAMPLES,
    min_background: float = BACKGROUND_FRACTION_MIN,
    pooling: str = "bap",
) -> BapOutput:
    """Background-aware pooling of every box of a batch at once (module docstring, steps 1-5).

    Args:
        features: (B, D, h, w) backbone features.
        boxes: (M, 4) float ``x0, y0, x1, y1`` in input pixels.
        box_image: (M,) long, the image of each box.
        background: (B, H, W) bool or {0, 1} definite background at input resolution (padding
            added by crops is not background: pass 0 there).
        stride: input pixels per feature cell.
        grid_size: N of the background grid.
        cells: (rows, cols) of foreground prototypes per box.
        box_samples: sample points per box side (a multiple of each of ``cells``).
        min_background: GAP below or at this background fraction.
        pooling: ``"bap"``, or ``"gap"``: the GAP fallback for every image (step 5).

    Returns:
        A :class:`BapOutput` (without logits).
    """
    from torchvision.ops import roi_align

    box_image = torch.as_tensor(box_image, dtype=torch.long, device=features.device)
    boxes = torch.as_tensor(boxes, dtype=features.dtype, device=features.device)
    background = torch.as_tensor(background, device=features.device)
    _check_args(features, boxes, box_image, background, grid_size, cells, box_samples, pooling)
    batch, dims, height, width = features.shape
    fraction = background.float().flatten(1).mean(dim=1)

    mask = _feature_background(background, (height, width))
    prototypes, counts = background_prototypes(features, mask, grid_size)
    valid = counts > 0  # (B, N*N)
    uses_bap = valid.any(dim=1) & (fraction > min_background) & (pooling == "bap")

    rois = torch.cat([box_image[:, None].to(features.dtype), boxes], dim=1)
    samples = roi_align(features, rois, (box_samples, box_samples), spatial_scale=1.0 / stride,
                        sampling_ratio=1, aligned=True)  # (M, D, S, S)
    unit_samples = F.normalize(samples, dim=1)
    unit_prototypes = F.normalize(prototypes, dim=2)[box_image]  # (M, N*N, D)
    cosine = torch.einsum("mdxy,mkd->mkxy", unit_samples, unit_prototypes)
    box_valid = valid[box_image].to(features.dtype)  # (M, N*N)
    attention = (F.relu(cosine) * box_valid[:, :, None, None]).sum(dim=1)
    attention = attention / box_valid.sum(dim=1).clamp(min=1)[:, None, None]
    box_uses_bap = uses_bap[box_image][:, None, None]
    attention = torch.where(box_uses_bap, attention, torch.zeros_like(attention))
    weights = 1.0 - attention

    rows, cols = (int(c) for c in cells)
    num = len(boxes)
    cell_h, cell_w = box_samples // rows, box_samples // cols
    weighted = (samples * weights[:, None]).reshape(num, dims, rows, cell_h, cols, cell_w).sum(dim=(3, 5))
    total = weights.reshape(num, 1, rows, cell_h, cols, cell_w).sum(dim=(3, 5))
    fg = (weighted / (total + EPS)).flatten(2).transpose(1, 2)  # (M, rows*cols, D)

    flat_valid = valid.flatten()
    bg = prototypes.reshape(-1, dims)[flat_valid]
    bg_image = torch.arange(batch, device=features.device).repeat_interleave(valid.shape[1])[flat_valid]
    return BapOutput(fg, bg, bg_image, attention, weights, uses_bap, fraction)


def bap_reference(
    features: torch.Tensor,
    boxes: torch.Tensor,
    box_image: torch.Tensor,
    background: torch.Tensor,
    *,
    stride: float,
    grid_size: int = GRID_SIZE,
    cells: Sequence[int] = POOL_CELLS,
    box_samples: int = BOX_SAMPLES,
    min_background: float = BACKGROUND_FRACTION_MIN,
    pooling: str = "bap",
) -> BapOutput:
    """:func:`bap` written as plain loops over images, grid cells and boxes (the tests' yardstick).

    Each box is sampled with ``grid_sample`` (border padding, which is what ``roi_align`` does
    within a pixel of the edge) at the centres of a ``box_samples`` grid; prototypes, attention
    and the cell means are computed one at a time.
    """
    box_image = torch.as_tensor(box_image, dtype=torch.long, device=features.device)
    boxes = torch.as_tensor(boxes, dtype=features.dtype, device=features.device)
    background = torch.as_tensor(background, device=features.device)
    _check_args(features, boxes, box_image, background, grid_size, cells, box_samples, pooling)
    batch, dims, height, width = features.shape
    mask = _feature_background(background, (height, width))
    top, bottom = _grid_padding(height, grid_size)
    left, right = _grid_padding(width, grid_size)
    cell_h = (height + top + bottom) // grid_size
    cell_w = (width + left + right) // grid_size

    per_image: list[list[torch.Tensor]] = []
    fractions, uses = [], []
    bg_list, bg_image = [], []
    for b in range(batch):
        padded_f = F.pad(features[b], (left, right, top, bottom))
        padded_m = F.pad(mask[b], (left, right, top, bottom))
        protos = []
        for gy in range(grid_size):
            for gx in range(grid_size):
                rows = slice(gy * cell_h, (gy + 1) * cell_h)
                cols = slice(gx * cell_w, (gx + 1) * cell_w)
                count = padded_m[rows, cols].sum()
                if count > 0:
                    proto = (padded_f[:, rows, cols] * padded_m[rows, cols]).sum(dim=(1, 2)) / (count + EPS)
                    protos.append(proto)
                    bg_list.append(proto)
                    bg_image.append(b)
        per_image.append(protos)
        fraction = background[b].float().mean()
        fractions.append(fraction)
        uses.append(pooling == "bap" and bool(protos) and bool(fraction > min_background))

    rows_n, cols_n = (int(c) for c in cells)
    fg_list, attention_list, weight_list = [], [], []
    for box, b in zip(boxes, box_image.tolist()):
        x0, y0, x1, y1 = box / stride
        steps = (torch.arange(box_samples, dtype=features.dtype, device=features.device) + 0.5) / box_samples
        u = x0 + steps * (x1 - x0) - 0.5  # feature coordinates, pixel centres at integers
        v = y0 + steps * (y1 - y0) - 0.5
        grid_x = (2 * u + 1) / width - 1
        grid_y = (2 * v + 1) / height - 1
        grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)[None]
        roi = F.grid_sample(features[b][None], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0]  # (D, S, S)
        attention = torch.zeros(box_samples, box_samples, dtype=features.dtype, device=features.device)
        if uses[b]:
            for proto in per_image[b]:
                attention = attention + F.relu(F.cosine_similarity(roi, proto[:, None, None], dim=0))
            attention = attention / len(per_image[b])
        weight = 1.0 - attention
        cell_rows, cell_cols = box_samples // rows_n, box_samples // cols_n
        pooled = []
        for cy in range(rows_n):
            for cx in range(cols_n):
                rs = slice(cy * cell_rows, (cy + 1) * cell_rows)
                cs = slice(cx * cell_cols, (cx + 1) * cell_cols)
                w = weight[rs, cs]
                pooled.append((roi[:, rs, cs] * w).sum(dim=(1, 2)) / (w.sum() + EPS))
        fg_list.append(torch.stack(pooled))
        attention_list.append(attention)
        weight_list.append(weight)

    empty = features.new_zeros((0, dims))
    return BapOutput(
        fg_prototypes=torch.stack(fg_list) if fg_list else features.new_zeros((0, rows_n * cols_n, dims)),
        bg_prototypes=torch.stack(bg_list) if bg_list else empty,
        bg_image=torch.tensor(bg_image, dtype=torch.long, device=features.device),
        attention=torch.stack(attention_list) if attention_list else features.new_zeros((0, box_samples, box_samples)),
        weights=torch.stack(weight_list) if weight_list else features.new_zeros((0, box_samples, box_samples)),
        uses_bap=torch.tensor(uses, dtype=torch.bool, device=features.device),
        background_fraction=torch.stack(fractions),
    )


def bap_loss(output: BapOutput, box_classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the box prototypes (target: their box's class) and the background cells
    (target 0), one mean over all of them (BANA ``stage1.py`` L104-110, ``nn.CrossEntropyLoss``)."""
    if output.fg_logits is None or output.bg_logits is None:
        raise ValueError("bap_loss needs the logits of BapNet.forward")
    box_classes = torch.as_tensor(box_classes, dtype=torch.long, device=output.fg_logits.device)
    per_box = output.fg_prototypes.shape[1]
    fg_targets = box_classes.repeat_interleave(per_box)
    bg_targets = torch.zeros(len(output.bg_logits), dtype=torch.long, device=fg_targets.device)
    logits = torch.cat([output.fg_logits, output.bg_logits]).float()
    return F.cross_entropy(logits, torch.cat([fg_targets, bg_targets]))


# --------------------------------------------------------------------------------- network
class BapNet(nn.Module):
    """Backbone + bias-free 1x1 classifier over K + 1 classes, trained through BAP.

    Args:
        backbone: a registered backbone (:func:`wsss.models.backbones.list_backbones`) or
            ``"vgg16_largefov"``: BANA's stage-1 VGG-16 (fc6 dilation 1, 1024-d, stride 8;
            ``models/Layers.py`` L259-314, :class:`wsss.models.deeplab.VGG16LargeFOV`).
        num_classes: K + 1, background included (BANA classifies background too).
        output_stride, dilated: for a registered backbone (see :func:`create_backbone`).
        weights: a local backbone weights file, or ``None``.
        grid_size, cells, box_samples, min_background: BAP's settings (module constants).
        pooling: ``"bap"`` (the paper) or ``"gap"`` (GAP inside every box, the supplement's baseline).
        classes: optional class names, background first.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        output_stride: int | None = None,
        dilated: bool | None = None,
        weights: str | os.PathLike | None = None,
        grid_size: int = GRID_SIZE,
        cells: Sequence[int] = POOL_CELLS,
        box_samples: int = BOX_SAMPLES,
        min_background: float = BACKGROUND_FRACTION_MIN,
        pooling: str = "bap",
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"BapNet needs background + at least one class, got num_classes={num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ConfigError(f"classes must list {num_classes} names (background first), got {len(classes)}")
        if backbone == VGG_NAME:
            from wsss.models.deeplab import VGG16LargeFOV
            from wsss.models.weights import load_backbone_weights

            self.backbone: nn.Module = VGG16LargeFOV(fc_dilation=1)
            if weights is not None:
                load_backbone_weights(self.backbone, weights, ignore_prefixes=("classifier.",))
        else:
            from wsss.models.backbones import create_backbone

            self.backbone = create_backbone(backbone, output_stride, weights, dilated=dilated)
        self.classifier = nn.Conv2d(self.backbone.out_channels, int(num_classes), 1, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.01)  # BANA ClsNet.get_params: N(0, 0.01)
        self.grid_size, self.cells = int(grid_size), tuple(int(c) for c in cells)
        self.box_samples, self.min_background = int(box_samples), float(min_background)
        self.pooling = check_pooling(pooling)
        self.classes = None if classes is None else [str(c) for c in classes]
        self._config = {"backbone": backbone, "num_classes": int(num_classes), "output_stride": output_stride,
                        "dilated": dilated, "grid_size": self.grid_size, "cells": list(self.cells),
                        "box_samples": self.box_samples, "min_background": self.min_background,
                        "pooling": self.pooling}

    @property
    def num_classes(self) -> int:
        """K + 1."""
        return self.classifier.out_channels

    @property
    def output_stride(self) -> int:
        return int(self.backbone.output_stride)

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the network."""
        return dict(self._config)

    @property
    def weight(self) -> torch.Tensor:
        """The classifier as a (K + 1, D) matrix, background first."""
        return self.classifier.weight.flatten(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw ``w_c . f`` (B, K + 1, h, w)."""
        return self.classifier(self.features(images))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, box_image: torch.Tensor,
                background: torch.Tensor | None = None, *, reference: bool = False) -> BapOutput:
        """BAP prototypes and their logits for a batch.

        Args:
            images: (B, 3, H, W) normalised.
            boxes: (M, 4) pixels; box_image: (M,) the image of each box.
            background: (B, H, W) definite background; ``None``: outside all boxes.
            reference: use :func:`bap_reference` (the loop) instead of :func:`bap`.
        """
        batch, _, height, width = images.shape
        if background is None:
            background = background_mask(boxes, box_image, batch, height, width)
        features = self.features(images)
        pool = bap_reference if reference else bap
        out = pool(features, boxes, box_image, background.to(features.device), stride=self.output_stride,
                   grid_size=self.grid_size, cells=self.cells, box_samples=self.box_samples,
                   min_background=self.min_background, pooling=self.pooling)
        out.fg_logits = F.linear(out.fg_prototypes.reshape(-1, out.fg_prototypes.shape[-1]), self.weight)
        out.bg_logits = F.linear(out.bg_prototypes, self.weight)
        return out

    def parameter_groups(self) -> list[dict[str, Any]]:
        """BANA ``stage1.py`` L78-84: pretrained weights x1, pretrained biases x2 without decay,
        the new classifier x10 (it has no bias)."""
        weights, biases = [], []
        for name, param in self.backbone.named_parameters():
            if param.requires_grad:
                (biases if name.endswith("bias") else weights).append(param)
        return [{"params": weights, "lr_mult": 1.0},
                {"params": biases, "lr_mult": 2.0, "weight_decay_mult": 0.0},
                {"params": list(self.classifier.parameters()), "lr_mult": 10.0}]
