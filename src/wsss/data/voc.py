"""PASCAL VOC and custom datasets in the VOC folder layout.

A dataset root is the folder holding ``JPEGImages`` (usually ``VOCdevkit/VOC2012``); passing
``VOCdevkit/`` itself works too. Next to ``JPEGImages`` the loader uses, when present:

- ``SegmentationClass/<id>.png`` and ``SegmentationClassAug/<id>.png``: label maps, looked up in
  that order (0 = background, 1..K = classes, 255 = ignore);
- ``Annotations/<id>.xml``: VOC XML with object names and boxes;
- ``ImageSets/Segmentation/<split>.txt`` (also ``ImageSets/SegmentationAug`` and
  ``ImageSets/Main``): split files;
- ``classes.txt``: one class name per line, background first, replacing the 21 VOC names;
- ``image_labels.json``: image-level labels in the project's format (:mod:`wsss.data.labels`).

Split files come in three dialects, all read by the same parser, line by line:

- one id per line (IRN's ``train_aug.txt``, VOC's ``train.txt``);
- two columns of paths relative to the root, ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``
  (deeplab-pytorch's ``SegmentationAug`` lists);
- ids whose masks live only in ``SegmentationClassAug``, or nowhere: their image-level labels
  then come from the label file or the XML.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.base import ImageDataset
from wsss.data.labels import LABEL_FILE_NAME, ImageLabelFile, read_image_labels
from wsss.errors import ConfigError, DataError, problems_error
from wsss.io import IGNORE_INDEX, PathLike, read_label_png, voc_palette
from wsss.stores.instances import ImageInstances

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
CLASSES_FILE_NAME = "classes.txt"
BACKGROUND_NAMES = ("background", "_background_", "__background__")  # VOC, labelme, Detectron
IMAGE_FOLDER = "JPEGImages"
MASK_FOLDERS = ("SegmentationClass", "SegmentationClassAug")
ANNOTATION_FOLDER = "Annotations"
OBJECT_FOLDER = "SegmentationObject"  # instance masks: 0 background, 1..N instances, 255 void
SPLIT_FOLDERS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "ImageSets/Main")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp")
LABEL_SOURCES = ("auto", "masks", "xml", "file")
MAX_SPLITS_SHOWN = 12
# Boxes may stick out of the image by this many pixels (1-based/0-based slips in annotation
# tools); they are clipped. Anything further out is an error.
BOX_TOLERANCE = 1.0


def find_voc_root(root: PathLike) -> Path:
    """The folder holding ``JPEGImages``, given it, ``VOCdevkit/`` or the folder above that.

    Raises:
        DataError: ``root`` does not exist, or no ``JPEGImages`` is found in the usual places.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / IMAGE_FOLDER).is_dir():
            return candidate
    # Any single VOCdevkit/VOC20xx (VOC2007, a custom VOCxxxx) is unambiguous too.
    others = sorted(p for p in root.glob("VOC*") if (p / IMAGE_FOLDER).is_dir())
    if len(others) == 1:
        return others[0]
    if len(others) > 1:
        names = ", ".join(p.name for p in others)
        raise DataError(f"several datasets here ({names}); pass one of them as the root", root)
    raise DataError(
        f"no {IMAGE_FOLDER} folder here or in VOC2012/ (expected VOCdevkit/ or VOCdevkit/VOC2012/)", root
    )


def read_classes_file(path: PathLike) -> list[str]:
    """Class names from ``classes.txt`` (one per line, background first; blank lines skipped).

    Raises:
        DataError: the file is missing, empty, does not start with background (``background``,
            ``_background_`` or ``__background__``, any case), has fewer than two names, a
            duplicate name, or more than 255 classes (255 is the ignore label).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("classes file not found", path) from None
    except UnicodeDecodeError:
        raise DataError("classes file is not UTF-8 text", path) from None
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    names = [name for _, name in numbered]
    if not names:
        raise DataError("classes file is empty (expected one class name per line, background first)", path)
    if len(names) < 2:
        raise DataError(
            f"classes file names only {names[0]!r}; it needs background plus at least one class", path
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"duplicate class name {name!r} in classes file", path)
        seen.add(name)
    if len(names) > IGNORE_INDEX:
        raise DataError(
            f"{len(names)} classes, but label maps hold at most {IGNORE_INDEX} (255 = ignore)", path
        )
    if names[0].lower() not in BACKGROUND_NAMES:
        # Without it every class would sit one label too low: refuse rather than shift them.
        raise DataError(f"line {numbered[0][0]} names {names[0]!r}, but the first class must be background "
                        "(label 0); add a 'background' line first", path)
    return names


@dataclass
class SplitFile:
    """A parsed split file: ids in file order and, for the two-column dialect, listed paths."""

    path: Path
    ids: list[str]
    listed_images: dict[str, str] = field(default_factory=dict)
    listed_masks: dict[str, str] = field(default_factory=dict)


def available_splits(root: Path) -> list[str]:
    """Split names found under ``ImageSets/`` of a dataset root."""
    names: set[str] = set()
    for folder in SPLIT_FOLDERS:
        if (root / folder).is_dir():
            names.update(p.stem for p in (root / folder).glob("*.txt"))
    return sorted(names)


def resolve_split(root: Path, split: str | os.PathLike) -> Path:
    """The split file for a split name (``train``) or a path to a split file.

    Raises:
        DataError: no such file; for a name, the message lists the available split names.
    """
    text = os.fspath(split)
    looks_like_path = isinstance(split, os.PathLike) or "/" in text or os.sep in text or text.endswith(".txt")
    if looks_like_path:
        path = Path(text)
        if path.is_file():
            return path
        if not path.is_absolute() and (root / path).is_file():
            return root / path
        raise DataError(f"split file not found{_available_hint(root)}", path)
    for folder in SPLIT_FOLDERS:
        candidate = root / folder / f"{text}.txt"
        if candidate.is_file():
            return candidate
    raise DataError(
        f"split {text!r} not found{_available_hint(root)}", root / SPLIT_FOLDERS[0] / f"{text}.txt"
    )


def _available_hint(root: Path) -> str:
    names = available_splits(root)
    if not names:
        return f" (and {root} has no split files under ImageSets/)"
    # VOC's ImageSets/Main holds ~60 per-class lists; keep the line readable.
    shown = ", ".join(names[:MAX_SPLITS_SHOWN])
    more = f" and {len(names) - MAX_SPLITS_SHOWN} more" if len(names) > MAX_SPLITS_SHOWN else ""
    return f"; available splits: {shown}{more}"


def read_split_file(path: PathLike) -> SplitFile:
    """Parse a split file in any of the three dialects (see the module docstring).

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        DataError: the file is missing, empty, has a line with more than two columns, or lists
            an id twice.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("split file not found", path) from None
    except UnicodeDecodeError:
        raise DataError("split file is not UTF-8 text", path) from None
    split = SplitFile(path=path, ids=[])
    seen: set[str] = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0].startswith("#"):
            continue
        if len(columns) > 2:
            raise DataError(
                f"line {line_number} has {len(columns)} columns; expected an id or 'image_path mask_path'",
                path,
            )
        if len(columns) == 2 and columns[1].lstrip("-").isdigit():
            # ImageSets/Main/<class>_<split>.txt: "id  1" / "id -1"; the flag is not a path.
            columns = columns[:1]
        first = columns[0]
        is_path = len(columns) == 2 or "/" in first or first.endswith(IMAGE_EXTENSIONS)
        image_id = Path(first).stem if is_path else first
        if image_id in seen:
            raise DataError(f"line {line_number} repeats id {image_id!r}", path)
        seen.add(image_id)
        split.ids.append(image_id)
        if is_path:
            split.listed_images[image_id] = first
        if len(columns) == 2:
            split.listed_masks[image_id] = columns[1]
    if not split.ids:
        raise DataError("split file is empty (no ids)", path)
    return split


@dataclass
class VOCAnnotation:
    """One parsed ``Annotations/<id>.xml``: object class ids and VOC boxes (1-based, inclusive)."""

    path: Path
    classes: np.ndarray  # int64 (N,)
    names: list[str]
    raw_boxes: np.ndarray | None  # float64 (N, 4) xmin, ymin, xmax, ymax; None if an object has none
    size: tuple[int, int] | None  # (height, width) from <size>, if given


def parse_voc_xml(
    path: PathLike, classes: list[str], classes_origin: str = "the VOC classes"
) -> VOCAnnotation:
    """Read the objects of a VOC XML annotation.

    Args:
        path: the XML file.
        classes: class names, background first; object names are looked up here.
        classes_origin: how to name ``classes`` in errors (``classes.txt`` or the VOC classes).

    Raises:
        DataError: the file is missing or malformed, an object has no name, a non-numeric box
            coordinate, or a class not in ``classes``.
    """
    path = Path(path)
    try:
        tree = ElementTree.parse(path)
    except FileNotFoundError:
        raise DataError("annotation file not found", path) from None
    except ElementTree.ParseError as exc:
        raise DataError(f"malformed XML ({exc})", path) from None
    index = {name: i for i, name in enumerate(classes)}
    names: list[str] = []
    class_ids: list[int] = []
    boxes: list[list[float]] = []
    has_all_boxes = True
    for number, obj in enumerate(tree.getroot().iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"object {number} has no <name>", path)
        if name not in index or index[name] == 0:
            raise DataError(f"object {number} is a {name!r}, which is not one of {classes_origin}", path)
        names.append(name)
        class_ids.append(index[name])
        box = obj.find("bndbox")
        if box is None:
            has_all_boxes = False
            continue
        coordinates = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(tag)
            try:
                coordinates.append(float(text))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(
                    f"object {number} ({name}) has a missing or non-numeric <{tag}>", path
                ) from None
        boxes.append(coordinates)
    size = None
    size_node = tree.getroot().find("size")
    if size_node is not None:
        try:
            size = (int(float(size_node.findtext("height"))), int(float(size_node.findtext("width"))))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            size = None
    return VOCAnnotation(
        path=path,
        classes=np.asarray(class_ids, dtype=np.int64),
        names=names,
        raw_boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if has_all_boxes else None,
        size=size,
    )


@dataclass
class ValidationReport:
    """What :meth:`VOCDataset.validate` checked."""

    images: int = 0
    masks: int = 0
    boxes: int = 0
    xml_files: int = 0
    labelled: int = 0

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.masks} masks", f"{self.labelled} with image labels"]
        if self.xml_files:
            parts.append(f"{self.boxes} boxes in {self.xml_files} XML files")
        return ", ".join(parts)


class VOCDataset(ImageDataset):
    """A dataset in the VOC layout: images, masks, XML boxes and image-level labels.

    Args:
        root: ``VOCdevkit/``, ``VOCdevkit/VOC2012/`` or any folder holding ``JPEGImages``.
        split: a split name (``ImageSets/Segmentation/<name>.txt``) or a path to a split file.
        label_source: where image-level labels come from: ``"auto"`` (per image: the label file
            ``image_labels.json`` at the root if it lists the image, else its mask, else its
            XML), ``"masks"``, ``"xml"``, ``"file"`` (the root's ``image_labels.json``), or a path
            to a label file.

    Raises:
        DataError: the root, ``JPEGImages``, the split file, ``classes.txt`` or the label file
            is missing or malformed.
    """

    def __init__(
        self, root: PathLike, split: str | os.PathLike = "train", label_source: str | os.PathLike = "auto"
    ) -> None:
        self.given_root = Path(root)
        self.root = find_voc_root(root)
        self.split = split
        self.split_file = resolve_split(self.root, split)
        parsed = read_split_file(self.split_file)
        self.ids: list[str] = parsed.ids
        self._listed_images = parsed.listed_images
        self._listed_masks = parsed.listed_masks

        classes_path = self._find_classes_file()
        self.classes_file: Path | None = classes_path
        self.classes: list[str] = read_classes_file(classes_path) if classes_path else list(VOC_CLASSES)
        self._classes_origin = (
            f"the {self.num_classes - 1} classes in {classes_path}" if classes_path else "the 20 VOC classes"
        )
        self.palette: list[int] = voc_palette()

        self.label_source, self.label_file = self._resolve_label_source(label_source)
        self._label_cache: dict[str, np.ndarray] = {}
        self._xml_cache: dict[str, VOCAnnotation] = {}
        self._box_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._has_masks: bool | None = None

    # ------------------------------------------------------------------ set-up
    def _find_classes_file(self) -> Path | None:
        for folder in (self.root, self.given_root):
            if (folder / CLASSES_FILE_NAME).is_file():
                return folder / CLASSES_FILE_NAME
        return None

    def _resolve_label_source(self, label_source: str | os.PathLike) -> tuple[str, ImageLabelFile | None]:
        text = os.fspath(label_source)
        if text in ("masks", "xml"):
            return text, None
        if text == "auto":
            path = self.root / LABEL_FILE_NAME
            return "auto", self._read_label_file(path) if path.is_file() else None
        if text == "file":
            path = self.root / LABEL_FILE_NAME
            if not path.is_file():
                raise DataError(
                    f"label_source='file' but there is no {LABEL_FILE_NAME} at the dataset root", path
                )
            return "file", self._read_label_file(path)
        if not isinstance(label_source, os.PathLike) and "/" not in text and "." not in text:
            raise ConfigError(
                f"label_source {text!r} must be one of {', '.join(LABEL_SOURCES)} or a path to a label file"
            )
        return "file", self._read_label_file(Path(text))

    def _read_label_file(self, path: Path) -> ImageLabelFile:
        label_file = read_image_labels(path)
        if label_file.classes != self.classes:
            origin = str(self.classes_file) if self.classes_file else "the VOC classes"
            raise DataError(
                f"its classes ({len(label_file.classes)}: {', '.join(label_file.classes[:4])}, ...) "
                f"differ from the dataset's ({origin})",
                path,
            )
        return label_file

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return (
            f"VOCDataset(root={str(self.root)!r}, split={os.fspath(self.split)!r}, "
            f"{len(self)} images, {self.num_classes} classes, label_source={self.label_source!r})"
        )

    def _listed_in(self) -> Path:
        return self.split_file

    def _resolve_listed(self, listed: str) -> Path:
        # deeplab-pytorch lists "/JPEGImages/x.jpg": relative to the root despite the slash.
        as_given = Path(listed)
        if as_given.is_absolute() and as_given.exists():
            return as_given
        return self.root / listed.lstrip("/")

    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id`` (the listed path, or ``JPEGImages/<id>.jpg`` and kin)."""
        listed = self._listed_images.get(image_id)
        if listed is not None:
            path = self._resolve_listed(listed)
            if path.exists():
                return path
        default = self.root / IMAGE_FOLDER / f"{image_id}.jpg"
        if default.exists():
            return default
        for extension in IMAGE_EXTENSIONS[1:]:
            candidate = default.with_suffix(extension)
            if candidate.exists():
                return candidate
        return self._resolve_listed(listed) if listed is not None else default

    def mask_path(self, image_id: str) -> Path | None:
        """``SegmentationClass/<id>.png``, else ``SegmentationClassAug/<id>.png``, else the
        listed mask path (two-column split), else ``None``."""
        for folder in MASK_FOLDERS:
            candidate = self.root / folder / f"{image_id}.png"
            if candidate.is_file():
                return candidate
        listed = self._listed_masks.get(image_id)
        if listed is not None:
            candidate = self._resolve_listed(listed)
            if candidate.is_file():
                return candidate
        return None

    def xml_path(self, image_id: str) -> Path:
        return self.root / ANNOTATION_FOLDER / f"{image_id}.xml"

    @property
    def has_masks(self) -> bool:
        """Whether every id of the split has a mask."""
        if self._has_masks is None:
            self._has_masks = all(self.mask_path(image_id) is not None for image_id in self.ids)
        return self._has_masks

    # ------------------------------------------------------------------ masks
    def load_mask(self, image_id: str) -> np.ndarray:
        """The label map as ``uint8`` (H, W), checked against the image size and ``K``.

        Raises:
            DataError: no mask for the id, the mask is corrupt, its size differs from the
                image's, or it holds a value above ``K`` other than 255.
        """
        path = self.mask_path(image_id)
        if path is None:
            raise DataError(
                f"no mask for id {image_id!r} in {' or '.join(MASK_FOLDERS)}", self.root / MASK_FOLDERS[0]
            )
        mask = read_label_png(path)
        height, width = self.image_size(image_id)
        if mask.shape != (height, width):
            raise DataError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {self.image_path(image_id).name} "
                f"is {width}x{height}",
                path,
            )
        self._labels_from_mask_array(mask, path)  # value check
        return mask

    def _labels_from_mask_array(self, mask: np.ndarray, path: Path) -> np.ndarray:
        counts = np.bincount(mask.ravel(), minlength=256)
        present = np.flatnonzero(counts)
        foreground = present[(present != 0) & (present != IGNORE_INDEX)]
        if foreground.size and foreground[-1] >= self.num_classes:
            bad = foreground[foreground >= self.num_classes]
            raise DataError(
                f"label value {int(bad[0])} is above K={self.num_classes - 1} "
                f"(allowed: 0..{self.num_classes - 1} and 255 = ignore)",
                path,
            )
        return foreground.astype(np.int64)

    # ------------------------------------------------------------------ instances
    def object_path(self, image_id: str) -> Path:
        """``SegmentationObject/<id>.png`` (it may not exist)."""
        return self.root / OBJECT_FOLDER / f"{image_id}.png"

    @property
    def has_instances(self) -> bool:
        """Whether every id has an instance mask (``SegmentationObject``) and a class mask."""
        return all(self.object_path(i).is_file() and self.mask_path(i) is not None for i in self.ids)

    def ground_truth_instances(self, image_id: str) -> ImageInstances:
        """The instances of ``SegmentationObject/<id>.png`` with their classes from the class mask.

        Each value 1..N of the instance PNG is one instance (ordered by value; values absent from
        the PNG are no instance); its class is the class mask's most frequent foreground value on
        its pixels and its box the tight box of its pixels (``x1 = last column + 1``). The void
        value 255 of either PNG is the image's ``ignore`` (VOC's boundary band; none on the
        generated benchmark).

        Raises:
            DataError: no instance PNG, a size other than the image's, or an instance with no
                foreground class under it (naming the file).
        """
        path = self.object_path(image_id)
        if not path.is_file():
            raise DataError(f"no instance mask for id {image_id!r}", path)
        objects = read_label_png(path)
        semantic = self.load_mask(image_id)
        if objects.shape != semantic.shape:
            raise DataError(f"instance mask is {objects.shape[1]}x{objects.shape[0]} but the image is "
                            f"{semantic.shape[1]}x{semantic.shape[0]}", path)
        values = [int(v) for v in np.unique(objects) if v not in (0, IGNORE_INDEX)]
        masks = np.stack([objects == v for v in values]) if values else np.zeros((0, *objects.shape), bool)
        classes, boxes = [], []
        for value, mask in zip(values, masks):
            under = semantic[mask]
            counts = np.bincount(under[(under != 0) & (under != IGNORE_INDEX)], minlength=self.num_classes)
            if not counts.any():
                raise DataError(f"instance {value} has no foreground class under it in the class mask", path)
            classes.append(int(np.argmax(counts)))
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        void = (objects == IGNORE_INDEX) | (semantic == IGNORE_INDEX)
        return ImageInstances(image_id, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64),
                              masks, ignore=void if void.any() else None,
                              file_name=self.image_path(image_id).name)

    # ------------------------------------------------------------------ image-level labels
    def image_labels(self, image_id: str) -> np.ndarray:
        """Foreground classes present in the image: sorted ``int64`` ids in ``1..K``.

        Derived once per id and cached (from the label file, the mask or the XML, following
        ``label_source``).

        Raises:
            DataError: the chosen source has nothing for this id, or is malformed.
        """
        labels = self._label_cache.get(image_id)
        if labels is None:
            labels = self._derive_labels(image_id)
            self._label_cache[image_id] = labels
        return labels.copy()

    def all_image_labels(self, progress: bool = False, workers: int = 1) -> dict[str, np.ndarray]:
        """Image labels of every id (derived once and cached), in split order.

        Args:
            progress: show a progress bar.
            workers: threads reading masks/XML; more than one helps on slow or network file
                systems (on local disks PNG decoding dominates and threads gain little).
        """
        missing = [image_id for image_id in self.ids if image_id not in self._label_cache]
        if missing:
            bar = tqdm(total=len(missing), desc="image labels", disable=None if progress else True)
            if workers > 1:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for image_id, labels in zip(missing, pool.map(self._derive_labels, missing), strict=True):
                        self._label_cache[image_id] = labels
                        bar.update()
            else:
                for image_id in missing:
                    self._label_cache[image_id] = self._derive_labels(image_id)
                    bar.update()
            bar.close()
        return {image_id: self._label_cache[image_id].copy() for image_id in self.ids}

    def _derive_labels(self, image_id: str) -> np.ndarray:
        source = self.label_source
        if self.label_file is not None:
            labels = self.label_file.labels.get(image_id)
            if labels is not None:
                return labels.copy()
            if source == "file":
                raise DataError(f"no labels for id {image_id!r} in the label file", self.label_file.path)
        if source in ("auto", "masks"):
            path = self.mask_path(image_id)
            if path is not None:
                return self._labels_from_mask_array(read_label_png(path), path)
            if source == "masks":
                raise DataError(
                    f"no mask for id {image_id!r} in {' or '.join(MASK_FOLDERS)} (label_source='masks')",
                    self.root / MASK_FOLDERS[0],
                )
        xml = self.xml_path(image_id)
        if source == "auto" and not xml.is_file():
            raise DataError(
                f"no image-level labels for id {image_id!r}: not in {LABEL_FILE_NAME}, no mask in "
                f"{' or '.join(MASK_FOLDERS)}, no {ANNOTATION_FOLDER}/{image_id}.xml",
                self.root,
            )
        return np.unique(self.annotation(image_id).classes)

    # ------------------------------------------------------------------ XML boxes
    def annotation(self, image_id: str) -> VOCAnnotation:
        """The parsed ``Annotations/<id>.xml`` (cached)."""
        parsed = self._xml_cache.get(image_id)
        if parsed is None:
            parsed = parse_voc_xml(self.xml_path(image_id), self.classes, self._classes_origin)
            self._xml_cache[image_id] = parsed
        return parsed

    def box_file(self, image_id: str) -> Path:
        return self.xml_path(image_id)

    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of ``Annotations/<id>.xml`` as 0-based pixels, checked against the image.

        Returns:
            ``(boxes, classes)``: float32 (N, 4) ``x0, y0, x1, y1`` with ``x0 = xmin - 1`` and
            ``x1 = xmax`` (VOC is 1-based and inclusive), and int64 (N,) class ids in ``1..K``.

        Raises:
            DataError: the XML is missing or malformed, names an unknown class, an object has no
                box, or a box is empty or lies outside the image (by more than one pixel;
                boxes within one pixel are clipped).
        """
        cached = self._box_cache.get(image_id)
        if cached is None:
            cached = self._checked_boxes(image_id)
            self._box_cache[image_id] = cached
        return cached[0].copy(), cached[1].copy()

    def _checked_boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        parsed = self.annotation(image_id)
        if parsed.raw_boxes is None:
            raise DataError("an object has no <bndbox>", parsed.path)
        raw = parsed.raw_boxes
        boxes = np.stack([raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 2], raw[:, 3]], axis=1) if len(raw) else raw
        height, width = self.image_size(image_id)
        limits = np.array([width, height, width, height], dtype=np.float64)
        for number, (box, name) in enumerate(zip(boxes, parsed.names, strict=True), start=1):
            x0, y0, x1, y1 = box
            outside = (
                x0 < -BOX_TOLERANCE
                or y0 < -BOX_TOLERANCE
                or x1 > width + BOX_TOLERANCE
                or y1 > height + BOX_TOLERANCE
            )
            if outside or x1 <= x0 or y1 <= y0:
                xmin, ymin, xmax, ymax = (f"{v:g}" for v in raw[number - 1])
                problem = "lies outside" if outside else "is empty in"
                raise DataError(
                    f"object {number} ({name}) box xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax} "
                    f"{problem} the {width}x{height} image",
                    parsed.path,
                )
        if len(boxes):
            boxes = np.clip(boxes, 0, limits)
            # A box that only touched the image (xmin = xmax = 0) has nothing left after clipping.
            for number, (box, name) in enumerate(zip(boxes, parsed.names, strict=True), start=1):
                if box[2] <= box[0] or box[3] <= box[1]:
                    xmin, ymin, xmax, ymax = (f"{v:g}" for v in raw[number - 1])
                    raise DataError(
                        f"object {number} ({name}) box xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax} "
                        f"has no area inside the {width}x{height} image",
                        parsed.path,
                    )
        return boxes.astype(np.float32).reshape(-1, 4), parsed.classes.copy()

    # ------------------------------------------------------------------ validation
    def validate(self, boxes: bool = False, progress: bool = False) -> ValidationReport:
        """Check every id: image decodes, mask decodes, matches the image size and holds only
        ``0..K`` and 255, image-level labels resolve, and (with ``boxes``) the XML boxes lie in
        the image. A problem does not stop the check: every id is looked at.

        Returns:
            counts of what was checked (when nothing was wrong).

        Raises:
            DataError: after the whole split, every problem found: the problem itself when there
                is one, else one error listing them (:func:`wsss.errors.problems_error`).
        """
        report, problems = self.find_problems(boxes=boxes, progress=progress)
        if problems:
            name = self.split_file.stem
            raise problems_error(problems, f"in {self.root} split {name}")
        return report

    def find_problems(self, boxes: bool = False, progress: bool = False, decode_images: bool = True
                      ) -> tuple[ValidationReport, list[DataError]]:
        """What :meth:`validate` checks, returned instead of raised: the counts and every
        problem found (one per line, without repeats, in split order).

        Args:
            boxes: also check the XML boxes.
            progress: show a progress bar.
            decode_images: decode every image in full; False reads only each image's header
                (its size), which finds missing and unrecognisable files, not damage further in.
        """
        report = ValidationReport()
        problems: dict[str, DataError] = {}  # by line: a bad mask also fails its labels

        def attempt(check):
            try:
                return check()
            except DataError as exc:
                problems.setdefault(str(exc), exc)
                return None

        def read(image_id: str) -> tuple[int, int] | None:
            if decode_images:
                image = self.load_image(image_id)
                return image.shape[0], image.shape[1]
            return self.image_size(image_id)

        for image_id in tqdm(self.ids, desc="check-data", disable=None if progress else True):
            size = attempt(lambda: read(image_id))
            report.images += size is not None
            mask_path = self.mask_path(image_id)
            if mask_path is not None and attempt(lambda: self._check_mask(image_id, mask_path, size)):
                report.masks += 1
            report.labelled += attempt(lambda: self.image_labels(image_id)) is not None
            if boxes:
                found = attempt(lambda: self.boxes(image_id))
                if found is not None:
                    report.boxes += len(found[0])
                    report.xml_files += 1
        return report, list(problems.values())

    def _check_mask(self, image_id: str, mask_path: Path, size: tuple[int, int] | None) -> bool:
        """Check a mask against its image's (height, width) (when it was read); record its labels
        for the id."""
        mask = read_label_png(mask_path)
        if size is not None and mask.shape != tuple(size):
            raise DataError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.image_path(image_id).name} is {size[1]}x{size[0]}",
                mask_path,
            )
        from_mask = self._labels_from_mask_array(mask, mask_path)
        if self.label_source in ("auto", "masks") and image_id not in self._label_cache:
            in_file = self.label_file is not None and image_id in self.label_file.labels
            if not in_file:
                self._label_cache[image_id] = from_mask
        return True
