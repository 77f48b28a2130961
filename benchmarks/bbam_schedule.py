"""BBAM's attribution schedule: shorter ones (fewer steps at a higher rate, fewer proposals)
measured against the reference's (300 Adam steps at 0.02, 1000 jittered boxes) on a few images.

For the first ``--images`` images of a split, with a trained detector (``train_detector``'s
file), every box is explained under each schedule (``scale="image"``) and turned into pseudo
labels (:func:`wsss.refine.bbam_labels.bbam_labels`). It prints, per schedule:

* the seconds per object (proposal selection and optimisation; the schedules take turns on each
  image, so a machine's changing load falls on all of them alike);
* the share of objects with no kept proposal (BBAM falls back to the box) and the mean kept;
* the share of pixels in the pseudo masks' 255 band, and the semantic pseudo-mask mIoU against
  the ground truth with that band left out, and with it taken as background;
* against the full schedule: the mean IoU of the objects' masks (th 0.85), the correlation of
  the raw masks, and the share of pixels where the semantic pseudo masks agree.

With ``--cache DIR`` each schedule's result on each image is kept (masks, kept proposals and
seconds, one ``.npz`` per schedule and image), so that a later run with another candidate
reuses the full schedule's instead of recomputing it.

The demo recipe may use a shorter schedule only with these numbers beside it (issue 13).

Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bbam_schedule.py --data /tmp/synth \\
        --detector work/bbam_detector.pt --images 20 --cache /tmp/bbam_cache \\
        --short steps=50,lr=0.1 --short steps=25,lr=0.2 --short steps=50,lr=0.1,max_proposals=50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from wsss.attribution.bbam import BbamConfig, BbamResult, compute_bbam
from wsss.data import open_dataset
from wsss.refine.bbam_labels import bbam_labels
from wsss.training.detector import load_detector

FULL = "full"


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


def confusion_of(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts of (truth, predicted) over the pixels whose truth is a class (not 255)."""
    valid = truth != 255
    return np.bincount(k * truth[valid].astype(np.int64) + predicted[valid], minlength=k * k).reshape(k, k)


def cache_file(cache: Path, detector: str, name: str, image_id: str) -> Path:
    """The cached result of one schedule on one image (keyed by the detector file, too)."""
    key = hashlib.sha1(f"{Path(detector).resolve()}|{name}".encode()).hexdigest()[:12]
    return cache / f"{key}_{image_id}.npz"


def explain(detector, image, boxes, classes, name: str, config: BbamConfig, path: Path | None
            ) -> tuple[BbamResult, float]:
    """One schedule's BBAM of one image and its seconds, from the cache when there."""
    if path is not None and path.exists():
        with np.load(path) as data:
            fields = {field: data[field] for field in data.files if field != "seconds"}
            return BbamResult(**fields), float(data["seconds"])
    start = time.perf_counter()
    result = compute_bbam(detector, image, boxes, classes, config=config, scale="image")
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.npz")
        np.savez(partial, seconds=seconds, **vars(result))
        partial.replace(path)
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a VOC-layout root with masks and boxes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--detector", required=True, help="train_detector's output file")
    parser.add_argument("--images", type=int, default=4, help="the split's first N images")
    parser.add_argument("--short", action="append", default=[], help="a schedule: steps=..,lr=..,proposals=..")
    parser.add_argument("--cache", type=Path, help="a folder keeping each schedule's result per image")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = load_detector(args.detector)
    dataset = open_dataset(args.data, args.split)
    schedules = {FULL: BbamConfig(), **{text: parse_schedule(text) for text in args.short}}
    k = dataset.num_classes
    confusion = {name: np.zeros((k, k), np.int64) for name in schedules}
    band_as_background = {name: np.zeros((k, k), np.int64) for name in schedules}
    band = dict.fromkeys(schedules, 0)
    seconds = dict.fromkeys(schedules, 0.0)
    kept = {name: [] for name in schedules}
    object_iou = {name: [] for name in args.short}
    correlation = {name: [] for name in args.short}
    agreement = {name: [] for name in args.short}
    objects = pixels = 0
    for image_id in dataset.ids[:args.images]:
        image, truth = dataset.load_image(image_id), dataset.load_mask(image_id)
        boxes, classes = dataset.boxes(image_id)
        found = {}
        for name, config in schedules.items():
            path = cache_file(args.cache, args.detector, name, image_id) if args.cache else None
            result, spent = explain(detector, image, boxes, classes, name, config, path)
            seconds[name] += spent
            kept[name] += result.kept.tolist()
            labels = bbam_labels(image, result.to_maps(), image_id=image_id, scale="image")
            found[name] = (result, labels)
            semantic = labels.semantic.astype(np.int64)
            band[name] += int((semantic == 255).sum())
            confusion[name] += confusion_of(np.where(semantic == 255, 255, truth), semantic, k)
            band_as_background[name] += confusion_of(truth, np.where(semantic == 255, 0, semantic), k)
        objects += len(boxes)
        pixels += truth.size
        full_result, full_labels = found[FULL]
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
        "images": args.images, "objects": objects,
        "seconds_per_object": {name: round(value / max(objects, 1), 2) for name, value in seconds.items()},
        "objects_without_kept_proposal": {name: round(float(np.mean(np.array(v) == 0)), 3)
                                          for name, v in kept.items()},
        "mean_kept": {name: round(float(np.mean(v)), 1) for name, v in kept.items()},
        "band_share": {name: round(value / max(pixels, 1), 3) for name, value in band.items()},
        "pseudo_miou_band_left_out": {name: round(miou(c), 1) for name, c in confusion.items()},
        "pseudo_miou_band_as_background": {name: round(miou(c), 1) for name, c in band_as_background.items()},
        "object_mask_iou_with_full": {name: round(float(np.mean(v)), 3) for name, v in object_iou.items()},
        "mask_correlation_with_full": {name: round(float(np.mean(v)), 3) if v else None
                                       for name, v in correlation.items()},
        "pixel_agreement_with_full": {name: round(float(np.mean(v)), 3) for name, v in agreement.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
