"""Image transforms for classifier training and inference, and a ``torch`` dataset wrapper.

Images enter as ``uint8`` (H, W, 3) RGB arrays and leave as ``float32`` (3, H, W) tensors
normalised with ImageNet statistics. Training augmentation follows IRN's
``VOC12ClassificationDataset``: random long-side resize (bicubic), random horizontal flip,
normalisation, then a random crop whose padding is 0 in normalised units (the mean colour).

Randomness comes from a ``numpy.random.Generator`` passed in, so a transform is reproducible;
:class:`ClassificationDataset` derives one per item from torch's RNG, which ``DataLoader``
seeds per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationDataset",
    "ImageLabelSource",
    "TrainTransform",
    "normalize",
    "random_crop",
    "random_crop_arrays",
    "resize_image",
    "to_chw_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / IRN TorchvisionNormalize
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageLabelSource(Protocol):
    """What :class:`ClassificationDataset` needs (``VOCDataset`` and the synth dataset fit)."""

    ids: list[str]

    def load_image(self, image_id: str) -> np.ndarray: ...

    def label_vector(self, image_id: str) -> np.ndarray: ...


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a ``uint8`` (H, W, 3) image to ``size`` = (height, width), with PIL.

    PIL's bicubic filter widens its support when shrinking, i.e. it antialiases.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), Image.BICUBIC))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(H * s), round(W * s))`` as IRN (NumPy/Python rounding, half to even), at least 1."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def normalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) ``uint8`` -> ``float32`` ``(image / 255 - mean) / std``."""
    scaled = image.astype(np.float32) / 255.0
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> contiguous (C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def random_crop(image: np.ndarray, crop_size: int, rng: np.random.Generator,
                fill: float = 0.0) -> np.ndarray:
    """A ``crop_size`` square at a random place, padding with ``fill`` where the image is smaller.

    As IRN: each axis independently either crops a random window of the image (image larger)
    or places the whole image at a random offset in the window (image smaller).
    """
    return random_crop_arrays([image], [fill], crop_size, rng)[0]


def random_crop_arrays(arrays: Sequence[np.ndarray], fills: Sequence[float], crop_size: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """:func:`random_crop` of same-size arrays (an image and its label map) with one window;
    ``fills[i]`` pads ``arrays[i]``. Draws from ``rng`` exactly as one :func:`random_crop`."""
    height, width = arrays[0].shape[:2]

    def window(length: int) -> tuple[int, int, int]:
        # (offset in output, offset in image, extent)
        if length > crop_size:
            return 0, int(rng.integers(0, length - crop_size + 1)), crop_size
        return int(rng.integers(0, crop_size - length + 1)), 0, length

    out_top, img_top, h = window(height)
    out_left, img_left, w = window(width)
    crops = []
    for array, fill in zip(arrays, fills, strict=True):
        if array.shape[:2] != (height, width):
            raise ValueError(f"random_crop_arrays: sizes differ, {array.shape[:2]} and {(height, width)}")
        out = np.full((crop_size, crop_size, *array.shape[2:]), fill, dtype=array.dtype)
        out[out_top:out_top + h, out_left:out_left + w] = array[img_top:img_top + h, img_left:img_left + w]
        crops.append(out)
    return crops


@dataclass
class TrainTransform:
    """IRN's classifier augmentation: random long-side resize, flip, normalise, random crop.

    Attributes:
        crop_size: side of the square crop (IRN: 512); ``None`` keeps the resized image.
        resize_long: (min, max) long side, drawn uniformly (inclusive) per image (IRN: 320, 640);
            ``None`` keeps the size.
        hflip: random horizontal flip with probability 0.5.
        mean, std: normalisation.
    """

    crop_size: int | None = 512
    resize_long: tuple[int, int] | None = (320, 640)
    hflip: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.resize_long is not None:
            low, high = self.resize_long
            target = int(rng.integers(low, high + 1))
            height, width = image.shape[:2]
            scale = target / max(height, width)
            image = resize_image(image, scaled_size(height, width, scale))
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        array = normalize(image, self.mean, self.std)
        if self.crop_size is not None:
            array = random_crop(array, self.crop_size, rng)
        return to_chw_tensor(array)


@dataclass
class EvalTransform:
    """Normalisation only (optionally resizing the long side), for validation."""

    resize_long: int | None = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.resize_long is not None:
            height, width = image.shape[:2]
            image = resize_image(image, scaled_size(height, width, self.resize_long / max(height, width)))
        return to_chw_tensor(normalize(image, self.mean, self.std))


class ClassificationDataset(Dataset):
    """(image, multi-hot label) pairs from an image-label source, for a ``DataLoader``.

    Items are dicts ``{"id": str, "image": float32 (3, H, W), "label": float32 (K,)}``.

    Args:
        source: anything with ``ids``, ``load_image(id)`` and ``label_vector(id)``.
        transform: ``transform(image_uint8, rng) -> tensor``.
        ids: a subset of ``source.ids`` (default: all).
    """

    def __init__(self, source: ImageLabelSource, transform, ids: Sequence[str] | None = None) -> None:
        self.source = source
        self.transform = transform
        self.ids = list(source.ids if ids is None else ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        # One draw from torch's RNG seeds this item's augmentation: reproducible under a global
        # seed and distinct per DataLoader worker, which torch seeds separately.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        image = self.transform(self.source.load_image(image_id), rng)
        label = torch.as_tensor(np.asarray(self.source.label_vector(image_id), dtype=np.float32))
        return {"id": image_id, "image": image, "label": label}
