"""COCO-style instance annotations (``instances_*.json``) through pycocotools.

Category ids are mapped to contiguous class ids ``1..K`` in the order the JSON lists its
categories (COCO's own ids have gaps: 1..90 for 80 classes); class names come from the JSON,
with ``"background"`` as class 0. Image ids (``ds.ids``) are the image file names without their
extension, e.g. ``000000000009`` for COCO 2017 (the 12-digit names RIB uses) or
``COCO_train2014_000000000009`` for COCO 2014; methods also accept the integer COCO image id.
A split file (any dialect of :func:`wsss.data.voc.read_split_file`) narrows ``ds.ids`` to a subset.

Semantic masks (:meth:`COCODataset.load_mask`) paint crowd regions 255 (ignore) first, then
the non-crowd instances from the largest to the smallest area (ties by annotation id), so where
instances overlap the smaller one wins and an instance wins over a crowd region. This is
deterministic and keeps small objects that sit on larger ones.

The JSON checks, polygon/RLE decoding and box conversion are those of the instance store
(:mod:`wsss.stores.instances`), which writes and reads the same format.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from tqdm import tqdm

from wsss.data.base import ImageDataset
from wsss.data.voc import BOX_TOLERANCE, read_split_file
from wsss.errors import DataError, problems_error
from wsss.io import IGNORE_INDEX, PathLike, image_size, read_image, read_json, voc_palette
from wsss.stores.instances import ImageInstances, check_coco_document, coco_box, decode_rle, segmentation_rle

logger = logging.getLogger(__name__)


@dataclass
class Instances:
    """The instances of one image.

    Attributes:
        masks: bool (N, H, W).
        classes: int64 (N,) class ids in ``1..K``.
        boxes: float32 (N, 4) ``x0, y0, x1, y1`` in pixels (COCO ``x, y, w, h`` converted).
        is_crowd: bool (N,).
        annotation_ids: int64 (N,) the JSON's annotation ids.
    """

    masks: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    is_crowd: np.ndarray
    annotation_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class COCOValidationReport:
    images: int = 0
    annotations: int = 0
    crowd: int = 0

    def summary(self) -> str:
        return f"{self.images} images, {self.annotations} annotations ({self.crowd} crowd)"


def _default_image_dir(annotation_file: Path) -> Path:
    # annotations/instances_val2017.json -> val2017/ beside annotations/.
    folder = annotation_file.parent
    stem = annotation_file.stem
    split = stem.split("_", 1)[1] if "_" in stem else stem
    for candidate in (
        folder.parent / split,
        folder / split,
        folder.parent / "JPEGImages",
        folder / "JPEGImages",
    ):
        if candidate.is_dir():
            return candidate
    return folder


class COCODataset(ImageDataset):
    """Images, class labels, boxes and masks from a COCO instances JSON.

    Args:
        annotation_file: the instances JSON.
        image_dir: the folder the JSON's ``file_name`` entries are relative to; by default the
            folder named after the JSON (``annotations/instances_val2017.json`` ->
            ``val2017/``), else ``JPEGImages/`` beside it, else the JSON's folder.
        split: ``None`` for every image of the JSON, or a split file (a path, absolute or
            relative to the JSON's folder) listing the ids to use, in its order.

    Raises:
        DataError: the JSON is missing or malformed (missing keys, an annotation of an unknown
            image or category, duplicate image names or category names), or the split file is
            missing or lists an id the JSON does not have.
    """

    def __init__(
        self,
        annotation_file: PathLike,
        image_dir: PathLike | None = None,
        split: str | os.PathLike | None = None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        data = read_json(self.annotation_file)
        check_coco_document(data, self.annotation_file)
        self.image_dir = (
            Path(image_dir) if image_dir is not None else _default_image_dir(self.annotation_file)
        )
        self.root = self.image_dir

        # pycocotools prints progress to stdout; keep stdout clean for the CLI.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()

        categories = data["categories"]
        self.category_ids: list[int] = [int(c["id"]) for c in categories]
        self.classes: list[str] = ["background"] + [str(c["name"]) for c in categories]
        self._class_of_category = {cat: index + 1 for index, cat in enumerate(self.category_ids)}
        self.palette: list[int] = voc_palette()

        self.ids: list[str] = []
        self._image_of_id: dict[str, int] = {}
        for image in data["images"]:
            image_id = Path(str(image["file_name"])).stem
            if image_id in self._image_of_id:
                raise DataError(f"two images are named {image_id!r}", self.annotation_file)
            self._image_of_id[image_id] = int(image["id"])
            self.ids.append(image_id)
        self._id_of_image = {number: name for name, number in self._image_of_id.items()}
        self._label_cache: dict[str, np.ndarray] = {}
        self._zero_area_warned: set[Any] = set()
        self._has_masks: bool | None = None

        self.split = split
        self.split_file: Path | None = None
        if split is not None:
            self.split_file = self._resolve_split(split)
            self.ids = read_split_file(self.split_file).ids
            unknown = [image_id for image_id in self.ids if image_id not in self._image_of_id]
            if unknown:
                raise DataError(
                    f"{len(unknown)} ids are not images of {self.annotation_file.name} "
                    f"(first: {unknown[0]!r})",
                    self.split_file,
                )

    def _resolve_split(self, split: str | os.PathLike) -> Path:
        path = Path(split)
        if not path.is_file() and not path.is_absolute() and (self.annotation_file.parent / path).is_file():
            path = self.annotation_file.parent / path
        if not path.is_file():
            raise DataError(
                "split file not found (a COCO split is a file of ids; the JSON itself is the whole set)", path
            )
        return path

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        split = "" if self.split_file is None else f", split={str(self.split_file)!r}"
        return f"COCODataset({str(self.annotation_file)!r}{split}, {len(self)} images, {self.num_classes} classes)"

    def _listed_in(self) -> Path:
        return self.annotation_file if self.split_file is None else self.split_file

    def coco_id(self, image_id: str | int) -> int:
        """The JSON's integer image id for an id (a file-name stem) or an integer id."""
        if isinstance(image_id, (int, np.integer)):
            if int(image_id) not in self._id_of_image:
                raise KeyError(f"no image with COCO id {image_id} in {self.annotation_file}")
            return int(image_id)
        try:
            return self._image_of_id[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in {self.annotation_file}") from None

    def image_info(self, image_id: str | int) -> dict[str, Any]:
        return self.coco.imgs[self.coco_id(image_id)]

    def image_path(self, image_id: str | int) -> Path:
        return self.image_dir / str(self.image_info(image_id)["file_name"])

    def _annotations(self, image_id: str | int) -> list[dict[str, Any]]:
        number = self.coco_id(image_id)
        return sorted(self.coco.imgToAnns.get(number, []), key=lambda a: a["id"])

    # ------------------------------------------------------------------ labels and boxes
    def image_labels(self, image_id: str | int) -> np.ndarray:
        """Classes with at least one annotation (crowd included): sorted ``int64`` in ``1..K``."""
        key = str(self.coco_id(image_id))
        labels = self._label_cache.get(key)
        if labels is None:
            labels = np.unique(
                np.asarray(
                    [self._class_of_category[a["category_id"]] for a in self._annotations(image_id)],
                    dtype=np.int64,
                )
            )
            self._label_cache[key] = labels
        return labels.copy()

    def boxes(self, image_id: str | int, include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The image's boxes, checked against its size in the JSON, crowd left out by default.

        A box may stick out of the image by :data:`~wsss.data.voc.BOX_TOLERANCE` pixels (it is
        clipped), as in VOC. A box of zero width or height (``w = 0`` or ``h = 0``, or nothing
        left inside the image after clipping) is left out, with one warning per annotation: COCO
        2017's own training file holds two (annotations 918 and 2206849), and detection loaders
        such as torchvision's reference drop them.

        Returns:
            ``(boxes float32 (N, 4) x0, y0, x1, y1, classes int64 (N,) in 1..K)``.

        Raises:
            DataError: naming the JSON, the annotation and the image: a missing or non-numeric
                bbox, a negative width or height, or a box outside the image by more than the
                tolerance.
        """
        info = self.image_info(image_id)
        height, width = int(info["height"]), int(info["width"])
        chosen = [a for a in self._annotations(image_id) if include_crowd or not a.get("iscrowd", 0)]
        boxes, classes = [], []
        for annotation in chosen:
            box = self._checked_box(annotation, info["file_name"], height, width)
            if box is not None:
                boxes.append(box)
                classes.append(self._class_of_category[annotation["category_id"]])
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(classes, dtype=np.int64)

    def _checked_box(self, annotation: dict[str, Any], file_name: str, height: int, width: int) -> np.ndarray | None:
        """One annotation's box, clipped to the image; None for a box of zero area (warned once)."""
        x0, y0, x1, y1 = (float(v) for v in coco_box(annotation, self.annotation_file))
        where = f"annotation {annotation['id']} (image {file_name}) bbox {annotation['bbox']}"
        if not np.isfinite([x0, y0, x1, y1]).all():
            raise DataError(f"{where} is not finite", self.annotation_file)
        if x1 < x0 or y1 < y0:
            raise DataError(f"{where} has a negative width or height", self.annotation_file)
        if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > width + BOX_TOLERANCE or y1 > height + BOX_TOLERANCE:
            raise DataError(f"{where} lies outside the {width}x{height} image", self.annotation_file)
        box = np.clip([x0, y0, x1, y1], 0, [width, height, width, height])
        if box[2] <= box[0] or box[3] <= box[1]:
            if annotation["id"] not in self._zero_area_warned:
                self._zero_area_warned.add(annotation["id"])
                logger.warning("%s: %s has zero area inside the %dx%d image: left out of the boxes",
                               self.annotation_file, where, width, height)
            return None
        return box

    # ------------------------------------------------------------------ masks
    @property
    def has_masks(self) -> bool:
        """Whether every annotation of the split's images has a polygon or RLE segmentation."""
        if self._has_masks is None:
            self._has_masks = all(
                isinstance(a.get("segmentation"), (list, dict)) and bool(a.get("segmentation"))
                for image_id in self.ids
                for a in self._annotations(image_id)
            )
        return self._has_masks

    def _rle(self, annotation: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        where = f"annotation {annotation['id']}"
        return segmentation_rle(annotation.get("segmentation"), height, width, where, self.annotation_file)

    def instances(self, image_id: str | int) -> Instances:
        """Every annotation of the image as a binary mask, with class, box and crowd flag."""
        info = self.image_info(image_id)
        height, width = int(info["height"]), int(info["width"])
        annotations = self._annotations(image_id)
        masks = np.zeros((len(annotations), height, width), dtype=bool)
        for row, annotation in enumerate(annotations):
            masks[row] = decode_rle(self._rle(annotation, height, width))
        return Instances(
            masks=masks,
            classes=np.asarray(
                [self._class_of_category[a["category_id"]] for a in annotations], dtype=np.int64
            ),
            boxes=np.stack([coco_box(a, self.annotation_file) for a in annotations])
            if annotations
            else np.zeros((0, 4), np.float32),
            is_crowd=np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool),
            annotation_ids=np.asarray([a["id"] for a in annotations], dtype=np.int64),
        )

    @property
    def has_instances(self) -> bool:
        """Every annotation has a segmentation (:attr:`has_masks`)."""
        return self.has_masks

    def ground_truth_instances(self, image_id: str | int) -> ImageInstances:
        """The non-crowd annotations as instances and the crowd regions as the image's ``ignore``.
        An annotation whose box has zero width or height is left out, as :meth:`boxes` leaves it
        out (its mask is empty: no model can find it, and Mask R-CNN cannot train on its box)."""
        found = self.instances(image_id)
        crowd = found.is_crowd
        ignore = found.masks[crowd].any(axis=0) if crowd.any() else None
        kept = ~crowd & (found.boxes[:, 2] > found.boxes[:, 0]) & (found.boxes[:, 3] > found.boxes[:, 1])
        name = self._id_of_image[self.coco_id(image_id)]
        return ImageInstances(name, found.boxes[kept], found.classes[kept], found.masks[kept], ignore=ignore,
                              file_name=str(self.image_info(image_id)["file_name"]))

    def load_mask(self, image_id: str | int) -> np.ndarray:
        """The semantic label map ``uint8`` (H, W): 0 background, ``1..K``, crowd -> 255.

        Overlaps: crowd first, then instances from the largest area to the smallest (ties by
        annotation id), so the smaller instance wins and instances win over crowd.
        """
        info = self.image_info(image_id)
        height, width = int(info["height"]), int(info["width"])
        label_map = np.zeros((height, width), dtype=np.uint8)
        crowd, objects = [], []
        for annotation in self._annotations(image_id):
            rle = self._rle(annotation, height, width)
            (crowd if annotation.get("iscrowd", 0) else objects).append((annotation, rle))
        for _, rle in crowd:
            label_map[decode_rle(rle)] = IGNORE_INDEX
        objects.sort(key=lambda pair: (-float(mask_utils.area(pair[1])), pair[0]["id"]))
        for annotation, rle in objects:
            label_map[decode_rle(rle)] = self._class_of_category[annotation["category_id"]]
        return label_map

    # ------------------------------------------------------------------ validation
    def validate(self, progress: bool = False, boxes: bool = False) -> COCOValidationReport:
        """Check every image decodes at the size the JSON states and every segmentation decodes,
        and with ``boxes`` that every box lies in its image (:meth:`boxes`). A problem does not
        stop the check: every image is looked at.

        Raises:
            DataError: after all images, every problem found: the problem itself when there is
                one, else one error listing them (:func:`wsss.errors.problems_error`).
        """
        report, problems = self.find_problems(progress=progress, boxes=boxes)
        if problems:
            raise problems_error(problems, f"in {self.annotation_file}")
        return report

    def find_problems(self, progress: bool = False, decode_images: bool = True, boxes: bool = False
                      ) -> tuple[COCOValidationReport, list[DataError]]:
        """What :meth:`validate` checks, returned instead of raised: the counts and every problem.

        Args:
            progress: show a progress bar.
            decode_images: decode every image and segmentation in full; False reads only each
                image's header and its annotations' classes.
            boxes: also check every box against its image (:meth:`boxes`).
        """
        report = COCOValidationReport()
        problems: list[DataError] = []
        for image_id in tqdm(self.ids, desc="check-data", disable=None if progress else True):
            try:
                self._check_image(image_id, report, decode_images)
                if boxes:
                    self.boxes(image_id)
            except DataError as exc:
                problems.append(exc)
        return report, problems

    def _check_image(self, image_id: str, report: COCOValidationReport, decode: bool = True) -> None:
        info = self.image_info(image_id)
        path = self.image_path(image_id)
        height, width = image_size(path)
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise DataError(
                f"image is {width}x{height} but {self.annotation_file.name} says "
                f"{info['width']}x{info['height']}",
                path,
            )
        report.images += 1
        if not decode:  # the header and the labels; no pixel decoded
            annotations = self._annotations(image_id)
            self.image_labels(image_id)
            report.annotations += len(annotations)
            report.crowd += sum(bool(a.get("iscrowd", 0)) for a in annotations)
            return
        read_image(path)
        instances = self.instances(image_id)
        report.annotations += len(instances)
        report.crowd += int(instances.is_crowd.sum())
