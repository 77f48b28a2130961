"""The localization-map store: one compressed ``.npz`` per image, no pickles.

Every method that produces class activation maps (CAM, AdvCAM, RIB, W-OoD, ...) writes them
here and every consumer (evaluation sweeps, IR labels, random walk) reads them from here.

Arrays in a file:
    keys      int64 (C,)           foreground class ids (1..K) of the channels
    strided   float16 (C, h, w)    maps at stride 4: h = ceil(H / 4), w = ceil(W / 4)
    high_res  float16 (C, H, W)    maps at full image resolution
Maps are non-negative and normalised per class to a maximum of about 1.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.errors import DataError
from wsss.io import write_bytes

SUFFIX = ".npz"


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """Size of a map at ``stride`` for an image of (height, width): ceil division, as IRN."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


@dataclass
class LocalizationMaps:
    """Per-image maps for the image's classes.

    Attributes:
        keys: foreground class ids (1..K), one per channel.
        strided: (C, h, w) maps at stride 4 (may be None if a method only makes full-size maps).
        high_res: (C, H, W) maps at image resolution.
    """

    keys: np.ndarray
    strided: np.ndarray | None
    high_res: np.ndarray

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

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.high_res.shape[1]), int(self.high_res.shape[2])

    def to_bytes(self) -> bytes:
        arrays = {"keys": self.keys, "high_res": self.high_res.astype(np.float16)}
        if self.strided is not None:
            arrays["strided"] = self.strided.astype(np.float16)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()


def save_maps(path: str | Path, maps: LocalizationMaps) -> None:
    """Write ``maps`` to ``path`` atomically."""
    write_bytes(path, maps.to_bytes())


def load_maps(path: str | Path) -> LocalizationMaps:
    """Read a map file written by :func:`save_maps`.

    Raises:
        DataError: the file is missing, not a map file, or holds NaN/inf values.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            if not {"keys", "high_res"} <= names:
                raise DataError("not a wsss map file (needs arrays 'keys' and 'high_res')", path)
            keys = data["keys"]
            high_res = data["high_res"].astype(np.float32)
            strided = data["strided"].astype(np.float32) if "strided" in names else None
    except FileNotFoundError:
        raise DataError("map file not found", path) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"corrupt map file ({exc})", path) from None
    for name, array in (("high_res", high_res), ("strided", strided)):
        if array is not None and not np.isfinite(array).all():
            raise DataError(f"map '{name}' contains NaN or infinite values", path)
    try:
        return LocalizationMaps(keys=keys, strided=strided, high_res=high_res)
    except ValueError as exc:
        raise DataError(f"inconsistent map file ({exc})", path) from None


class MapStore:
    """A folder of map files, one per image id."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{SUFFIX}"

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def save(self, image_id: str, maps: LocalizationMaps) -> None:
        save_maps(self.path(image_id), maps)

    def load(self, image_id: str) -> LocalizationMaps:
        return load_maps(self.path(image_id))

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}"))

    @staticmethod
    def looks_like_store(directory: str | Path) -> bool:
        """True when the folder holds map files rather than label PNGs."""
        directory = Path(directory)
        return any(directory.glob(f"*{SUFFIX}"))
