"""BBAM's detector schedule: how many objects keep a proposal as the detector trains.

BBAM explains only the jittered boxes its detector classifies as the object's class with a
regressed box of IoU > 0.9 (0.85, 0.8) with it; an object with none gets an all-zero mask and
falls back to the box. This trains the synth recipe's detector (``bbam_detector`` section, with
``--set`` overrides) on ``--data``'s training split and, after each update count of ``--checks``,
reads the training checkpoint back and prints, for the first ``--images`` images of the training
and validation splits, the share of objects with no kept proposal and the mean number kept.
The learning rate stays constant after the warm-up unless ``milestones`` are set, so one run
gives the curve.

Example::

    wsss synth /tmp/synth --train 200 --val 60 --ood 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bbam_detector_schedule.py --data /tmp/synth \\
        --checks 150,300 --set bbam_detector.lr=0.04 --set bbam_detector.rois_per_image=128
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsss.attribution.bbam import BbamConfig, compute_bbam
from wsss.data import open_dataset
from wsss.models.detector import build_detector
from wsss.models.weights import load_torch_file
from wsss.pipeline.recipes import load_recipe
from wsss.training.detector import train_detector
from wsss.training.engine import CHECKPOINT_NAME


def kept_share(detector: torch.nn.Module, dataset, count: int) -> dict[str, float]:
    """Objects, the share with no kept proposal and the mean kept over the first ``count`` images."""
    kept = []
    for image_id in dataset.ids[:count]:
        boxes, classes = dataset.boxes(image_id)
        result = compute_bbam(detector, dataset.load_image(image_id), boxes, classes, config=BbamConfig(steps=0))
        kept += result.kept.tolist()
    counts = np.asarray(kept)
    return {"objects": len(counts), "no_proposal_share": round(float((counts == 0).mean()), 3) if len(counts) else 0.0,
            "mean_kept": round(float(counts.mean()), 1) if len(counts) else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a VOC-layout root with boxes (wsss synth)")
    parser.add_argument("--checks", default="150,300", help="update counts to measure at (the last one ends it)")
    parser.add_argument("--images", type=int, default=20, help="images per split measured")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="recipe overrides")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checks = sorted(int(c) for c in args.checks.split(","))
    every = math.gcd(*checks)
    recipe = load_recipe("synth/demo", [f"data.root={args.data}", "methods=[bbam]", *args.overrides])
    config = recipe.bbam_detector.replace(steps=checks[-1], checkpoint_every=every)
    if not any(o.startswith("bbam_detector.milestones") for o in args.overrides):
        config = config.replace(milestones=(checks[-1] + 1,))  # a constant rate after the warm-up
    train, val = open_dataset(args.data, "train"), open_dataset(args.data, "val")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / CHECKPOINT_NAME

        def measure(iteration: int, loss: float) -> None:
            if iteration not in checks:
                return
            saved = load_torch_file(checkpoint, "detector checkpoint")
            settings = dict(saved["detector"])
            detector = build_detector(settings.pop("backbone"), settings.pop("num_classes"), **settings)
            detector.load_state_dict(saved["model"])
            row = {"update": iteration, "lr": config.lr, "rois_per_image": config.rois_per_image,
                   "seconds": round(time.perf_counter() - start), "loss": round(loss, 3),
                   "train": kept_share(detector.eval(), train, args.images),
                   "val": kept_share(detector, val, args.images)}
            print(json.dumps(row), flush=True)

        train_detector(train, config, checkpoint_dir=folder, callback=measure, resume=False)


if __name__ == "__main__":
    main()
