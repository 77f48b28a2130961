"""BBAM's pseudo labels: per-object masks from bounding-box attribution maps, semantic and instance.

Reference: ``jbeomlee93/BBAM`` ``tools/BBAM/make_annotation/`` (``anno_utils.py`` ``get_top_CRF``
and ``get_final_mask_with_topCRF``, ``make_cocoann_topCRF_parallel.py``,
``create_semantic_labels.py``). The input is one attribution map per object: a float mask in
[0, 1] at image resolution with the object's box and class, as
:class:`wsss.stores.maps.MapStore` holds BBAM's per-box maps (``boxes`` given, one channel per
box).

**One object at one threshold th** (:func:`object_mask`):

1. The map is kept to the object's box (the box's pixels, ``floor(x0) <= col < ceil(x1)``) and
   divided by its maximum there.
2. *Top-(1 - th) saturation*: with ``n`` the box's pixel count, the value ranked
   ``int(n (1 - th))`` from the top (0-based) becomes 1: the map is divided by it (plus 1e-8)
   and clipped to [0, 1], so the top ``1 - th`` share of the box's pixels saturate.
3. *Blur*: a Gaussian of standard deviation ``s`` and radius ``s`` pixels, where
   ``s = int(16 + 48 sqrt(n / (H W)))`` (the reference's kernel ``2 s + 1`` with sigma ``s``,
   mirrored borders as OpenCV's default); with ``scale="image"`` ``s`` follows the image's
   diagonal (:func:`blur_sigma`, ``docs/scale.md``). The result is kept to the box and divided by
   its maximum again.
4. *Two-label dense CRF* (preset ``"bbam"``: 10 iterations, Gaussian 1 / 3, bilateral 80 / 3 /
   4) on ``[m, 1 - m]``; the object is where its marginal exceeds 0.9.
5. *Fallback for small objects*: when that object covers at most 1/5 of the box and the box at
   most 1/10 of the image, the CRF is run again from the object so far with the rest of the box
   filled at 0.7, 0.8, 0.9, 0.95, 0.96 in turn, until the object covers more than 1/3 of the
   box; if none does, the last try stands.
6. *No attribution*: a map that is zero inside its box (the attribution kept no proposal) goes
   to a CRF from the box filled at 0.7, 0.8, 0.9, 0.95 in turn, accepted once the object covers
   more than 1/5 of the box. The threshold plays no part, so both thresholds share the result.

Thresholds: th = 0.85 gives the **object** mask, th = 0.2 the **possible object** mask
(``make_cocoann_topCRF_parallel.py`` ``th_fgs``).

**Semantic label map** (:func:`merge_semantic`, ``create_semantic_labels.py``): each class is
painted where one of its objects' masks lies; a pixel claimed by two classes is 255; an object
whose box lies inside another object's (different) box is painted again on top with its class,
from the largest such box to the smallest; finally the **band**, pixels in some object's possible
mask but not in its object mask, is 255. With ``band="possible"`` (a variant, not the reference's)
the possible-object masks are painted instead, so the band takes its object's class: on the
generated benchmark that took DeepLab from 83% to 97% of its fully supervised score, the band
being mostly object (docs/methods/bbam.md).

**Instances** (:class:`wsss.stores.instances.ImageInstances`): per object its box, class, object
mask, and as its ``ignore`` region the band, which Mask R-CNN training leaves out of its mask
loss (:mod:`wsss.models.mask_rcnn`).

Where this departs from the reference:

* **Pairing.** When the no-attribution fallback fails, the reference appends no mask although it
  already appended the object's box and class, so every later mask is paired with the wrong box
  (``anno_utils.py`` L133-153); empty masks also drop out of one of its two JSON files only
  (``pycococreatortools.py``), breaking the pairing by position in ``create_semantic_labels.py``.
  Here every object keeps its row: a **failed** object (its object mask empty) has an empty mask
  and its whole box as its band, so the semantic map is 255 there (unsure, not background) and
  Mask R-CNN learns its box but no mask from it. Masks, boxes and classes always stay aligned.
* Masks are kept to their box (the reference does not clip the CRF's result, which can reach a
  little outside the box).
* A map that is zero inside its box but not outside counts as having no attribution (the
  reference would divide by zero).
* The initial normalisation divides by the maximum inside the box (the reference subtracts the
  image's minimum and divides by its maximum); the saturation step divides by a ranked value of
  the same map, so the scale cancels.
* Objects are the map file's boxes and classes, at the image's resolution (the reference reads
  JPEG masks at half the detector's resolution and resizes them).

Example:
    >>> labels = bbam_labels(image, maps)                # maps: LocalizationMaps with boxes
    >>> labels.semantic, labels.instances.masks, labels.sources
    >>> make_bbam_labels(dataset, "work/maps/bbam", "work/pseudo/bbam",
    ...                  "work/pseudo/bbam_instances", "work/pseudo/bbam_instances.json")
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wsss.config import REFERENCE_IMAGE_SIZE, check_scale
from wsss.errors import DataError
from wsss.io import IGNORE_INDEX
from wsss.refine.crf import CrfParams, crf_params, dense_crf
from wsss.runtime import DistInfo, barrier, dist_info_from_env, run_per_image_parallel
from wsss.stores.instances import ImageInstances, InstanceStore
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

__all__ = [
    "CRF_PRESET",
    "BbamLabels",
    "ObjectMask",
    "THRESHOLD_OBJECT",
    "THRESHOLD_POSSIBLE",
    "blur_sigma",
    "bbam_labels",
    "box_pixels",
    "collect_instances",
    "make_bbam_labels",
    "merge_semantic",
    "object_mask",
]

THRESHOLD_OBJECT = 0.85  # make_cocoann_topCRF_parallel.py L24 th_fgs[0]: the object mask
THRESHOLD_POSSIBLE = 0.2  # th_fgs[1]: the possible-object mask, whose excess over the object is ignored
CRF_PRESET = "bbam"  # anno_utils.py get_final_mask_with_topCRF: DenseCRF(10, pos 1/3, bi 80/3/4)
FOREGROUND_PROBABILITY = 0.9  # get_top_CRF: total_mask[mask > 0.9] = 1
RANK_EPSILON = 1e-8  # get_top_CRF: threshold = sorted value + 1e-8
SMALL_OBJECT = 1 / 5  # get_top_CRF: refill when the object is <= box / 5 ...
SMALL_BOX = 1 / 10  # ... and the box <= image / 10
REFILL_ENOUGH = 1 / 3  # get_top_CRF: a refill is accepted above box / 3
REFILL_PROBABILITIES = (0.7, 0.8, 0.9, 0.95, 0.96)  # get_top_CRF nullmask_init_prob
BOX_FILL_PROBABILITIES = (0.7, 0.8, 0.9, 0.95)  # get_final_mask_with_topCRF nullmask_init_prob
BOX_FILL_ENOUGH = 1 / 5  # get_final_mask_with_topCRF: accepted above box_area / 5
BLUR_BASE, BLUR_AREA = 16, 48  # get_top_CRF: kernel_size = int(16 + 48 * sqrt(box / image))

SOURCES = ("bbam", "refill", "box", "failed")
"""How an object mask was made: from the attribution map (``bbam``), by the small-object refill
(``refill``), by the no-attribution box fill (``box``), or not at all (``failed``: empty)."""


@dataclass
class ObjectMask:
    """One object's mask at one threshold.

    Attributes:
        mask: bool (H, W), inside the object's box; empty when ``source`` is ``"failed"``.
        source: one of :data:`SOURCES`.
    """

    mask: np.ndarray
    source: str


@dataclass
class BbamLabels:
    """An image's pseudo labels.

    Attributes:
        semantic: uint8 (H, W): 0 background, 1..K, 255 where classes overlap, in the band, and
            in failed objects' boxes.
        instances: one row per object of the map file, in its order (boxes, classes, object
            masks, the band as ``instance_ignore``).
        possible: bool (N, H, W), the possible-object masks (th = 0.2).
        sources: per object, how its object mask (th = 0.85) was made (:data:`SOURCES`).
    """

    semantic: np.ndarray
    instances: ImageInstances
    possible: np.ndarray
    sources: list[str]


def box_pixels(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (H, W): the pixels a box covers, ``floor(x0) <= col < ceil(x1)`` and rows alike (for
    VOC's integer boxes exactly the box's pixels), as :func:`wsss.models.bap_net.box_masks`."""
    x0, y0 = (max(int(math.floor(float(v))), 0) for v in box[:2])
    x1, y1 = min(int(math.ceil(float(box[2]))), width), min(int(math.ceil(float(box[3]))), height)
    region = np.zeros((height, width), dtype=bool)
    region[y0:y1, x0:x1] = True
    return region


def blur_sigma(box_area: float, height: int, width: int, scale: str = "reference") -> float:
    """The blur's standard deviation (and radius) in pixels for a box of ``box_area`` pixels.

    ``reference``: ``int(16 + 48 sqrt(box_area / (H W)))`` as ``get_top_CRF``, set for VOC's
    images at their own size (the CRF and the blur run on the JPEG as read). ``image``: that
    times ``sqrt(H^2 + W^2) / 625`` (625: the diagonal of VOC's 375 x 500), as the CRF's widths
    (:meth:`wsss.refine.crf.CrfParams.for_image`): the literal value on a 375 x 500 image.
    """
    sigma = float(int(BLUR_BASE + BLUR_AREA * math.sqrt(box_area / (height * width))))
    if check_scale(scale) == "image":
        sigma *= math.hypot(height, width) / math.hypot(*REFERENCE_IMAGE_SIZE)
    return sigma


def _blur(values: np.ndarray, sigma: float) -> np.ndarray:
    # OpenCV's GaussianBlur(ksize 2s + 1, sigma s) with its default BORDER_REFLECT_101 border,
    # which is scipy's "mirror"; the radius follows sigma (at least one pixel).
    radius = max(1, int(round(sigma)))
    return ndimage.gaussian_filter(values, sigma=sigma, mode="mirror", radius=radius)


def _crf_object(image: np.ndarray, start: np.ndarray, crf: CrfParams | str, scale: str,
                region: np.ndarray, where: str | os.PathLike | None) -> np.ndarray:
    """The pixels whose object marginal exceeds 0.9 after a two-label CRF from ``start``, kept to
    the box ``region``."""
    probs = np.stack([start, 1.0 - start]).astype(np.float32)
    marginals = dense_crf(image, probs, crf, scale=scale, where=where)
    return (marginals[0] > FOREGROUND_PROBABILITY) & region


def _box_fill(image: np.ndarray, region: np.ndarray, area: int, crf: CrfParams | str, scale: str,
              where: str | os.PathLike | None) -> ObjectMask:
    for probability in BOX_FILL_PROBABILITIES:
        start = np.where(region, probability, 0.0)
        mask = _crf_object(image, start, crf, scale, region, where)
        if mask.sum() > area * BOX_FILL_ENOUGH:
            return ObjectMask(mask, "box")
    return ObjectMask(np.zeros_like(region), "failed")


def has_attribution(attribution: np.ndarray, region: np.ndarray) -> bool:
    """Whether a map has any positive value inside its box (else the box-fill fallback)."""
    return bool((np.asarray(attribution)[region] > 0).any())


def object_mask(
    image: np.ndarray,
    attribution: np.ndarray,
    box: np.ndarray,
    threshold: float,
    *,
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    where: str | os.PathLike | None = None,
) -> ObjectMask:
    """One object's mask from its attribution map at one threshold (the module docstring, 1-6).

    Args:
        image: uint8 (H, W, 3) RGB.
        attribution: float (H, W), the object's BBAM map (non-negative).
        box: ``x0, y0, x1, y1`` in pixels, inside the image.
        threshold: th: the top ``1 - th`` share of the box's pixels saturate (0.85: the object,
            0.2: the possible object).
        crf: the CRF's parameters (default: the reference's, preset ``"bbam"``).
        scale: ``"reference"`` or ``"image"``: how the blur and the CRF's widths are read.
        where: file named in errors.

    Raises:
        DataError: the map is not the image's size or not finite, or the box has no area
            (``x1 <= x0`` or ``y1 <= y0``, VOC's ``xmin = xmax`` included).
    """
    height, width = image.shape[:2]
    attribution = np.asarray(attribution, dtype=np.float64)
    if attribution.shape != (height, width):
        raise DataError(f"attribution map is {attribution.shape} but the image is {(height, width)}", where)
    if not np.isfinite(attribution).all():
        raise DataError("attribution map holds NaN or infinite values", where)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    region = box_pixels(box, height, width)
    area = int(region.sum())
    if area == 0 or not (float(box[2]) > float(box[0]) and float(box[3]) > float(box[1])):
        raise DataError(f"box ({', '.join(f'{float(v):g}' for v in box)}) has no area (covers no pixel)", where)
    if not has_attribution(attribution, region):
        return _box_fill(image, region, area, crf, scale, where)

    values = np.where(region, np.maximum(attribution, 0.0), 0.0)
    values /= values.max()
    rank = int(area * (1.0 - threshold))
    ranked = np.partition(values[region], area - 1 - rank)[area - 1 - rank]  # the rank-th largest
    values = np.clip(values / (ranked + RANK_EPSILON), 0.0, 1.0)
    values = _blur(values, blur_sigma(area, height, width, scale)) * region
    values /= values.max()
    mask = _crf_object(image, values, crf, scale, region, where)
    if mask.sum() > area * SMALL_OBJECT or area > SMALL_BOX * height * width:
        return ObjectMask(mask, "bbam")
    found = mask
    for probability in REFILL_PROBABILITIES:
        start = np.where(region, probability, 0.0)
        start[mask] = 1.0
        found = _crf_object(image, start, crf, scale, region, where)
        if found.sum() > area * REFILL_ENOUGH:
            break
    # The reference keeps the last try even when it is not enough; only an empty one fails here.
    return ObjectMask(found, "refill" if found.any() else "failed")


def _inside(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether box ``inner`` lies inside ``outer`` and differs from it (``check_entire_overlap``)."""
    return (not np.array_equal(inner, outer) and outer[0] <= inner[0] and outer[1] <= inner[1]
            and outer[2] >= inner[2] and outer[3] >= inner[3])


BANDS = ("ignore", "possible")
"""What the semantic map does with the band (possible object but not object): ``ignore`` (255, the
reference's) or ``possible`` (painted as its object's class: the possible-object masks are the
objects; a variant, not in the reference)."""


def merge_semantic(objects: np.ndarray, possible: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                   band: str = "ignore") -> np.ndarray:
    """An image's semantic label map from its objects' masks (``create_semantic_labels.py``).

    Args:
        objects: bool (N, H, W), the object masks (th = 0.85).
        possible: bool (N, H, W), the possible-object masks (th = 0.2); a failed object's is its box.
        boxes: (N, 4) ``x0, y0, x1, y1``.
        classes: (N,) class ids in 1..K.
        band: :data:`BANDS`: ``ignore`` (the reference's) or ``possible`` (the possible-object
            masks painted as the objects, so no pixel is 255 for being in the band).

    Returns:
        uint8 (H, W): each class where one of its objects lies; 255 where two classes claim a
        pixel; objects whose box lies inside another's painted again on top, largest box first;
        with ``band="ignore"``, 255 wherever a pixel is in some object's possible mask but not in
        that object's mask.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    objects = np.asarray(objects, dtype=bool)
    possible = np.asarray(possible, dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if not (len(objects) == len(possible) == len(boxes) == len(classes)):
        raise ValueError(f"{len(objects)} object masks, {len(possible)} possible masks, {len(boxes)} boxes and "
                         f"{len(classes)} classes: one of each per object")
    if band == "possible":
        objects = objects | possible
    height, width = objects.shape[1:]
    labels = np.zeros((height, width), dtype=np.uint8)
    claims = np.zeros((height, width), dtype=np.int64)
    for cls in np.unique(classes):
        painted = objects[classes == cls].any(axis=0)
        labels[painted] = cls
        claims += painted
    labels[claims > 1] = IGNORE_INDEX
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in np.argsort(-areas, kind="stable"):  # largest first: the smallest nested box ends on top
        if any(_inside(boxes[index], boxes[other]) for other in range(len(boxes)) if other != index):
            labels[objects[index]] = classes[index]
    unsure = (possible & ~objects).any(axis=0) if len(objects) else np.zeros((height, width), dtype=bool)
    labels[unsure] = IGNORE_INDEX
    return labels


def bbam_labels(
    image: np.ndarray,
    maps: LocalizationMaps,
    *,
    image_id: str = "",
    thresholds: tuple[float, float] = (THRESHOLD_OBJECT, THRESHOLD_POSSIBLE),
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    band: str = "ignore",
    where: str | os.PathLike | None = None,
) -> BbamLabels:
    """Semantic and instance pseudo labels of one image from its per-box BBAM maps.

    Args:
        image: uint8 (H, W, 3) RGB.
        maps: the image's per-box maps (``boxes`` given; ``high_res`` (N, H, W) in [0, 1],
            ``keys`` the boxes' classes). A file with no boxes gives an all-background map and
            no instances.
        image_id: the instances' image id.
        thresholds: (object, possible object): (0.85, 0.2) as the reference.
        crf: the CRF's parameters.
        scale: ``"reference"`` or ``"image"`` (the blur and the CRF widths).
        band: the semantic map's band (:data:`BANDS`); the instances keep it as their ignore region.
        where: file named in errors (the map file).

    Raises:
        DataError: maps without boxes (class maps, not BBAM's), maps of another size than the
            image, a box that covers no pixel.
    """
    if maps.boxes is None:
        raise DataError("not per-box maps (no boxes): BBAM pseudo labels need one map per box", where)
    height, width = image.shape[:2]
    if maps.image_size != (height, width):
        raise DataError(f"maps are {maps.image_size[1]}x{maps.image_size[0]} but the image is {width}x{height}",
                        where)
    th_object, th_possible = thresholds
    count = len(maps.keys)
    objects = np.zeros((count, height, width), dtype=bool)
    possible = np.zeros((count, height, width), dtype=bool)
    sources = []
    for row in range(count):
        box, attribution = maps.boxes[row], maps.high_res[row]
        found = object_mask(image, attribution, box, th_object, crf=crf, scale=scale, where=where)
        if found.source == "box":  # no attribution: the threshold plays no part
            maybe = found
        else:
            maybe = object_mask(image, attribution, box, th_possible, crf=crf, scale=scale, where=where)
        objects[row] = found.mask
        region = box_pixels(box, height, width)
        # A failed object is unsure over its whole box; so is the possible mask that failed.
        possible[row] = region if found.source == "failed" or maybe.source == "failed" else maybe.mask
        sources.append(found.source)
    unsure = possible & ~objects
    semantic = merge_semantic(objects, possible, maps.boxes, maps.keys, band=band)
    instances = ImageInstances(image_id=image_id, boxes=maps.boxes, classes=maps.keys, masks=objects,
                               instance_ignore=unsure)
    return BbamLabels(semantic=semantic, instances=instances, possible=possible, sources=sources)


def _instance_file(folder: Path, image_id: str) -> Path:
    return folder / f"{image_id}.json"


@dataclass
class _BbamLabelWork:
    """One image's job, picklable so that worker processes can run it."""

    dataset: Any
    maps: MapStore
    semantic: MaskStore
    instance_dir: Path
    classes: list[str]
    thresholds: tuple[float, float]
    crf: CrfParams
    scale: str
    band: str = "ignore"

    def is_done(self, image_id: str) -> bool:
        return self.semantic.has(image_id) and _instance_file(self.instance_dir, image_id).is_file()

    def __call__(self, image_id: str) -> None:
        image = self.dataset.load_image(image_id)
        labels = bbam_labels(image, self.maps.load(image_id), image_id=image_id, thresholds=self.thresholds,
                             crf=self.crf, scale=self.scale, band=self.band, where=self.maps.path(image_id))
        if hasattr(self.dataset, "image_path"):
            labels.instances.file_name = Path(self.dataset.image_path(image_id)).name
        InstanceStore(_instance_file(self.instance_dir, image_id)).save([labels.instances], self.classes)
        self.semantic.save(image_id, labels.semantic)


def make_bbam_labels(
    dataset,
    maps_dir: str | os.PathLike,
    semantic_dir: str | os.PathLike,
    instance_dir: str | os.PathLike,
    instances_path: str | os.PathLike | None = None,
    *,
    ids: Sequence[str] | None = None,
    thresholds: tuple[float, float] = (THRESHOLD_OBJECT, THRESHOLD_POSSIBLE),
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    band: str = "ignore",
    workers: int = 0,
    dist: DistInfo | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """:func:`bbam_labels` for every image of ``dataset``, resumable and sharded by rank.

    Per image, the semantic map goes to ``semantic_dir/<id>.png`` (:class:`MaskStore`) and the
    instances to ``instance_dir/<id>.json`` (a one-image :class:`InstanceStore` file); an image
    whose two files exist is skipped, so a killed run resumes with the same results. When every
    image is done, the main process gathers the per-image files into ``instances_path``, one COCO
    JSON for Mask R-CNN training, in ``ids`` order.

    Args:
        dataset: ``ids``, ``classes``, ``palette``, ``load_image`` (and ``image_path``, for the
            instances' file names).
        maps_dir: BBAM's per-box maps (:class:`MapStore`).
        semantic_dir, instance_dir: the per-image outputs.
        instances_path: the gathered instance file (None: not gathered).
        ids: the images (default: all of the dataset's).
        thresholds, crf, scale, band: see :func:`bbam_labels`.
        workers: worker processes for the CRFs (0: this process; the dataset must pickle otherwise).
        dist: this process's rank (default: from the environment).
        progress: a progress bar.

    Returns:
        ``{"images": computed now, "total": len(ids)}``, and when gathered ``"objects"`` (all
        images') and ``"failed"`` (objects whose mask is empty).

    Raises:
        DataError: a missing or bad map file (naming it), see :func:`bbam_labels`.
    """
    ids = list(dataset.ids if ids is None else ids)
    classes = list(dataset.classes)
    work = _BbamLabelWork(
        dataset=dataset, maps=MapStore(maps_dir), semantic=MaskStore(semantic_dir, getattr(dataset, "palette", None)),
        instance_dir=Path(instance_dir), classes=classes, thresholds=tuple(thresholds), crf=crf_params(crf),
        scale=check_scale(scale), band=band)
    computed = run_per_image_parallel(ids, work, work.is_done, workers=workers, desc="bbam labels", dist=dist,
                                      progress=progress)
    result: dict[str, int] = {"images": computed, "total": len(ids)}
    if instances_path is not None:
        barrier()
        if (dist or dist_info_from_env()).is_main:
            result.update(collect_instances(ids, instance_dir, instances_path, classes))
        barrier()
    return result


def collect_instances(ids: Sequence[str], instance_dir: str | os.PathLike, instances_path: str | os.PathLike,
                      classes: Sequence[str]) -> dict[str, int]:
    """Gather the one-image instance files of ``ids`` into one COCO JSON (images in ``ids``
    order), decoding one image at a time.

    Returns:
        ``{"objects": instances written, "failed": those with an empty mask}``.

    Raises:
        DataError: an image's file is missing or unreadable (naming it).
    """
    instance_dir = Path(instance_dir)
    counts = {"objects": 0, "failed": 0}

    def images():
        for image_id in ids:
            path = _instance_file(instance_dir, image_id)
            if not path.is_file():
                raise DataError(f"no BBAM instances for image {image_id!r}", path)
            found = InstanceStore(path).load(classes)[image_id]
            counts["objects"] += len(found)
            counts["failed"] += int((~found.masks.any(axis=(1, 2))).sum())
            yield found

    InstanceStore(instances_path).save(images(), classes)
    return counts
