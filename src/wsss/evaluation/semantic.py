"""Semantic-segmentation metrics: the confusion matrix and everything derived from it.

Rows of a confusion matrix are ground-truth classes, columns predicted classes; class 0 is the
background and 255 in the ground truth is ignored. From it come per-class IoU, precision,
recall (:func:`precision_recall`) and the false-positive / false-negative ratios that IRN reports
(``FP_c / union_c`` and ``FN_c / union_c``, so that ``IoU + fp + fn = 1``), pixel accuracy, and
the mIoU: the mean IoU over *all* classes, background included, skipping classes whose union is
empty (NaN), as chainercv's ``eval_semantic_segmentation`` does. :func:`mean_iou` is the only
place in wsss that computes an mIoU.

A prediction may hold 255 too (pseudo masks leave uncertain pixels unlabelled). By default those
pixels count as background, IRN's convention; ``unlabelled="exclude"`` drops them instead and
the scores carry the labelled coverage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from wsss.errors import ConfigError, DataError
from wsss.io import IGNORE_INDEX
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

UNLABELLED_MODES = ("background", "exclude")
MISSING_SHOWN = 3  # ids listed in a "predictions missing" error


class GroundTruth(Protocol):
    """What evaluation needs from a dataset (``wsss.data.voc.VOCDataset`` provides it)."""

    @property
    def ids(self) -> Sequence[str]: ...

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def num_classes(self) -> int: ...

    def load_mask(self, image_id: str) -> np.ndarray: ...


# --------------------------------------------------------------------------- the core


def check_pair(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    pred_path: str | Path | None = None,
    gt_path: str | Path | None = None,
) -> None:
    """Raise :class:`DataError` naming the file if ``pred`` cannot be scored against ``gt``.

    Checks: both 2-D, the same size, and every value a class id (0..K) or 255.
    """
    if pred.ndim != 2:
        raise DataError(f"prediction must be a 2-D label map, got shape {pred.shape}", pred_path)
    if gt.ndim != 2:
        raise DataError(f"ground truth must be a 2-D label map, got shape {gt.shape}", gt_path)
    if pred.shape != gt.shape:
        raise DataError(
            f"prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but the ground truth is "
            f"{gt.shape[1]}x{gt.shape[0]}",
            pred_path,
        )
    for array, what, path in ((pred, "prediction", pred_path), (gt, "ground truth", gt_path)):
        bad = (array >= num_classes) & (array != IGNORE_INDEX)
        if bad.any():
            values = np.unique(array[bad])[:5].tolist()
            raise DataError(
                f"{what} has label(s) {values} outside 0..{num_classes - 1} "
                f"({num_classes} classes; 255 = ignore)",
                path,
            )


def _check_mode(unlabelled: str) -> None:
    if unlabelled not in UNLABELLED_MODES:
        raise ConfigError(f"unlabelled must be one of {UNLABELLED_MODES}, got {unlabelled!r}")


def _count(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, unlabelled: str
) -> tuple[np.ndarray, int, int]:
    """(confusion, GT-valid pixels, GT-valid pixels the prediction left unlabelled)."""
    gt = gt.reshape(-1)
    pred = pred.reshape(-1)
    keep = gt != IGNORE_INDEX
    pred_unlabelled = pred == IGNORE_INDEX
    num_valid = int(np.count_nonzero(keep))
    num_unlabelled = int(np.count_nonzero(keep & pred_unlabelled))
    if unlabelled == "background":
        pred = np.where(pred_unlabelled, 0, pred)
    else:
        keep &= ~pred_unlabelled
    index = gt[keep].astype(np.int64) * num_classes + pred[keep]
    confusion = np.bincount(index, minlength=num_classes * num_classes)
    return confusion.reshape(num_classes, num_classes), num_valid, num_unlabelled


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, *, unlabelled: str = "background"
) -> np.ndarray:
    """Pixel counts, ``int64`` (num_classes, num_classes): rows = ground truth, cols = prediction.

    Args:
        gt: (H, W) ground-truth labels, 0..K or 255 (ignored).
        pred: (H, W) predicted labels, 0..K or 255 (unlabelled).
        num_classes: K + 1, background included.
        unlabelled: what a 255 in ``pred`` means: ``"background"`` (IRN) or ``"exclude"``.

    Raises:
        DataError: shapes differ or a label is out of range.
    """
    _check_mode(unlabelled)
    gt, pred = np.asarray(gt), np.asarray(pred)
    check_pair(gt, pred, num_classes)
    return _count(gt, pred, num_classes, unlabelled)[0]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _parts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, GT counts, predicted counts, unions) per class, over the last two axes."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_positive = np.diagonal(confusion, axis1=-2, axis2=-1)
    gt_count = confusion.sum(axis=-1)
    pred_count = confusion.sum(axis=-2)
    union = gt_count + pred_count - true_positive
    return true_positive, gt_count, pred_count, union


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU per class from (..., n, n) confusion matrices; NaN where the union is empty."""
    true_positive, _, _, union = _parts(confusion)
    return _divide(true_positive, union)


def precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision ``TP_c / predicted_c`` and recall ``TP_c / GT_c`` from (..., n, n)
    confusion matrices (rows ground truth); NaN where a class is never predicted (precision) or
    never present (recall)."""
    true_positive, gt_count, pred_count, _ = _parts(confusion)
    return _divide(true_positive, pred_count), _divide(true_positive, gt_count)


def nanmean_last(values: np.ndarray) -> np.ndarray | float:
    """Mean over the last axis ignoring NaN (NaN when all are NaN), without a warning."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    total = np.where(present, values, 0.0).sum(axis=-1)
    count = present.sum(axis=-1)
    mean = _divide(total, count)
    return float(mean) if mean.ndim == 0 else mean


def mean_iou(confusion: np.ndarray) -> np.ndarray | float:
    """The mIoU: mean IoU over all classes (background included) whose union is non-empty.

    This is chainercv's definition, the one IRN, AdvCAM and their successors report. Accepts a
    stack of confusion matrices (..., n, n) and returns one mIoU per matrix (a float for one).
    """
    return nanmean_last(iou_per_class(confusion))


# --------------------------------------------------------------------------- scores


@dataclass
class SegmentationScores:
    """Everything derived from one confusion matrix, plus how it was produced.

    All ratios are fractions in [0, 1] (tables and JSON show percent). NaN marks a class absent
    from both ground truth and prediction.

    Attributes:
        confusion: (n, n) int64, rows = ground truth, cols = prediction.
        classes: class names, background first.
        protocol: how these numbers were obtained, in words (printed and written beside them).
        name: a short row label for tables (``"fixed t=0.15"``, ``"labels"``).
        threshold: the background threshold, when the prediction came from maps.
        threshold_uses_ground_truth: True only when the threshold was chosen on the ground
            truth being scored (the sweep's best, an oracle).
        num_images: images accumulated.
        num_pixels: ground-truth pixels that are not 255.
        num_unlabelled: of those, how many the prediction left at 255.
        unlabelled: ``"background"`` or ``"exclude"``: how those were scored.
    """

    confusion: np.ndarray
    classes: tuple[str, ...]
    protocol: str
    name: str = ""
    threshold: float | None = None
    threshold_uses_ground_truth: bool = False
    num_images: int = 0
    num_pixels: int = 0
    num_unlabelled: int = 0
    unlabelled: str = "background"

    def __post_init__(self) -> None:
        self.confusion = np.asarray(self.confusion, dtype=np.int64)
        self.classes = tuple(self.classes)
        n = len(self.classes)
        if self.confusion.shape != (n, n):
            raise ValueError(f"confusion must be ({n}, {n}) for {n} classes, got {self.confusion.shape}")
        if not self.name:
            self.name = self.protocol

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def iou(self) -> np.ndarray:
        return iou_per_class(self.confusion)

    @property
    def miou(self) -> float:
        return float(mean_iou(self.confusion))

    @property
    def precision(self) -> np.ndarray:
        """TP_c / predicted_c: of the pixels predicted as c, the fraction that are c."""
        return precision_recall(self.confusion)[0]

    @property
    def recall(self) -> np.ndarray:
        """TP_c / GT_c: of the pixels that are c, the fraction predicted as c."""
        return precision_recall(self.confusion)[1]

    @property
    def fp(self) -> np.ndarray:
        """False-positive ratio FP_c / union_c (IRN's ``fp``)."""
        true_positive, _, pred_count, union = _parts(self.confusion)
        return _divide(pred_count - true_positive, union)

    @property
    def fn(self) -> np.ndarray:
        """False-negative ratio FN_c / union_c (IRN's ``fn``)."""
        true_positive, gt_count, _, union = _parts(self.confusion)
        return _divide(gt_count - true_positive, union)

    @property
    def mean_precision(self) -> float:
        return float(nanmean_last(self.precision))

    @property
    def mean_recall(self) -> float:
        return float(nanmean_last(self.recall))

    @property
    def mean_fp(self) -> float:
        return float(nanmean_last(self.fp))

    @property
    def mean_fn(self) -> float:
        return float(nanmean_last(self.fn))

    @property
    def pixel_accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(np.trace(self.confusion) / total) if total else math.nan

    @property
    def coverage(self) -> float:
        """Fraction of scored ground-truth pixels the prediction labelled (not 255)."""
        if not self.num_pixels:
            return math.nan
        return 1.0 - self.num_unlabelled / self.num_pixels

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record, ratios in percent (unrounded), the protocol first."""

        def percent(value: float) -> float | None:
            return None if math.isnan(value) else 100.0 * float(value)

        per_class = {}
        columns = (self.iou, self.precision, self.recall, self.fp, self.fn)
        for index, class_name in enumerate(self.classes):
            iou, precision, recall, fp, fn = (column[index] for column in columns)
            per_class[class_name] = {
                "iou": percent(iou),
                "precision": percent(precision),
                "recall": percent(recall),
                "fp": percent(fp),
                "fn": percent(fn),
            }
        record: dict[str, Any] = {
            "protocol": self.protocol,
            "name": self.name,
            "threshold": self.threshold,
            "threshold_uses_ground_truth": self.threshold_uses_ground_truth,
            "miou": percent(self.miou),
            "pixel_accuracy": percent(self.pixel_accuracy),
            "mean_precision": percent(self.mean_precision),
            "mean_recall": percent(self.mean_recall),
            "mean_fp": percent(self.mean_fp),
            "mean_fn": percent(self.mean_fn),
            "unlabelled_prediction_pixels": self.unlabelled,
            "coverage": percent(self.coverage),
            "num_images": self.num_images,
            "num_pixels": self.num_pixels,
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
        }
        return record


class ConfusionAccumulator:
    """Streams (ground truth, prediction) pairs into one confusion matrix.

    Args:
        num_classes: K + 1, background included.
        unlabelled: a 255 in a prediction counts as ``"background"`` (IRN) or is ``"exclude"``d.
    """

    def __init__(self, num_classes: int, *, unlabelled: str = "background") -> None:
        _check_mode(unlabelled)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.unlabelled = unlabelled
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.num_images = 0
        self.num_pixels = 0
        self.num_unlabelled = 0

    def update(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        *,
        pred_path: str | Path | None = None,
        gt_path: str | Path | None = None,
    ) -> None:
        """Add one image.

        Raises:
            DataError: naming ``pred_path`` (or ``gt_path``) when sizes or labels are wrong.
        """
        gt, pred = np.asarray(gt), np.asarray(pred)
        check_pair(gt, pred, self.num_classes, pred_path=pred_path, gt_path=gt_path)
        confusion, num_valid, num_unlabelled = _count(gt, pred, self.num_classes, self.unlabelled)
        self.confusion += confusion
        self.num_images += 1
        self.num_pixels += num_valid
        self.num_unlabelled += num_unlabelled

    def scores(self, classes: Sequence[str], protocol: str, name: str = "") -> SegmentationScores:
        if len(classes) != self.num_classes:
            raise ValueError(f"{len(classes)} class names for {self.num_classes} classes")
        return SegmentationScores(
            confusion=self.confusion.copy(),
            classes=tuple(classes),
            protocol=protocol,
            name=name,
            num_images=self.num_images,
            num_pixels=self.num_pixels,
            num_unlabelled=self.num_unlabelled,
            unlabelled=self.unlabelled,
        )


# --------------------------------------------------------------------------- label folders


def require_predictions(ids: Sequence[str], folder: str | Path, suffix: str) -> None:
    """Raise one :class:`DataError` line if ``folder`` lacks ``<id><suffix>`` for some ids."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("prediction folder not found", folder)
    if not ids:
        raise DataError("no image ids to evaluate (empty split?)", folder)
    if not any(folder.glob(f"*{suffix}")):
        raise DataError(f"prediction folder is empty (no {suffix} files)", folder)
    missing = [image_id for image_id in ids if not (folder / f"{image_id}{suffix}").is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        raise DataError(
            f"{len(missing)} of {len(ids)} predictions missing (no {suffix} for {shown})", folder
        )


def labels_protocol(unlabelled: str) -> str:
    if unlabelled == "background":
        return "predicted label maps (255 in a prediction counted as background)"
    return "predicted label maps (255 in a prediction excluded; see coverage)"


def evaluate_labels(
    dataset: GroundTruth,
    pred_dir: str | Path,
    ids: Sequence[str] | None = None,
    *,
    unlabelled: str = "background",
    progress: bool = True,
) -> SegmentationScores:
    """Score a folder of ``<id>.png`` label maps against the dataset's masks.

    Args:
        dataset: gives ``ids``, ``classes``, ``num_classes`` and ``load_mask(id)``.
        pred_dir: folder of label PNGs (palette or grey); extra files are ignored.
        ids: the images to score (default: all of ``dataset.ids``).
        unlabelled: how a 255 in a prediction counts (see :class:`ConfusionAccumulator`).

    Raises:
        DataError: folder missing or empty, predictions missing for some ids, a PNG corrupt,
            of the wrong size or with labels out of range (naming the file).
    """
    _check_mode(unlabelled)
    pred_dir = Path(pred_dir)
    ids = list(dataset.ids if ids is None else ids)
    predictions = MaskStore(pred_dir)
    require_predictions(ids, pred_dir, predictions.suffix)
    accumulator = ConfusionAccumulator(dataset.num_classes, unlabelled=unlabelled)
    for image_id in tqdm(ids, desc="eval", leave=False, disable=not progress or None):
        # Size and values are checked against the ground truth by the accumulator.
        accumulator.update(dataset.load_mask(image_id), predictions.load(image_id),
                           pred_path=predictions.path(image_id))
    scores = accumulator.scores(dataset.classes, labels_protocol(unlabelled), name="labels")
    log.debug("%s: mIoU %.2f over %d images", pred_dir, 100 * scores.miou, scores.num_images)
    return scores
