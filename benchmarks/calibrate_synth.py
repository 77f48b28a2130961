"""Calibrate the generated benchmark against the CAM signature seen on PASCAL VOC.

On VOC a CAM under-covers its object: it peaks on a discriminative part, the best background
threshold is low (about 0.15) and, at that threshold, foreground precision is above recall.
The generated benchmark is only a fair test bed for CAM refinements (AdvCAM, RIB, ...) if its
CAMs show the same signature. For each *variant* (generator knobs + classifier recipe) this
script

1. generates the set (``wsss.data.synth.generate``; reused when it already exists),
2. trains the CAM classifier with the library (``synth/demo`` recipe plus overrides; reused),
3. extracts CAMs on the first ``--seed-images`` training images (``wsss.attribution.cam``),
4. scores them (``wsss.evaluation.sweep.evaluate_maps``: oracle / fixed 0.15 / Otsu) and
   measures where the maps sit against the generator's part and context masks,
5. optionally does the same for AdvCAM on the first ``--advcam`` of those images,

then prints one line per variant and appends a JSON record to ``OUT/calibration.jsonl``.

Examples::

    .venv/bin/python benchmarks/calibrate_synth.py --list
    .venv/bin/python benchmarks/calibrate_synth.py --out /tmp/calib base s192
    .venv/bin/python benchmarks/calibrate_synth.py --out /tmp/calib custom \\
        --synth size=160 --synth body_evidence=0.2 --classifier classifier.epochs=8
    .venv/bin/python benchmarks/calibrate_synth.py --out /tmp/calib base --advcam 150
    .venv/bin/python benchmarks/calibrate_synth.py --out /tmp/calib --table   # the log so far

One variant costs about as much as the demo's classifier stage (a few minutes on one CPU
thread at 128 px); run one at a time on a shared machine.

Signature columns (all at the oracle threshold unless named):
  acc       validation per-label accuracy of the classifier
  best_t    the sweep's best background threshold (oracle)
  mIoU      seed mIoU at best_t / at 0.15 / at Otsu's label-free threshold
  P, R      mean foreground precision and recall over classes (background excluded)
  peak      fraction of (image, class) pairs whose CAM maximum lies on that class's part
  part/body/bg   mean CAM value on part pixels, body pixels (object minus part), background
  ring      mean CAM on body / on background pixels 4-16 px from the part: equal values mean
            the map spreads by distance from the part, not along the object
  bodyR     fraction of body pixels above best_t (how much of the body the seed covers)
  halo      fraction of false-positive background pixels within 6 px of an object
  ctx       fraction of false-positive background pixels on the class's own context
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from wsss import io as wio
from wsss.attribution.cam import make_cams
from wsss.data import synth
from wsss.data.voc import VOCDataset
from wsss.evaluation.sweep import evaluate_maps, scores_to_labels
from wsss.models.cam_net import CamNet, load_cam_net
from wsss.pipeline.recipes import load_recipe
from wsss.stores.maps import MapStore
from wsss.training.classifier import evaluate_classifier, train_classifier

log = logging.getLogger("calibrate_synth")

SWEEP = "0.01:0.80:0.01"  # the demo recipe's seed_eval.sweep
FIXED_THRESHOLD = 0.15  # IRN's cam_eval_thres
HALO_PX = 6  # "near the object": within this many pixels of a ground-truth object pixel
RING_PX = (4, 16)  # distances from the part at which body and background CAM are compared

# The calibration harness subsamples to keep one variant to a few CPU minutes.
DEFAULT_TRAIN = 1000
DEFAULT_VAL = 300
DEFAULT_SEED_IMAGES = 250


@dataclass
class Variant:
    """A generator config (overrides of ``SynthConfig``) and classifier overrides (recipe keys)."""

    name: str
    synth: dict[str, Any] = field(default_factory=dict)
    classifier: list[str] = field(default_factory=list)
    note: str = ""


# Every variant tried during calibration, kept so that the table can be regenerated. The notes
# say what each one probes; the numbers are in OUT/calibration.jsonl and in the report.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("base", note="the defaults as they are"),
        Variant("nodil", classifier=["classifier.dilated=false"],
                note="OS8 without dilation: a smaller receptive field, tighter maps?"),
        Variant("s192", synth={"size": 192},
                note="objects 1.5x larger in pixels (and map cells) than at 128 px; recipe scaled"),
        Variant("elongated", synth={"object_aspect": [0.35, 0.7]},
                note="thinner objects: the body reaches further from the part at the same area"),
        Variant("decoys", synth={"clutter_body_like": 0.5},
                note="half the clutter wears a body group's look: body-level evidence also in the background"),
        Variant("inner_parts", synth={"part_position": [0.0, 0.5]},
                note="part centre in the inner half: the blob around the part spills less outside"),
        Variant("any_parts", synth={"part_position": [0.0, 1.0]}, note="part centre anywhere in the object"),
        Variant("big_objects", synth={"object_size": [0.6, 0.95]},
                note="objects larger relative to the CAM's spread around the part"),
        Variant("inner_decoys", synth={"part_position": [0.0, 0.5], "clutter_body_like": 0.5},
                note="inner parts, and body-looking clutter so that the background is not CAM-clean"),
        Variant("inner_weakbody", synth={"part_position": [0.0, 0.5], "body_evidence": 0.1},
                note="inner parts, bodies closer to group-only evidence"),
        Variant("inner_big", synth={"part_position": [0.0, 0.5], "object_size": [0.6, 0.95]},
                note="inner parts on objects larger relative to the blur of stride-8 maps"),
        Variant("inner_s192", synth={"part_position": [0.0, 0.5], "size": 192},
                note="inner parts, 192 px: 1.5x more pixels per map cell of object"),
        Variant("inner_group8", synth={"part_position": [0.0, 0.5], "classes_per_body_group": 8},
                note="inner parts, one body look for all 8 classes: bodies say 'object', barely which"),
        Variant("inner_ctx4", synth={"part_position": [0.0, 0.5], "context_classes": 4},
                note="inner parts, four classes own a context (boat/water, train/rail, bird/sky, cow/grass)"),
        Variant("inner_big_group8", synth={"part_position": [0.0, 0.5], "object_size": [0.6, 0.95],
                                           "classes_per_body_group": 8},
                note="large objects (less relative blur) whose far body is hard to tell from background"),
        Variant("inner_e20", synth={"part_position": [0.0, 0.5]}, classifier=["classifier.epochs=20"],
                note="inner parts, twice the training: a more confident, more part-focused classifier?"),
        Variant("inner_e5", synth={"part_position": [0.0, 0.5]}, classifier=["classifier.epochs=5"],
                note="inner parts, half the training"),
        Variant("inner_pale", synth={"part_position": [0.0, 0.5], "body_saturation": [0.1, 0.45]},
                note="inner parts, bodies as pale as backgrounds can be: less 'objectness' away from the part"),
    ]
}


# --------------------------------------------------------------------------------------------
# Caching by content: a variant's data, classifier and maps live under folders named by hash.


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def synth_config(variant: Variant, train: int, val: int) -> synth.SynthConfig:
    values = {"train": train, "val": val, "ood": 0, **variant.synth}
    return synth.SynthConfig.from_dict(values)


def classifier_overrides(variant: Variant, size: int) -> list[str]:
    """The demo recipe, adapted to the image size (as ``wsss demo`` does for other datasets)."""
    scaled = []
    if size != 128:
        low, high = round(size * 0.875), round(size * 1.125)
        scaled = [f"classifier.crop_size={size}", f"classifier.resize_long=[{low}, {high}]"]
    return [*scaled, *variant.classifier]


@dataclass
class Prepared:
    root: Path
    model: CamNet
    val_accuracy: float
    train_seconds: float
    generate_seconds: float
    classifier_key: str


def prepare(variant: Variant, out: Path, train: int, val: int, progress: bool) -> Prepared:
    """Generate the data and train the classifier of ``variant`` (or reuse both)."""
    config = synth_config(variant, train, val)
    root = out / "data" / f"{_digest(config.to_dict())}"
    started = time.perf_counter()
    synth.generate(root, config, progress=progress)
    generate_seconds = time.perf_counter() - started

    overrides = classifier_overrides(variant, config.size)
    recipe = load_recipe("synth/demo", overrides)
    key = _digest({"data": config.to_dict(), "classifier": recipe.classifier.to_dict(),
                   "seed": recipe.runtime.seed})
    checkpoint = out / "classifiers" / f"{key}.pt"
    train_set = VOCDataset(root, "train")
    val_set = VOCDataset(root, "val")
    device = torch.device("cpu")
    if checkpoint.exists():
        model = load_cam_net(checkpoint, map_location=device)
        meta = wio.read_json(checkpoint.with_suffix(".json"))
        train_seconds, val_accuracy = meta["train_seconds"], meta["val_label_accuracy"]
    else:
        log.info("%s: training %s", variant.name, " ".join(overrides) or "(recipe as is)")
        result = train_classifier(train_set, recipe.classifier, device=device, out=checkpoint,
                                  progress=progress, seed=recipe.runtime.seed)
        model, train_seconds = result.model, result.seconds
        metrics = evaluate_classifier(model, val_set, device=device, batch_size=64)
        val_accuracy = metrics.label_accuracy
        wio.write_json(checkpoint.with_suffix(".json"), {
            "variant": variant.name, "overrides": overrides, "train_seconds": train_seconds,
            "val_label_accuracy": val_accuracy, "val_exact_match": metrics.exact_match,
            "history": result.history})  # fmt: skip
    model.eval()
    return Prepared(root, model, val_accuracy, train_seconds, generate_seconds, key)


# --------------------------------------------------------------------------------------------
# The signature


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def signature(root: Path, store: MapStore, ids: Sequence[str]) -> dict[str, Any]:
    """Seed scores (three protocols) and where the maps sit against parts, bodies and contexts."""
    dataset = VOCDataset(root, "train")
    sweep = evaluate_maps(dataset, store, ids=ids, thresholds=SWEEP, fixed_threshold=FIXED_THRESHOLD,
                          label_free="otsu", progress=False)
    best = sweep.best
    fixed = sweep.fixed
    label_free = sweep.label_free
    t = best.threshold

    peaks, part_means, body_means, bg_means, body_cover, part_cover = [], [], [], [], [], []
    ring_body, ring_background = [], []
    false_pos = near = on_context = 0
    for image_id in ids:
        maps = store.load(image_id)
        gt = dataset.load_mask(image_id)
        parts = wio.read_label_png(root / "SynthParts" / f"{image_id}.png")
        context = wio.read_label_png(root / "SynthContext" / f"{image_id}.png")
        scores = maps.high_res.astype(np.float32)
        for channel, class_id in enumerate(maps.keys):
            cam = scores[channel]
            part = parts == class_id
            body = (gt == class_id) & ~part
            y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
            peaks.append(bool(part[y, x]))
            if part.any():
                part_means.append(float(cam[part].mean()))
                part_cover.append(float((cam[part] > t).mean()))
            if body.any():
                body_means.append(float(cam[body].mean()))
                body_cover.append(float((cam[body] > t).mean()))
            bg_means.append(float(cam[gt == 0].mean()))
            if part.any():
                # Does the map follow the object or only the distance to the part? Compare body
                # and background pixels at the same distance from the part.
                distance = ndimage.distance_transform_edt(~part)
                ring = (distance > RING_PX[0]) & (distance <= RING_PX[1])
                if (ring & body).sum() >= 10 and (ring & (gt == 0)).sum() >= 10:
                    ring_body.append(float(cam[ring & body].mean()))
                    ring_background.append(float(cam[ring & (gt == 0)].mean()))
        labels = scores_to_labels(scores, maps.keys, t)
        wrong = (gt == 0) & (labels > 0)
        if wrong.any():
            distance = ndimage.distance_transform_edt(gt == 0)
            false_pos += int(wrong.sum())
            near += int((wrong & (distance <= HALO_PX)).sum())
            on_context += int((wrong & (context == labels)).sum())

    def fg(values: np.ndarray) -> float:
        return float(np.nanmean(values[1:]))

    return {
        "images": len(ids),
        "best_t": t,
        "miou_best": 100 * best.miou,
        "miou_fixed": 100 * fixed.miou,
        "otsu_t": label_free.threshold if label_free else None,
        "miou_otsu": 100 * label_free.miou if label_free else None,
        "precision": 100 * fg(best.precision),
        "recall": 100 * fg(best.recall),
        "precision_fixed": 100 * fg(fixed.precision),
        "recall_fixed": 100 * fg(fixed.recall),
        "peak_on_part": _mean(peaks),
        "cam_part": _mean(part_means),
        "cam_body": _mean(body_means),
        "cam_background": _mean(bg_means),
        "ring_body": _mean(ring_body),
        "ring_background": _mean(ring_background),
        "part_cover": _mean(part_cover),
        "body_cover": _mean(body_cover),
        "halo": near / false_pos if false_pos else math.nan,
        "context": on_context / false_pos if false_pos else math.nan,
        "curve": [round(v, 4) for v in sweep.curve[1].tolist()],
    }


# --------------------------------------------------------------------------------------------
# Methods


def _advcam():
    """The library's AdvCAM module, or None while it does not exist yet."""
    try:
        from wsss.attribution import advcam
    except ImportError:
        return None
    return advcam


def run_method(method: str, prepared: Prepared, out: Path, ids: Sequence[str], progress: bool,
               **options: Any) -> tuple[MapStore, float]:
    """Maps of ``method`` for ``ids`` (resumable); return the store and seconds per image computed."""
    suffix = f"-{_digest(options)}" if options else ""
    store = MapStore(out / "maps" / f"{prepared.classifier_key}-{method}{suffix}")
    dataset = VOCDataset(prepared.root, "train")
    started = time.perf_counter()
    if method == "cam":
        done = make_cams(prepared.model, dataset, store, device=torch.device("cpu"), ids=ids, progress=progress)
    elif method == "advcam":
        advcam = _advcam()
        if advcam is None:
            raise SystemExit("wsss.attribution.advcam is not available yet")
        config = advcam.AdvCamConfig(**options)
        done = advcam.make_advcams(prepared.model, dataset, store, config=config, device=torch.device("cpu"),
                                   ids=ids, progress=progress)
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - started
    # Per-image seconds of the images computed now (NaN when every map was reused).
    return store, seconds / done if done else math.nan


# --------------------------------------------------------------------------------------------
# Reporting


def summary_line(record: dict[str, Any]) -> str:
    s = record["signature"]

    def f(value: float | None, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    return (
        f"{record['variant']:<14} {record['method']:<6} acc {f(100 * record['val_accuracy'], '5.1f')} "
        f"t* {f(s['best_t'], '.2f')}  mIoU {f(s['miou_best'], '4.1f')}/{f(s['miou_fixed'], '4.1f')}"
        f"/{f(s['miou_otsu'], '4.1f')} (otsu {f(s['otsu_t'], '.2f')})  "
        f"P {f(s['precision'], '4.1f')} R {f(s['recall'], '4.1f')}  "
        f"peak {f(s['peak_on_part'], '.2f')}  part/body/bg {f(s['cam_part'], '.2f')}/"
        f"{f(s['cam_body'], '.2f')}/{f(s['cam_background'], '.2f')}  ring {f(s.get('ring_body'), '.2f')}/"
        f"{f(s.get('ring_background'), '.2f')}  bodyR {f(s['body_cover'], '.2f')}  "
        f"halo {f(s['halo'], '.2f')} ctx {f(s['context'], '.2f')}  "
        f"train {record['train_seconds']:.0f}s maps {f(record['map_seconds_per_image'], '.2f')}s/img"
    )


def print_table(log_path: Path) -> None:
    if not log_path.exists():
        print(f"no log at {log_path}")
        return
    latest: dict[tuple[str, str], dict[str, Any]] = {}  # a re-run replaces its earlier line
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        latest[(record["variant"], record["method"])] = record
    for record in latest.values():
        print(summary_line(record))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", help="names from --list, or one new name with --synth/--classifier")
    parser.add_argument("--out", type=Path, default=Path("calibration_out"))
    parser.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                        help="SynthConfig override for a custom variant (YAML value)")
    parser.add_argument("--classifier", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override for a custom variant, e.g. classifier.epochs=8")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN)
    parser.add_argument("--val", type=int, default=DEFAULT_VAL)
    parser.add_argument("--seed-images", type=int, default=DEFAULT_SEED_IMAGES)
    parser.add_argument("--advcam", type=int, default=0, help="also AdvCAM on this many of the seed images")
    parser.add_argument("--advcam-set", action="append", default=[], metavar="KEY=VALUE",
                        help="AdvCamConfig field for --advcam (YAML value), e.g. iterations=27")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--table", action="store_true", help="print the log's summary lines and exit")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    log_path = args.out / "calibration.jsonl"

    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:<14} synth {v.synth} classifier {v.classifier}  # {v.note}")
        return 0
    if args.table:
        print_table(log_path)
        return 0

    import yaml

    variants = []
    for name in args.variants:
        if name in VARIANTS and not (args.synth or args.classifier):
            variants.append(VARIANTS[name])
        else:
            base = VARIANTS.get(name, Variant(name))
            extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.synth)}
            variants.append(Variant(name, {**base.synth, **extra}, [*base.classifier, *args.classifier]))
    if not variants:
        parser.error("name at least one variant (see --list)")
    advcam_options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.advcam_set)}

    for variant in variants:
        prepared = prepare(variant, args.out, args.train, args.val, args.progress)
        size = synth_config(variant, args.train, args.val).size
        ids = VOCDataset(prepared.root, "train").ids[: args.seed_images]
        methods = [("cam", ids, {})]
        if args.advcam:
            methods.append(("advcam", ids[: args.advcam], advcam_options))
        cam_store = None
        for method, method_ids, options in methods:
            store, seconds = run_method(method, prepared, args.out, method_ids, args.progress, **options)
            if method == "cam":
                cam_store = store
            records = [(method, store, method_ids)]
            if method != "cam":  # CAM on exactly the same images, for a paired comparison
                records.append(("cam@" + str(len(method_ids)), cam_store, method_ids))
            for label, scored_store, scored_ids in records:
                record = {
                    "variant": variant.name, "method": label, "synth": variant.synth,
                    "classifier": classifier_overrides(variant, size),
                    "advcam_options": options if method != "cam" else None,
                    "train_images": args.train, "val_accuracy": prepared.val_accuracy,
                    "train_seconds": prepared.train_seconds,
                    "map_seconds_per_image": seconds if label == method else None,
                    "signature": signature(prepared.root, scored_store, scored_ids),
                }  # fmt: skip
                line = summary_line(record)
                print(line, flush=True)
                args.out.mkdir(parents=True, exist_ok=True)
                with log_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
