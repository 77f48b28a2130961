"""The plain box baseline's pseudo masks: every box filled with its class.

The baseline box-supervised papers compare against (BANA Table 1, BBAM: "box" / "filled box"):
no network, each box of an image painted with its class on a background of 0. Where boxes of
different classes overlap, the **smaller box is painted on top** (boxes are painted from the
largest area to the smallest; equal areas keep the file's order, the later on top): a small
object lying inside a large one's box is usually in front of it, and painting the large box
last would erase the small object entirely. Boxes cover pixels as
:func:`wsss.models.bap_net.box_masks` does (``floor(x0) <= col < ceil(x1)``), so for VOC's
integer boxes exactly the box's pixels. An image with no boxes is all background.

Example:
    >>> mask = fill_boxes(boxes, classes, height=128, width=128)
    >>> make_box_masks(VOCDataset(root, "train"), "work/pseudo/boxes")   # resumable
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from wsss.runtime import run_per_image
from wsss.stores.masks import MaskStore

__all__ = ["fill_boxes", "make_box_masks"]


def fill_boxes(boxes: np.ndarray, classes: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 (height, width) label map: each box filled with its class, smaller boxes on top.

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1`` in pixels (0-based, ``x1`` exclusive for integer boxes).
        classes: (N,) class ids in ``1..K``.
        height, width: the image's size.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
    mask = np.zeros((height, width), dtype=np.uint8)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # largest first; a stable sort on -area keeps the file's order among equal areas
    for index in np.argsort(-areas, kind="stable"):
        x0, y0 = (max(int(np.floor(v)), 0) for v in boxes[index, :2])
        x1, y1 = min(int(np.ceil(boxes[index, 2])), width), min(int(np.ceil(boxes[index, 3])), height)
        mask[y0:y1, x0:x1] = int(classes[index])
    return mask


def make_box_masks(dataset, out_dir: str | os.PathLike, *, ids: Sequence[str] | None = None,
                   progress: bool = False) -> dict[str, int]:
    """:func:`fill_boxes` for every image of ``dataset`` (``ids``, ``boxes``, ``image_size``),
    written through :class:`~wsss.stores.masks.MaskStore` into ``out_dir``; resumable (an image
    whose mask exists is skipped) and sharded over the processes of a ``torchrun`` job.

    Returns:
        ``{"images": computed now, "total": len(ids)}``.
    """
    ids = list(dataset.ids if ids is None else ids)
    store = MaskStore(out_dir, getattr(dataset, "palette", None))

    def work(image_id: str) -> None:
        boxes, classes = dataset.boxes(image_id)
        height, width = dataset.image_size(image_id)
        store.save(image_id, fill_boxes(boxes, classes, height, width))

    done = run_per_image(ids, work, store.has, desc="box masks", progress=progress)
    return {"images": done, "total": len(ids)}
