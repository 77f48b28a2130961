"""Image-level labels in the project's plain file format, and the conversion from IRN's.

The project keeps image-level labels in ``image_labels.json``, a plain JSON file that anyone
can read, diff and edit without unpickling anything::

    {
      "format": "wsss-image-labels",
      "version": 1,
      "classes": ["background", "aeroplane", ...],
      "labels": {
        "2007_000032": [1, 15],
        ...
      }
    }

``classes`` lists every class name, background first, so ``K = len(classes) - 1``. Each entry
of ``labels`` is the list of foreground classes present in the image, as ids in ``1..K`` (class
names from ``classes`` are accepted too when reading a hand-written file). An empty list means
"background only".

IRN and the repositories built on it (AdvCAM, RIB, W-OoD) keep the same information in
``cls_labels.npy``: a *pickled* dict keyed by the image id as an int, with ``float32[K]``
multi-hot values over foreground classes (index ``i`` is class ``i + 1``). Turning that into
the project's format is :func:`convert_irn_labels`; reading the pickle itself happens only in
the ``wsss import-irn-labels`` command, the one place in wsss that unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wsss.errors import DataError
from wsss.io import PathLike, read_json, write_text

LABEL_FILE_NAME = "image_labels.json"
FORMAT_NAME = "wsss-image-labels"
FORMAT_VERSION = 1

# How IRN-style integer ids are turned back into file names (see decode_irn_id).
IRN_ID_FORMATS = ("voc", "coco")


@dataclass
class ImageLabelFile:
    """The contents of an ``image_labels.json`` file.

    Attributes:
        classes: class names, background first.
        labels: image id -> sorted, unique ``int64`` array of foreground class ids in ``1..K``.
        path: where the file was read from, if it was.
    """

    classes: list[str]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_image_labels(path: PathLike) -> ImageLabelFile:
    """Read and validate an ``image_labels.json`` file.

    Raises:
        DataError: the file is missing, not JSON, not in this format, or has a label outside
            ``1..K``; the message names the file and the offending entry.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise DataError(f'not an image-label file (expected "format": "{FORMAT_NAME}")', path)
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"unsupported image-label file version {version!r} (this wsss reads {FORMAT_VERSION})", path
        )
    classes = data.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(name, str) and name.strip() for name in classes)
    ):
        raise DataError('"classes" must list at least two non-empty names, background first', path)
    if len(set(classes)) != len(classes):
        duplicates = sorted({name for name in classes if classes.count(name) > 1})
        raise DataError(f'"classes" has duplicate names: {", ".join(duplicates)}', path)
    entries = data.get("labels")
    if not isinstance(entries, dict):
        raise DataError('"labels" must be an object mapping image ids to lists of class ids', path)

    num_foreground = len(classes) - 1
    by_name = {name: index for index, name in enumerate(classes)}
    labels: dict[str, np.ndarray] = {}
    for image_id, values in entries.items():
        if not isinstance(values, list):
            raise DataError(f"labels of {image_id!r} must be a list of class ids", path)
        ids: list[int] = []
        for value in values:
            if isinstance(value, str):
                if value not in by_name or by_name[value] == 0:
                    raise DataError(f"labels of {image_id!r}: {value!r} is not a foreground class", path)
                ids.append(by_name[value])
            elif isinstance(value, int) and not isinstance(value, bool):
                if not 1 <= value <= num_foreground:
                    raise DataError(
                        f"labels of {image_id!r}: class id {value} is outside 1..{num_foreground}", path
                    )
                ids.append(value)
            else:
                raise DataError(f"labels of {image_id!r}: {value!r} is not a class id", path)
        labels[image_id] = np.unique(np.asarray(ids, dtype=np.int64))
    return ImageLabelFile(classes=list(classes), labels=labels, path=path)


def write_image_labels(path: PathLike, labels: Mapping[str, Iterable[int]], classes: Sequence[str]) -> None:
    """Write image-level labels as ``image_labels.json``, atomically.

    Args:
        path: destination file.
        labels: image id -> foreground class ids in ``1..K`` (any iterable of ints).
        classes: class names, background first.

    Raises:
        ValueError: a class id is outside ``1..K`` (a bug in the caller, not user input).
    """
    num_foreground = len(classes) - 1
    lines = [
        "{",
        f'  "format": {json.dumps(FORMAT_NAME)},',
        f'  "version": {FORMAT_VERSION},',
        f'  "classes": {json.dumps(list(classes))},',
        '  "labels": {',
    ]
    # One image per line keeps a 10k-image file readable and diffable.
    items = sorted(labels.items())
    for index, (image_id, values) in enumerate(items):
        ids = sorted({int(v) for v in values})
        if ids and not (1 <= ids[0] and ids[-1] <= num_foreground):
            raise ValueError(f"labels of {image_id!r} outside 1..{num_foreground}: {ids}")
        comma = "," if index < len(items) - 1 else ""
        lines.append(f"    {json.dumps(str(image_id))}: {json.dumps(ids)}{comma}")
    lines += ["  }", "}", ""]
    write_text(path, "\n".join(lines))


def decode_irn_id(key: int, id_format: str) -> str:
    """Turn one of IRN's integer image ids back into the image's name.

    IRN reads split files with ``np.loadtxt(..., dtype=np.int32)``, which turns
    ``2007_000032`` into the int ``2007000032``. RIB's COCO variant keys its labels by the COCO
    image id and names images by that id zero-padded to 12 digits.

    Args:
        key: the integer id.
        id_format: ``"voc"`` (``2007000032`` -> ``"2007_000032"``: the first four digits are the
            year) or ``"coco"`` (``9`` -> ``"000000000009"``).
    """
    digits = str(int(key))
    if id_format == "voc":
        return f"{digits[:4]}_{digits[4:]}"
    if id_format == "coco":
        return digits.zfill(12)
    raise ValueError(f"unknown IRN id format {id_format!r}; expected one of {IRN_ID_FORMATS}")


def detect_irn_id_format(keys: Iterable[Any]) -> str:
    """``"voc"`` if every integer key looks like a VOC id (ten digits, a year first), else ``"coco"``."""
    for key in keys:
        if isinstance(key, str):
            continue
        digits = str(int(key))
        if len(digits) != 10 or digits[:2] not in ("19", "20"):
            return "coco"
    return "voc"


def convert_irn_labels(
    raw: Mapping[Any, Any],
    classes: Sequence[str],
    id_format: str = "auto",
    source: PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Convert IRN's label dict (already loaded) into image id -> foreground class ids.

    Args:
        raw: IRN's dict: int (or str) image id -> multi-hot vector of length ``K`` over the
            foreground classes (no background entry; index ``i`` is class ``i + 1``).
        classes: class names, background first; ``K = len(classes) - 1``.
        id_format: ``"voc"``, ``"coco"`` or ``"auto"`` (see :func:`detect_irn_id_format`).
            String keys are kept as they are.
        source: the file ``raw`` came from, named in errors.

    Returns:
        image id -> sorted ``int64`` array of class ids in ``1..K``.

    Raises:
        DataError: a vector has the wrong length or is not 0/1, a key is not an integer id, or
            two keys decode to the same name.
    """
    num_foreground = len(classes) - 1
    if id_format == "auto":
        id_format = detect_irn_id_format(raw.keys())
    if id_format not in IRN_ID_FORMATS:
        raise ValueError(f"unknown IRN id format {id_format!r}; expected auto or one of {IRN_ID_FORMATS}")

    labels: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        if isinstance(key, str):
            image_id = key
        else:
            try:
                number = int(key)
            except (TypeError, ValueError):
                raise DataError(f"key {key!r} is not an integer image id", source) from None
            if number < 0 or (id_format == "coco" and len(str(number)) > 12):
                raise DataError(f"key {key!r} is not a {id_format.upper()} image id", source)
            image_id = decode_irn_id(number, id_format)
        vector = np.asarray(value)
        if vector.ndim != 1 or vector.shape[0] != num_foreground:
            raise DataError(
                f"labels of {image_id} have shape {vector.shape}, expected ({num_foreground},) "
                f"for {num_foreground} foreground classes",
                source,
            )
        if not np.isin(vector, (0, 1)).all():
            raise DataError(f"labels of {image_id} are not a 0/1 multi-hot vector", source)
        if image_id in labels:
            raise DataError(f"two keys decode to the same image id {image_id}", source)
        labels[image_id] = np.flatnonzero(vector).astype(np.int64) + 1
    return labels
