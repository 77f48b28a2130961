"""BAP against GAP: the precision of BANA's u_c (the supplement's Sec. 2 and Table 2).

BANA's supplement trains the stage-1 classifier twice, with background-aware pooling (BAP) and
with plain global average pooling inside each box (GAP), and scores the normalised CAMs u_c of
each against the ground truth of VOC train: per class ``TP_c / (TP_c + FP_c)`` of u_c activated
inside / outside the class's ground truth (GAP 73.0, BAP 77.9 mean over the 20 classes). This
script does the same on a VOC-layout dataset with boxes and masks (the generated benchmark,
``wsss synth``): it trains :func:`wsss.training.bana.train_bap` with ``pooling=bap`` and
``pooling=gap`` (otherwise identical settings and seed), then prints the per-class precision table
(:mod:`wsss.evaluation.bana`) for each reading of "activated" (soft, and ``u_c > t`` for each
``--thresholds``), with the box-fill floor (every pixel of the boxes activated) beneath, and for
each network the mean BAP weight 1 - A at the sample points inside the boxes on object and on
background pixels (whether the attention separates them at all).

Measured once (``wsss synth --train 200 --val 40 --ood 0``, the defaults here: resnet18_w16 from
scratch, stride 8, 400 steps x batch 8, lr 0.01 x0.1 at 280, one CPU thread, ~6 min in all):
mean precision of u_c on the 200 training images, soft reading BAP 85.7 / GAP 85.7 (seed 0) and
85.4 / 85.2 (seed 1); ``u_c > 0.5`` 92.1 / 91.8 and 91.2 / 91.8; box-fill floor 65.5. No class
differs by more than ~1.3 points either way: on the benchmark BAP does not raise u_c's precision,
although its attention separates object (1 - A = 0.72) from background (0.36) inside the boxes.

A trained network is kept in ``--work`` (``bap_net_<pooling>.pt``) and reused on a rerun with the
same settings; the results go to ``--work/bana_pooling.json``.

Examples::

    OMP_NUM_THREADS=1 .venv/bin/python -m wsss synth /tmp/bana_data --train 200 --val 40 --ood 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bana_pooling.py /tmp/bana_data --work /tmp/bana_pooling
    .venv/bin/python benchmarks/bana_pooling.py /tmp/bana_data --work /tmp/bp --steps 300 --thresholds 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wsss.config import to_dict
from wsss.data import open_dataset
from wsss.data.transforms import normalize, to_chw_tensor
from wsss.evaluation.bana import box_precision, format_precision_table, u_c_precision
from wsss.io import read_json, write_json
from wsss.models.bap_net import POOLINGS, background_mask, bap
from wsss.training.bana import BapConfig, load_bap_net, train_bap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="VOC-layout dataset with Annotations and SegmentationClass")
    parser.add_argument("--work", required=True, help="folder for the two networks and the JSON")
    parser.add_argument("--split", default="train", help="images trained on and scored (the supplement: train)")
    parser.add_argument("--backbone", default="resnet18_w16")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--box-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.5],
                        help="readings u_c > t besides the soft one")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace, pooling: str) -> BapConfig:
    """The demo recipe's BANA stage 1 (small backbone from scratch, step decay at 70%) at ``--steps``."""
    return BapConfig(backbone=args.backbone, output_stride=args.output_stride, weights=None, pooling=pooling,
                     steps=args.steps, milestones=(max(1, int(0.7 * args.steps)),), batch_size=args.batch_size,
                     lr=args.lr, box_samples=args.box_samples, seed=args.seed)


def trained(dataset, config: BapConfig, work: Path, device: str) -> tuple[torch.nn.Module, dict]:
    """The network for ``config``: the saved one when its settings match, else trained now."""
    path, record = work / f"bap_net_{config.pooling}.pt", work / f"bap_net_{config.pooling}.json"
    settings = to_dict(config)
    if path.is_file() and record.is_file() and read_json(record).get("config") == settings:
        print(f"{config.pooling}: reusing {path}", flush=True)
        return load_bap_net(path), read_json(record)
    start = time.perf_counter()
    result = train_bap(dataset, config, device=device, out=path, progress=True)
    losses = [h["loss"] for h in result.history]
    tail = max(1, len(losses) // 10)
    info = {"config": settings, "seconds": time.perf_counter() - start,
            "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
            "bap_share": float(np.mean([h.get("bap_share", 0.0) for h in result.history]))}
    write_json(record, info)
    return result.model, info


def attention_split(model, dataset, config: BapConfig, device: str, limit: int = 100) -> tuple[float, float]:
    """Mean BAP weight ``1 - A`` at the sample points inside the boxes of the first ``limit`` images,
    on the box's object and on background pixels (ground truth at the nearest pixel): whether the
    attention separates the two at all (BAP computed on the network's features, however trained)."""
    on_object, on_background = [], []
    model.eval()
    for image_id in dataset.ids[:limit]:
        image, (boxes, classes), truth = dataset.load_image(image_id), dataset.boxes(image_id), dataset.load_mask(image_id)
        height, width = truth.shape
        box_t = torch.from_numpy(np.asarray(boxes, np.float32))
        box_image = torch.zeros(len(box_t), dtype=torch.long)
        with torch.no_grad():
            features = model.features(to_chw_tensor(normalize(image, config.mean, config.std))[None].to(device))
            out = bap(features, box_t.to(device), box_image.to(device),
                      background_mask(box_t, box_image, 1, height, width).to(device), stride=model.output_stride,
                      grid_size=config.grid_size, cells=config.cells, box_samples=config.box_samples,
                      min_background=config.min_background, pooling="bap")
        steps = (np.arange(config.box_samples) + 0.5) / config.box_samples
        for weights, (x0, y0, x1, y1), c in zip(out.weights.cpu().numpy(), boxes, classes):
            cols = np.clip((x0 + steps * (x1 - x0)).astype(int), 0, width - 1)
            rows = np.clip((y0 + steps * (y1 - y0)).astype(int), 0, height - 1)
            at = truth[np.ix_(rows, cols)]
            on_object.append(weights[at == c])
            on_background.append(weights[at == 0])
    return float(np.concatenate(on_object).mean()), float(np.concatenate(on_background).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(args.data, split=args.split)
    thresholds = [None, *args.thresholds]
    print(f"{len(dataset)} images of {args.data} ({args.split}), {len(dataset.classes) - 1} classes; "
          f"{args.backbone} stride {args.output_stride}, {args.steps} steps x batch {args.batch_size}, "
          f"lr {args.lr}, seed {args.seed}, torch threads {torch.get_num_threads()}", flush=True)

    rows, training = {}, {}
    for pooling in ("bap", "gap"):
        assert pooling in POOLINGS
        model, info = trained(dataset, config_for(args, pooling), work, args.device)
        training[pooling] = info
        start = time.perf_counter()
        rows[pooling] = u_c_precision(model.to(args.device), dataset, thresholds=thresholds, name=pooling.upper(),
                                      device=args.device, progress=True)
        info["weight_object"], info["weight_background"] = attention_split(model, dataset, config_for(args, pooling),
                                                                           args.device)
        print(f"{pooling}: trained in {info['seconds']:.0f} s (loss {info['loss_first']:.3f} -> "
              f"{info['loss_last']:.3f}, BAP applied to {100 * info['bap_share']:.0f}% of images), "
              f"u_c scored in {time.perf_counter() - start:.0f} s; BAP weight 1 - A inside boxes on its features: "
              f"object {info['weight_object']:.3f}, background {info['weight_background']:.3f}", flush=True)
    floor = box_precision(dataset)

    print()
    for index, threshold in enumerate(thresholds):
        table = [rows["bap"][index], rows["gap"][index]]
        reading = table[0].reading
        print(format_precision_table([*table, floor] if index == 0 else table,
                                     title=f"Precision of u_c, activated = {reading}"))
        gain = 100 * (table[0].mean_precision - table[1].mean_precision)
        print(f"BAP - GAP: {gain:+.1f} points (mean); classes where BAP is higher: "
              f"{int(np.nansum(table[0].precision[1:] > table[1].precision[1:]))} of {len(dataset.classes) - 1}")
        print()
    print("box: every pixel of the boxes of each class activated (the floor; any reading)")

    write_json(work / "bana_pooling.json", {
        "data": str(args.data), "split": args.split, "images": len(dataset), "training": training,
        "rows": [row.to_dict() for pooling in ("bap", "gap") for row in rows[pooling]],
        "box": floor.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
