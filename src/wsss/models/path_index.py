"""IRN's path index: which pixel pairs are compared, and the pixels between them.

Inter-pixel Relation Network (Ahn, Cho & Kwak, CVPR 2019) predicts a class-boundary map B and
derives the affinity of two pixels i, j within a radius from it:

    a_ij = 1 - max_{k in path(i, j)} B(k)

where path(i, j) is the set of pixels crossed by the straight segment from i to j. This module
holds that geometry (reference: ``misc/indexing.py`` of jiwoon-ahn/irn, ``PathIndex``), written
from its definition:

* **offsets** -- the destination displacements (dy, dx) searched from every source pixel: all
  integer vectors strictly inside the disc of the radius, ``dy**2 + dx**2 < radius**2``, in the
  half plane ``dy > 0`` or ``dy == 0, dx > 0``, so that each unordered pair of pixels appears
  exactly once (34 offsets at radius 5, 152 at radius 10, as IRN). They are ordered as IRN orders
  its destinations: by path length, and row-major (dy, then dx) among equal lengths.
* **paths** -- for an offset (dy, dx), the cells (y, x) of the bounding box of the segment from
  (0, 0) to (dy, dx) whose distance to the segment's line is below one pixel,
  ``(dy * x - dx * y)**2 < dy**2 + dx**2``. Both end points belong to the path. Cells are listed
  from the source to the destination (by their projection on the segment).

Grid convention (IRN's crop). For a map of size (H, W) and ``f = radius - 1`` (IRN's
``radius_floor``), the sources are the pixels of rows ``0 .. H-f-1`` and columns ``f .. W-f-1``,
a grid of ``H' = H - f`` by ``W' = W - 2f``. Every destination of such a source lies inside the
map (offsets have ``0 <= dy <= f`` and ``|dx| <= f``), so no value is made up. Output cell
(i, j) of :func:`max_along_paths` and of :func:`pair_indices` is the source pixel (i, j + f);
its destination for offset d is pixel (i + dy_d, j + f + dx_d). To make every pixel of a map a
source (the random walk does), pad the map beforehand with ``f`` cells on the left, the right
and the bottom, filled with 1 (a boundary everywhere, so affinities to padded cells are 0).
"""

from __future__ import annotations

import numpy as np
import torch


class PathIndex:
    """Offsets searched within ``radius`` and the path of cells to each of them.

    Args:
        radius: search radius in pixels of the map (IRN: 10 for training, 5 for the random walk).

    Attributes:
        radius: the search radius.
        radius_floor: ``radius - 1``, the largest |dy| or |dx| of an offset (the crop margin).
        offsets: int64 (D, 2) destination offsets (dy, dx), ordered by path length.
        paths: D int64 arrays (L_d, 2) of the cells (y, x) from (0, 0) to ``offsets[d]``.
    """

    def __init__(self, radius: int) -> None:
        if int(radius) != radius or radius < 2:
            raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
        self.radius = int(radius)
        self.radius_floor = self.radius - 1
        candidates = [
            (dy, dx)
            for dy in range(0, self.radius)
            for dx in range(-self.radius_floor, self.radius)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < self.radius * self.radius
        ]
        paths = [_segment_cells(dy, dx) for dy, dx in candidates]
        # IRN groups destinations by path length; a stable sort keeps row-major order inside a group.
        order = sorted(range(len(candidates)), key=lambda k: len(paths[k]))
        self.offsets = np.array([candidates[k] for k in order], dtype=np.int64).reshape(-1, 2)
        self.paths = [paths[k] for k in order]
        # Plain tuples for the slicing loop of max_along_paths.
        self._path_cells = [tuple((int(y), int(x)) for y, x in path) for path in self.paths]

    @property
    def num_offsets(self) -> int:
        """D, the number of destinations per source."""
        return len(self.offsets)

    def cropped_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W'), the source grid of a (height, width) map: ``(H - f, W - 2f)``."""
        cropped = (height - self.radius_floor, width - 2 * self.radius_floor)
        if cropped[0] < 1 or cropped[1] < 1:
            raise ValueError(
                f"a {height}x{width} map has no source pixel at radius {self.radius}: it needs at "
                f"least {self.radius_floor + 1} rows and {2 * self.radius_floor + 1} columns"
            )
        return cropped

    def __repr__(self) -> str:
        return f"PathIndex(radius={self.radius}, offsets={self.num_offsets})"


def _segment_cells(dy: int, dx: int) -> np.ndarray:
    """Cells of the bounding box of (0,0)-(dy,dx) closer than one pixel to the line, in order."""
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    y, x = (grid.reshape(-1) for grid in np.meshgrid(ys, xs, indexing="ij"))
    near = (dy * x - dx * y) ** 2 < dy * dy + dx * dx
    y, x = y[near], x[near]
    along = y * dy + x * dx  # projection on the segment, 0 at the source, |d|^2 at the destination
    order = np.lexsort((x, y, along))
    return np.stack([y[order], x[order]], axis=1).astype(np.int64)


def max_along_paths(edge: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """Largest boundary value on the path from every source to each of its destinations.

    ``1 - max_along_paths(edge, index)`` is IRN's affinity (reference ``edge_to_affinity``).
    Differentiable: the gradient reaches the cell holding each maximum.

    Args:
        edge: (B, H, W) boundary map, values in [0, 1].
        index: the path index.

    Returns:
        (B, D, H', W') with ``(H', W') = index.cropped_size(H, W)``; cell (b, d, i, j) is the max
        of ``edge[b]`` over the path from pixel (i, j + f) to (i + dy_d, j + f + dx_d) (module
        docstring: grid convention).
    """
    if edge.dim() != 3:
        raise ValueError(f"edge must be (B, H, W), got shape {tuple(edge.shape)}")
    height, width = edge.shape[-2:]
    rows, cols = index.cropped_size(height, width)
    margin = index.radius_floor
    per_offset = []
    for cells in index._path_cells:
        shifted = [edge[:, y : y + rows, margin + x : margin + x + cols] for y, x in cells]
        # max(dim) keeps only the argmax for backward, not the stacked slices.
        per_offset.append(torch.stack(shifted, dim=1).max(dim=1).values)
    return torch.stack(per_offset, dim=1)


def pair_indices(height: int, width: int, index: PathIndex,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices (``row * width + col``) of the pairs of :func:`max_along_paths`.

    Args:
        height, width: size of the map.
        index: the path index.
        device: where to build the tensors (default CPU).

    Returns:
        (source, destination), each int64 (D, H', W'): ``source[d, i, j] = i * width + j + f``
        (the same for every d) and ``destination[d, i, j]`` its destination for offset d.
    """
    rows, cols = index.cropped_size(height, width)
    margin = index.radius_floor
    flat = torch.arange(height * width, dtype=torch.int64, device=device).view(height, width)
    destination = torch.stack(
        [flat[dy : dy + rows, margin + dx : margin + dx + cols] for dy, dx in index.offsets.tolist()]
    )
    source = flat[:rows, margin : margin + cols].expand(index.num_offsets, rows, cols).contiguous()
    return source, destination
