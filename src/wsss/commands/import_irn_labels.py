"""``wsss import-irn-labels``: convert IRN's ``cls_labels.npy`` into ``image_labels.json``.

IRN (and AdvCAM, RIB, W-OoD after it) stores image-level labels as a pickled dict saved with
``np.save``: keys are image ids as ints (``2007_000032`` -> ``2007000032``; RIB's COCO file
uses the COCO image id, whose image is named by the id padded to 12 digits), values are
``float32[K]`` multi-hot vectors over the foreground classes. Reading it needs
``allow_pickle=True``, and unpickling runs whatever code the file asks for. This command is the
only place in wsss that unpickles, it says so on stderr, and it writes a plain JSON file so
nothing downstream has to.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from wsss.data.labels import LABEL_FILE_NAME, convert_irn_labels, write_image_labels
from wsss.data.voc import VOC_CLASSES, read_classes_file
from wsss.errors import DataError
from wsss.io import ensure_writable_file, read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert IRN's pickled cls_labels.npy (int image ids -> multi-hot float32[K]) into the "
        f"project's plain {LABEL_FILE_NAME}. Unpickles the input: use only a file you trust."
    )
    parser.add_argument("input", type=Path, help="IRN label file, e.g. voc12/cls_labels.npy")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output file (default: {LABEL_FILE_NAME} beside the input)"
    )
    parser.add_argument(
        "--classes",
        type=Path,
        default=None,
        help="classes.txt (one name per line, background first) or a COCO instances JSON whose "
        "categories give the order; default: the 21 VOC names (for 20-entry vectors)",
    )
    parser.add_argument(
        "--id-format",
        choices=("auto", "voc", "coco"),
        default="auto",
        help="how int ids become names: voc 2007000032 -> 2007_000032, coco 9 -> 000000000009 "
        "(auto: voc when every id has ten digits starting with a year)",
    )


def _load_classes(path: Path | None, vector_length: int, source: Path) -> list[str]:
    if path is None:
        if vector_length != len(VOC_CLASSES) - 1:
            raise DataError(
                f"label vectors have {vector_length} entries, not the 20 VOC classes; pass --classes "
                "(classes.txt, background first, or a COCO instances JSON)",
                source,
            )
        return list(VOC_CLASSES)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        categories = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(categories, list) or not categories:
            raise DataError('no "categories" list to take class names from', path)
        return ["background"] + [str(c.get("name")) for c in categories]
    return read_classes_file(path)


def load_irn_label_dict(path: Path) -> dict:
    """Unpickle IRN's label dict. The only ``allow_pickle=True`` in wsss."""
    try:
        loaded = np.load(path, allow_pickle=True)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"not a NumPy .npy file ({exc})", path) from None
    if not isinstance(loaded, np.ndarray) or loaded.shape != () or loaded.dtype != object:
        raise DataError("not a pickled dict as IRN's make_cls_labels.py writes it", path)
    raw = loaded.item()
    if not isinstance(raw, dict) or not raw:
        raise DataError("the pickled object is not a non-empty dict of image labels", path)
    return raw


def run(args: argparse.Namespace) -> int:
    source: Path = args.input
    out: Path = args.out if args.out is not None else source.with_name(LABEL_FILE_NAME)
    ensure_writable_file(out, "label file")
    print(
        f"wsss: import-irn-labels unpickles {source}; do this only with a file you trust",
        file=sys.stderr,
    )
    raw = load_irn_label_dict(source)
    first = np.asarray(next(iter(raw.values())))
    classes = _load_classes(args.classes, int(first.shape[0]) if first.ndim == 1 else -1, source)
    labels = convert_irn_labels(raw, classes, id_format=args.id_format, source=source)
    write_image_labels(out, labels, classes)
    with_labels = sum(1 for v in labels.values() if len(v))
    print(
        f"wrote labels of {len(labels)} images ({with_labels} with a foreground class, "
        f"{len(classes) - 1} classes) to {out}"
    )
    return 0
