"""(image, masks) items for training a segmentation network, with DeepLab's augmentation.

Masks come from a :class:`MaskSource`: a folder of pseudo-mask PNGs ``<folder>/<id>.png``
(what the refinement stages write) or, with no folder, the dataset's own ground truth (the fully
supervised baseline). The source is validated up front, so a run fails in its first seconds
rather than hours in: missing masks are listed in one error, and a value above ``K`` (other
than 255) or a mask whose size differs from its image names the file.

An image may have several targets (:func:`mask_sources`): the main one, ``"target"``, and
others by name, e.g. BANA's Y_ret as ``"target_ret"`` beside its Y_crf. Every target of an
image gets the same rescale, flip and crop (padded with 255), so they stay aligned pixel for
pixel; items carry the main one as ``"mask"`` and the others under their names.

Augmentation follows the DeepLab-v2 recipes that AdvCAM and RIB train with (kazuto1011's
deeplab-pytorch): a random rescale of image and mask, a random horizontal flip, ImageNet
normalisation, and a random crop padded with the mean colour (0 once normalised) in the image
and with 255 (ignore) in the mask.

Every random draw of an item comes from a generator seeded by ``(seed, epoch, index)``, so an
item's augmentation does not depend on the worker that loads it, on the process that trains on
it, or on whether the run was resumed: the property exact resumption and the 1-process vs
N-process equivalence rest on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from wsss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    random_crop_arrays,
    resize_image,
    scaled_size,
    to_chw_tensor,
)
from wsss.data.voc import MASK_FOLDERS, VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.io import IGNORE_INDEX
from wsss.stores.masks import read_label_map

log = logging.getLogger(__name__)

__all__ = [
    "TARGET",
    "MaskSource",
    "MaskSpec",
    "SegmentationTrainDataset",
    "SegmentationTransform",
    "mask_sources",
    "resize_label",
]

TARGET = "target"
"""The name of an image's main target (the masks a plain loss trains on)."""

_ITEM_KEYS = frozenset({"id", "image", "mask"})  # taken by every item: no target may use them

# How many missing ids an error spells out before it only counts the rest.
_LISTED_IDS = 5


class MaskSource:
    """The training masks of a dataset: pseudo masks in a folder, or the ground truth.

    Args:
        dataset: the images (and, for the ground truth, the masks).
        folder: a folder of palette PNGs ``<folder>/<id>.png`` (uint8, 0 = background,
            1..K, 255 = ignore); ``None`` uses ``dataset.load_mask``.

    Raises:
        DataError: ``folder`` is given but is not a directory.
    """

    def __init__(self, dataset: VOCDataset, folder: str | os.PathLike | None = None) -> None:
        self.dataset = dataset
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise DataError("pseudo-mask folder not found", self.folder)

    @property
    def num_classes(self) -> int:
        """``K + 1``, from the dataset's classes."""
        return self.dataset.num_classes

    @property
    def is_ground_truth(self) -> bool:
        return self.folder is None

    def describe(self) -> str:
        return "ground-truth masks" if self.folder is None else f"pseudo masks in {self.folder}"

    def path(self, image_id: str) -> Path | None:
        """The mask file of ``image_id``, or ``None`` where there is none."""
        if self.folder is None:
            return self.dataset.mask_path(image_id)
        candidate = self.folder / f"{image_id}.png"
        return candidate if candidate.is_file() else None

    def missing(self, ids: Sequence[str] | None = None) -> list[str]:
        """The ids (of ``ids``, default all of the dataset's) that have no mask file."""
        return [i for i in (self.dataset.ids if ids is None else ids) if self.path(i) is None]

    def load(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """The mask of ``image_id`` as ``uint8`` (H, W), checked for size and values.

        Args:
            image_id: which image.
            image_size: (height, width) of the image if already known (else read from its
                header).

        Raises:
            DataError: the mask is missing or corrupt, holds a value above ``K`` other than 255,
                or its size differs from its image's.
        """
        path = self.path(image_id)
        if path is None:
            where = self.folder if self.folder is not None else self.dataset.root / MASK_FOLDERS[0]
            raise DataError(f"no mask for id {image_id!r}", where)
        if image_size is None:
            image_size = self.dataset.image_size(image_id)
        return read_label_map(path, image_size, self.num_classes, self.dataset.image_path(image_id).name)

    def validate(self, ids: Sequence[str] | None = None, *, check_contents: bool = True,
                 progress: bool = False) -> None:
        """Check that every id has a readable mask of its image's size with values in range.

        Args:
            ids: which ids (default: all of the dataset's).
            check_contents: read every mask (size and values); ``False`` only checks that the
                files exist.
            progress: show a tqdm bar while reading.

        Raises:
            DataError: one error listing the missing ids (the first few and how many), naming
                the folder; or the first bad mask, naming its file.
        """
        ids = list(self.dataset.ids if ids is None else ids)
        missing = self.missing(ids)
        if missing:
            shown = ", ".join(missing[:_LISTED_IDS])
            more = f" and {len(missing) - _LISTED_IDS} more" if len(missing) > _LISTED_IDS else ""
            where = self.folder if self.folder is not None else self.dataset.root / MASK_FOLDERS[0]
            kind = "pseudo masks" if self.folder is not None else "ground-truth masks"
            raise DataError(
                f"{len(missing)} of {len(ids)} images have no {kind}: {shown}{more}"
                + (" (expected <folder>/<id>.png)" if self.folder is not None else ""),
                where,
            )
        if check_contents:
            for image_id in tqdm(ids, desc="check masks", disable=not progress, leave=False):
                self.load(image_id)


MaskSpec = Union[str, os.PathLike, MaskSource, None, Mapping[str, Union[str, os.PathLike, MaskSource, None]]]
"""Masks as :func:`mask_sources` takes them: one source, or targets by name."""


def mask_sources(dataset: VOCDataset, masks: MaskSpec) -> dict[str, MaskSource]:
    """The targets of ``masks`` by name, the main one (:data:`TARGET`) first.

    Args:
        dataset: the images.
        masks: a pseudo-mask folder, ``None`` (the ground truth) or a :class:`MaskSource` for
            one target; or a mapping ``{"target": <one of those>, "target_ret": <folder>, ...}``.

    Raises:
        ConfigError: a mapping without ``"target"``, or a target named like an item key.
        DataError: a folder that does not exist.
    """
    def source(value: str | os.PathLike | MaskSource | None) -> MaskSource:
        return value if isinstance(value, MaskSource) else MaskSource(dataset, value)

    if not isinstance(masks, Mapping):
        return {TARGET: source(masks)}
    if TARGET not in masks:
        raise ConfigError(f"masks by target need the main one, {TARGET!r} (got {', '.join(map(repr, masks))})")
    clashes = sorted(_ITEM_KEYS.intersection(masks))
    if clashes:
        raise ConfigError(f"mask targets cannot be named {', '.join(map(repr, clashes))} (item keys)")
    return {TARGET: source(masks[TARGET]),
            **{str(name): source(value) for name, value in masks.items() if name != TARGET}}


def resize_label(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) label map to ``size`` = (height, width).

    Nearest keeps labels labels: interpolating would invent class ids between neighbours.
    """
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize((width, height), Image.NEAREST))


@dataclass
class SegmentationTransform:
    """DeepLab training augmentation of an (image, mask) pair.

    In order: rescale both by ``s ~ U(scale_range)`` (the image bicubic as in
    :mod:`wsss.data.transforms`, where deeplab-pytorch uses bilinear; the mask nearest), flip
    both with probability 0.5, normalise the image, then crop a ``crop_size`` square at the same
    random place in both, padding the image with 0 (the mean colour) and the mask with 255.

    Attributes:
        crop_size: side of the square crop; ``None`` keeps the rescaled size.
        scale_range: (low, high) of the uniform rescale factor; ``None`` or ``(1, 1)``: none.
        hflip: random horizontal flip.
        mean, std: ImageNet normalisation, as :mod:`wsss.data.transforms`.
    """

    crop_size: int | None = 321
    scale_range: tuple[float, float] | None = (0.5, 1.5)
    hflip: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (H, W, 3), uint8 (H, W)) -> (float32 (3, S, S), int64 (S, S))."""
        image_tensor, (mask_tensor,) = self.apply(image, [mask], rng)
        return image_tensor, mask_tensor

    def apply(self, image: np.ndarray, masks: Sequence[np.ndarray],
              rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """An image and any number of its label maps, all with the same geometry.

        The draws are the same whatever the number of masks, so one mask gets exactly what
        :meth:`__call__` gives it.

        Returns:
            (float32 (3, S, S), [int64 (S, S) per mask]).
        """
        masks = list(masks)
        if self.scale_range is not None:
            low, high = self.scale_range
            scale = float(rng.uniform(low, high)) if high > low else float(low)
            if scale != 1.0:
                size = scaled_size(*image.shape[:2], scale)
                image = resize_image(image, size)
                masks = [resize_label(mask, size) for mask in masks]
        if self.hflip and rng.random() < 0.5:
            image, masks = image[:, ::-1], [mask[:, ::-1] for mask in masks]
        array = normalize(image, self.mean, self.std)
        if self.crop_size is not None:
            array, *masks = random_crop_arrays([array, *masks], [0.0] + [IGNORE_INDEX] * len(masks),
                                               self.crop_size, rng)
        return to_chw_tensor(array), [torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
                                      for mask in masks]


class SegmentationTrainDataset(Dataset):
    """Augmented (image, masks) items for a ``DataLoader``.

    Items are dicts ``{"id": str, "image": float32 (3, S, S), "mask": int64 (S, S)}`` plus, for
    every further target, ``name: int64 (S, S)`` with the main mask's geometry. An item is
    addressed by its index (epoch 0) or by ``(epoch, index)``, which the training loop's sampler
    yields; its augmentation is drawn from a generator seeded by ``(seed, epoch, index)``.

    Args:
        dataset: the images (a VOC-layout dataset).
        masks: a pseudo-mask folder, ``None`` for the ground truth, a :class:`MaskSource`, or
            targets by name (see :func:`mask_sources`).
        transform: a :class:`SegmentationTransform`, or any object with its ``apply(image, masks,
            rng)``; with one target, a plain ``transform(image, mask, rng)`` callable will do.
        seed: root of the augmentation draws.
        validate: check every mask of every target up front (:meth:`MaskSource.validate`).
        progress: show a bar while validating.

    Attributes:
        targets: the mask sources by target name, the main one first.
        masks: the main target's source.

    Raises:
        DataError: see :meth:`MaskSource.validate`; also when the dataset is empty.
        ConfigError: see :func:`mask_sources`.
    """

    def __init__(
        self,
        dataset: VOCDataset,
        masks: MaskSpec,
        transform: SegmentationTransform | None = None,
        *,
        seed: int = 0,
        validate: bool = True,
        progress: bool = False,
    ) -> None:
        self.dataset = dataset
        self.targets = mask_sources(dataset, masks)
        self.masks = self.targets[TARGET]
        self.transform = transform or SegmentationTransform()
        self.seed = int(seed)
        self.ids = list(dataset.ids)
        if not self.ids:
            raise DataError("the training split lists no images", dataset.split_file)
        if validate:
            for source in self.targets.values():
                source.validate(self.ids, progress=progress)

    def describe(self) -> str:
        """The main target's source, and the others' by name."""
        others = [f"{name}: {source.describe()}" for name, source in self.targets.items() if name != TARGET]
        return self.masks.describe() + (f" ({'; '.join(others)})" if others else "")

    @property
    def num_classes(self) -> int:
        return self.masks.num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def item_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of item ``index``'s augmentation in ``epoch``."""
        return np.random.default_rng((self.seed, int(epoch), int(index)))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image_id = self.ids[index]
        image = self.dataset.load_image(image_id)
        masks = [source.load(image_id, image.shape[:2]) for source in self.targets.values()]
        rng = self.item_rng(epoch, index)
        if hasattr(self.transform, "apply"):
            image_tensor, mask_tensors = self.transform.apply(image, masks, rng)
        elif len(masks) == 1:  # a plain transform(image, mask, rng) callable
            image_tensor, mask_tensor = self.transform(image, masks[0], rng)
            mask_tensors = [mask_tensor]
        else:
            raise ConfigError(f"{len(masks)} targets per image need a transform with apply(image, masks, rng)")
        item = {"id": image_id, "image": image_tensor}
        for name, tensor in zip(self.targets, mask_tensors):
            item["mask" if name == TARGET else name] = tensor
        return item
