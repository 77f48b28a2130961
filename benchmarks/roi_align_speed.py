"""RoIAlign as matrix products (``wsss.models.roi_align``) against torchvision's CPU kernel, in
the demo's R-CNNs.

Three timings, each with torchvision's ``MultiScaleRoIAlign`` and with
``DenseMultiScaleRoIAlign`` in the same run, alternating (``--repeats`` rounds, the median kept):

* **mask rcnn update**: one training update (forward, backward, SGD step) of the demo recipe's
  Mask R-CNN (``resnet18_w16``, 64-channel FPN, 256-wide box head, 64-channel mask head, 128
  RoIs per image) on ``--batch`` random images of ``--size`` px with 2-4 boxes and masks each;
* **detector update**: the same for BBAM's Faster R-CNN (no mask head);
* **bbam heads**: what BBAM does at each step: the detector's backbone and box head on fixed
  proposals (``box_outputs``, 8 images x 50 proposals), backward to the input.

It prints seconds per call for both pools, their ratio, and the largest difference between the
two pools' losses (the same computation up to float rounding). Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/roi_align_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.ops import MultiScaleRoIAlign

from wsss.models.detector import box_outputs, build_detector
from wsss.models.mask_rcnn import build_mask_rcnn, encode_targets
from wsss.models.rcnn import scaled_anchor_sizes
from wsss.models.roi_align import DenseMultiScaleRoIAlign


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def _targets(batch: int, size: int, generator: torch.Generator, masks: bool):
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator))
        count = int(torch.randint(2, 5, (1,), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * size * 0.6
        extent = 12 + torch.rand(count, 2, generator=generator) * size * 0.35
        boxes = torch.cat([corner, (corner + extent).clamp(max=size - 1)], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, 4, (count,), generator=generator)}
        if masks:
            inside = torch.zeros(count, size, size, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                inside[i, y0:y1, x0:x1] = True
            target["masks"] = encode_targets(inside)
        targets.append(target)
    return images, targets


def _pools(heads, dense: bool):
    kind = DenseMultiScaleRoIAlign if dense else MultiScaleRoIAlign
    names = ["0", "1", "2", "3"]
    heads.box_roi_pool = kind(names, 7, 2)
    if getattr(heads, "mask_roi_pool", None) is not None:
        heads.mask_roi_pool = kind(names, 14, 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    anchors = scaled_anchor_sizes(args.size)
    generator = torch.Generator().manual_seed(0)
    rows = []

    torch.manual_seed(0)
    mask_rcnn = build_mask_rcnn("resnet18_w16", 4, fpn_channels=64, representation_size=256, mask_channels=64,
                                rois_per_image=128, anchor_sizes=anchors)
    detector = build_detector("resnet18_w16", 4, fpn_channels=64, representation_size=256, rois_per_image=128,
                              anchor_sizes=anchors)
    for name, model, masks in (("mask rcnn update", mask_rcnn, True), ("detector update", detector, False)):
        images, targets = _targets(args.batch, args.size, generator, masks)
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        model.train()
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def update(dense: bool, model=model, images=images, targets=targets, optimiser=optimiser, state=state):
            _pools(model.roi_heads, dense)
            model.load_state_dict(state)
            torch.manual_seed(1)
            losses = model(images, targets)
            total = sum(losses.values())
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            return total.item()

        rows.append((name, *_compare(update, args.repeats)))

    detector.eval()
    images = torch.rand(args.batch, 3, args.size, args.size, generator=generator)
    corner = torch.rand(args.batch, 50, 2, generator=generator) * args.size * 0.6
    proposals = [torch.cat([c, c + 10 + torch.rand(50, 2, generator=generator) * args.size * 0.35], dim=1)
                 for c in corner]

    def heads(dense: bool):
        _pools(detector.roi_heads, dense)
        inputs = images.clone().requires_grad_(True)
        logits, deltas = box_outputs(detector, inputs, [(args.size, args.size)] * args.batch, proposals)
        (logits.sum() + deltas.sum()).backward()
        return logits.sum().item()

    rows.append(("bbam heads (fwd + bwd)", *_compare(heads, args.repeats)))
    print(f"{'what':<24} {'torchvision s':>14} {'dense s':>9} {'ratio':>7} {'|diff|':>9}")
    for name, plain, dense, diff in rows:
        print(f"{name:<24} {plain:14.4f} {dense:9.4f} {plain / dense:6.2f}x {diff:9.2e}")
    return 0


def _compare(call, repeats: int) -> tuple[float, float, float]:
    """Median seconds of ``call(False)`` (torchvision) and ``call(True)`` (dense), alternating after
    one warm-up each, and the difference of their last values."""
    call(False), call(True)
    seconds = {False: [], True: []}
    values = {}
    for _ in range(repeats):
        for dense in (False, True):
            start = time.perf_counter()
            values[dense] = call(dense)
            seconds[dense].append(time.perf_counter() - start)
    return statistics.median(seconds[False]), statistics.median(seconds[True]), abs(values[True] - values[False])


if __name__ == "__main__":
    raise SystemExit(main())
