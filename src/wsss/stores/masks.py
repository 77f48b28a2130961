"""The label-map store: a folder of ``<id>.png`` palette label maps.

IR labels (:mod:`wsss.refine.ir_labels`), pseudo masks (:mod:`wsss.refine.pseudo_masks`) and
segmentation predictions (:mod:`wsss.segmentation.inference`) are written here, and read back by
IRN training, segmentation training and evaluation. A file is a palette PNG of a ``uint8``
(H, W) map: 0 background, 1..K classes, 255 ignore (unsure).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wsss.errors import DataError
from wsss.io import IGNORE_INDEX, PathLike, read_label_png, write_label_png
from wsss.stores._common import FolderStore

SUFFIX = ".png"


def label_value_problem(labels: np.ndarray, num_classes: int) -> str | None:
    """Why a label map holds a value outside ``0..K`` and 255, or None when it does not."""
    # A bincount over 256 values is cheaper than np.unique and tells every value present.
    present = np.flatnonzero(np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256))
    bad = present[(present >= num_classes) & (present != IGNORE_INDEX)]
    if not bad.size:
        return None
    return (
        f"label value {int(bad[0])} is above K={num_classes - 1} "
        f"(allowed: 0..{num_classes - 1} and {IGNORE_INDEX} = ignore)"
    )


class MaskStore(FolderStore):
    """A folder of label maps, ``<directory>/<id>.png``.

    Args:
        directory: the folder.
        palette: flat list of 768 ints colouring written PNGs (default: VOC's).
    """

    suffix = SUFFIX

    def __init__(self, directory: PathLike, palette: Sequence[int] | None = None) -> None:
        super().__init__(directory)
        self.palette = None if palette is None else list(palette)

    def save(self, image_id: str, labels: np.ndarray) -> None:
        """Write the (H, W) label map of ``image_id`` as a palette PNG, atomically.

        Raises:
            ValueError: ``labels`` is not 2-D or holds values outside 0..255 (a caller's bug).
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
        if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label map values must lie in 0..255, got {labels.min()}..{labels.max()}")
        write_label_png(self.path(image_id), labels, self.palette)

    def load(
        self,
        image_id: str,
        image_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
        image_name: str | None = None,
    ) -> np.ndarray:
        """The label map of ``image_id`` as ``uint8`` (H, W), checked when asked.

        Args:
            image_id: which image.
            image_size: (height, width) the map must have.
            num_classes: ``K + 1``; values must then lie in ``0..K`` or be 255.
            image_name: the image's file name, named in a size error.

        Raises:
            DataError: naming the file: it is missing or corrupt, of another size than
                ``image_size``, or holds a value above ``K`` other than 255.
        """
        path = self.path(image_id)
        if not path.is_file():
            raise DataError(f"no label map for id {image_id!r}", path)
        return read_label_map(path, image_size, num_classes, image_name)


def read_label_map(path: PathLike, image_size: tuple[int, int] | None = None, num_classes: int | None = None,
                   image_name: str | None = None) -> np.ndarray:
    """A label-map PNG anywhere (a store's, or a dataset's ground truth) as ``uint8`` (H, W),
    checked against ``image_size`` and ``num_classes`` when given (see :meth:`MaskStore.load`)."""
    labels = read_label_png(path)
    if image_size is not None and labels.shape != tuple(image_size):
        height, width = image_size
        image = f"its image {image_name}" if image_name else "its image"
        raise DataError(f"mask is {labels.shape[1]}x{labels.shape[0]} but {image} is {width}x{height}", path)
    if num_classes is not None:
        problem = label_value_problem(labels, num_classes)
        if problem is not None:
            raise DataError(problem, path)
    return labels
