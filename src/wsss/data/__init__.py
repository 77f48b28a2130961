"""Datasets: VOC layout, COCO instances, image-level labels, OoD images, the generated benchmark.

:func:`open_dataset` opens either kind of dataset from its path (see :mod:`wsss.data.factory`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsss.data.factory import open_dataset

__all__ = ["open_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy: importing wsss.data.transforms must not pull in pycocotools and the dataset readers.
    if name == "open_dataset":
        from wsss.data.factory import open_dataset

        return open_dataset
    raise AttributeError(f"module 'wsss.data' has no attribute {name!r}")
