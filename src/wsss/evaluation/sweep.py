"""Localization maps -> labels at a background threshold, and threshold sweeps.

Maps become labels as in IRN's ``eval_cam``: pad a background channel holding the threshold t,
take the argmax over [background, classes] (a tie goes to the background) and map the channel
through the map file's ``keys``. Equivalently, per pixel with largest foreground score m in
channel f: the label is ``keys[f]`` if m > t, else 0.

How the threshold is chosen decides what a number means, so every score carries its protocol:

* ``fixed``: t set before looking at anything (IRN's 0.15): no ground truth.
* ``label-free``: t from the images and maps alone, a rule of :mod:`wsss.refine.thresholds`:
  ``edges`` (default: the lowest t at which the masks' contours follow the images' edges) or
  one on the histogram of per-pixel maximum foreground scores over the split (Li, Otsu,
  triangle): no ground truth.
* ``oracle``: the sweep's best t on the very ground truth being scored (AdvCAM's protocol);
  an upper bound, reported beside the other two, never instead of them.

A sweep is one pass over the images. Per ground-truth pixel with label g it is enough to know
f and the index k of m among the sorted thresholds (``searchsorted``): the pixel counts toward
(g, f) for thresholds below m and toward (g, 0) for the rest. A histogram over (g, f, k) and
cumulative sums along k give every threshold's confusion matrix at once, exactly.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from wsss.errors import ConfigError, DataError
from wsss.evaluation.semantic import (
    GroundTruth,
    SegmentationScores,
    check_pair,
    mean_iou,
    require_predictions,
)
from wsss.io import IGNORE_INDEX
from wsss.refine.thresholds import (
    EDGE_GRID,
    HISTOGRAM_BINS,
    EdgeAlignment,
    LABEL_FREE_RULES,
    RULE_NAMES,
    histogram_edges,
    histogram_threshold,
    score_histogram,
)
from wsss.stores.maps import SUFFIX, LocalizationMaps, MapStore

log = logging.getLogger(__name__)

DEFAULT_SWEEP = "0.05:0.60:0.01"
IRN_THRESHOLD = 0.15  # IRN run_sample.py cam_eval_thres
OTSU_BINS = HISTOGRAM_BINS  # histogram of max foreground scores over [0, 1] for the label-free threshold
LABEL_FREE_METHODS = LABEL_FREE_RULES
_DECIMALS = 10  # thresholds are rounded so 0.05 + 10 * 0.01 == 0.15


def format_threshold(threshold: float) -> str:
    """0.15 -> '0.15', 0.234375 -> '0.234' (reports; JSON keeps the exact value)."""
    return f"{round(float(threshold), 3):g}"


# --------------------------------------------------------------------------- thresholds


def parse_thresholds(spec: str | float | Sequence[float]) -> np.ndarray:
    """Sorted, unique thresholds from ``"start:stop:step"`` (stop included), ``"a,b,c"`` or numbers.

    Raises:
        ConfigError: the spec is malformed, empty, or holds a value outside [0, 1].
    """
    if isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                parts = [float(part) for part in text.split(":")]
                if len(parts) != 3:
                    raise ValueError("needs start:stop:step")
                start, stop, step = parts
                if not step > 0 or stop < start:
                    raise ValueError("needs step > 0 and stop >= start")
                count = int(math.floor((stop - start) / step + 1e-9)) + 1
                values = start + step * np.arange(count)
            else:
                values = np.array([float(part) for part in re.split(r"[,\s]+", text) if part])
        except ValueError as exc:
            raise ConfigError(f"invalid threshold list {spec!r}: {exc}") from None
    else:
        values = np.atleast_1d(np.asarray(spec, dtype=np.float64))
    values = np.unique(np.round(values.astype(np.float64), _DECIMALS))
    if values.size == 0 or not np.isfinite(values).all():
        raise ConfigError(f"invalid threshold list {spec!r}: empty or not finite")
    if values[0] < 0 or values[-1] > 1:
        raise ConfigError(f"invalid threshold list {spec!r}: thresholds must lie in [0, 1] (maps peak at 1)")
    return values


def _threshold_value(threshold: float) -> float:
    value = float(threshold)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1] (maps peak at 1), got {threshold!r}")
    return float(np.round(value, _DECIMALS))


# --------------------------------------------------------------------------- maps -> labels


def foreground_max(scores: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the largest foreground score m (float64) and its class id (int64, from keys).

    With no channels, m is -inf and the class 0 everywhere (every threshold gives background).
    ``scores`` is (C, H, W); ``keys`` (C,).
    """
    scores = np.asarray(scores)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"scores must be (C, H, W) with C = {keys.size} keys, got {scores.shape}")
    if keys.size == 0:
        shape = scores.shape[1:]
        return np.full(shape, -np.inf), np.zeros(shape, dtype=np.int64)
    channel = np.argmax(scores, axis=0)  # first maximum: a tie between classes goes to the lower channel
    best = np.take_along_axis(scores, channel[None], axis=0)[0].astype(np.float64)
    return best, keys[channel]


def scores_to_labels(scores: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Labels ``uint8`` (H, W): ``keys[argmax]`` where the best score exceeds t, else 0."""
    best, class_ids = foreground_max(scores, keys)
    labels = np.where(best > float(threshold), class_ids, 0)
    return labels.astype(np.uint8)


def maps_to_labels(
    maps: LocalizationMaps, threshold: float, *, resolution: str = "high_res"
) -> np.ndarray:
    """IRN's background-threshold rule on a map file: labels ``uint8`` (H, W), 0 = background.

    Args:
        maps: the image's localization maps.
        threshold: background score t; a pixel is background when no class scores above t.
        resolution: ``"high_res"`` (image size, used for evaluation) or ``"strided"``.
    """
    if resolution not in ("high_res", "strided"):
        raise ValueError(f"resolution must be 'high_res' or 'strided', got {resolution!r}")
    scores = maps.high_res if resolution == "high_res" else maps.strided
    if scores is None:
        raise ValueError("these maps have no strided array")
    return scores_to_labels(scores, maps.keys, threshold)


# --------------------------------------------------------------------------- the sweep


class SweepAccumulator:
    """Confusion matrices at every threshold of a sorted grid, from one pass over the images.

    Also accumulates, from the maps alone (all pixels, the ground truth unseen), the histogram
    of max foreground scores that the label-free threshold is chosen on.

    Args:
        num_classes: K + 1.
        grid: sorted, unique thresholds.
        bins: bins of the score histogram over [0, 1].
    """

    def __init__(self, num_classes: int, grid: Sequence[float], bins: int = OTSU_BINS) -> None:
        self.num_classes = num_classes
        self.grid = np.asarray(grid, dtype=np.float64)
        if self.grid.ndim != 1 or self.grid.size == 0 or np.any(np.diff(self.grid) <= 0):
            raise ValueError("grid must be a non-empty increasing 1-D array")
        size = num_classes * num_classes * (self.grid.size + 1)
        self.histogram = np.zeros(size, dtype=np.int64)  # over (g, f, k)
        self.bins = bins
        self.score_counts = np.zeros(bins, dtype=np.int64)
        self.alignment = EdgeAlignment()
        self.num_images = 0

    def update(
        self,
        gt: np.ndarray,
        maps: LocalizationMaps,
        *,
        maps_path: str | Path | None = None,
        gt_path: str | Path | None = None,
        image: np.ndarray | None = None,
    ) -> None:
        """Add one image's ground truth and maps (``high_res`` is used), and its RGB ``image``
        for the ``edges`` label-free rule (left out when None).

        Raises:
            DataError: naming ``maps_path`` when the keys are out of 1..K or the size is wrong.
        """
        gt = np.asarray(gt)
        keys = maps.keys
        bad = (keys < 1) | (keys >= self.num_classes)
        if bad.any():
            raise DataError(
                f"map keys {keys[bad].tolist()} outside the foreground ids 1..{self.num_classes - 1}",
                maps_path,
            )
        height, width = maps.image_size
        if gt.shape != (height, width):
            raise DataError(
                f"maps are {width}x{height} (WxH) but the ground truth is {gt.shape[1]}x{gt.shape[0]}",
                maps_path,
            )
        best, class_ids = foreground_max(maps.high_res, keys)
        check_pair(gt, class_ids, self.num_classes, pred_path=maps_path, gt_path=gt_path)
        if keys.size:
            self.score_counts += score_histogram(best, self.bins)
        if image is not None:
            self.alignment.update(image, best, class_ids)
        keep = gt != IGNORE_INDEX
        position = np.searchsorted(self.grid, best[keep], side="left")  # thresholds below m
        pair = gt[keep].astype(np.int64) * self.num_classes + class_ids[keep]
        index = pair * (self.grid.size + 1) + position
        self.histogram += np.bincount(index, minlength=self.histogram.size)
        self.num_images += 1

    def confusions(self) -> np.ndarray:
        """(T, n, n) int64: the confusion matrix at each grid threshold."""
        n, size = self.num_classes, self.grid.size
        counts = self.histogram.reshape(n, n, size + 1)
        # Foreground at threshold i: position k > i, i.e. a suffix sum over k.
        suffix = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]
        result = np.ascontiguousarray(np.moveaxis(suffix[..., 1:], -1, 0))  # (T, g, f)
        # Background at threshold i: position k <= i, whatever the class.
        background = np.cumsum(counts.sum(axis=1), axis=-1)[:, :size]  # (g, T)
        result[:, :, 0] += background.T
        return result

    def label_free_threshold(self, method: str = "edges") -> float:
        """The threshold label-free rule ``method`` chooses (:mod:`wsss.refine.thresholds`): on
        the maps' contours against the images' edges (``edges``: images given to
        :meth:`update`) or on their score histogram; NaN when there is nothing to choose from."""
        if method == "edges":
            return self.alignment.threshold() if self.alignment.num_images else math.nan
        return histogram_threshold(self.score_counts, histogram_edges(self.bins), method)


@dataclass
class SweepResult:
    """Scores of a map store at many background thresholds, and how each was chosen.

    ``grid`` holds every threshold scored (the sweep's, the fixed one and every candidate of
    the label-free method); ``confusions[i]`` is exact at ``grid[i]``.

    Attributes:
        classes: class names, background first.
        grid: (G,) sorted thresholds; confusions: (G, n, n).
        thresholds: the sweep's thresholds (a subset of grid; empty if no sweep was asked).
        fixed_threshold / label_free_threshold: None when not requested (or, for label-free,
            when the maps give no histogram to choose from).
        sweep_spec: the sweep as given (``"0.05:0.60:0.01"``), for reports.
    """

    classes: tuple[str, ...]
    grid: np.ndarray
    confusions: np.ndarray
    thresholds: np.ndarray
    fixed_threshold: float | None = None
    label_free_threshold: float | None = None
    label_free_method: str | None = None
    sweep_spec: str | None = None
    num_images: int = 0
    score_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    num_pixels: int = 0

    def _index(self, threshold: float) -> int:
        threshold = float(threshold)
        index = int(np.argmin(np.abs(self.grid - threshold)))
        if abs(self.grid[index] - threshold) > 1e-9:
            raise KeyError(f"threshold {threshold} was not evaluated (grid {self.grid[0]}..{self.grid[-1]})")
        return index

    def at(
        self,
        threshold: float,
        *,
        protocol: str | None = None,
        name: str | None = None,
        uses_ground_truth: bool = False,
    ) -> SegmentationScores:
        """Scores at a threshold in :attr:`grid` (KeyError otherwise)."""
        index = self._index(threshold)
        value = float(self.grid[index])
        label = f"t={format_threshold(value)}"
        return SegmentationScores(
            confusion=self.confusions[index],
            classes=self.classes,
            protocol=protocol or f"background threshold {label} (sweep point)",
            name=name or label,
            threshold=value,
            threshold_uses_ground_truth=uses_ground_truth,
            num_images=self.num_images,
            num_pixels=int(self.confusions[index].sum()),
        )

    @property
    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds, mIoU as fractions) over the sweep."""
        rows = [self._index(t) for t in self.thresholds]
        return self.thresholds.copy(), np.asarray(mean_iou(self.confusions[rows])).reshape(-1)

    @property
    def best_threshold(self) -> float | None:
        """The sweep's threshold of highest mIoU (the lowest such one); None without a sweep."""
        thresholds, mious = self.curve
        if thresholds.size == 0 or np.isnan(mious).all():
            return None
        return float(thresholds[int(np.nanargmax(mious))])

    @property
    def best(self) -> SegmentationScores | None:
        """Oracle scores: the best threshold chosen on the ground truth being scored."""
        threshold = self.best_threshold
        if threshold is None:
            return None
        first, last = (format_threshold(t) for t in (self.thresholds[0], self.thresholds[-1]))
        range_text = self.sweep_spec or f"{first}..{last}"
        return self.at(
            threshold,
            protocol=(
                f"oracle: best t on ground truth (t={format_threshold(threshold)} "
                f"of sweep {range_text})"
            ),
            name=f"oracle t={format_threshold(threshold)}",
            uses_ground_truth=True,
        )

    @property
    def fixed(self) -> SegmentationScores | None:
        """Scores at the threshold fixed a priori (no ground truth)."""
        if self.fixed_threshold is None:
            return None
        label = format_threshold(self.fixed_threshold)
        return self.at(
            self.fixed_threshold,
            protocol=f"fixed t={label} (no ground truth)",
            name=f"fixed t={label}",
        )

    @property
    def label_free(self) -> SegmentationScores | None:
        """Scores at the label-free threshold (chosen from the maps alone)."""
        if self.label_free_threshold is None:
            return None
        label = format_threshold(self.label_free_threshold)
        method = RULE_NAMES.get(str(self.label_free_method), str(self.label_free_method))
        return self.at(
            self.label_free_threshold,
            protocol=f"label-free ({method}) t={label} (no ground truth)",
            name=f"{method} t={label}",
        )

    def results(self) -> list[SegmentationScores]:
        """The headline scores side by side: fixed, label-free, oracle (those available)."""
        return [s for s in (self.fixed, self.label_free, self.best) if s is not None]

    def to_dict(self) -> dict:
        thresholds, mious = self.curve
        return {
            "protocol": "mIoU at each background threshold, every point scored on the ground truth; "
            "its maximum (best_threshold) is an oracle",
            "spec": self.sweep_spec,
            "thresholds": thresholds.tolist(),
            "miou": [None if math.isnan(v) else 100.0 * float(v) for v in mious],
            "best_threshold": self.best_threshold,
            "best_threshold_uses_ground_truth": True,
            "fixed_threshold": self.fixed_threshold,
            "label_free": {
                "method": self.label_free_method,
                "threshold": self.label_free_threshold,
                "chosen_on": ("the images' edges along the contours of the thresholded maps "
                              "(wsss.refine.thresholds.EdgeAlignment)" if self.label_free_method == "edges" else
                              "per-pixel max foreground score over all pixels of the split's maps, "
                              f"{self.score_counts.size} bins over [0, 1], scores above 1 in the top bin"),
                "uses_ground_truth": False,
            },
        }


def evaluate_maps(
    dataset: GroundTruth,
    store: MapStore | str | Path,
    ids: Sequence[str] | None = None,
    thresholds: str | Sequence[float] | None = DEFAULT_SWEEP,
    fixed_threshold: float | None = IRN_THRESHOLD,
    label_free: str | None = "edges",
    *,
    progress: bool = True,
) -> SweepResult:
    """Score a map store at many background thresholds in one pass over the images.

    Args:
        dataset: gives ``ids``, ``classes``, ``num_classes`` and ``load_mask(id)``.
        store: a :class:`MapStore` or its folder.
        ids: images to score (default: all of ``dataset.ids``).
        thresholds: the sweep (``"start:stop:step"``, a list, or None for no sweep).
        fixed_threshold: a threshold fixed without ground truth (IRN: 0.15), or None.
        label_free: a rule of :data:`wsss.refine.thresholds.LABEL_FREE_RULES` or None.

    Raises:
        DataError: store missing or empty, maps missing for some ids, a corrupt map file, maps
            whose size differs from the ground truth or whose keys are out of range.
        ConfigError: a malformed threshold list or method, or nothing to evaluate.
    """
    store = store if isinstance(store, MapStore) else MapStore(store)
    if label_free is not None and label_free not in LABEL_FREE_METHODS:
        raise ConfigError(f"label-free method must be one of {LABEL_FREE_METHODS} or none, got {label_free!r}")
    if label_free == "edges" and not callable(getattr(dataset, "load_image", None)):
        raise ConfigError("the edges label-free rule reads the images: the dataset has no load_image; "
                          "choose a histogram rule (li, otsu, triangle) or none")
    sweep = parse_thresholds(thresholds) if thresholds is not None else np.zeros(0)
    fixed = None if fixed_threshold is None else _threshold_value(fixed_threshold)
    if sweep.size == 0 and fixed is None and label_free is None:
        raise ConfigError("nothing to evaluate: no sweep, no fixed threshold, no label-free method")
    parts = [sweep] + ([np.array([fixed])] if fixed is not None else [])
    if label_free is not None:
        parts.append(histogram_edges(OTSU_BINS)[1:-1])  # every candidate of a histogram rule
        parts.append(EDGE_GRID)  # and of the edges rule
    grid = np.unique(np.round(np.concatenate(parts), _DECIMALS))

    ids = list(dataset.ids if ids is None else ids)
    require_predictions(ids, store.directory, SUFFIX)
    accumulator = SweepAccumulator(dataset.num_classes, grid)
    for image_id in tqdm(ids, desc="sweep", leave=False, disable=not progress or None):
        path = store.path(image_id)
        image = dataset.load_image(image_id) if label_free == "edges" else None
        accumulator.update(dataset.load_mask(image_id), store.load(image_id), maps_path=path, image=image)

    label_free_threshold = None
    if label_free is not None:
        value = accumulator.label_free_threshold(label_free)
        if math.isnan(value):
            log.warning("%s: too few distinct map scores for a label-free threshold", store.directory)
        else:
            label_free_threshold = float(np.round(value, _DECIMALS))
    confusions = accumulator.confusions()
    result = SweepResult(
        classes=tuple(dataset.classes),
        grid=grid,
        confusions=confusions,
        thresholds=sweep,
        fixed_threshold=fixed,
        label_free_threshold=label_free_threshold,
        label_free_method=label_free,
        sweep_spec=thresholds if isinstance(thresholds, str) else None,
        num_images=accumulator.num_images,
        score_counts=accumulator.score_counts,
        num_pixels=int(confusions[0].sum()) if grid.size else 0,
    )
    for scores in result.results():
        log.debug("%s: %s: mIoU %.2f", store.directory, scores.protocol, 100 * scores.miou)
    return result
