"""The localization-map store: one compressed ``.npz`` per image, no pickles.

Every method that produces class activation maps (CAM, AdvCAM, RIB, W-OoD, ...) writes them
here and every consumer (evaluation sweeps, IR labels, random walk) reads them from here.

Arrays in a file:
    keys      int64 (C,)           foreground class ids (1..K) of the channels
    strided   float16 (C, h, w)    maps at stride 4: h = ceil(H / 4), w = ceil(W / 4)
    high_res  float16 (C, H, W)    maps at full image resolution
    boxes     float32 (C, 4)       optional: one box x0, y0, x1, y1 (pixels) per channel
    proposals int64 (C,)           optional, with boxes: BBAM's kept proposals per box (0: none
                                   kept, the map is all zero)
Maps are non-negative and normalised per class to a maximum of about 1.

Class maps (CAM and kin) have no ``boxes`` and one channel per class, so their keys are unique.
Per-box maps (BBAM) have one channel per box: the keys are the boxes' classes and may repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.errors import DataError
from wsss.io import PathLike, write_bytes
from wsss.stores._common import FolderStore, box_problem, npz_bytes, read_npz

SUFFIX = ".npz"


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """Size of a map at ``stride`` for an image of (height, width): ceil division, as IRN."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


@dataclass
class LocalizationMaps:
    """Per-image maps for the image's classes, or for its boxes.

    Attributes:
        keys: foreground class ids (1..K), one per channel; unique unless ``boxes`` is given.
        strided: (C, h, w) maps at stride 4 (may be None if a method only makes full-size maps).
        high_res: (C, H, W) maps at image resolution.
        boxes: optional float32 (C, 4) ``x0, y0, x1, y1`` in pixels, the box of each channel,
            inside the image.
        proposals: optional int64 (C,), only with ``boxes``: how many proposals BBAM kept to
            explain each box (0: none, and the map is all zero).

    Raises:
        ValueError: shapes that disagree, repeated keys without boxes, boxes outside the image.
    """

    keys: np.ndarray
    strided: np.ndarray | None
    high_res: np.ndarray
    boxes: np.ndarray | None = None
    proposals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keys = np.asarray(self.keys, dtype=np.int64).reshape(-1)
        self.high_res = np.asarray(self.high_res)
        if self.high_res.ndim != 3 or self.high_res.shape[0] != len(self.keys):
            raise ValueError(
                f"high_res must be (C, H, W) with C = {len(self.keys)} keys, got {self.high_res.shape}"
            )
        if self.strided is not None:
            self.strided = np.asarray(self.strided)
            expect = (len(self.keys), *strided_size(*self.high_res.shape[1:]))
            if self.strided.shape != expect:
                raise ValueError(f"strided must be {expect}, got {self.strided.shape}")
        if self.boxes is None:
            if len(np.unique(self.keys)) != len(self.keys):
                raise ValueError(
                    f"keys {self.keys.tolist()} repeat a class; only per-box maps (with boxes) may"
                )
        else:
            self.boxes = np.asarray(self.boxes, dtype=np.float32)
            if self.boxes.shape != (len(self.keys), 4):
                raise ValueError(f"boxes must be ({len(self.keys)}, 4), one per key, got {self.boxes.shape}")
            problem = box_problem(self.boxes, *self.image_size)
            if problem is not None:
                raise ValueError(problem)
        if self.proposals is not None:
            self.proposals = np.asarray(self.proposals, dtype=np.int64).reshape(-1)
            if self.boxes is None or self.proposals.shape != (len(self.keys),) or (self.proposals < 0).any():
                raise ValueError(f"proposals must be {len(self.keys)} counts >= 0, one per box (with boxes), "
                                 f"got {self.proposals.tolist()}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image the maps belong to."""
        return int(self.high_res.shape[1]), int(self.high_res.shape[2])

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes (``boxes`` only when present: class-map files are unchanged)."""
        arrays = {"keys": self.keys, "high_res": self.high_res.astype(np.float16)}
        if self.strided is not None:
            arrays["strided"] = self.strided.astype(np.float16)
        if self.boxes is not None:
            arrays["boxes"] = self.boxes
        if self.proposals is not None:
            arrays["proposals"] = self.proposals
        return npz_bytes(arrays)


def save_maps(path: PathLike, maps: LocalizationMaps) -> None:
    """Write ``maps`` to ``path`` atomically."""
    write_bytes(path, maps.to_bytes())


def load_maps(path: PathLike) -> LocalizationMaps:
    """Read a map file written by :func:`save_maps`.

    Raises:
        DataError: the file is missing, not a map file, holds NaN/inf values, or its arrays
            disagree (shapes, repeated keys without boxes, boxes outside the image).
    """
    path = Path(path)
    data = read_npz(path, "map", ("keys", "high_res"))
    high_res = data["high_res"].astype(np.float32)
    strided = data["strided"].astype(np.float32) if "strided" in data else None
    for name, array in (("high_res", high_res), ("strided", strided)):
        if array is not None and not np.isfinite(array).all():
            raise DataError(f"map '{name}' contains NaN or infinite values", path)
    try:
        return LocalizationMaps(keys=data["keys"], strided=strided, high_res=high_res, boxes=data.get("boxes"),
                                proposals=data.get("proposals"))
    except ValueError as exc:
        raise DataError(f"inconsistent map file ({exc})", path) from None


class MapStore(FolderStore):
    """A folder of map files, ``<directory>/<id>.npz``."""

    suffix = SUFFIX

    def save(self, image_id: str, maps: LocalizationMaps) -> None:
        """Write the maps of ``image_id`` atomically."""
        save_maps(self.path(image_id), maps)

    def load(self, image_id: str) -> LocalizationMaps:
        """Read the maps of ``image_id`` (see :func:`load_maps` for the errors)."""
        return load_maps(self.path(image_id))
