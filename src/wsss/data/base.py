"""What every dataset offers the pipeline: ids, classes, images, image-level labels, boxes, masks.

:class:`~wsss.data.voc.VOCDataset` and :class:`~wsss.data.coco.COCODataset` derive from
:class:`ImageDataset`, so a stage written against it takes either. Subclasses say where images,
labels, boxes and masks come from; the rest (class count, label vectors, image reading and
size, ``len``, items) is here, once.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np

from wsss.errors import DataError
from wsss.io import image_size, read_image
from wsss.stores.instances import ImageInstances


class ImageDataset(abc.ABC):
    """Images with image-level labels, boxes and (maybe) semantic masks.

    Attributes:
        root: the dataset's folder (VOC: the folder holding ``JPEGImages``; COCO: the image folder).
        ids: image ids in split order.
        classes: class names, background first; ``K = len(classes) - 1``.
        palette: flat list of 768 ints colouring label PNGs.
    """

    root: Path
    ids: list[str]
    classes: list[str]
    palette: list[int]

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        """Number of classes including background (``K + 1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        return {"id": image_id, "image": self.load_image(image_id), "labels": self.image_labels(image_id)}

    @abc.abstractmethod
    def _listed_in(self) -> Path:
        """The file that lists the ids (split file, annotation file), named in errors."""

    # ------------------------------------------------------------------ images
    @abc.abstractmethod
    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id``."""

    def _existing_image(self, image_id: str) -> Path:
        path = self.image_path(image_id)
        if not path.exists():
            raise DataError(f"no image for id {image_id!r} (listed in {self._listed_in()})", path)
        return path

    def load_image(self, image_id: str) -> np.ndarray:
        """The RGB image as ``uint8`` (H, W, 3).

        Raises:
            DataError: no image file for the id, or the file is corrupt.
        """
        return read_image(self._existing_image(image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(height, width) of the image, from its header.

        Raises:
            DataError: no image file for the id, or the file is corrupt.
        """
        return image_size(self._existing_image(image_id))

    # ------------------------------------------------------------------ labels, boxes, masks
    @abc.abstractmethod
    def image_labels(self, image_id: str) -> np.ndarray:
        """Foreground classes present in the image: sorted ``int64`` ids in ``1..K``."""

    def label_vector(self, image_id: str) -> np.ndarray:
        """Multi-hot ``float32[K]`` over foreground classes (index ``c - 1`` for class ``c``)."""
        vector = np.zeros(self.num_classes - 1, dtype=np.float32)
        vector[self.image_labels(image_id) - 1] = 1.0
        return vector

    @abc.abstractmethod
    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes float32 (N, 4) x0, y0, x1, y1 in pixels, classes int64 (N,) in 1..K)``."""

    def box_file(self, image_id: str) -> Path:
        """The file the boxes of ``image_id`` come from, named in errors (VOC: its XML; COCO: the JSON)."""
        return self._listed_in()

    @abc.abstractmethod
    def load_mask(self, image_id: str) -> np.ndarray:
        """The semantic label map ``uint8`` (H, W): 0 background, ``1..K``, 255 ignore."""

    @property
    @abc.abstractmethod
    def has_masks(self) -> bool:
        """Whether every id has a semantic mask."""

    # ------------------------------------------------------------------ ground-truth instances
    @property
    def has_instances(self) -> bool:
        """Whether every id has ground-truth instance masks (:meth:`ground_truth_instances`)."""
        return False

    def ground_truth_instances(self, image_id: str) -> ImageInstances:
        """The image's ground-truth instances: boxes, classes, bool masks, and as ``ignore`` the
        pixels no score should count (COCO's crowd regions, VOC's void band).

        Raises:
            DataError: the dataset has no instance masks for the id, or they are malformed.
        """
        raise DataError(f"no ground-truth instances for id {image_id!r}: this dataset has no instance masks",
                        self._listed_in())
