"""The instance store: per-image instances (boxes, classes, masks, ignore regions) as COCO JSON.

BBAM writes its pseudo instance labels here and Mask R-CNN training reads them. A file is a
COCO instances JSON that pycocotools and detection code read as it is, plus two optional
``"ignore"`` fields that they pass over::

    images       [{"id", "file_name", "height", "width", "ignore"?: RLE}]
    annotations  [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area",
                   "segmentation": RLE, "iscrowd": 0, "ignore"?: RLE}]
    categories   [{"id": c, "name": classes[c]} for c in 1..K]

An image's ``ignore`` is a region of the image that no loss should count; an annotation's
``ignore`` the pixels of that instance whose membership is unsure. Masks are pycocotools'
compressed RLE with ASCII counts. Image ids in wsss are the file names without extension.

Reading maps categories to class ids ``1..K`` in the order the file lists them, as
:class:`wsss.data.coco.COCODataset` does, so other COCO files read too: their polygon or RLE
segmentations are decoded alike, and their crowd annotations (``iscrowd: 1``) join the image's
ignore region instead of becoming instances.

The COCO pieces that :mod:`wsss.data.coco` shares (document checks, segmentation -> RLE, RLE
decoding, ``[x, y, w, h]`` -> ``x0, y0, x1, y1``) live here too, so there is one of each.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from wsss.errors import DataError
from wsss.io import IGNORE_INDEX, PathLike, read_json, write_json
from wsss.stores._common import box_problem, single_box_problem

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".jpg"  # file_name of an image written without one: "<id>.jpg"


# --------------------------------------------------------------------------- the COCO codec


def check_coco_document(data: Any, path: Path) -> None:
    """Check the structure of a COCO instances document (keys, unique ids, known references).

    Raises:
        DataError: naming ``path``: no ``images``/``annotations``/``categories`` list, an
            entry without its required keys, a duplicate id or category name, an annotation of
            an unknown image or category, or more categories than a uint8 label map holds.
    """
    if not isinstance(data, dict):
        raise DataError("not a COCO instances file (expected a JSON object)", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f'not a COCO instances file (no "{key}" list)', path)
    if not data["categories"]:
        raise DataError("no categories", path)
    category_ids: set[int] = set()
    names: set[str] = set()
    for category in data["categories"]:
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DataError(f"category {category!r} needs an id and a name", path)
        if category["id"] in category_ids or category["name"] in names:
            raise DataError(f"duplicate category {category['id']} {category['name']!r}", path)
        category_ids.add(category["id"])
        names.add(category["name"])
    if len(category_ids) + 1 > IGNORE_INDEX:
        raise DataError(f"{len(category_ids)} categories; semantic masks hold at most {IGNORE_INDEX - 1}", path)
    image_ids: set[int] = set()
    for image in data["images"]:
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
            raise DataError(f"image entry {image!r:.80} needs id, file_name, height and width", path)
        if image["id"] in image_ids:
            raise DataError(f"duplicate image id {image['id']}", path)
        image_ids.add(image["id"])
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise DataError(f"annotation {annotation!r:.80} has no id", path)
        if annotation.get("image_id") not in image_ids:
            raise DataError(
                f"annotation {annotation['id']} refers to unknown image {annotation.get('image_id')}", path
            )
        if annotation.get("category_id") not in category_ids:
            raise DataError(
                f"annotation {annotation['id']} has unknown category {annotation.get('category_id')}", path
            )


def segmentation_rle(segmentation: Any, height: int, width: int, where: str, path: Path) -> dict[str, Any]:
    """One RLE of a COCO segmentation: polygons, compressed RLE or uncompressed RLE.

    Args:
        segmentation: the JSON value.
        height, width: the image's size; an RLE must have it.
        where: what holds the segmentation, for messages (``"annotation 7"``).
        path: the JSON file, for messages.

    Raises:
        DataError: an empty or malformed polygon, an RLE of another size, or neither.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            raise DataError(f"{where} has an empty segmentation", path)
        for polygon in segmentation:
            # pycocotools reads a 4-number list as a box, and crashes on odd lengths.
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise DataError(f"{where} has a polygon with fewer than 3 points or an odd length", path)
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise DataError(
                f"{where}: RLE size {segmentation['size']} differs from the image's [{height}, {width}]", path
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            if not counts.isascii():
                raise DataError(f"{where}: RLE counts are not ASCII", path)
            return {"size": [height, width], "counts": counts.encode("ascii")}
        return segmentation
    raise DataError(f"{where} has no polygon or RLE segmentation", path)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """A binary (H, W) mask from one RLE."""
    with warnings.catch_warnings():
        # pycocotools 2.0.x's Cython decoder trips NumPy 2's __array__(copy=) deprecation;
        # the result is correct, the warning is theirs.
        warnings.filterwarnings(
            "ignore", message=r"__array__ implementation doesn't accept a copy", category=DeprecationWarning
        )
        return mask_utils.decode(rle).astype(bool)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """The compressed RLE of a binary (H, W) mask, JSON-ready (ASCII counts)."""
    mask = np.asarray(mask, dtype=bool)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def coco_box(annotation: dict[str, Any], path: Path) -> np.ndarray:
    """An annotation's ``[x, y, w, h]`` bbox as float32 ``x0, y0, x1, y1``.

    Raises:
        DataError: no bbox of four numbers.
    """
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(f"annotation {annotation['id']} has no [x, y, w, h] bbox", path)
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(f"annotation {annotation['id']} has a non-numeric bbox {bbox}", path) from None
    return np.array([x, y, x + w, y + h], dtype=np.float32)


# --------------------------------------------------------------------------- instances


@dataclass
class ImageInstances:
    """The instances of one image.

    Attributes:
        image_id: the image's id (its file name without extension).
        boxes: float32 (N, 4) ``x0, y0, x1, y1`` in pixels.
        classes: int64 (N,) class ids in ``1..K``.
        masks: bool (N, H, W), one binary mask per instance; (0, H, W) for none.
        ignore: optional bool (H, W): pixels of the image that no loss counts.
        instance_ignore: optional bool (N, H, W): per instance, pixels whose membership is unsure.
        file_name: the image file, relative to the image folder (default ``<id>.jpg``).

    Raises:
        ValueError: arrays of disagreeing shapes.
    """

    image_id: str
    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    ignore: np.ndarray | None = None
    instance_ignore: np.ndarray | None = None
    file_name: str | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks).astype(bool, copy=False)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got {self.masks.shape}")
        count = len(self.masks)
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        self.classes = np.asarray(self.classes, dtype=np.int64)
        if count == 0:  # [] has no shape to check
            self.boxes, self.classes = self.boxes.reshape(-1, 4), self.classes.reshape(-1)
        if self.boxes.shape != (count, 4) or self.classes.shape != (count,):
            raise ValueError(
                f"{count} masks need boxes ({count}, 4) and classes ({count},), got {self.boxes.shape} "
                f"and {self.classes.shape} for {self.image_id!r}"
            )
        if self.ignore is not None:
            self.ignore = np.asarray(self.ignore).astype(bool, copy=False)
            if self.ignore.shape != self.image_size:
                raise ValueError(f"ignore must be {self.image_size}, got {self.ignore.shape}")
        if self.instance_ignore is not None:
            self.instance_ignore = np.asarray(self.instance_ignore).astype(bool, copy=False)
            if self.instance_ignore.shape != self.masks.shape:
                raise ValueError(f"instance_ignore must be {self.masks.shape}, got {self.instance_ignore.shape}")
        if self.file_name is None:
            self.file_name = f"{self.image_id}{IMAGE_SUFFIX}"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class _Encoded:
    """One mask as read, still encoded; ``canonical`` when the file held compressed counts."""

    rle: dict[str, Any]
    canonical: bool


@dataclass
class _ImageEntry:
    """What reading found for one image, masks still encoded (decoded on access)."""

    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    masks: list[_Encoded]
    instance_ignore: list[_Encoded | None]
    ignore: list[_Encoded]  # the image's own ignore region and its crowd regions


class InstanceSet(Mapping[str, ImageInstances]):
    """The contents of an instance file: image id -> :class:`ImageInstances`, decoded on access.

    Attributes:
        path: the file read.
        classes: class names, background first (``"background"`` and the categories' names).
        ids: image ids in file order.
    """

    def __init__(self, path: Path, classes: list[str], entries: dict[str, _ImageEntry]) -> None:
        self.path = path
        self.classes = classes
        self._entries = entries
        self.ids: list[str] = list(entries)

    @property
    def num_classes(self) -> int:
        """``K + 1``."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"InstanceSet({str(self.path)!r}, {len(self)} images, {self.num_classes} classes)"

    def _entry(self, image_id: str) -> _ImageEntry:
        try:
            return self._entries[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in {self.path}") from None

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(height, width) the file states for the image."""
        entry = self._entry(image_id)
        return entry.height, entry.width

    def file_name(self, image_id: str) -> str:
        """The image file, relative to the image folder."""
        return self._entry(image_id).file_name

    def __getitem__(self, image_id: str) -> ImageInstances:
        """The image's instances with decoded masks.

        Raises:
            KeyError: no such image.
            DataError: a mask that does not decode (naming the file).
        """
        entry = self._entry(image_id)
        size = (entry.height, entry.width)
        masks = np.zeros((len(entry.masks), *size), dtype=bool)
        for row, encoded in enumerate(entry.masks):
            masks[row] = self._decode(encoded, f"image {image_id!r}, instance {row + 1}")
        instance_ignore = None
        if any(encoded is not None for encoded in entry.instance_ignore):
            instance_ignore = np.zeros_like(masks)
            for row, encoded in enumerate(entry.instance_ignore):
                if encoded is not None:
                    instance_ignore[row] = self._decode(encoded, f"image {image_id!r}, instance {row + 1} ignore")
        ignore = None
        for encoded in entry.ignore:
            region = self._decode(encoded, f"image {image_id!r} ignore")
            ignore = region if ignore is None else ignore | region
        return ImageInstances(
            image_id=image_id, boxes=entry.boxes.copy(), classes=entry.classes.copy(), masks=masks,
            ignore=ignore, instance_ignore=instance_ignore, file_name=entry.file_name,
        )

    def _decode(self, encoded: _Encoded, where: str) -> np.ndarray:
        try:
            mask = decode_rle(encoded.rle)
        except ValueError as exc:
            raise DataError(f"{where}: corrupt RLE ({exc})", self.path) from None
        # pycocotools decodes counts that do not add up to H x W without complaint (into
        # uninitialised memory). Compressed counts from pycocotools are canonical, so
        # re-encoding the mask must give them back.
        if encoded.canonical and encode_mask(mask)["counts"].encode("ascii") != encoded.rle["counts"]:
            raise DataError(f"{where}: corrupt RLE (its runs do not cover the image)", self.path)
        return mask


class InstanceStore:
    """One COCO-format instance file (see the module docstring).

    Args:
        path: the JSON file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"InstanceStore({str(self.path)!r})"

    def exists(self) -> bool:
        """Whether the file has been written (writes are atomic: it is then complete)."""
        return self.path.is_file()

    def save(self, images: Iterable[ImageInstances], classes: Sequence[str]) -> None:
        """Write every image's instances as one COCO JSON, atomically.

        Args:
            images: the images, in the order the file lists them (ids 1, 2, ...).
            classes: class names, background first; the categories are ``classes[1:]`` with
                ids ``1..K``.

        Raises:
            DataError: naming the file: a repeated image id, a class id outside ``1..K``, or a
                box outside its image.
        """
        classes = list(classes)
        if len(classes) < 2 or len(classes) > IGNORE_INDEX:
            raise DataError(
                f"needs background and 1..{IGNORE_INDEX - 1} classes, got {len(classes)} names", self.path
            )
        num_classes = len(classes)
        document: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": c, "name": classes[c]} for c in range(1, num_classes)],
        }
        seen: set[str] = set()
        for number, image in enumerate(images, start=1):
            if image.image_id in seen:
                raise DataError(f"image {image.image_id!r} given twice", self.path)
            seen.add(image.image_id)
            height, width = image.image_size
            bad = image.classes[(image.classes < 1) | (image.classes >= num_classes)]
            if bad.size:
                raise DataError(
                    f"image {image.image_id!r}: class id {int(bad[0])} outside 1..{num_classes - 1}", self.path
                )
            problem = box_problem(image.boxes, height, width)
            if problem is not None:
                raise DataError(f"image {image.image_id!r}: {problem}", self.path)
            entry: dict[str, Any] = {"id": number, "file_name": image.file_name, "height": height, "width": width}
            if image.ignore is not None:
                entry["ignore"] = encode_mask(image.ignore)
            document["images"].append(entry)
            for row in range(len(image)):
                x0, y0, x1, y1 = (float(v) for v in image.boxes[row])
                annotation: dict[str, Any] = {
                    "id": len(document["annotations"]) + 1,
                    "image_id": number,
                    "category_id": int(image.classes[row]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(image.masks[row].sum()),
                    "segmentation": encode_mask(image.masks[row]),
                    "iscrowd": 0,
                }
                if image.instance_ignore is not None:
                    annotation["ignore"] = encode_mask(image.instance_ignore[row])
                document["annotations"].append(annotation)
        write_json(self.path, document)
        log.info("%d instances of %d images -> %s", len(document["annotations"]), len(seen), self.path)

    def load(self, classes: Sequence[str] | None = None) -> InstanceSet:
        """Read and check the file; masks are decoded when an image is accessed.

        Args:
            classes: the dataset's class names, background first; the file's categories must
                name ``classes[1:]`` in order.

        Raises:
            DataError: naming the file: missing or not JSON, malformed (see
                :func:`check_coco_document`), categories other than ``classes``, two images of
                the same id, a box outside its image, a mask or ignore region of another size.
        """
        path = self.path
        data = read_json(path)
        check_coco_document(data, path)
        names = [str(c["name"]) for c in data["categories"]]
        if classes is not None and names != list(classes)[1:]:
            raise DataError(
                f"categories ({', '.join(names[:4])}, ...) differ from the classes given "
                f"({', '.join(list(classes)[1:5])}, ...)",
                path,
            )
        class_of_category = {c["id"]: index for index, c in enumerate(data["categories"], start=1)}
        by_number: dict[Any, tuple[str, dict[str, Any]]] = {}
        seen: set[str] = set()
        for image in data["images"]:
            image_id = Path(str(image["file_name"])).stem
            if image_id in seen:
                raise DataError(f"two images are named {image_id!r}", path)
            seen.add(image_id)
            by_number[image["id"]] = (image_id, image)
        annotations: dict[Any, list[dict[str, Any]]] = {number: [] for number in by_number}
        for annotation in data["annotations"]:
            annotations[annotation["image_id"]].append(annotation)
        entries = {}
        for number, (image_id, image) in by_number.items():
            entries[image_id] = self._read_image(image_id, image, annotations[number], class_of_category)
        return InstanceSet(path, ["background", *names], entries)

    def _read_image(self, image_id: str, image: dict[str, Any], annotations: list[dict[str, Any]],
                    class_of_category: dict[Any, int]) -> _ImageEntry:
        path = self.path
        try:
            height, width = int(image["height"]), int(image["width"])
        except (TypeError, ValueError):
            raise DataError(f"image {image_id!r} has a non-integer height or width", path) from None

        def encoded(value: Any, where: str) -> _Encoded:
            canonical = isinstance(value, dict) and isinstance(value.get("counts"), str)
            return _Encoded(segmentation_rle(value, height, width, where, path), canonical)

        ignore = []
        if image.get("ignore") is not None:
            ignore.append(encoded(image["ignore"], f"image {image_id!r} ignore"))
        boxes, classes, masks, instance_ignore = [], [], [], []
        for annotation in sorted(annotations, key=lambda a: a["id"]):
            where = f"annotation {annotation['id']}"
            mask = encoded(annotation.get("segmentation"), where)
            if annotation.get("iscrowd", 0):
                ignore.append(mask)
                continue
            box = coco_box(annotation, path)
            problem = single_box_problem(box, height, width)
            if problem is not None:
                raise DataError(f"{where} of image {image_id!r}: box {problem}", path)
            boxes.append(box)
            classes.append(class_of_category[annotation["category_id"]])
            masks.append(mask)
            extra = annotation.get("ignore")
            instance_ignore.append(None if extra is None else encoded(extra, f"{where} ignore"))
        return _ImageEntry(
            file_name=str(image["file_name"]), height=height, width=width,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), classes=np.asarray(classes, dtype=np.int64),
            masks=masks, instance_ignore=instance_ignore, ignore=ignore,
        )

    def ids(self) -> list[str]:
        """Image ids in file order (reads and checks the file)."""
        return self.load().ids
