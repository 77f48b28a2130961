"""BBAM's attribution schedule: a shorter one (fewer steps at a higher rate, fewer proposals)
measured against the reference's (300 Adam steps at 0.02, 1000 jittered boxes) on a few images.

For the first ``--images`` images of a split, with a trained detector (``train_detector``'s
file), every box is explained under each schedule (``scale="image"``) and turned into pseudo
labels (:func:`wsss.refine.bbam_labels.bbam_labels`). It prints, per schedule, the seconds per
object, the semantic pseudo-mask mIoU against the ground truth (255 pixels left out), and against
the full schedule: the mean IoU of the objects' masks (th 0.85), the correlation of the raw
masks, and the share of pixels where the semantic pseudo masks agree.

The demo recipe may use a shorter schedule only with these numbers beside it (issue 13).

Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bbam_schedule.py --data /tmp/synth \\
        --detector work/bbam_detector.pt --images 4 --short steps=60,lr=0.1,proposals=300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from wsss.attribution.bbam import BbamConfig, compute_bbam
from wsss.data import open_dataset
from wsss.refine.bbam_labels import bbam_labels
from wsss.training.detector import load_detector


def parse_schedule(text: str) -> BbamConfig:
    """``steps=60,lr=0.1,proposals=300`` -> the reference's settings with those replaced."""
    values = {}
    for item in text.split(","):
        key, value = item.split("=")
        values[key] = float(value) if key in ("lr", "jitter") else int(value)
    return BbamConfig(**values)


def miou(confusion: np.ndarray) -> float:
    """Mean IoU (%) over the classes present in the ground truth."""
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = confusion.sum(1) > 0
    return float(100 * (tp[present] / np.maximum(union[present], 1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a VOC-layout root with masks and boxes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--detector", required=True, help="train_detector's output file")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--short", action="append", default=[], help="a schedule: steps=..,lr=..,proposals=..")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = load_detector(args.detector)
    dataset = open_dataset(args.data, args.split)
    schedules = {"full": BbamConfig(), **{text: parse_schedule(text) for text in args.short}}
    k = dataset.num_classes
    confusion = {name: np.zeros((k, k), np.int64) for name in schedules}
    seconds = dict.fromkeys(schedules, 0.0)
    object_iou = {name: [] for name in args.short}
    correlation = {name: [] for name in args.short}
    agreement = {name: [] for name in args.short}
    objects = kept_none = 0
    for image_id in dataset.ids[:args.images]:
        image, truth = dataset.load_image(image_id), dataset.load_mask(image_id)
        boxes, classes = dataset.boxes(image_id)
        found = {}
        for name, config in schedules.items():
            start = time.perf_counter()
            result = compute_bbam(detector, image, boxes, classes, config=config, scale="image")
            seconds[name] += time.perf_counter() - start
            labels = bbam_labels(image, result.to_maps(), image_id=image_id, scale="image")
            found[name] = (result, labels)
            valid = labels.semantic != 255
            confusion[name] += np.bincount(k * truth[valid].astype(np.int64) + labels.semantic[valid],
                                           minlength=k * k).reshape(k, k)
        objects += len(boxes)
        full_result, full_labels = found["full"]
        kept_none += int((full_result.kept == 0).sum())
        for name in args.short:
            result, labels = found[name]
            for row in range(len(boxes)):
                a, b = full_labels.instances.masks[row], labels.instances.masks[row]
                union = (a | b).sum()
                object_iou[name].append(float((a & b).sum() / union) if union else 1.0)
                x, y = full_result.masks[row].ravel(), result.masks[row].ravel()
                if x.std() > 0 and y.std() > 0:
                    correlation[name].append(float(np.corrcoef(x, y)[0, 1]))
            agreement[name].append(float((full_labels.semantic == labels.semantic).mean()))
        print(f"{image_id}: {len(boxes)} objects, kept {full_result.kept.tolist()}, seconds so far "
              f"{ {name: round(value, 1) for name, value in seconds.items()} }", flush=True)
    report = {
        "images": args.images, "objects": objects, "objects_without_kept_proposal": kept_none,
        "seconds_per_object": {name: round(value / max(objects, 1), 2) for name, value in seconds.items()},
        "pseudo_miou": {name: round(miou(c), 1) for name, c in confusion.items()},
        "object_mask_iou_with_full": {name: round(float(np.mean(v)), 3) for name, v in object_iou.items()},
        "mask_correlation_with_full": {name: round(float(np.mean(v)), 3) if v else None
                                       for name, v in correlation.items()},
        "pixel_agreement_with_full": {name: round(float(np.mean(v)), 3) for name, v in agreement.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
