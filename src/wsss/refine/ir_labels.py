"""Inter-pixel relation (IR) labels from localization maps, as IRN's ``step/cam_to_ir_label.py``.

An IR label keeps only the pixels whose class the maps are confident about:

1. **Foreground pass.** Pad the maps (``high_res``, (C, H, W)) with a constant background
   channel at the foreground threshold, take the argmax (ties go to background), refine the
   resulting label map with the label CRF (:func:`~wsss.refine.crf.crf_from_labels`, IRN's
   ``crf_inference_label``: ``gt_prob`` 0.7, preset ``"irn"``) and map the channel indices back
   to class ids through ``[0, *keys]``: ``fg``.
2. **Background pass.** The same with the background threshold: ``bg``.
3. **Combine** (IRN, verbatim in meaning): ``label = fg``; where ``fg`` is background the label
   is 255 (unsure); where both ``fg`` and ``bg`` are background it is 0.

So a pixel is a confident foreground class where the foreground pass says so (whatever the
background pass says), confident background where both passes say background, and ignored in
between. The maps are used as stored (IRN raises them to no power here).

``scale="image"`` scales the CRF's spatial widths to each image (the preset's widths times the
image's diagonal over VOC's 625 px, :meth:`~wsss.refine.crf.CrfParams.for_image`);
``"reference"`` (the default) keeps IRN's pixel widths at every size.

Each method's threshold pair (with its source) is its ``refine`` in :mod:`wsss.methods`.

Example:
    >>> label = make_ir_label(image, MapStore("work/maps/cam").load(image_id), 0.30, 0.05)
    >>> make_ir_labels(dataset, "work/maps/cam", "work/ir_label", fg_threshold=0.30,
    ...                bg_threshold=0.05, workers=2)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsss.config import check_scale
from wsss.errors import ConfigError, DataError
from wsss.io import IGNORE_INDEX
from wsss.refine.crf import CrfParams, crf_from_labels, crf_params
from wsss.runtime import DistInfo, run_per_image_parallel
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

__all__ = [
    "confident_labels",
    "make_ir_label",
    "make_ir_labels",
]


GT_PROB = 0.7  # IRN misc/imutils.py crf_inference_label gt_prob


def _check_thresholds(fg_threshold: float, bg_threshold: float) -> tuple[float, float]:
    fg, bg = float(fg_threshold), float(bg_threshold)
    if not (np.isfinite(fg) and np.isfinite(bg)):
        raise ConfigError(f"IR-label thresholds must be finite, got fg={fg_threshold}, bg={bg_threshold}")
    if bg > fg:
        raise ConfigError(
            f"the background threshold ({bg}) must not exceed the foreground threshold ({fg})"
        )
    return fg, bg


def confident_labels(fg_labels: np.ndarray, bg_labels: np.ndarray) -> np.ndarray:
    """Combine the two passes: ``fg`` where it is foreground, 0 where both are 0, 255 elsewhere."""
    label = np.asarray(fg_labels).astype(np.uint8)
    background = np.asarray(fg_labels) == 0
    label[background] = IGNORE_INDEX
    label[background & (np.asarray(bg_labels) == 0)] = 0
    return label


def _check_maps(maps: LocalizationMaps, image: np.ndarray, num_classes: int | None,
                where: str | os.PathLike | None) -> None:
    if maps.image_size != tuple(image.shape[:2]):
        raise DataError(
            f"maps are {maps.image_size[1]}x{maps.image_size[0]} (WxH) but the image is "
            f"{image.shape[1]}x{image.shape[0]}",
            where,
        )
    if num_classes is not None:
        keys = maps.keys
        bad = (keys < 1) | (keys >= num_classes)
        if bad.any():
            raise DataError(
                f"map keys {keys[bad].tolist()} outside the foreground ids 1..{num_classes - 1}", where
            )
    elif (maps.keys < 1).any() or (maps.keys > 254).any():
        raise DataError(f"map keys {maps.keys.tolist()} are not foreground ids (1..254)", where)
    if len(np.unique(maps.keys)) != len(maps.keys):
        # Only per-box maps (with boxes) may repeat a class; IR labels need one map per class.
        raise DataError(f"map keys {maps.keys.tolist()} repeat a class (per-box maps, not class maps)", where)
    if not np.isfinite(maps.high_res).all():
        raise DataError("maps contain NaN or infinite values", where)


def _crf_pass(image: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, threshold: float,
              params: CrfParams, gt_prob: float, where: str | os.PathLike | None) -> np.ndarray:
    """Argmax over [threshold, maps...], label CRF (``params`` already sized for the image),
    then channel index -> class id."""
    background = np.full((1, *scores.shape[1:]), threshold, dtype=scores.dtype)
    seeds = np.concatenate([background, scores], axis=0).argmax(axis=0)  # ties -> background
    refined = crf_from_labels(image, seeds, len(class_ids), params, gt_prob, where=where)
    return class_ids[refined]


def make_ir_label(
    image: np.ndarray,
    maps: LocalizationMaps,
    fg_threshold: float,
    bg_threshold: float,
    crf: CrfParams | str = "irn",
    *,
    gt_prob: float = GT_PROB,
    scale: str = "reference",
    num_classes: int | None = None,
    where: str | os.PathLike | None = None,
) -> np.ndarray:
    """One image's IR label (see the module docstring).

    Args:
        image: ``uint8`` (H, W, 3) RGB.
        maps: the image's maps; ``high_res`` (C, H, W) and ``keys`` are used.
        fg_threshold: background score of the foreground pass (IRN 0.30).
        bg_threshold: background score of the background pass (IRN 0.05).
        crf: CRF parameters or preset name (IRN: ``"irn"``).
        gt_prob: confidence of the label unary (IRN 0.7).
        scale: ``"reference"``: the CRF's pixel widths as given; ``"image"``: scaled to this image.
        num_classes: K + 1 of the dataset; keys must lie in 1..K.
        where: the map file, named in errors.

    Returns:
        ``uint8`` (H, W): 0 background, class ids, 255 unsure.

    Raises:
        DataError: maps of another size than the image, keys outside 1..K, repeated keys or
            non-finite maps (naming ``where``).
        ConfigError: thresholds not finite or ``bg_threshold > fg_threshold``.
    """
    fg, bg = _check_thresholds(fg_threshold, bg_threshold)
    params = crf_params(crf)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}", where)
    _check_maps(maps, image, num_classes, where)
    params = params.for_image(*image.shape[:2], scale=scale)
    scores = np.asarray(maps.high_res, dtype=np.float32)
    class_ids = np.concatenate([[0], maps.keys]).astype(np.int64)
    fg_labels = _crf_pass(image, scores, class_ids, fg, params, gt_prob, where)
    bg_labels = _crf_pass(image, scores, class_ids, bg, params, gt_prob, where)
    return confident_labels(fg_labels, bg_labels)


@dataclass
class _IrLabelWork:
    """One image's job, picklable so that worker processes can run it."""

    dataset: Any
    maps: MapStore
    out: MaskStore
    fg_threshold: float
    bg_threshold: float
    crf: CrfParams
    gt_prob: float
    scale: str
    num_classes: int | None

    def is_done(self, image_id: str) -> bool:
        return self.out.has(image_id)

    def __call__(self, image_id: str) -> None:
        label = make_ir_label(
            self.dataset.load_image(image_id), self.maps.load(image_id), self.fg_threshold,
            self.bg_threshold, self.crf, gt_prob=self.gt_prob, scale=self.scale, num_classes=self.num_classes,
            where=self.maps.path(image_id),
        )
        self.out.save(image_id, label)


def make_ir_labels(
    dataset: Any,
    maps_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fg_threshold: float,
    bg_threshold: float,
    crf: CrfParams | str = "irn",
    gt_prob: float = GT_PROB,
    scale: str = "reference",
    workers: int = 0,
    ids: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Write ``<out_dir>/<id>.png`` (palette PNG, 255 = unsure) for every image of ``dataset``.

    Resumable (existing PNGs are skipped) and sharded by ``RANK``/``WORLD_SIZE``; ``workers``
    processes run the CRFs in parallel (0: in this process; the dataset must pickle otherwise).

    Args:
        dataset: ``ids``, ``load_image`` and optionally ``num_classes``, ``palette``.
        maps_dir: a :class:`~wsss.stores.maps.MapStore` folder holding maps for every id.
        out_dir: where the PNGs go (a :class:`~wsss.stores.masks.MaskStore`).
        fg_threshold, bg_threshold: see :func:`make_ir_label`.
        crf, gt_prob, scale: see :func:`make_ir_label`.
        workers: worker processes for the CRF.
        ids: a subset of ``dataset.ids``.
        dist: this process's rank (default: from the environment).
        progress: show a progress bar.

    Returns:
        How many labels were written in this call.

    Raises:
        DataError: a map file missing or inconsistent with its image (naming the map file).
        ConfigError: bad thresholds or CRF settings.
    """
    fg, bg = _check_thresholds(fg_threshold, bg_threshold)
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise DataError("map folder not found", maps_dir)
    num_classes = getattr(dataset, "num_classes", None)
    palette = getattr(dataset, "palette", None)
    work = _IrLabelWork(
        dataset=dataset, maps=MapStore(maps_dir), out=MaskStore(out_dir, palette), fg_threshold=fg,
        bg_threshold=bg, crf=crf_params(crf), gt_prob=float(gt_prob), scale=check_scale(scale),
        num_classes=None if num_classes is None else int(num_classes),
    )
    ids = list(dataset.ids if ids is None else ids)
    log.info("IR labels for %d images (fg %.3g, bg %.3g, CRF widths at %s scale) -> %s", len(ids), fg, bg,
             scale, out_dir)
    return run_per_image_parallel(ids, work, work.is_done, workers=workers, desc="ir labels",
                                  dist=dist, progress=progress)
