"""``wsss eval``: score label maps or a map store against a split's ground-truth masks.

``--pred`` holding ``<id>.png`` label maps is scored as it is. A map store (``<id>.npz``) is
scored at a threshold fixed a priori (``--threshold``, IRN's 0.15 by default), at a label-free
threshold (chosen from the images and maps alone) and over a sweep (``--sweep``), each number printed and
written with the protocol that produced it. The logic lives in :mod:`wsss.evaluation.run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.errors import ConfigError
from wsss.evaluation.sweep import DEFAULT_SWEEP, IRN_THRESHOLD, parse_thresholds
from wsss.refine.thresholds import LABEL_FREE_RULES

_OFF = ("none", "off")


def _option_text(text: str) -> str:
    return text.strip().lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate predictions against ground-truth masks: per-class IoU in the papers' layout, "
        "precision/recall, IRN's FP/FN ratios; for a map store, thresholds fixed without ground "
        "truth beside the sweep's oracle best."
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset root (VOC layout)")
    parser.add_argument(
        "--split", default="train", help="split name or split file (default: train, the seed-evaluation split)"
    )
    parser.add_argument(
        "--pred", type=Path, required=True, help="folder of <id>.png label maps, or a map store of <id>.npz files"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--csv", type=Path, default=None, metavar="FILE",
        help="write the per-class table as CSV (default: beside --json)",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="FILE",
        help="maps: draw mIoU vs threshold as PNG (default: <json stem>_sweep.png beside --json)",
    )
    parser.add_argument(
        "--sweep", type=_option_text, default=None, metavar="START:STOP:STEP",
        help=f"maps: thresholds to sweep (stop included), a comma list, or 'none' (default {DEFAULT_SWEEP})",
    )
    parser.add_argument(
        "--threshold", type=_option_text, default=None, metavar="T",
        help=f"maps: background threshold fixed without ground truth, or 'none' (default {IRN_THRESHOLD}, IRN's)",
    )
    parser.add_argument(
        "--label-free", default="edges", choices=(*LABEL_FREE_RULES, "none"),
        help="maps: label-free threshold rule: edges (default: the lowest threshold whose contours "
             "follow the images' edges), li, otsu, triangle (on the per-pixel max foreground scores), or none",
    )
    parser.add_argument(
        "--unlabelled", default=None, choices=("background", "exclude"),
        help="labels: a 255 in a prediction counts as background (default, IRN) or is excluded (coverage reported)",
    )


def run(args: argparse.Namespace) -> int:
    from wsss.data.voc import VOCDataset
    from wsss.io import ensure_writable_file
    from wsss.evaluation.run import LABELS, detect_prediction_kind, evaluate_predictions, write_report

    no_sweep = args.sweep in _OFF
    no_threshold = args.threshold in _OFF
    threshold = None
    if args.threshold is not None and not no_threshold:
        try:
            threshold = float(args.threshold)
        except ValueError:
            raise ConfigError(f"--threshold must be a number or 'none', got {args.threshold!r}") from None
        if not 0.0 <= threshold <= 1.0:  # maps are normalised to a maximum of 1
            raise ConfigError(f"--threshold must be in [0, 1] (maps peak at 1), got {args.threshold}")
    if args.sweep is not None and not no_sweep:
        parse_thresholds(args.sweep)  # a bad sweep fails now, not after reading every map
    if args.plot is not None and (no_sweep or detect_prediction_kind(args.pred) == LABELS):
        raise ConfigError("--plot needs a threshold sweep over a map store")
    for path, what in ((args.json, "--json file"), (args.csv, "--csv file"), (args.plot, "--plot file")):
        if path is not None:
            ensure_writable_file(path, what)  # before the evaluation, not after
    dataset = VOCDataset(args.data, split=args.split)
    report = evaluate_predictions(
        dataset,
        args.pred,
        sweep=None if no_sweep else args.sweep,
        threshold=threshold,
        label_free=None if args.label_free == "none" else args.label_free,
        unlabelled=args.unlabelled,
        no_sweep=no_sweep,
        no_threshold=no_threshold,
    )
    written = write_report(report, json_path=args.json, csv_path=args.csv, plot_path=args.plot)
    print(report.text())
    for path in written:
        print(f"wrote {path}")
    return 0
