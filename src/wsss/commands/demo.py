"""``wsss demo``: generate the benchmark (or take a dataset) and run every method end to end.

Writes into ``--out``: ``data/`` (the generated set, unless ``--data``), ``work/`` (the stages'
outputs, resumable), ``results.json``, ``seed_sweep.png`` and ``results.txt`` (the printed
tables). Methods are added here as they are implemented.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.pipeline.demo import DEMO_JOBS, QUICK_SEED_IMAGES, QUICK_SYNTH, SEED_IMAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small generated set ({QUICK_SYNTH['train']} train / {QUICK_SYNTH['val']} val) "
                             "and short training: checks the whole pipeline in a minute or two")
    parser.add_argument("--data", metavar="ROOT",
                        help="run on an existing VOC-layout dataset with its own classes.txt instead of generating one")
    parser.add_argument("--ood", metavar="LIST",
                        help="OoD image list for W-OoD (paths relative to LIST's folder); with --data")
    parser.add_argument("--recipe", default="synth/demo", help="recipe (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (repeatable)")
    parser.add_argument("--seed-images", type=int, metavar="N",
                        help="the first N training images get seeds, pseudo masks and the segmentation "
                             f"network; 0 = all (default: {SEED_IMAGES}, --quick: {QUICK_SEED_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set and of training")
    parser.add_argument("--jobs", type=int, default=DEMO_JOBS, metavar="N",
                        help="stages run at once, the threads shared out among them (runtime.jobs; "
                             "default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from wsss.errors import DataError
    from wsss.io import ensure_writable_folder
    from wsss.pipeline.demo import run_demo

    if args.ood and not args.data:
        raise DataError("--ood goes with --data (the generated set has its own OoD images)")
    ensure_writable_folder(args.out, "output folder")
    run_demo(Path(args.out), data=args.data, ood=args.ood, quick=args.quick, recipe=args.recipe,
             overrides=[f"runtime.jobs={args.jobs}", *args.overrides], seed=args.seed,
             seed_images=args.seed_images)
    return 0
