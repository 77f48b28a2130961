"""The boundary-map store: IRN's edge map (and displacement field) per image, one ``.npz`` each.

Written by :func:`wsss.training.irn.make_edges`, read by the random walk
(:mod:`wsss.refine.pseudo_masks`). Arrays in a file, at stride 4 of the image
(h = ceil(H / 4), w = ceil(W / 4)):

    edge          float16 (h, w)     boundary probability in [0, 1]
    displacement  float16 (2, h, w)  optional: IRN's displacement field (dy, dx)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.errors import DataError
from wsss.io import PathLike, write_bytes
from wsss.stores._common import FolderStore, npz_bytes, read_npz

SUFFIX = ".npz"


def save_edges(path: PathLike, edge: np.ndarray, displacement: np.ndarray | None = None) -> None:
    """Write ``edge`` (h, w) and optionally ``displacement`` (2, h, w) as float16, atomically."""
    arrays = {"edge": np.asarray(edge, dtype=np.float16)}
    if displacement is not None:
        arrays["displacement"] = np.asarray(displacement, dtype=np.float16)
    write_bytes(path, npz_bytes(arrays))


def load_edges(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a file of :func:`save_edges`: ``edge`` float32 (h, w), ``displacement`` or None.

    Raises:
        DataError: missing or corrupt file, wrong shapes, or an edge map outside [0, 1].
    """
    path = Path(path)
    data = read_npz(path, "boundary-map", ("edge",))
    edge = data["edge"].astype(np.float32)
    displacement = data["displacement"].astype(np.float32) if "displacement" in data else None
    if edge.ndim != 2:
        raise DataError(f"edge map must be (h, w), got shape {edge.shape}", path)
    if not np.isfinite(edge).all() or (edge.size and (edge.min() < 0 or edge.max() > 1)):
        raise DataError("edge map must hold finite values in [0, 1]", path)
    if displacement is not None and displacement.shape != (2, *edge.shape):
        raise DataError(
            f"displacement must be (2, {edge.shape[0]}, {edge.shape[1]}), got {displacement.shape}", path
        )
    return edge, displacement


class EdgeStore(FolderStore):
    """A folder of boundary maps, ``<directory>/<id>.npz``."""

    suffix = SUFFIX

    def save(self, image_id: str, edge: np.ndarray, displacement: np.ndarray | None = None) -> None:
        """Write the boundary map (and displacement field) of ``image_id`` atomically."""
        save_edges(self.path(image_id), edge, displacement)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(edge, displacement or None)`` of ``image_id`` (see :func:`load_edges` for the errors)."""
        return load_edges(self.path(image_id))
