"""Label-free thresholds: a background threshold chosen from the images and maps, no masks.

Seeds and pseudo masks both come from maps normalised to a maximum of 1 and a background
threshold t: a pixel is foreground where its best class score exceeds t. The papers choose t
on the ground truth they then score (AdvCAM's sweep) or fix it for PASCAL VOC (IRN's 0.15 for
seeds, 0.25 for the walk). On other data neither is available or right, so t can be chosen
without masks: from where the thresholded maps' contours lie in the images, or from the
histogram of every pixel's best foreground score over a split. Either is one pass over the
images and maps that never reads a mask.

Rules. ``edges`` (:class:`EdgeAlignment`) also reads the images: the lowest threshold at which
the masks' contours follow the image's edges best. The others read only the histogram and
return one of its inner edges:

* ``li``: Li's minimum cross-entropy threshold (C. H. Li and C. K. Lee, "Minimum cross entropy
  thresholding", Pattern Recognition 26(4), 1993; the iterative form of Li and Tam, 1998): the
  t whose two-level image (each side replaced by its mean) has the least cross-entropy with
  the scores, ``-sum_{x <= t} p(x) x log mu_0(t) - sum_{x > t} p(x) x log mu_1(t)``. It fits
  a skewed histogram, a large mass of near-zero background scores and a long foreground
  tail, without assuming two modes of equal spread.
* ``otsu``: Otsu's threshold (maximum between-class variance). It splits a histogram into two
  modes of comparable spread; class maps have one mode near 0 and a spread-out tail, and Otsu
  then cuts the tail too high (measured in ``docs/scale.md``).
* ``triangle``: Zack's triangle method: the bin farthest below the line from the histogram's
  peak to its far end; made for one large peak and a long tail.

The default is ``edges``. No histogram rule came within 3 points of the oracle on both the
demo benchmark and a second generated dataset of another size and look (Li on the first, Otsu
on the second); ``edges`` did on both (``docs/scale.md``, "Label-free thresholds").
"""

from __future__ import annotations

import math

import numpy as np

from wsss.errors import ConfigError

HISTOGRAM_BINS = 256
"""Bins of a score histogram over [0, 1]."""

HISTOGRAM_RULES = ("li", "otsu", "triangle")
"""The rules :func:`histogram_threshold` knows."""

LABEL_FREE_RULES = ("edges", *HISTOGRAM_RULES)
"""Every label-free rule: ``edges`` (:class:`EdgeAlignment`, which also reads the images) and
the histogram rules."""

RULE_NAMES = {"edges": "edges", "li": "Li", "otsu": "Otsu", "triangle": "triangle"}
"""How reports name each rule."""


def histogram_edges(bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """``bins + 1`` equal-width edges over [0, 1]."""
    return np.linspace(0.0, 1.0, bins + 1)


def score_histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """int64 counts of ``values`` in ``bins`` equal bins over [0, 1]; values outside are clipped
    into the end bins and NaN or infinite values are left out."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    index = np.clip(np.floor(values * bins), 0, bins - 1).astype(np.int64)
    return np.bincount(index, minlength=bins)


def _check(counts: np.ndarray, edges: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ValueError(f"{name} needs B counts and B + 1 edges")
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError(f"{name} needs finite non-negative counts")
    return counts, edges


def otsu_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold of a histogram: the bin edge maximising the between-class variance.

    When several edges tie (an empty gap between two modes), the middle of the first run of
    tied edges is returned, so the threshold sits inside the gap rather than at its border.

    Args:
        counts: (B,) non-negative counts.
        edges: (B + 1,) increasing bin edges.

    Returns:
        One of ``edges[1:-1]``; NaN if the histogram has fewer than two occupied bins.
    """
    counts, edges = _check(counts, edges, "otsu_threshold")
    if np.count_nonzero(counts) < 2:
        return math.nan
    centres = (edges[:-1] + edges[1:]) / 2
    total = counts.sum()
    # between[i] (i = 0..B-2): class 0 = bins 0..i, class 1 = bins i+1..B-1, split at edges[i + 1].
    weight0 = np.cumsum(counts)[:-1]
    mass0 = np.cumsum(counts * centres)[:-1]
    weight1 = total - weight0
    mass1 = (counts * centres).sum() - mass0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = weight0 * weight1 * (mass0 / weight0 - mass1 / weight1) ** 2
    between = np.where((weight0 > 0) & (weight1 > 0), between, -1.0)
    top = between.max()
    tied = between >= top * (1 - 1e-12)
    first = int(np.argmax(tied))
    last = first
    while last + 1 < tied.size and tied[last + 1]:
        last += 1
    return float(edges[(first + last) // 2 + 1])


def li_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Li's minimum cross-entropy threshold of a histogram of non-negative scores.

    Over the splits at ``edges[1:-1]`` with both sides holding mass, minimises
    ``-m_0 log(m_0 / n_0) - m_1 log(m_1 / n_1)``, where ``n_j`` is the count and ``m_j`` the
    sum of the bin centres' values on side j (lower side: bins up to the split). Ties go to
    the lowest split.

    Returns:
        One of ``edges[1:-1]``; NaN if fewer than two bins are occupied or every occupied bin
        has a centre of 0 (no score to take a logarithm of).
    """
    counts, edges = _check(counts, edges, "li_threshold")
    if edges[0] < 0:
        raise ValueError("li_threshold needs non-negative scores (edges from 0 up)")
    if np.count_nonzero(counts) < 2:
        return math.nan
    centres = (edges[:-1] + edges[1:]) / 2
    n0 = np.cumsum(counts)[:-1]
    m0 = np.cumsum(counts * centres)[:-1]
    n1 = counts.sum() - n0
    m1 = (counts * centres).sum() - m0
    valid = (n0 > 0) & (n1 > 0) & (m0 > 0) & (m1 > 0)
    if not valid.any():
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = -m0 * np.log(m0 / n0) - m1 * np.log(m1 / n1)
    cost = np.where(valid, cost, np.inf)
    return float(edges[int(np.argmin(cost)) + 1])


def triangle_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Zack's triangle threshold: on the longer side of the histogram's peak, the bin edge
    farthest from the line joining the peak to the last occupied bin on that side.

    Returns:
        One of ``edges[1:-1]``; NaN if fewer than two bins are occupied.
    """
    counts, edges = _check(counts, edges, "triangle_threshold")
    occupied = np.nonzero(counts)[0]
    if occupied.size < 2:
        return math.nan
    peak = int(np.argmax(counts))
    first, last = int(occupied[0]), int(occupied[-1])
    flip = peak - first > last - peak  # the tail lies below the peak: mirror the histogram
    if flip:
        counts = counts[::-1]
        peak, last = counts.size - 1 - peak, counts.size - 1 - first
    span = np.arange(peak, last + 1)
    rise, run = counts[last] - counts[peak], float(last - peak)
    distance = np.abs(rise * (span - peak) - run * (counts[span] - counts[peak])) / math.hypot(rise, run)
    best = int(span[int(np.argmax(distance))])
    # The split sits after the farthest bin (before it, read from the mirrored side).
    split = counts.size - best - 1 if flip else best + 1
    split = min(max(split, 1), counts.size - 1)
    return float(edges[split])


_RULES = {"li": li_threshold, "otsu": otsu_threshold, "triangle": triangle_threshold}


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`LABEL_FREE_RULES`; else a one-line :class:`ConfigError`."""
    if rule not in LABEL_FREE_RULES:
        raise ConfigError(f"label-free threshold rule must be one of {', '.join(LABEL_FREE_RULES)}, got {rule!r}")
    return rule


def histogram_threshold(counts: np.ndarray, edges: np.ndarray, rule: str = "li") -> float:
    """The threshold histogram rule ``rule`` (:data:`HISTOGRAM_RULES`) chooses on a histogram;
    NaN when the histogram gives nothing to choose from (see each rule)."""
    if check_rule(rule) not in _RULES:
        raise ConfigError(f"{rule!r} is not a histogram rule (one of {', '.join(HISTOGRAM_RULES)})")
    return _RULES[rule](counts, edges)


# --------------------------------------------------------------------------- contours on image edges

EDGE_SMOOTHING = 0.02
"""Gaussian blur of the image before its gradient, as a share of the image's side
(``sqrt(H W)``): 2.6 px at 128 x 128, 8.7 px at VOC's 375 x 500. It averages out textures
finer than that (the generated parts' stripes and dots, fur, foliage) while keeping the
outlines of regions of different colour."""

EDGE_GRID = np.round(np.arange(0.01, 0.801, 0.01), 10)
"""Thresholds at which :class:`EdgeAlignment` measures the contours."""


def edge_strength(image: np.ndarray, smoothing: float = EDGE_SMOOTHING) -> np.ndarray:
    """float32 (H, W) colour-gradient magnitude of a uint8 (H, W, 3) image after a Gaussian blur
    of ``smoothing * sqrt(H W)`` pixels: ``sqrt(sum over channels and axes of Sobel^2)``."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    sigma = smoothing * math.sqrt(image.shape[0] * image.shape[1])
    total = np.zeros(image.shape[:2], dtype=np.float32)
    for channel in range(image.shape[2]):
        blurred = ndimage.gaussian_filter(image[..., channel], sigma) if sigma > 0 else image[..., channel]
        for axis in (0, 1):
            total += ndimage.sobel(blurred, axis) ** 2
    return np.sqrt(total)


class EdgeAlignment:
    """How well the contours of thresholded maps follow the image's edges, at every threshold.

    A map thresholded at t gives labels (the best class where its score exceeds t, else
    background). Its contour is the set of 4-neighbour pixel pairs whose labels differ; the
    alignment at t is the mean :func:`edge_strength` over those pairs (each pair weighs the mean
    of its two pixels), pooled over all images. Each pair is on the contour for an interval of
    thresholds (two pixels of one class: from the lower score to the higher; of two classes:
    up to the higher score), so one pass gives every threshold of ``grid`` exactly.

    :meth:`threshold` is the ``edges`` label-free rule: the lowest threshold at which the
    alignment peaks. Raising t from 0 shrinks every mask from the whole image inwards; the
    first strong edges its contour meets are the objects' outlines, where colour and texture
    change. Further in, the alignment rises again on the strongest inner structure -- a
    discriminative part's rim, textures coarser than the blur -- which the global maximum would
    pick: that is the seed the papers' CAMs are criticised for, not the object.
    """

    def __init__(self, grid: np.ndarray = EDGE_GRID, smoothing: float = EDGE_SMOOTHING) -> None:
        self.grid = np.asarray(grid, dtype=np.float64)
        if self.grid.ndim != 1 or self.grid.size < 3 or np.any(np.diff(self.grid) <= 0):
            raise ValueError("grid must be an increasing 1-D array of at least 3 thresholds")
        self.smoothing = smoothing
        self.sums = np.zeros(self.grid.size, dtype=np.float64)
        self.counts = np.zeros(self.grid.size, dtype=np.float64)
        self.num_images = 0

    def update(self, image: np.ndarray, best: np.ndarray, class_ids: np.ndarray) -> None:
        """Add one image: ``image`` uint8 (H, W, 3), and per pixel its best foreground score
        ``best`` (H, W) and that score's class ``class_ids`` (H, W)."""
        strength = edge_strength(image, self.smoothing)
        best = np.asarray(best, dtype=np.float64)
        class_ids = np.asarray(class_ids)
        if best.shape != strength.shape or class_ids.shape != strength.shape:
            raise ValueError(f"image {strength.shape} and maps {best.shape} differ in size")
        size = self.grid.size
        delta_sum = np.zeros(size + 1)
        delta_count = np.zeros(size + 1)
        for axis in (0, 1):
            first = [slice(None), slice(None)]
            second = [slice(None), slice(None)]
            first[axis], second[axis] = slice(None, -1), slice(1, None)
            b1, b2 = best[tuple(first)].ravel(), best[tuple(second)].ravel()
            c1, c2 = class_ids[tuple(first)].ravel(), class_ids[tuple(second)].ravel()
            weight = 0.5 * (strength[tuple(first)].ravel() + strength[tuple(second)].ravel())
            high = np.maximum(b1, b2)
            low = np.where(c1 == c2, np.minimum(b1, b2), -np.inf)
            start = np.searchsorted(self.grid, low, side="left")  # first t >= low
            stop = np.searchsorted(self.grid, high, side="left")  # first t >= high: no longer a contour
            keep = stop > start
            delta_sum += np.bincount(start[keep], weight[keep], size + 1) - np.bincount(stop[keep], weight[keep], size + 1)
            delta_count += np.bincount(start[keep], minlength=size + 1) - np.bincount(stop[keep], minlength=size + 1)
        self.sums += np.cumsum(delta_sum)[:size]
        self.counts += np.cumsum(delta_count)[:size]
        self.num_images += 1

    def curve(self) -> np.ndarray:
        """(T,) mean edge strength on the contours at each threshold (NaN where none)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def threshold(self, window: int = 5) -> float:
        """The lowest threshold at which the alignment, smoothed by a moving average of
        ``window`` grid steps, has a local maximum; the global maximum if it rises throughout;
        NaN with no contour at all."""
        curve = self.curve()
        valid = np.isfinite(curve)
        if not valid.any():
            return math.nan
        filled = np.where(valid, curve, np.nanmin(curve))
        pad = window // 2
        padded = np.pad(filled, pad, mode="edge")
        smooth = np.convolve(padded, np.ones(window) / window, mode="valid")
        for k in range(1, smooth.size - 1):
            if valid[k] and smooth[k] > smooth[k - 1] and smooth[k] >= smooth[k + 1]:
                return float(self.grid[k])
        return float(self.grid[int(np.nanargmax(np.where(valid, smooth, -np.inf)))])
