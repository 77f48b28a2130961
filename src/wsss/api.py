"""The Python API for one image: class activation maps from a trained classifier, and a picture.

Everything here takes an image as a file path, a PIL image or a ``uint8`` array (H, W, 3) (or
(H, W), grey), and returns NumPy arrays:

    >>> import wsss
    >>> maps = wsss.cam_maps("photo.jpg", "work/cam.pt")      # the predicted classes' maps
    >>> maps.names, maps.maps.shape                             # e.g. ['dog'], (1, H, W)
    >>> picture = wsss.overlay("photo.jpg", maps)               # uint8 (H, W, 3)

The maps are IRN's CAMs (:func:`wsss.attribution.cam.compute_cam`: multi-scale, flip-merged,
each class divided by its maximum), the same as ``wsss make-cam`` writes. For whole datasets use
the commands or :mod:`wsss.attribution`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wsss.attribution.cam import CAM_SCALES, compute_cam, multiscale_inputs
from wsss.errors import ConfigError, DataError
from wsss.io import read_image
from wsss.models.cam_net import CamNet, load_cam_net
from wsss.runtime import eval_mode
from wsss.stores.maps import LocalizationMaps
from wsss.viz.overlays import heatmap_overlay

__all__ = ["ImageMaps", "as_image", "cam_maps", "overlay"]

PREDICTION_THRESHOLD = 0.5  # a class is predicted when its sigmoid probability exceeds this


@dataclass
class ImageMaps:
    """Localization maps of one image, one channel per class.

    Attributes:
        keys: int64 (C,) foreground class ids in 1..K.
        names: the classes' names (the checkpoint's), or their ids as text where it names none.
        scores: float32 (C,) the classifier's probability of each class on the whole image.
        maps: float32 (C, H, W) in [0, 1], each class divided by its maximum.
        strided: float32 (C, ceil(H/4), ceil(W/4)), the maps at IRN's stride 4.
    """

    keys: np.ndarray
    names: list[str]
    scores: np.ndarray
    maps: np.ndarray
    strided: np.ndarray

    def to_maps(self) -> LocalizationMaps:
        """The map store's record (:class:`wsss.stores.maps.MapStore` ``.save(id, ...)``)."""
        return LocalizationMaps(keys=self.keys, strided=self.strided, high_res=self.maps)


def as_image(image: Any) -> np.ndarray:
    """An image given as a path, a PIL image or an array, as ``uint8`` (H, W, 3) RGB.

    Raises:
        DataError: a file that cannot be read (named).
        ConfigError: an array of another shape or type.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ConfigError(f"an image array must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ConfigError(f"an image array must be (H, W, 3) RGB or (H, W) grey, got shape {array.shape}")
    return array


def _classifier(classifier: CamNet | str | os.PathLike, device: torch.device) -> CamNet:
    if isinstance(classifier, CamNet):
        return classifier.to(device)
    if isinstance(classifier, (str, os.PathLike)):
        return load_cam_net(classifier, map_location=device).to(device)
    raise ConfigError(f"the classifier must be a CamNet or a checkpoint path, got {type(classifier).__name__}")


def _class_ids(classes: Sequence[int | str], model: CamNet) -> np.ndarray:
    names = list(model.classes) if model.classes is not None else None
    keys = []
    for item in classes:
        if isinstance(item, str):
            if names is None or item not in names[1:]:
                known = ", ".join(names[1:]) if names else "none: the checkpoint names no classes, pass ids"
                raise ConfigError(f"unknown class {item!r}; the classifier's classes: {known}")
            keys.append(names.index(item))
        elif isinstance(item, (int, np.integer)) and 1 <= int(item) <= model.num_classes:
            keys.append(int(item))
        else:
            raise ConfigError(f"class {item!r} is neither a class name nor an id in 1..{model.num_classes}")
    if not keys or len(set(keys)) != len(keys):
        raise ConfigError(f"classes must name at least one class, each once, got {list(classes)}")
    return np.array(sorted(keys), dtype=np.int64)


def cam_maps(
    image: Any,
    classifier: CamNet | str | os.PathLike,
    classes: Sequence[int | str] | None = None,
    *,
    threshold: float = PREDICTION_THRESHOLD,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = CAM_SCALES,
    flip: bool = True,
) -> ImageMaps:
    """CAMs of one image from a trained classifier.

    Args:
        image: a path, a PIL image or a ``uint8`` array (H, W, 3) RGB (or (H, W) grey).
        classifier: a :class:`~wsss.models.cam_net.CamNet` or the path of its checkpoint
            (``wsss train-classifier``, ``WORK/classifier.pt`` of ``wsss run``).
        classes: class names or ids (1..K) to map; ``None``: the classes the classifier predicts
            (probability above ``threshold``), or its most probable class when it predicts none.
        threshold: the probability above which a class counts as predicted.
        device: where to run the network.
        scales, flip: the image scales and flips (IRN's by default).

    Returns:
        :class:`ImageMaps`, the classes in increasing id order. A model passed in keeps its
        train/eval mode (it runs in eval mode here).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold is a probability in [0, 1], got {threshold}")
    pixels = as_image(image)
    device = torch.device(device)
    model = _classifier(classifier, device)
    with eval_mode(model), torch.no_grad():
        probabilities = torch.sigmoid(model(multiscale_inputs(pixels, (1.0,), flip=False)[0].to(device)))[0]
        probabilities = probabilities.float().cpu().numpy()
        if classes is None:
            keys = np.flatnonzero(probabilities > threshold).astype(np.int64) + 1
            if keys.size == 0:
                keys = np.array([int(probabilities.argmax()) + 1], dtype=np.int64)
        else:
            keys = _class_ids(classes, model)
        result = compute_cam(model, pixels, keys, device=device, scales=scales, flip=flip,
                             where=image if isinstance(image, (str, os.PathLike)) else None)
    names = list(model.classes) if model.classes is not None else None
    return ImageMaps(keys=result.keys, names=[names[k] if names else str(k) for k in result.keys],
                     scores=probabilities[result.keys - 1].astype(np.float32),
                     maps=result.high_res.numpy().astype(np.float32), strided=result.strided.numpy().astype(np.float32))


def overlay(image: Any, maps: ImageMaps | LocalizationMaps | np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """The image with its maps as a heat map (the maximum over the classes), ``uint8`` (H, W, 3).

    Args:
        image: a path, a PIL image or a ``uint8`` array, as :func:`cam_maps` takes.
        maps: :func:`cam_maps`' result, a map store's record, or an array (C, H, W) or (H, W) in [0, 1].
        alpha: the heat map's opacity.
    """
    pixels = as_image(image)
    if isinstance(maps, ImageMaps):
        heat = maps.maps
    elif isinstance(maps, LocalizationMaps):
        heat = np.asarray(maps.high_res, dtype=np.float32)
    else:
        heat = np.asarray(maps, dtype=np.float32)
    if heat.ndim == 3:
        heat = heat.max(axis=0) if heat.shape[0] else np.zeros(heat.shape[1:], np.float32)
    if heat.shape != pixels.shape[:2]:
        raise DataError(f"maps of size {heat.shape} do not match the image's {pixels.shape[:2]}",
                        image if isinstance(image, (str, os.PathLike)) else None)
    return heatmap_overlay(pixels, heat, alpha)
