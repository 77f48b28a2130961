"""BBAM speed: the reference's full detector forward per object and step against the heads on
fixed proposals, one object at a time and batched.

One random image of ``--size`` pixels with ``--objects`` boxes; each box gets ``--kept`` jittered
proposals (taken as kept, so every way optimises the same problem) and a mask at the adaptive
stride (``scale="image"``). The mask of every object is optimised for ``--steps`` steps in three
ways:

* **full**: per object and step, what the reference does (``BBAM_training_images_multi.py``
  L197-216): the detector's transform on the image (normalise, resize if set, pad), the mask
  multiplied on, the backbone, the RPN (run and thrown away, as the reference's
  ``fixed_proposals`` hook does), then the RoI heads on the fixed proposals;
* **heads**: per object, :func:`wsss.attribution.bbam.optimise_masks` on one object: the image
  normalised once, backbone and RoI heads only;
* **batched**: ``optimise_masks`` on all objects in one batch (``objects_per_batch``).

It prints seconds per object and step for each, the per-object time of the reference schedule
(300 steps) plus the proposal selection, the ratios full / heads (the gain of the heads on fixed
proposals) and heads / batched (the gain of batching), and the largest difference between the
masks of the one-by-one and batched runs (they are the same computation).

The detector is a random one of the benchmark's size (``resnet18_w16`` with a 64-channel FPN and
a 256-wide head by default), its predictor biased so that proposals are classified as their box's
class, or a trained one (``--detector``, from ``train_detector``).

Examples::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bbam_speed.py --threads 1
    .venv/bin/python benchmarks/bbam_speed.py --size 256 --objects 8 --kept 20
    .venv/bin/python benchmarks/bbam_speed.py --backbone resnet50 --fpn-channels 256 --representation 1024
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from wsss.attribution.bbam import (
    BbamConfig,
    ObjectProblem,
    detector_input,
    initial_mask,
    jitter_boxes,
    mask_shape,
    mask_stride,
    optimise_masks,
    prepare_objects,
    tv_norm,
    upsample_mask,
)
from wsss.models.detector import build_detector, head_outputs


def random_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random RGB image (upsampled noise)."""
    coarse = rng.integers(0, 256, size=(size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
    image = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                          align_corners=False)[0].permute(1, 2, 0)
    return np.clip(image.numpy() + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)


def random_boxes(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` boxes of 15-60% of the side each way."""
    sides = rng.uniform(0.15, 0.6, size=(count, 2)) * size
    corners = rng.uniform(0, 1, size=(count, 2)) * (size - sides)
    return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


def build(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    if args.detector:
        from wsss.training.detector import load_detector

        return load_detector(args.detector).requires_grad_(False)
    torch.manual_seed(args.seed)
    detector = build_detector(args.backbone, num_classes, fpn_channels=args.fpn_channels,
                              representation_size=args.representation,
                              anchor_sizes=tuple(max(4, round(s * args.size / 800)) for s in (32, 64, 128, 256, 512)))
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[0] = -20.0  # proposals are never background
    return detector.eval().requires_grad_(False)


def problems_for(detector, tensor, input_size, boxes, classes, config) -> list[ObjectProblem]:
    """Every object with ``config.proposals`` jittered boxes taken as kept, and its initial mask."""
    generator = torch.Generator().manual_seed(0)
    coder = detector.roi_heads.box_coder
    problems = []
    with torch.no_grad():
        features = detector.backbone(tensor)
        for box, cls in zip(torch.from_numpy(boxes), classes):
            jittered = jitter_boxes(box, config.proposals, config.jitter, input_size, generator).to(tensor.device)
            logits, deltas = head_outputs(detector, features, [input_size], [jittered])
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            stride = mask_stride(area, input_size[0] * input_size[1], input_size, scale="image")
            regressed = coder.decode_single(deltas[:, cls], jittered)
            problems.append(ObjectProblem(cls=int(cls), proposals=jittered, deltas=deltas[:, cls],
                                          probabilities=logits.softmax(dim=1)[:, cls],
                                          mask=initial_mask(regressed, stride, mask_shape(input_size, stride))))
    return problems


def full_forward_steps(detector, image01: torch.Tensor, problem: ObjectProblem, config: BbamConfig) -> torch.Tensor:
    """The reference's loop for one object: transform, mask, backbone, RPN (discarded), RoI heads."""
    mask = problem.mask.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([mask], lr=config.lr)
    for _ in range(config.steps):
        images, _ = detector.transform([image01])
        (height, width) = images.image_sizes[0]
        pad = (0, images.tensors.shape[-1] - width, 0, images.tensors.shape[-2] - height)
        perturbed = images.tensors * F.pad(upsample_mask(mask, (height, width)), pad)[None, None]
        features = detector.backbone(perturbed)
        detector.rpn(images, features)  # run and thrown away, as the reference's hook does
        logits, deltas = head_outputs(detector, features, images.image_sizes, [problem.proposals])
        probability = logits.softmax(dim=1)[:, problem.cls]
        box = (deltas[:, problem.cls] - problem.deltas).abs().mean(dim=1)
        loss = (config.box_weight * box + config.class_weight * (probability - problem.probabilities).abs()).mean()
        loss = loss + config.l1_weight * mask.abs().sum() + config.tv_weight * tv_norm(mask, config.tv_beta)
        (gradient,) = torch.autograd.grad(loss, [mask])
        mask.grad = gradient
        optimiser.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
    return mask.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--kept", type=int, default=100, help="proposals per object (the reference keeps <= 100)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed per way (the reference runs 300)")
    parser.add_argument("--backbone", default="resnet18_w16")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--representation", type=int, default=256)
    parser.add_argument("--detector", default=None, help="a trained detector file instead of a random one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_classes = 4
    device = torch.device(args.device)
    detector = build(args, num_classes).to(device)
    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    rng = np.random.default_rng(args.seed)
    image = random_image(args.size, rng)
    boxes = random_boxes(args.size, args.objects, rng)
    classes = rng.integers(1, num_classes, size=args.objects)
    config = BbamConfig(proposals=args.kept, steps=args.steps, objects_per_batch=args.objects)
    tensor, input_size = detector_input(detector, image, device)
    problems = problems_for(detector, tensor, input_size, boxes, classes, config)
    image01 = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device).float() / 255.0

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    # warm-up (first-call allocations, RoIAlign's scale setup)
    optimise_masks(detector, tensor, input_size, problems[:1], config.replace(steps=1))
    full_forward_steps(detector, image01, problems[0], config.replace(steps=1))

    start = clock()
    for problem in problems:
        full_forward_steps(detector, image01, problem, config)
    full = (clock() - start) / (args.objects * args.steps)

    start = clock()
    single = [optimise_masks(detector, tensor, input_size, [problem], config)[0] for problem in problems]
    heads = (clock() - start) / (args.objects * args.steps)

    start = clock()
    batched = optimise_masks(detector, tensor, input_size, problems, config)
    batch = (clock() - start) / (args.objects * args.steps)

    select = BbamConfig(iou_thresholds=(0.5, 0.0))
    start = clock()
    prepare_objects(detector, tensor, input_size, torch.from_numpy(boxes), classes, select,
                    torch.Generator().manual_seed(0), "image")
    selection = (clock() - start) / args.objects

    difference = max(float((a - b).abs().max()) for a, b in zip(single, batched))
    cells = [tuple(p.mask.shape) for p in problems]
    print(f"detector {args.detector or args.backbone + ' (random)'}, image {args.size}x{args.size}, "
          f"{args.objects} objects x {args.kept} proposals, masks {cells}, {args.threads} thread(s) on {device}, "
          f"{args.steps} steps timed")
    print(f"  seconds per object and step: full {full:.4f}  heads {heads:.4f}  batched {batch:.4f}")
    print(f"  selection from {select.proposals} jittered boxes: {selection:.3f} s per object")
    print(f"  reference schedule (300 steps) per object: full {300 * full + selection:.1f} s  "
          f"heads {300 * heads + selection:.1f} s  batched {300 * batch + selection:.1f} s")
    print(f"  gain of heads on fixed proposals (full / heads): {full / heads:.2f}x")
    print(f"  gain of batching (heads / batched): {heads / batch:.2f}x   overall (full / batched): {full / batch:.2f}x")
    print(f"  largest |one-by-one - batched| mask difference: {difference:.2e}")


if __name__ == "__main__":
    main()
