"""``wsss overlay``: draw a map store or a folder of label maps over a dataset's images.

One PNG per image in ``--out``: for a map store the image, its maps' maximum and each class's
map as heat maps; for label maps (pseudo masks, IR labels, predictions) the image and its label
map in the dataset's palette, ignored pixels white::

    wsss overlay work/maps/cam --data data/synth --out pictures/cam --limit 20
    wsss overlay work/predictions/cam --data data/synth --split val --out pictures/pred
"""

from __future__ import annotations

import argparse

from wsss.commands import positive_int


def _opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a map store (<id>.npz) or a folder of label maps (<id>.png)")
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="the dataset the files belong to (VOC-layout folder or COCO .json)")
    parser.add_argument("--split", default="train", help="split name or split file (default: train)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (<id>.png)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="draw the first N images of the split that SOURCE holds (default: all)")
    parser.add_argument("--alpha", type=_opacity, default=None,
                        help="opacity of the overlay (default: 0.5 for maps, 0.6 for label maps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from wsss.data import open_dataset
    from wsss.viz.overlays import overlay_source_kind, write_overlays

    overlay_source_kind(args.source)  # a wrong source fails before the dataset is opened
    dataset = open_dataset(args.data, args.split)
    written = write_overlays(dataset, args.source, args.out, limit=args.limit, alpha=args.alpha,
                             progress=not args.no_progress)
    print(f"wrote {len(written)} pictures to {args.out}")
    return 0
