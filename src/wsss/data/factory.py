"""One way to open a dataset: :func:`open_dataset` picks VOC or COCO from what ``source`` is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wsss.data.base import ImageDataset
from wsss.data.coco import COCODataset
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError

# Options each kind of dataset takes besides the source and the split.
VOC_OPTIONS = ("label_source",)
COCO_OPTIONS = ("image_dir",)


def open_dataset(
    source: str | os.PathLike, split: str | os.PathLike | None = None, **options: Any
) -> ImageDataset:
    """Open the dataset at ``source``.

    Args:
        source: a VOC-layout folder (``VOCdevkit/``, ``VOCdevkit/VOC2012/`` or any folder
            holding ``JPEGImages``) or a COCO instances ``.json`` file.
        split: VOC: a split name or split file (default ``"train"``); COCO: ``None`` for every
            image of the JSON, or a split file of ids.
        **options: VOC: ``label_source``; COCO: ``image_dir``.

    Returns:
        a :class:`~wsss.data.voc.VOCDataset` or a :class:`~wsss.data.coco.COCODataset`.

    Raises:
        DataError: ``source`` is neither a folder nor a ``.json`` file (one line naming it and
            saying what was expected), or the dataset itself is malformed.
        ConfigError: an option that the kind of dataset does not take.
    """
    path = Path(source)
    if path.is_dir():
        _check_options(options, VOC_OPTIONS, "a VOC folder")
        return VOCDataset(path, split="train" if split is None else split, **options)
    if path.is_file() and path.suffix.lower() == ".json":
        _check_options(options, COCO_OPTIONS, "a COCO instances file")
        return COCODataset(path, split=split, **options)
    found = "not found" if not path.exists() else "not a folder or a .json file"
    raise DataError(
        f"dataset {found}; expected a VOC-layout folder (holding JPEGImages) or a COCO instances .json file",
        path,
    )


def _check_options(options: dict[str, Any], allowed: tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset option {unknown[0]!r} does not apply to {kind} (it takes: {', '.join(allowed)})"
        )
