"""Writers of tiny datasets on disk, shared by the tests (import as ``from helpers import ...``).

``make_voc`` writes a VOC-layout dataset whose contents are known exactly, so tests can assert
real values: every image has rectangles of known classes, its mask paints them (with a
one-pixel 255 border on the first object), and its XML box is the rectangle's extent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

VOC_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip

DEFAULT_IDS = ("2007_000032", "2007_000039", "2007_000063", "2008_000002")


@dataclass
class VOCFixture:
    """What ``make_voc`` wrote.

    Attributes:
        root: the folder holding JPEGImages.
        devkit: ``root``'s ``VOCdevkit`` parent when written with ``devkit=True``, else None.
        ids: ids in split order.
        classes: class names, background first.
        labels: id -> sorted foreground class ids present in the image.
        objects: id -> list of (class id, x0, y0, x1, y1) rectangles (0-based, exclusive end),
            which are also the expected ``boxes()``.
        sizes: id -> (height, width).
        split_file: the split file written.
        mask_ids: ids that got a mask.
    """

    root: Path
    devkit: Path | None
    ids: list[str]
    classes: list[str]
    labels: dict[str, list[int]] = field(default_factory=dict)
    objects: dict[str, list[tuple[int, int, int, int, int]]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    split_file: Path | None = None
    mask_ids: list[str] = field(default_factory=list)

    def mask(self, image_id: str) -> np.ndarray:
        """The mask ``make_voc`` painted for ``image_id``."""
        return paint_mask(self.sizes[image_id], self.objects[image_id])


def paint_mask(size: tuple[int, int], objects: Sequence[tuple[int, int, int, int, int]]) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    for number, (class_id, x0, y0, x1, y1) in enumerate(objects):
        mask[y0:y1, x0:x1] = class_id
        if number == 0:  # an ignore border on the first object, as VOC draws them
            mask[y0, x0:x1] = 255
    return mask


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = []
    for index in range(256):
        palette += [(index * 37) % 256, (index * 91) % 256, (index * 53) % 256]
    image.putpalette(palette)
    image.save(path)


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_xml(path: Path, image_id: str, size: tuple[int, int], objects, classes: Sequence[str]) -> None:
    """A VOC XML with 1-based inclusive boxes (xmin = x0 + 1, xmax = x1)."""
    height, width = size
    parts = [
        "<annotation>",
        "  <folder>VOC2012</folder>",
        f"  <filename>{image_id}.jpg</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for class_id, x0, y0, x1, y1 in objects:
        parts += [
            "  <object>",
            f"    <name>{classes[class_id]}</name>",
            "    <difficult>0</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def _objects_for(index: int, size: tuple[int, int], num_foreground: int):
    """Two rectangles (one if both draw the same class) with deterministic classes."""
    height, width = size
    first = 1 + (index % num_foreground)
    second = 1 + ((index * 5 + 2) % num_foreground)
    objects = [(first, 2, 2, width // 2, height // 2 + 1)]
    if second != first:
        objects.append((second, width // 2 + 1, height // 2, width - 2, height - 1))
    return objects


def make_voc(
    root: Path | str,
    ids: Sequence[str] = DEFAULT_IDS,
    classes: Sequence[str] | None = None,
    size: tuple[int, int] = (20, 28),
    with_xml: bool = True,
    dialect: str = "ids",
    split: str = "train",
    devkit: bool = False,
    with_masks: bool = True,
    label_file: bool = False,
) -> VOCFixture:
    """Write a tiny VOC-layout dataset under ``root`` and return what it holds.

    Args:
        root: where to write. With ``devkit=True`` the data goes to ``root/VOCdevkit/VOC2012``.
        ids: image ids, in split order.
        classes: class names, background first; written to ``classes.txt`` unless None (then
            the 21 VOC names apply and no ``classes.txt`` is written).
        size: (height, width) of the first image; image ``i`` is ``i`` pixels taller and ``2i``
            wider, so height/width mix-ups show.
        with_xml: write ``Annotations/<id>.xml``.
        dialect: the split file's dialect:
            ``"ids"``: one id per line, masks in ``SegmentationClass``;
            ``"paths"``: ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``, masks in
            ``SegmentationClassAug`` (deeplab-pytorch's lists);
            ``"aug"``: one id per line in ``train_aug``-style, masks in ``SegmentationClassAug``
            only for the first half of the ids, none for the rest.
        split: split name; the file goes to ``ImageSets/Segmentation/<split>.txt``.
        devkit: nest the data as ``VOCdevkit/VOC2012``.
        with_masks: write masks at all.
        label_file: also write ``image_labels.json`` (by hand, not with the library's writer).
    """
    root = Path(root)
    data_root = root / "VOCdevkit" / "VOC2012" if devkit else root
    names = list(classes) if classes is not None else list(VOC_NAMES)
    fixture = VOCFixture(
        root=data_root, devkit=root / "VOCdevkit" if devkit else None, ids=list(ids), classes=names
    )
    data_root.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (data_root / "classes.txt").write_text("\n".join(names) + "\n")

    mask_folder = "SegmentationClass" if dialect == "ids" else "SegmentationClassAug"
    rng = np.random.default_rng(0)
    for index, image_id in enumerate(fixture.ids):
        image_size = (size[0] + index, size[1] + 2 * index)
        objects = _objects_for(index, image_size, len(names) - 1)
        fixture.sizes[image_id] = image_size
        fixture.objects[image_id] = objects
        fixture.labels[image_id] = sorted({o[0] for o in objects})
        mask = paint_mask(image_size, objects)
        image = rng.integers(0, 64, size=(*image_size, 3), dtype=np.uint8)
        image[mask > 0] += 128
        write_jpeg(data_root / "JPEGImages" / f"{image_id}.jpg", image)
        gets_mask = with_masks and (dialect != "aug" or index < (len(fixture.ids) + 1) // 2)
        if gets_mask:
            write_palette_png(data_root / mask_folder / f"{image_id}.png", mask)
            fixture.mask_ids.append(image_id)
        if with_xml:
            write_xml(data_root / "Annotations" / f"{image_id}.xml", image_id, image_size, objects, names)

    if dialect == "paths":
        lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in fixture.ids]
    elif dialect in ("ids", "aug"):
        lines = list(fixture.ids)
    else:
        raise ValueError(f"unknown dialect {dialect!r}")
    split_file = data_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(lines) + "\n")
    fixture.split_file = split_file

    if label_file:
        document = {
            "format": "wsss-image-labels",
            "version": 1,
            "classes": names,
            "labels": {i: fixture.labels[i] for i in fixture.ids},
        }
        (data_root / "image_labels.json").write_text(json.dumps(document, indent=1))
    return fixture


def make_coco_json(path: Path | str, image_dir: Path | str) -> dict:
    """A small hand-written COCO instances file with two images, written with their JPEGs.

    Image 1 (``000000000009.jpg``, 12x16): a "cat" polygon (annotation 102, category 17)
    covering x 2..9, y 2..7, overlapped by a smaller "dog" as compressed RLE (annotation 101,
    category 18) at x 6..9, y 4..7 (the lower annotation id, so "by id" and "by area" orders
    differ), and a crowd "person" (annotation 103, category 1) as uncompressed RLE over rows
    9..10, all columns.
    Image 2 (``000000000025.jpg``, 10x8): one "dog" polygon. Categories are listed as
    person (1), cat (17), dog (18), giraffe (25, unused) -> classes 1..4.
    """
    from pycocotools import mask as mask_utils

    path, image_dir = Path(path), Path(image_dir)
    rng = np.random.default_rng(1)
    for name, (height, width) in (("000000000009.jpg", (12, 16)), ("000000000025.jpg", (10, 8))):
        write_jpeg(image_dir / name, rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))

    dog = np.zeros((12, 16), dtype=np.uint8)
    dog[4:8, 6:10] = 1
    dog_rle = mask_utils.encode(np.asfortranarray(dog))
    crowd = np.zeros((12, 16), dtype=np.uint8)
    crowd[9:11, :] = 1
    # Uncompressed RLE: column-major run lengths starting with a zero run.
    flat = crowd.flatten(order="F")
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)

    document = {
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "height": 12, "width": 16},
            {"id": 25, "file_name": "000000000025.jpg", "height": 10, "width": 8},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 17, "name": "cat"},
            {"id": 18, "name": "dog"},
            {"id": 25, "name": "giraffe"},
        ],
        "annotations": [
            {
                "id": 102, "image_id": 9, "category_id": 17, "iscrowd": 0,
                # pixel centres 2..9 x 2..7 lie inside this polygon
                "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]],
                "bbox": [2, 2, 8, 6], "area": 48,
            },
            {
                "id": 101, "image_id": 9, "category_id": 18, "iscrowd": 0,
                "segmentation": {"size": [12, 16], "counts": dog_rle["counts"].decode("ascii")},
                "bbox": [6, 4, 4, 4], "area": 16,
            },
            {
                "id": 103, "image_id": 9, "category_id": 1, "iscrowd": 1,
                "segmentation": {"size": [12, 16], "counts": runs},
                "bbox": [0, 9, 16, 2], "area": 32,
            },
            {
                "id": 201, "image_id": 25, "category_id": 18, "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5, 6, 1, 6]],
                "bbox": [1, 1, 4, 5], "area": 20,
            },
        ],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return document


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Yield the script ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package),
    registered in ``sys.modules`` while in use (its dataclasses look their module up there)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@dataclass(frozen=True)
class ToyStages:
    """A picklable maker of toy stages for the runner's worker processes (``Runner.run(jobs=...)``).

    ``graph`` maps each stage to the stages it needs, in a valid order. Each stage checks that the
    files of the stages it needs exist (it fails if it runs too early), writes its process id to
    ``<folder>/<name>.pid`` (its modification time: when the stage started), sleeps ``seconds``
    and writes ``<folder>/<name>.txt`` holding its
    process id; the stage named ``fail`` raises a one-line :class:`wsss.errors.DataError` instead.
    """

    folder: str
    graph: tuple[tuple[str, tuple[str, ...]], ...]
    seconds: float = 0.0
    fail: str | None = None
    priorities: tuple[tuple[str, int], ...] = ()  # (stage, Stage.priority)

    def run_stage(self, name: str, needs: tuple[str, ...]) -> int:
        import os
        import time

        from wsss.errors import DataError

        missing = [need for need in needs if not (Path(self.folder) / f"{need}.txt").is_file()]
        if missing:
            raise RuntimeError(f"stage {name} ran before {missing}")
        (Path(self.folder) / f"{name}.pid").write_text(str(os.getpid()))
        time.sleep(self.seconds)
        if name == self.fail:
            raise DataError("toy failure", Path(self.folder) / f"{name}.txt")
        (Path(self.folder) / f"{name}.txt").write_text(str(os.getpid()))
        return os.getpid()

    def __call__(self) -> list:
        from functools import partial

        from wsss.methods.base import Stage

        priority = dict(self.priorities)
        return [Stage(name, run=partial(self.run_stage, name, needs), needs=needs, depends_on={"name": name},
                      priority=priority.get(name, 0)) for name, needs in self.graph]


def coco_from_voc(voc_root: Path | str, split: str, path: Path | str) -> dict:
    """Write split ``split`` of a VOC-layout folder (``wsss synth``'s) as a COCO instances JSON:
    its ground-truth instances (boxes, RLE masks), images in the folder's ``JPEGImages``.
    Returns the document written."""
    from wsss.data.voc import VOCDataset
    from wsss.stores.instances import InstanceStore

    dataset = VOCDataset(voc_root, split)
    store = InstanceStore(path)
    store.save([dataset.ground_truth_instances(image_id) for image_id in dataset.ids], dataset.classes)
    return json.loads(Path(path).read_text())
