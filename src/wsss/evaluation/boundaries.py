"""Class boundaries of the ground truth on the stride-4 grid, and how IRN's boundary maps meet them.

IRN's boundary maps (:class:`~wsss.stores.edges.EdgeStore`) and the random walk live on the
stride-4 grid: cell (i, j) stands for the 4 x 4 block of image pixels ``[4i, 4i + 4) x
[4j, 4j + 4)`` (cut at the image's bottom and right edges), a grid of ``ceil(H / 4) x
ceil(W / 4)`` cells (:func:`wsss.stores.maps.strided_size`). What a cell sees of the ground
truth is the set of labels of the pixels in its block widened by ``margin`` pixels on every side
(:func:`labels_near_cells`). Two uses:

* :func:`boundary_regions` (``margin`` 4, one cell): a cell whose 3 x 3 neighbourhood of cells
  holds two or more labels other than 255 is a **true boundary** (the cell is within one cell of
  a change of ground-truth label); the others are **object interior** (one foreground class),
  **background** (only class 0) or **ignored** (only 255). :class:`BoundaryProbe` and
  :func:`mean_boundary_probability` average a boundary map over each kind of cell: a boundary
  map that marks class boundaries is high on the first and low on the other two.
* :func:`ground_truth_boundary` (``margin`` 1, 255 counted as a label): 1 on the cells whose
  block, widened by one pixel, holds two or more distinct values, else 0. It is the boundary map
  that separates every pair of differently labelled pixels with the thinnest band of cells (one
  cell where the change falls inside a block, two where it falls between blocks), the walk's
  upper bound: the random walk on it (``benchmarks/walk_ablation.py``) cannot leak across a
  true boundary. 255 counts as a label there because VOC draws a 255 band along object outlines
  (the generated benchmark has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import maximum_filter
from tqdm import tqdm

from wsss.errors import DataError
from wsss.io import IGNORE_INDEX
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import strided_size

STRIDE = 4  # the random walk's and IRN's boundary grid
# Region codes of boundary_regions.
IGNORED, BACKGROUND, INTERIOR, BOUNDARY = -1, 0, 1, 2
REGION_NAMES = {BOUNDARY: "boundary", INTERIOR: "interior", BACKGROUND: "background"}


def labels_near_cells(gt: np.ndarray, margin: int, *, stride: int = STRIDE,
                      with_ignore: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which labels occur in each stride-``stride`` cell's block widened by ``margin`` pixels.

    Args:
        gt: (H, W) label map, 0..K and 255.
        margin: pixels added on every side of a cell's ``stride x stride`` block (Chebyshev).
        stride: the grid's stride.
        with_ignore: count 255 as a label too (default: leave it out).

    Returns:
        ``(labels, present)``: the labels found in ``gt`` (int64 (L,), increasing) and a bool
        (L, h, w) array, ``present[l, i, j]`` when ``labels[l]`` occurs near cell (i, j);
        ``(h, w) = ceil((H, W) / stride)``.
    """
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt must be a 2-D label map, got shape {gt.shape}")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be an integer >= 0, got {margin!r}")
    height, width = gt.shape
    rows, cols = strided_size(height, width, stride)
    labels = np.unique(gt).astype(np.int64)
    if not with_ignore:
        labels = labels[labels != IGNORE_INDEX]
    present = np.zeros((len(labels), rows, cols), dtype=bool)
    for index, label in enumerate(labels):
        mask = gt == label
        if margin:
            mask = maximum_filter(mask, size=2 * int(margin) + 1, mode="constant", cval=False)
        padded = np.zeros((rows * stride, cols * stride), dtype=bool)
        padded[:height, :width] = mask
        present[index] = padded.reshape(rows, stride, cols, stride).any(axis=(1, 3))
    return labels, present


def boundary_regions(gt: np.ndarray, *, stride: int = STRIDE) -> np.ndarray:
    """The kind of every stride-4 cell: int8 (h, w) of :data:`BOUNDARY`, :data:`INTERIOR`,
    :data:`BACKGROUND` or :data:`IGNORED` (see the module docstring: a true boundary is a cell
    within one cell of a change of ground-truth label, 255 left out)."""
    labels, present = labels_near_cells(gt, stride, stride=stride)
    count = present.sum(axis=0)
    regions = np.full(count.shape, IGNORED, dtype=np.int8)
    regions[count >= 2] = BOUNDARY
    single = count == 1
    only_background = single & present[labels == 0].any(axis=0)
    regions[single & ~only_background] = INTERIOR
    regions[only_background] = BACKGROUND
    return regions


def ground_truth_boundary(gt: np.ndarray, *, stride: int = STRIDE) -> np.ndarray:
    """The walk's perfect boundary map: float32 (h, w), 1 on cells whose block widened by one
    pixel holds two or more distinct values (255 included), 0 elsewhere (module docstring)."""
    _, present = labels_near_cells(gt, 1, stride=stride, with_ignore=True)
    return (present.sum(axis=0) >= 2).astype(np.float32)


@dataclass
class BoundaryProbability:
    """Mean boundary probability on each kind of cell, over every cell of the images scored.

    Attributes:
        mean: region name (``boundary``, ``interior``, ``background``) -> mean probability, NaN
            for a region with no cell.
        cells: region name -> number of cells.
        num_images: images scored.
    """

    mean: dict[str, float]
    cells: dict[str, int]
    num_images: int

    def to_dict(self) -> dict:
        return {"mean": dict(self.mean), "cells": dict(self.cells), "num_images": self.num_images,
                "definition": "stride-4 cells; boundary: within one cell of a change of ground-truth "
                              "label (255 left out); interior: one foreground class; background: class 0 "
                              "only (wsss.evaluation.boundaries)"}


class BoundaryProbe:
    """Streams (ground truth, boundary map) pairs; :meth:`result` gives the mean per region."""

    def __init__(self) -> None:
        self.sums = {code: 0.0 for code in REGION_NAMES}
        self.counts = {code: 0 for code in REGION_NAMES}
        self.num_images = 0

    def update(self, gt: np.ndarray, edge: np.ndarray, *, where: str | Path | None = None) -> None:
        """Add one image: ``gt`` (H, W) labels, ``edge`` (h, w) its stride-4 boundary map.

        Raises:
            DataError: naming ``where`` when the boundary map is not the stride-4 grid of ``gt``.
        """
        gt, edge = np.asarray(gt), np.asarray(edge, dtype=np.float64)
        expected = strided_size(*gt.shape)
        if edge.shape != expected:
            raise DataError(f"boundary map is {edge.shape[0]}x{edge.shape[1]} but a {gt.shape[0]}x{gt.shape[1]} "
                            f"ground truth needs {expected[0]}x{expected[1]} (stride 4)", where)
        regions = boundary_regions(gt)
        for code in REGION_NAMES:
            cells = regions == code
            self.sums[code] += float(edge[cells].sum())
            self.counts[code] += int(cells.sum())
        self.num_images += 1

    def result(self) -> BoundaryProbability:
        mean = {name: self.sums[code] / self.counts[code] if self.counts[code] else float("nan")
                for code, name in REGION_NAMES.items()}
        cells = {name: self.counts[code] for code, name in REGION_NAMES.items()}
        return BoundaryProbability(mean=mean, cells=cells, num_images=self.num_images)


def mean_boundary_probability(dataset, edge_dir: str | Path, ids: Sequence[str] | None = None, *,
                              progress: bool = True) -> BoundaryProbability:
    """The mean IRN boundary probability on true boundaries, object interiors and background.

    Args:
        dataset: gives ``ids`` and ``load_mask(id)`` (the ground truth).
        edge_dir: an :class:`~wsss.stores.edges.EdgeStore` folder (``edges/<method>/``).
        ids: the images (default: all of ``dataset.ids``).

    Raises:
        DataError: a boundary map missing, unreadable or not on the stride-4 grid of its mask.
    """
    store = EdgeStore(edge_dir)
    probe = BoundaryProbe()
    for image_id in tqdm(list(dataset.ids if ids is None else ids), desc="boundaries", leave=False,
                         disable=not progress or None):
        if not store.has(image_id):
            raise DataError(f"no boundary map for image {image_id!r}", store.path(image_id))
        edge, _ = store.load(image_id)
        probe.update(dataset.load_mask(image_id), edge, where=store.path(image_id))
    return probe.result()
