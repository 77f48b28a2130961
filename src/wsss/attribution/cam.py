"""Class activation maps, as IRN's ``step/make_cam.py``.

For each scale ``s`` in ``(1.0, 0.5, 1.5, 2.0)`` the image is resized (PIL bicubic) to
``(round(H*s), round(W*s))``, normalised, and run together with its horizontal flip as one
batch of two; the maps are ``relu(conv2d(features, W[c]))`` and the flip is merged back,
``A_s = map[0] + flip(map[1])``. The per-scale maps are resized (bilinear,
``align_corners=False``) and summed twice over:

* ``strided``: to the stride-4 size ``((H-1)//4+1, (W-1)//4+1)`` (feeds IRN's random walk);
* ``high_res``: to the size rounded up to a multiple of the network stride, then cropped to
  ``H x W`` (feeds evaluation and IR labels).

Only the image's labelled classes are kept, and each is divided by its spatial max + 1e-5.

The pieces are public so that AdvCAM can reuse them: :func:`multiscale_inputs` builds the
per-scale flip pairs, :func:`merge_flips` merges a pair's maps, :func:`assemble_maps` resizes
and sums per-scale maps, :func:`normalise_maps` divides by the max.

Example:
    >>> net.eval()
    >>> cam = compute_cam(net, image, keys=[3, 15], device=torch.device("cpu"))
    >>> cam.strided.shape, cam.high_res.shape      # (2, ceil(H/4), ceil(W/4)), (2, H, W)
    >>> make_cams(net, VOCDataset(root, "train"), "work/cam", device=torch.device("cpu"))
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_image, scaled_size, to_chw_tensor
from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import CamNet
from wsss.runtime import DistInfo, eval_mode, run_per_image
from wsss.stores.maps import LocalizationMaps, MapStore, strided_size

log = logging.getLogger(__name__)

__all__ = [
    "CAM_SCALES",
    "CamResult",
    "assemble_maps",
    "check_keys",
    "compute_cam",
    "make_cams",
    "merge_flips",
    "multiscale_inputs",
    "normalise_maps",
]

CAM_SCALES: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # IRN --cam_scales
MAP_STRIDE = 4  # IRN make_cam.py: strided maps at stride 4
NORMALISE_EPS = 1e-5  # IRN make_cam.py: x / (max + 1e-5)


@dataclass
class CamResult:
    """CAMs of one image for its labelled classes (float32 tensors on the CPU).

    Attributes:
        keys: foreground class ids (1..K), one per channel.
        strided: (C, ceil(H/4), ceil(W/4)).
        high_res: (C, H, W).
    """

    keys: np.ndarray
    strided: torch.Tensor
    high_res: torch.Tensor

    def to_maps(self) -> LocalizationMaps:
        """The store's record (float16 on disk)."""
        return LocalizationMaps(keys=self.keys, strided=self.strided.numpy(), high_res=self.high_res.numpy())


def check_keys(keys: Sequence[int] | np.ndarray, num_classes: int, where: str | os.PathLike | None = None
               ) -> np.ndarray:
    """Validate labelled class ids (1..K) for a classifier of ``num_classes``; return them sorted.

    Raises:
        DataError: no labelled class (a CAM needs at least one), naming ``where``.
        ConfigError: a class id outside 1..K (labels from another dataset than the classifier's).
    """
    keys = np.unique(np.asarray(keys, dtype=np.int64).reshape(-1))
    if keys.size == 0:
        raise DataError("image has no labelled class; CAM extraction needs at least one", where)
    if keys[0] < 1 or keys[-1] > num_classes:
        bad = [int(k) for k in keys if not 1 <= k <= num_classes]
        raise ConfigError(
            f"class id(s) {bad} outside 1..{num_classes}, the classifier's classes "
            "(dataset and checkpoint disagree?)",
            where,
        )
    return keys


def multiscale_inputs(
    image: np.ndarray,
    scales: Sequence[float] = CAM_SCALES,
    *,
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[torch.Tensor]:
    """Normalised network inputs per scale: (2, 3, h_s, w_s) = [image, flipped image], or
    (1, 3, h_s, w_s) with ``flip=False``. Resizing is PIL bicubic to ``round(H*s), round(W*s)``."""
    height, width = image.shape[:2]
    inputs = []
    for scale in scales:
        resized = resize_image(image, scaled_size(height, width, scale))
        tensor = to_chw_tensor(normalize(resized, mean, std))
        inputs.append(torch.stack([tensor, tensor.flip(-1)]) if flip else tensor.unsqueeze(0))
    return inputs


def merge_flips(maps: torch.Tensor) -> torch.Tensor:
    """Maps of [image, flipped image] stacked on dim 0 -> ``maps[0] + flip_w(maps[1])``.

    Trailing dims are free: (2, C, h, w) -> (C, h, w), or (2, N, C, h, w) -> (N, C, h, w) for N
    images (or N per-class perturbed copies, as AdvCAM) and their flips. A batch of one (no
    flip) gives ``maps[0]``.
    """
    if maps.shape[0] == 1:
        return maps[0]
    if maps.shape[0] != 2:
        raise ValueError(f"expected maps of an image and its flip, got a batch of {maps.shape[0]}")
    return maps[0] + maps[1].flip(-1)


def assemble_maps(per_scale: Sequence[torch.Tensor], image_size: tuple[int, int], network_stride: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize and sum per-scale maps (C, h_s, w_s) into (strided, high_res), unnormalised.

    Args:
        per_scale: one (C, h_s, w_s) map per scale.
        image_size: (H, W) of the original image.
        network_stride: the classifier's output stride; ``high_res`` is resized to the image size
            rounded up to a multiple of it, then cropped (IRN uses 16, its stride).

    Returns:
        ``strided`` (C, ceil(H/4), ceil(W/4)) and ``high_res`` (C, H, W).
    """
    height, width = image_size
    small = strided_size(height, width, MAP_STRIDE)
    up = tuple(n * network_stride for n in strided_size(height, width, network_stride))
    strided = sum(F.interpolate(m.unsqueeze(0), small, mode="bilinear", align_corners=False)[0]
                  for m in per_scale)
    high_res = sum(F.interpolate(m.unsqueeze(0), up, mode="bilinear", align_corners=False)[0]
                   for m in per_scale)
    return strided, high_res[:, :height, :width]


def normalise_maps(maps: torch.Tensor, eps: float = NORMALISE_EPS) -> torch.Tensor:
    """Divide each channel of (C, h, w) maps by its spatial max + ``eps``."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + eps)


def _check_eval_mode(model: nn.Module) -> None:
    training_bn = [name for name, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training_bn:
        raise ConfigError(
            "the classifier has BatchNorm in training mode (batch statistics would mix an image "
            "with its flip); call model.eval() before extracting CAMs"
        )


@torch.no_grad()
def compute_cam(
    model: CamNet,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    *,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = CAM_SCALES,
    flip: bool = True,
    where: str | os.PathLike | None = None,
) -> CamResult:
    """Multi-scale, flip-merged, normalised CAMs of one image for its labelled classes.

    Args:
        model: the classifier, in eval mode (BatchNorm must use running statistics).
        image: ``uint8`` (H, W, 3) RGB.
        keys: the image's labelled foreground class ids (1..K).
        device: where to run the network.
        scales: image scales (IRN: 1.0, 0.5, 1.5, 2.0).
        flip: add the horizontal flip at every scale (IRN: yes).
        where: the image's path or id, for error messages.

    Returns:
        A :class:`CamResult` on the CPU.
    """
    _check_eval_mode(model)
    keys = check_keys(keys, model.num_classes, where)
    device = torch.device(device)
    channels = torch.as_tensor(keys - 1, device=device)
    per_scale = []
    for batch in multiscale_inputs(image, scales, flip=flip):
        maps = F.relu(model.class_maps(batch.to(device), classes=channels))
        per_scale.append(merge_flips(maps).float())
    strided, high_res = assemble_maps(per_scale, image.shape[:2], model.output_stride)
    return CamResult(keys=keys, strided=normalise_maps(strided).cpu(), high_res=normalise_maps(high_res).cpu())


def _image_keys(source, image_id: str) -> np.ndarray:
    if hasattr(source, "image_labels"):
        return np.asarray(source.image_labels(image_id), dtype=np.int64)
    return np.flatnonzero(np.asarray(source.label_vector(image_id)) > 0.5).astype(np.int64) + 1


def make_cams(
    model: CamNet,
    source,
    store: MapStore | str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    ids: Sequence[str] | None = None,
    scales: Sequence[float] = CAM_SCALES,
    flip: bool = True,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Write CAMs for every image of ``source`` into a :class:`~wsss.stores.maps.MapStore`.

    Resumable (images already in the store are skipped) and sharded by ``RANK``/``WORLD_SIZE``
    (or ``dist``). The model is switched to eval mode for the run and back afterwards.

    Args:
        model: the classifier.
        source: a dataset with ``ids``, ``load_image`` and ``image_labels`` (or ``label_vector``).
        store: the map store or its directory.
        device: where to run the network.
        ids: a subset of ``source.ids``.
        scales, flip: see :func:`compute_cam`.
        dist: this process's rank (default: from the environment).
        progress: show a progress bar.

    Returns:
        How many images were processed in this call.
    """
    store = store if isinstance(store, MapStore) else MapStore(store)
    ids = list(source.ids if ids is None else ids)
    classes = getattr(source, "classes", None)
    if classes is not None and len(classes) - 1 != model.num_classes:
        raise ConfigError(
            f"the dataset has {len(classes) - 1} foreground classes, the classifier "
            f"{model.num_classes}"
        )
    device = torch.device(device)

    def work(image_id: str) -> None:
        where = source.image_path(image_id) if hasattr(source, "image_path") else image_id
        result = compute_cam(model, source.load_image(image_id), _image_keys(source, image_id),
                             device=device, scales=scales, flip=flip, where=where)
        store.save(image_id, result.to_maps())

    with eval_mode(model):
        return run_per_image(ids, work, store.has, desc="cam", dist=dist, progress=progress)
