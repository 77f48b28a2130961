"""The precision of BANA's normalised CAMs u_c against ground-truth masks (the supplement's Table 2).

BANA's supplement (Sec. 2, "Comparison of GAP and BAP") scores the stage-2 class scores u_c
(:func:`wsss.refine.bana_labels.bana_unary`: ``ReLU(w_c . f)`` divided by its maximum inside
each box of class c, 0 outside the class's boxes) of a classifier trained with BAP against one
trained with GAP: u_c "activated inside ground-truth regions for a class c" counts as a true
positive ``TP_c``, activated elsewhere as a false positive ``FP_c``, and the precision of class c
is ``TP_c / (TP_c + FP_c)``, summed over the images (VOC train: GAP 73.0, BAP 77.9 mean over the
20 classes).

The supplement does not say what "activated" means. Two readings are offered:

* ``threshold=None`` (the default, *soft*): every pixel counts with its score, ``TP_c = sum of
  u_c over the ground truth of c``, ``FP_c = sum of u_c elsewhere``. No free parameter; a pixel at
  0.9 counts nine times one at 0.1.
* ``threshold=t``: a pixel is activated where ``u_c > t`` and counts once.

Ground-truth pixels of 255 (ignore) count in neither. Since u_c is 0 outside the boxes of c, only
pixels inside those boxes ever count; :func:`box_precision` is the floor to compare with: every
pixel of every box of c activated (u_c = 1 in the boxes), i.e. the share of the boxes' pixels
that belong to their class.

Example:
    >>> rows = u_c_precision(model, VOCDataset(root, "train"), thresholds=(None, 0.5))
    >>> print(format_precision_table([*rows, box_precision(dataset)]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import DataError
from wsss.io import IGNORE_INDEX
from wsss.models.bap_net import BapNet, box_masks, check_boxes
from wsss.refine.bana_labels import bana_unary, image_features

__all__ = [
    "UcPrecision",
    "box_precision",
    "format_precision_table",
    "reading_name",
    "u_c_precision",
    "u_c_precision_counts",
]


class MaskedBoxSource(Protocol):
    """What is read: images, boxes and ground-truth masks (``VOCDataset``, ``COCODataset``)."""

    ids: list[str]
    classes: list[str]

    def load_image(self, image_id: str) -> np.ndarray: ...

    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]: ...

    def load_mask(self, image_id: str) -> np.ndarray: ...


def reading_name(threshold: float | None) -> str:
    """How "activated" was read: ``soft`` or ``u_c > t``."""
    return "soft" if threshold is None else f"u_c > {threshold:g}"


@dataclass
class UcPrecision:
    """Summed true- and false-positive activation per class, and the precision they give.

    Attributes:
        name: the row's name (e.g. the pooling).
        classes: class names, background first (index = class id).
        tp, fp: float64 (K + 1,) summed over the images; index 0 (background) stays 0.
        threshold: the reading of "activated" (module docstring); ``None``: soft.
        images: how many images were counted.
    """

    name: str
    classes: list[str]
    tp: np.ndarray
    fp: np.ndarray
    threshold: float | None = None
    images: int = 0
    reading: str = field(init=False)

    def __post_init__(self) -> None:
        self.reading = reading_name(self.threshold)

    @property
    def precision(self) -> np.ndarray:
        """(K + 1,) ``tp / (tp + fp)``; NaN where nothing was activated (and for background)."""
        total = self.tp + self.fp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(total > 0, self.tp / np.where(total > 0, total, 1.0), np.nan)
        precision[0] = np.nan
        return precision

    @property
    def mean_precision(self) -> float:
        """The mean over the foreground classes with some activation (the table's ``mean``)."""
        values = self.precision[1:]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, per-class precision (None where undefined), the mean."""
        def plain(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {"name": self.name, "reading": self.reading, "threshold": self.threshold, "images": self.images,
                "classes": list(self.classes), "tp": self.tp.tolist(), "fp": self.fp.tolist(),
                "precision": [plain(v) for v in self.precision], "mean_precision": plain(self.mean_precision)}


def u_c_precision_counts(u_c: np.ndarray, present: np.ndarray, ground_truth: np.ndarray, num_classes: int,
                         threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class true- and false-positive activation of one image's u_c (module docstring).

    Args:
        u_c: (n, H, W) normalised class scores (:attr:`wsss.refine.bana_labels.BanaLabels.u_c`).
        present: (n,) their class ids in 1..K.
        ground_truth: uint8 (H, W), 255 = ignore (left out of both counts).
        num_classes: K + 1.
        threshold: ``None``: soft counts (the sum of u_c); else the number of pixels with u_c > t.

    Returns:
        ``(tp, fp)``, float64 (K + 1,) each, to be summed over images.
    """
    u_c, ground_truth = np.asarray(u_c, dtype=np.float64), np.asarray(ground_truth)
    if u_c.ndim != 3 or u_c.shape[1:] != ground_truth.shape:
        raise ValueError(f"u_c is {u_c.shape} but the ground truth is {ground_truth.shape}")
    present = np.asarray(present).reshape(-1)
    if len(present) != len(u_c):
        raise ValueError(f"{len(u_c)} u_c channels but {len(present)} class ids")
    tp, fp = np.zeros(num_classes), np.zeros(num_classes)
    counted = ground_truth != IGNORE_INDEX
    for scores, c in zip(u_c, present.tolist()):
        active = scores if threshold is None else (scores > threshold).astype(np.float64)
        tp[c] += active[counted & (ground_truth == c)].sum()
        fp[c] += active[counted & (ground_truth != c)].sum()
    return tp, fp


def _ground_truth(dataset: MaskedBoxSource, image_id: str, image_size: tuple[int, int]) -> np.ndarray:
    mask = dataset.load_mask(image_id)
    if mask.shape != image_size:
        raise DataError(f"the mask is {mask.shape} but the image is {image_size}", image_id)
    return mask


def u_c_precision(
    model: BapNet,
    dataset: MaskedBoxSource,
    *,
    ids: Sequence[str] | None = None,
    thresholds: Sequence[float | None] = (None,),
    name: str = "",
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: bool = False,
) -> list[UcPrecision]:
    """The precision of u_c of a trained :class:`BapNet` over ``dataset``'s images, boxes and masks.

    Each image's features are computed once (:func:`wsss.refine.bana_labels.image_features`, the
    network in eval mode), u_c from them and the image's boxes
    (:func:`wsss.refine.bana_labels.bana_unary`), and the counts of every reading summed.

    Args:
        model: the stage-1 classifier (BAP or GAP).
        dataset: images, boxes and ground-truth masks.
        ids: the images (default: all of ``dataset.ids``).
        thresholds: the readings of "activated", one result each; ``None``: soft.
        name: the rows' name.
        device: where the network runs.
        mean, std: the normalisation the network was trained with.
        progress: a tqdm bar.

    Returns:
        One :class:`UcPrecision` per threshold, in order.

    Raises:
        DataError: an image without a mask, a mask of another size, a bad box (naming the image).
    """
    ids = list(dataset.ids if ids is None else ids)
    classes = list(dataset.classes)
    if model.num_classes != len(classes):
        raise DataError(f"the network has {model.num_classes} classes, the dataset {len(classes)}")
    weight = model.weight.detach().float()
    totals = [(np.zeros(len(classes)), np.zeros(len(classes))) for _ in thresholds]
    for image_id in tqdm(ids, desc="u_c precision", disable=not progress):
        image = dataset.load_image(image_id)
        boxes, box_classes = dataset.boxes(image_id)
        check_boxes(boxes, box_classes, image.shape[:2], len(classes), image_id)
        ground_truth = _ground_truth(dataset, image_id, image.shape[:2])
        features = image_features(model, image, device=device, mean=mean, std=std).float()
        with torch.no_grad():
            _, _, u_c, present = bana_unary(features, weight.to(features.device),
                                            torch.as_tensor(np.asarray(boxes, np.float32), device=features.device),
                                            torch.as_tensor(np.asarray(box_classes), device=features.device))
        u_c_np, present_np = u_c.cpu().numpy(), present.cpu().numpy()
        for (tp, fp), threshold in zip(totals, thresholds):
            image_tp, image_fp = u_c_precision_counts(u_c_np, present_np, ground_truth, len(classes), threshold)
            tp += image_tp
            fp += image_fp
    return [UcPrecision(name, classes, tp, fp, threshold, len(ids)) for (tp, fp), threshold in zip(totals, thresholds)]


def box_precision(dataset: MaskedBoxSource, *, ids: Sequence[str] | None = None, name: str = "box") -> UcPrecision:
    """The floor of :func:`u_c_precision`: u_c = 1 on every pixel of the boxes of each class (the
    share of the boxes' pixels that are their class), any reading."""
    ids = list(dataset.ids if ids is None else ids)
    classes = list(dataset.classes)
    tp, fp = np.zeros(len(classes)), np.zeros(len(classes))
    for image_id in ids:
        boxes, box_classes = dataset.boxes(image_id)
        ground_truth = dataset.load_mask(image_id)  # the datasets check it against the image's size
        size = ground_truth.shape
        check_boxes(boxes, box_classes, size, len(classes), image_id)
        masks = box_masks(torch.as_tensor(np.asarray(boxes, np.float32)), *size).numpy()
        present = np.unique(box_classes)
        filled = np.stack([masks[np.asarray(box_classes) == c].any(axis=0) for c in present]).astype(np.float64)
        image_tp, image_fp = u_c_precision_counts(filled, present, ground_truth, len(classes))
        tp += image_tp
        fp += image_fp
    return UcPrecision(name, classes, tp, fp, None, len(ids))


def format_precision_table(rows: Sequence[UcPrecision], title: str | None = None) -> str:
    """The supplement's Table 2: one row per result, the foreground classes as columns, the mean
    last, precision in percent with one decimal ('-' where a class was never activated)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no results to tabulate")
    names = rows[0].classes[1:]
    header = [*names, "mean"]
    widths = [max(len(n), 5) for n in header]
    labels = [f"{row.name} ({row.reading})" for row in rows]
    label_width = max(len(label) for label in labels)

    def cell(value: float) -> str:
        return "-" if math.isnan(value) else f"{100.0 * value:.1f}"

    lines = [title] if title else []
    lines.append(" " * label_width + "  " + " ".join(n.rjust(w) for n, w in zip(header, widths)))
    for label, row in zip(labels, rows):
        if row.classes[1:] != names:
            raise ValueError(f"row '{row.name}' has other classes than the first row")
        values = [*row.precision[1:], row.mean_precision]
        lines.append(label.ljust(label_width) + "  " + " ".join(cell(v).rjust(w) for v, w in zip(values, widths)))
    lines.append("(precision of u_c in percent: TP_c / (TP_c + FP_c), u_c activated inside / outside the ground "
                 "truth of c; '-' = never activated)")
    return "\n".join(lines)
