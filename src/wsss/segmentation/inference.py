"""Multi-scale, flipped inference of a segmentation network, and label PNGs for a dataset.

For each scale ``s`` the normalised image is resized (bilinear, ``align_corners=False``, as
kazuto1011's ``MSC``) to ``(round(H*s), round(W*s))`` and run together with its horizontal flip
as one batch of two. Every output's logits are upsampled (bilinear) to H x W, the flipped ones
flipped back, and all of them merged per pixel and class:

* ``merge="max"``: the maximum, as DeepLab-v2's ``MSC`` (kazuto1011) that AdvCAM/RIB evaluate with;
* ``merge="mean"``: the average, as BANA's ``validation`` in ``stage3_vgg.py``.

The probabilities are the softmax of the merged logits (for a cosine classifier the logits
already carry tau, so this is BANA's ``softmax(20 * cos)``); an optional dense CRF
(:func:`wsss.refine.crf.dense_crf`, e.g. ``crf="deeplab"``) refines them, and the label map is
their argmax. ``crf_scale="image"`` sizes the CRF's spatial widths to each image (the preset's
widths times the image's diagonal over VOC's 625 px); ``"reference"`` keeps them in pixels.

Example:
    >>> model.eval()
    >>> labels = predict(model, image, device=torch.device("cpu"), scales=(0.5, 0.75, 1.0, 1.25))
    >>> predict_dataset(model, VOCDataset(root, "val"), "work/pred", device=device, crf="deeplab")
"""

from __future__ import annotations

import logging
import os
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import check_scale
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, scaled_size, to_chw_tensor
from wsss.errors import ConfigError
from wsss.io import voc_palette
from wsss.runtime import DistInfo, FastPaths, eval_mode, run_per_image
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

__all__ = ["MERGE_MODES", "SEG_SCALES", "predict", "predict_dataset", "predict_logits", "predict_probs"]

SEG_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)  # this project's default test scales
MERGE_MODES = ("max", "mean")


class ImageSource(Protocol):
    """What :func:`predict_dataset` needs (``VOCDataset`` and the synth dataset fit)."""

    ids: list[str]

    def load_image(self, image_id: str) -> np.ndarray: ...


def _check_inference_mode(model: nn.Module) -> None:
    stochastic = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    training = [name or type(m).__name__ for name, m in model.named_modules()
                if m.training and isinstance(m, stochastic)]
    if training:
        raise ConfigError(
            f"the segmentation model has BatchNorm or dropout in training mode ({training[0]}); "
            "call model.eval() before predicting"
        )


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device | str,
    scales: Sequence[float] = SEG_SCALES,
    flip: bool = True,
    merge: str = "max",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    fast_paths: FastPaths | None = None,
) -> torch.Tensor:
    """Merged logits (C, H, W) on ``device`` of one ``uint8`` (H, W, 3) image (see the module doc).

    Args:
        model: images (B, 3, h, w) -> logits (B, C, h', w'), already on ``device`` and in eval
            mode (it is not switched; BatchNorm or dropout in training mode is an error).
        image: ``uint8`` (H, W, 3) RGB.
        device: where to run.
        scales: input scales (kazuto1011 uses 0.5, 0.75 and 1.0; AdvCAM's author 0.5-2.0).
        flip: also run the horizontally flipped image.
        merge: ``"max"`` or ``"mean"`` over scales and flips.
        mean, std: normalisation; default the model's ``input_mean``/``input_std``, else ImageNet.
        fast_paths: the inputs' memory format (give the model the same, see
            :meth:`~wsss.runtime.FastPaths.prepare`) and the forward pass's autocast; the logits
            are upsampled and merged in float32. Default: float32, contiguous.
    """
    if merge not in MERGE_MODES:
        raise ConfigError(f"merge must be one of {', '.join(MERGE_MODES)}, got {merge!r}")
    scales = [float(s) for s in scales]
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"scales must be positive numbers, got {scales}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    _check_inference_mode(model)
    device = torch.device(device)
    fast_paths = fast_paths or FastPaths()
    mean = getattr(model, "input_mean", IMAGENET_MEAN) if mean is None else mean
    std = getattr(model, "input_std", IMAGENET_STD) if std is None else std
    height, width = image.shape[:2]
    base = to_chw_tensor(normalize(image, mean, std)).unsqueeze(0).to(device)

    merged: torch.Tensor | None = None
    count = 0
    for scale in scales:
        size = scaled_size(height, width, scale)
        x = base if size == (height, width) else F.interpolate(base, size=size, mode="bilinear",
                                                               align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        with fast_paths.autocast_on(device):
            logits = model(fast_paths.inputs(x))
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the model must return (B, C, h, w) logits, got {tuple(logits.shape)}")
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        if merge == "max":
            part = logits.amax(dim=0)
            merged = part if merged is None else torch.maximum(merged, part)
        else:
            part = logits.sum(dim=0)
            merged = part if merged is None else merged + part
        count += logits.shape[0]
    assert merged is not None
    return merged if merge == "max" else merged / count


def predict_probs(
    model: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device | str,
    scales: Sequence[float] = SEG_SCALES,
    flip: bool = True,
    merge: str = "max",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crf: str | None = None,
    crf_scale: str = "reference",
    where: str | os.PathLike | None = None,
    fast_paths: FastPaths | None = None,
) -> np.ndarray:
    """Class probabilities ``float32`` (C, H, W): softmax of :func:`predict_logits`, optionally CRF-refined.

    Args:
        crf: a dense-CRF preset of :mod:`wsss.refine.crf` (``"deeplab"``: kazuto1011's VOC
            settings; ``"bana"``...), or ``None`` for no CRF.
        crf_scale: ``"reference"``: the preset's pixel widths; ``"image"``: scaled to the image.
        where: file named in CRF errors.
        fast_paths: see :func:`predict_logits`.
        Others: see :func:`predict_logits`.
    """
    logits = predict_logits(model, image, device=device, scales=scales, flip=flip, merge=merge,
                            mean=mean, std=std, fast_paths=fast_paths)
    probs = torch.softmax(logits, dim=0).cpu().numpy().astype(np.float32)
    if crf is None:
        return probs
    try:
        from wsss.refine.crf import dense_crf
    except ImportError as exc:
        raise ConfigError(f"crf={crf!r} needs wsss.refine.crf, which cannot be imported ({exc})") from None
    return np.asarray(dense_crf(np.asarray(image), probs, params=crf, scale=crf_scale, where=where),
                      dtype=np.float32)


def predict(
    model: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device | str,
    scales: Sequence[float] = SEG_SCALES,
    flip: bool = True,
    merge: str = "max",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crf: str | None = None,
    crf_scale: str = "reference",
    where: str | os.PathLike | None = None,
    fast_paths: FastPaths | None = None,
) -> np.ndarray:
    """Label map ``uint8`` (H, W): the argmax of :func:`predict_probs` (same arguments)."""
    if crf is None:  # the argmax of the softmax is that of the logits: skip the softmax
        logits = predict_logits(model, image, device=device, scales=scales, flip=flip, merge=merge,
                                mean=mean, std=std, fast_paths=fast_paths)
        labels = logits.argmax(dim=0).cpu().numpy()
        num_classes = logits.shape[0]
    else:
        probs = predict_probs(model, image, device=device, scales=scales, flip=flip, merge=merge,
                              mean=mean, std=std, crf=crf, crf_scale=crf_scale, where=where,
                              fast_paths=fast_paths)
        labels = probs.argmax(axis=0)
        num_classes = probs.shape[0]
    if num_classes > 255:
        raise ConfigError(f"label maps are uint8 with 255 = ignore: at most 255 classes, got {num_classes}")
    return labels.astype(np.uint8)


def predict_dataset(
    model: nn.Module,
    dataset: ImageSource,
    out_dir: str | os.PathLike,
    *,
    device: torch.device | str,
    scales: Sequence[float] = SEG_SCALES,
    flip: bool = True,
    merge: str = "max",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crf: str | None = None,
    crf_scale: str = "reference",
    ids: Sequence[str] | None = None,
    palette: Sequence[int] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    fast_paths: FastPaths | None = None,
) -> int:
    """Predict every image of ``dataset`` into ``out_dir``, a :class:`~wsss.stores.masks.MaskStore`.

    Resumable (images whose PNG exists are skipped; PNGs are written atomically) and sharded by
    ``RANK``/``WORLD_SIZE`` through :func:`wsss.runtime.run_per_image`. The model is put
    in eval mode for the run and restored afterwards; with channels-last ``fast_paths`` its
    weights are moved to that memory format (in place; its outputs stay the same up to rounding).

    Args:
        model: the segmentation model, on ``device``.
        dataset: anything with ``ids`` and ``load_image(id)``; its ``palette`` colours the PNGs.
        out_dir: output folder.
        ids: a subset of ``dataset.ids`` (default: all).
        palette: flat 768-int palette (default: ``dataset.palette``, else VOC's).
        dist: this process's rank (default: from the environment).
        progress: show a progress bar.
        fast_paths: memory format and autocast (see :func:`predict_logits`).
        Others: see :func:`predict_probs`.

    Returns:
        How many images were processed in this call.
    """
    check_scale(crf_scale)
    ids = list(dataset.ids if ids is None else ids)
    palette = list(palette if palette is not None else getattr(dataset, "palette", None) or voc_palette())
    out = MaskStore(out_dir, palette)
    num_classes = getattr(model, "num_classes", None)
    classes = getattr(dataset, "classes", None)
    if num_classes is not None and classes is not None and len(classes) != num_classes:
        raise ConfigError(f"the dataset has {len(classes)} classes, the segmentation model {num_classes}")
    device = torch.device(device)
    fast_paths = fast_paths or FastPaths()
    fast_paths.prepare(model)
    log.info("predicting %d images to %s (scales %s, flip %s, merge %s, crf %s)",
             len(ids), out_dir, list(scales), flip, merge, crf)

    def work(image_id: str) -> None:
        where = dataset.image_path(image_id) if hasattr(dataset, "image_path") else image_id
        labels = predict(model, dataset.load_image(image_id), device=device, scales=scales, flip=flip,
                         merge=merge, mean=mean, std=std, crf=crf, crf_scale=crf_scale, where=where,
                         fast_paths=fast_paths)
        out.save(image_id, labels)

    with eval_mode(model):
        return run_per_image(ids, work, out.has, desc="predict", dist=dist, progress=progress)
