"""The segmentation stage's schedule from the fully supervised network's val curve (issue 12, item 4).

Trains the recipe's segmentation network (its ``segmentation`` section: model, lr, batch, crop)
on the ground-truth masks of the training images the demo gives seeds to, for the longest
schedule asked, and scores it on val (single scale, no flip, no CRF) at several iteration
counts along the way. The curve says where more updates stop paying: the demo's schedule is
chosen where it flattens. The learning rate decays (poly) over the whole run, so a point
before the end is a network still at a higher rate than a schedule ending there would be; a
schedule that ends at that count scores at least about as well.

Usage (on a generated benchmark or any VOC-layout dataset)::

    python benchmarks/seg_schedule.py --data demo_out/data --train-split demo_out/seed_split.txt \\
        --iterations 1600 --at 100,200,400,800,1600 --val-images 150 --out /tmp/seg_curve

It prints a table (iterations, epochs, training loss, val mIoU, seconds) and writes
``seg_schedule.csv`` and ``seg_schedule.json`` into ``--out``; the training run's own files
(``history.json``, ``training_curve.png``, ``model.pt``) land in ``--out/train``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wsss.config import recipe_section
from wsss.data import open_dataset
from wsss.errors import WsssError
from wsss.evaluation.semantic import confusion_matrix, mean_iou
from wsss.runtime import eval_mode, seed_everything
from wsss.segmentation.inference import predict
from wsss.segmentation.train import SegTrainConfig, train_segmentation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="VOC-layout dataset folder")
    parser.add_argument("--train-split", default="train", help="split name or file of training ids")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--recipe", default="synth/demo", help="recipe whose segmentation section is used")
    parser.add_argument("--crop", type=int, default=None, help="crop size (default: the recipe's)")
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument("--at", default="100,200,400,800,1600", help="iterations to score val at")
    parser.add_argument("--val-images", type=int, default=150, help="first N val images (0: all)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    marks = sorted({int(x) for x in args.at.split(",") if x.strip()} | {args.iterations})
    config = recipe_section(args.recipe, "segmentation", SegTrainConfig)
    changes = dict(iterations=args.iterations, epochs=None, checkpoint_every=max(args.iterations, 1))
    if args.crop:
        changes["crop_size"] = args.crop
    config = dataclasses.replace(config, **changes)
    train = open_dataset(args.data, args.train_split)
    val = open_dataset(args.data, args.val_split)
    val_ids = list(val.ids)[: args.val_images or None]

    from wsss.models.deeplab import create_segmentation_model

    seed_everything(config.seed)  # as train_segmentation does before it creates the model
    model = create_segmentation_model(config.model, train.num_classes, classifier=config.classifier)
    rows: list[dict] = []
    losses: list[float] = []
    start = time.perf_counter()

    def score() -> float:
        confusion = np.zeros((val.num_classes, val.num_classes), dtype=np.int64)
        with eval_mode(model), torch.no_grad():
            for image_id in val_ids:
                labels = predict(model, val.load_image(image_id), device="cpu", scales=(1.0,), flip=False,
                                 mean=config.mean, std=config.std)
                confusion += confusion_matrix(val.load_mask(image_id), labels, val.num_classes)
        return 100.0 * float(mean_iou(confusion))

    def callback(iteration: int, loss: float) -> None:
        losses.append(float(loss))
        if iteration in marks:
            row = {"iterations": iteration, "epochs": round(iteration * config.batch_size / len(train), 2),
                   "train_loss_last50": round(float(np.mean(losses[-50:])), 4), "val_miou": round(score(), 2),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    train_segmentation(train, None, config, device="cpu", out_dir=out / "train", progress=False, resume=False,
                       model=model, callback=callback)
    with open(out / "seg_schedule.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "seg_schedule.json").write_text(json.dumps(
        {"data": str(args.data), "train_images": len(train), "val_images": len(val_ids),
         "config": dataclasses.asdict(config), "curve": rows}, indent=2, default=str))
    print(f"\n{config.model} on {len(train)} ground-truth masks, val mIoU on {len(val_ids)} images "
          f"(single scale, no flip)")
    print(f"{'iterations':>10} {'epochs':>7} {'loss':>7} {'val mIoU':>9} {'seconds':>8}")
    for row in rows:
        print(f"{row['iterations']:>10} {row['epochs']:>7} {row['train_loss_last50']:>7} "
              f"{row['val_miou']:>9} {row['seconds']:>8}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WsssError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
