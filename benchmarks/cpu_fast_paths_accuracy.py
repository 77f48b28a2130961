"""What the CPU's fast paths cost in accuracy (issue 14): the demo's networks trained each way.

Trains, with the same seed and data, in each variant of ``--variants`` (``float32``: contiguous,
the baseline; ``channels_last``; ``bf16``; ``channels_last+bf16``, see
:class:`wsss.runtime.FastPaths`):

* the CAM classifier of the ``synth/demo`` recipe on the first ``--train`` generated training
  images for ``--classifier-epochs`` epochs, scored on the first ``--val`` val images
  (per-label accuracy and exact match, float32 evaluation);
* the recipe's segmentation network fully supervised (ground-truth masks) on the first
  ``--seg-train`` training images for ``--seg-iterations`` updates, scored on the val images
  (mIoU, single scale, no flip) with float32 inference, and with its own variant's inference.

``channels_last`` computes what float32 computes in another order: its difference from the
baseline is what rounding alone does to a training run, the yardstick for bf16's. Seconds are
the training time on shared cores (a rough guide; ``benchmarks/cpu_fast_paths.py`` times the
updates).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_fast_paths_accuracy.py --data /tmp/fp_data --out /tmp/fp_acc
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wsss.config import recipe_section
from wsss.data import open_dataset, synth
from wsss.errors import WsssError
from wsss.evaluation.semantic import confusion_matrix, mean_iou
from wsss.runtime import FastPaths, eval_mode
from wsss.segmentation.inference import predict
from wsss.segmentation.train import SegTrainConfig, train_segmentation
from wsss.training.classifier import ClassifierConfig, train_classifier

VARIANTS = {
    "float32": FastPaths(),
    "channels_last": FastPaths(channels_last=True),
    "bf16": FastPaths(autocast="bf16"),
    "channels_last+bf16": FastPaths(channels_last=True, autocast="bf16"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="generated benchmark folder (made if missing)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", default="synth/demo")
    parser.add_argument("--variants", default="float32,channels_last,channels_last+bf16")
    parser.add_argument("--only", default="classifier,segmentation")
    parser.add_argument("--train", type=int, default=600, help="classifier training images")
    parser.add_argument("--classifier-epochs", type=int, default=4)
    parser.add_argument("--seg-train", type=int, default=200, help="segmentation training images")
    parser.add_argument("--seg-iterations", type=int, default=300)
    parser.add_argument("--val", type=int, default=150, help="val images scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def _split_file(out: Path, name: str, ids: list[str]) -> str:
    path = out / f"{name}.txt"
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def seg_miou(model: torch.nn.Module, val, ids: list[str], config: SegTrainConfig, fast_paths: FastPaths) -> float:
    confusion = np.zeros((val.num_classes, val.num_classes), dtype=np.int64)
    with eval_mode(model), torch.no_grad():
        for image_id in ids:
            labels = predict(model, val.load_image(image_id), device="cpu", scales=(1.0,), flip=False,
                             mean=config.mean, std=config.std, fast_paths=fast_paths)
            confusion += confusion_matrix(val.load_mask(image_id), labels, val.num_classes)
    return 100.0 * float(mean_iou(confusion))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if not (data / "JPEGImages").is_dir():
        synth.generate(data, synth.SynthConfig(seed=args.seed, train=max(args.train, args.seg_train),
                                               val=args.val, ood=0), progress=False)
    full_train = open_dataset(data, "train")
    train = open_dataset(data, _split_file(out, "train", list(full_train.ids)[: args.train]))
    seg_train = open_dataset(data, _split_file(out, "seg_train", list(full_train.ids)[: args.seg_train]))
    val = open_dataset(data, _split_file(out, "val", list(open_dataset(data, "val").ids)[: args.val]))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    only = {c.strip() for c in args.only.split(",")}
    results: dict[str, dict] = {}
    print("Training times are on shared cores: a rough guide only.", flush=True)

    if "classifier" in only:
        config = dataclasses.replace(recipe_section(args.recipe, "classifier", ClassifierConfig),
                                     epochs=args.classifier_epochs)
        for variant in variants:
            start = time.perf_counter()
            result = train_classifier(train, config, device="cpu", val_source=val, progress=False,
                                      seed=args.seed, fast_paths=VARIANTS[variant])
            record = result.history[-1]
            row = {"label_accuracy": round(100 * record["val"]["label_accuracy"], 2),
                   "exact_match": round(100 * record["val"]["exact_match"], 2),
                   "final_loss": round(record["loss"], 4), "seconds": round(time.perf_counter() - start, 1)}
            results[f"classifier {variant}"] = row
            print(f"classifier   {variant:<20} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    if "segmentation" in only:
        config = dataclasses.replace(recipe_section(args.recipe, "segmentation", SegTrainConfig),
                                     iterations=args.seg_iterations, epochs=None,
                                     checkpoint_every=args.seg_iterations, seed=args.seed)
        for variant in variants:
            start = time.perf_counter()
            result = train_segmentation(seg_train, None, config, device="cpu", out_dir=out / f"seg_{variant}",
                                        progress=False, resume=False, fast_paths=VARIANTS[variant])
            seconds = time.perf_counter() - start
            losses = [h["loss"] for h in result.history]
            row = {"val_miou_float32_inference": round(seg_miou(result.model, val, list(val.ids), config,
                                                                FastPaths()), 2),
                   "val_miou_own_inference": round(seg_miou(result.model, val, list(val.ids), config,
                                                            VARIANTS[variant]), 2),
                   "loss_last50": round(float(np.mean(losses[-50:])), 4), "seconds": round(seconds, 1)}
            results[f"segmentation {variant}"] = row
            print(f"segmentation {variant:<20} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    (out / "cpu_fast_paths_accuracy.json").write_text(json.dumps(
        {"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WsssError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
