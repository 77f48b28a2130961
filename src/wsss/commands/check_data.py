"""``wsss check-data``: validate a dataset before spending GPU hours on it.

Reads every image of the split in full, every mask (size against its image, values in
``0..K`` or 255), resolves every image's labels and, with ``--boxes``, checks the boxes (the XML
files', or the COCO JSON's) lie in their image. Prints one summary line on success. A problem
does not stop the check: at the end every problem found is reported, each a line naming its file
(the first 20, then how many more), and the CLI exits 2.
A ``--data`` ending in ``.json`` is read as a COCO instances file instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check a dataset: images, masks, labels and (--boxes) XML boxes of every id in a split."
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="VOCdevkit/, VOCdevkit/VOC2012/ (or any folder with JPEGImages), or a COCO instances JSON",
    )
    parser.add_argument(
        "--split", default="train", help="split name (ImageSets/Segmentation/<name>.txt) or split file path"
    )
    parser.add_argument(
        "--boxes", action="store_true",
        help="also check the boxes (Annotations/<id>.xml, or the COCO JSON's) against the images"
    )
    parser.add_argument(
        "--label-source", default="auto", help="auto, masks, xml, file, or a path to an image_labels.json"
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="COCO only: the folder of the JSON's file_name entries"
    )


def run(args: argparse.Namespace) -> int:
    if args.data.suffix.lower() == ".json":
        from wsss.data.coco import COCODataset

        coco = COCODataset(args.data, image_dir=args.images)
        report = coco.validate(progress=True, boxes=args.boxes)
        print(f"ok: {coco.annotation_file}: {report.summary()}, {coco.num_classes - 1} classes")
        return 0

    from wsss.data.voc import VOCDataset

    dataset = VOCDataset(args.data, split=args.split, label_source=args.label_source)
    report = dataset.validate(boxes=args.boxes, progress=True)
    print(
        f"ok: {dataset.root} split {dataset.split_file.stem}: {report.summary()}, "
        f"{dataset.num_classes - 1} classes (labels: {dataset.label_source})"
    )
    return 0
