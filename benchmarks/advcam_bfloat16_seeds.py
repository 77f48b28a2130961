"""AdvCAM's seeds in float32 and with ``bfloat16=True``: how much the precision moves them.

Computes AdvCAM maps of the first ``--images`` images of a split with a trained classifier, once
in float32 and once with ``advcam.bfloat16``, scores both map stores over background thresholds
(``--thresholds``, the oracle sweep of :func:`wsss.evaluation.sweep.evaluate_maps`) and prints
the best seed mIoU of each, the largest mIoU difference at any threshold, the largest relative
map difference (``high_res``, max |a - b| / max |b|) and the CPU time of each.

Measured (docs/speed.md, "AdvCAM", "What bfloat16 changes"): see there.

Example::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/advcam_bfloat16_seeds.py \\
        --checkpoint /work/lab/quick7/work/classifier.pt --data /work/lab/quick7/data \\
        --split /work/lab/quick7/seed_split.txt --images 12 --scale image
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsss.attribution.advcam import AdvCamConfig, make_advcams
from wsss.data.voc import VOCDataset
from wsss.evaluation.sweep import evaluate_maps
from wsss.models.cam_net import load_cam_net_for
from wsss.stores.maps import MapStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained CAM classifier")
    parser.add_argument("--data", required=True, help="its dataset (VOC layout, with masks)")
    parser.add_argument("--split", default="train", help="split name or file the images come from")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=27)
    parser.add_argument("--scale", choices=("reference", "image"), default="image")
    parser.add_argument("--intended-weight", action="store_true",
                        help="reference_scale_weight=False (the demo recipes' setting)")
    parser.add_argument("--thresholds", default="0.05:0.50:0.01")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dataset = VOCDataset(args.data, args.split)
    ids = list(dataset.ids[:args.images])
    net = load_cam_net_for(args.checkpoint, dataset).eval()
    config = AdvCamConfig(iterations=args.iterations, reference_scale_weight=not args.intended_weight)
    with tempfile.TemporaryDirectory() as folder:
        sweeps, stores, seconds = {}, {}, {}
        for name, bfloat16 in (("float32", False), ("bfloat16", True)):
            stores[name] = MapStore(Path(folder) / name)
            start = time.process_time()
            make_advcams(net, dataset, stores[name], ids=ids, progress=False, scale=args.scale,
                         config=AdvCamConfig(**{**config.__dict__, "bfloat16": bfloat16}))
            seconds[name] = (time.process_time() - start) / len(ids)
            sweeps[name] = evaluate_maps(dataset, stores[name], ids, args.thresholds, None, None, progress=False)
        differences = []
        for image_id in ids:
            exact, rounded = (torch.from_numpy(np.asarray(stores[n].load(image_id).high_res)) for n in
                              ("float32", "bfloat16"))
            peak = float(exact.abs().max())
            differences.append(float((rounded - exact).abs().max()) / peak if peak > 0 else float("nan"))
    thresholds, exact_curve = sweeps["float32"].curve
    _, rounded_curve = sweeps["bfloat16"].curve
    gap = np.abs(rounded_curve - exact_curve)
    print(f"{len(ids)} images of {args.split}, {args.iterations} iterations, scale {args.scale}, "
          f"reference_scale_weight {config.reference_scale_weight}")
    for name, curve in (("float32", exact_curve), ("bfloat16", rounded_curve)):
        best = int(np.nanargmax(curve))
        print(f"  {name:8s}: best seed mIoU {100 * curve[best]:.2f} at {thresholds[best]:.2f}, "
              f"CPU {seconds[name]:.2f} s/image")
    worst = int(np.nanargmax(gap))
    print(f"  largest mIoU difference {100 * gap[worst]:.2f} at {thresholds[worst]:.2f} "
          f"(mean {100 * np.nanmean(gap):.2f}); bfloat16 / float32 CPU {seconds['bfloat16'] / seconds['float32']:.2f}x")
    worst_image = int(np.nanargmax(differences))
    print(f"  maps, max rel. diff {np.nanmax(differences):.1e} ({ids[worst_image]}; median "
          f"{np.nanmedian(differences):.1e}); per image: {' '.join(f'{d:.1e}' for d in differences)}")


if __name__ == "__main__":
    main()
