"""The CPU's own fast paths for the demo's networks (issue 14): memory format, bfloat16, compile.

For the three networks the demo trains on the CPU, at the demo's batch and crop (the packaged
``synth/demo`` recipe: the CAM classifier and IRN on ``resnet18_w16``, 8 images of 128 px; the
segmentation network ``deeplab_v2_resnet18_w16``, 8 crops of 128 px), it times one training
update (forward, loss, backward, SGD step) and the segmentation network's multi-scale inference
of one 128-px image (the recipe's scales, each with its flip), each in (through
:class:`wsss.runtime.FastPaths`, what the trainers use):

* ``float32``: contiguous (NCHW) tensors, the baseline;
* ``channels_last``: model and inputs in NHWC (``torch.channels_last``);
* ``bf16``: the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``channels_last+bf16``: both;
* ``compile`` (with ``--compile``): ``torch.compile`` of the float32 model (reported as failed
  when it does not build), its build time printed apart. Left out by default: on the 2-core
  machine it was measured building the classifier's update for 323 s, which then ran at 0.43x
  the baseline's speed (docs/speed.md).

It prints seconds per call (the median of ``--repeats`` timed calls after ``--warmup``
untimed ones) and the ratio to the baseline. The machine's cores are shared with other
processes: absolute times vary from run to run, so only the ratios within one run count.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_fast_paths.py --threads 1 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import recipe_section
from wsss.runtime import FastPaths, seed_everything

VARIANTS = ("float32", "channels_last", "bf16", "channels_last+bf16", "compile")
NUM_CLASSES = 9  # the generated benchmark's 8 classes and background


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--recipe", default="synth/demo")
    parser.add_argument("--only", default="classifier,irn,segmentation,inference",
                        help="comma-separated cases to run")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of building)")
    return parser.parse_args(argv)


def _classifier_case(recipe: str, batch: int) -> tuple[torch.nn.Module, Callable, dict]:
    from wsss.models.cam_net import CamNet
    from wsss.training.classifier import ClassifierConfig

    config = recipe_section(recipe, "classifier", ClassifierConfig)
    model = CamNet(config.backbone, NUM_CLASSES - 1, output_stride=config.output_stride, dilated=config.dilated,
                   freeze_bn=config.freeze_bn, frozen_stages=config.frozen_stages)
    crop = config.crop_size or 128
    data = {"image": torch.randn(batch or config.batch_size, 3, crop, crop),
            "label": (torch.rand(batch or config.batch_size, NUM_CLASSES - 1) < 0.3).float()}

    def loss(model: torch.nn.Module, data: dict) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(model(data["image"]).float(), data["label"])

    return model, loss, data


def _irn_case(recipe: str, batch: int) -> tuple[torch.nn.Module, Callable, dict]:
    from wsss.models.irn import IRNet
    from wsss.training.irn import LABEL_STRIDE, AffinityDisplacementLoss, IrnConfig

    config = recipe_section(recipe, "irn", IrnConfig)
    model = IRNet(config.backbone, output_stride=config.output_stride, dilated=config.dilated,
                  head_width=config.head_width)
    loss_fn = AffinityDisplacementLoss(config.radius)
    n, crop = batch or config.batch_size, config.crop_size
    side = crop // LABEL_STRIDE
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 255]), size=(n, side, side), p=[0.5, 0.2, 0.1, 0.2])
    data = {"image": torch.randn(n, 3, crop, crop), "label": torch.from_numpy(labels.astype(np.int64))}

    def loss(model: torch.nn.Module, data: dict) -> torch.Tensor:
        edge, displacement = model(data["image"])
        return loss_fn(edge.float(), displacement.float(), data["label"]).total

    return model, loss, data


def _segmentation_case(recipe: str, batch: int) -> tuple[torch.nn.Module, Callable, dict]:
    from wsss.models.deeplab import create_segmentation_model
    from wsss.segmentation.losses import make_loss
    from wsss.segmentation.train import SegTrainConfig

    config = recipe_section(recipe, "segmentation", SegTrainConfig)
    model = create_segmentation_model(config.model, NUM_CLASSES, classifier=config.classifier)
    loss_fn = make_loss(config.loss, **config.loss_options)
    n, crop = batch or config.batch_size, config.crop_size or 128
    data = {"image": torch.randn(n, 3, crop, crop),
            "mask": torch.randint(0, NUM_CLASSES, (n, crop, crop))}

    def loss(model: torch.nn.Module, data: dict) -> torch.Tensor:
        return loss_fn(model(data["image"]).float(), data["mask"])

    return model, loss, data


TRAINING_CASES = {"classifier": _classifier_case, "irn": _irn_case, "segmentation": _segmentation_case}


def _fast_paths(variant: str) -> FastPaths:
    """The library's settings for ``variant`` (``compile``: float32, contiguous)."""
    return FastPaths(channels_last=variant.startswith("channels_last"),
                     autocast="bf16" if variant.endswith("bf16") else "none")


def _median_seconds(call: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_training(name: str, variant: str, args: argparse.Namespace) -> tuple[float, float | None]:
    """Seconds per update of case ``name`` in ``variant``; and the compile time, for ``compile``."""
    seed_everything(0)
    model, loss_fn, data = TRAINING_CASES[name](args.recipe, 0)
    fast = _fast_paths(variant)
    fast.prepare(model)
    data = {key: fast.inputs(value) for key, value in data.items()}
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = model
    build = None
    if variant == "compile":
        forward = torch.compile(model)
        start = time.perf_counter()
        step_once(forward, loss_fn, data, optimizer, fast)
        build = time.perf_counter() - start
    return _median_seconds(lambda: step_once(forward, loss_fn, data, optimizer, fast),
                           args.repeats, args.warmup), build


def step_once(model: torch.nn.Module, loss_fn: Callable, data: dict, optimizer: torch.optim.Optimizer,
              fast: FastPaths) -> None:
    with fast.autocast_on("cpu"):
        loss = loss_fn(model, data)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_inference(variant: str, args: argparse.Namespace) -> tuple[float, float | None]:
    """Seconds of the recipe's multi-scale, flipped prediction of one 128-px image."""
    from wsss.methods.chain import SegInferenceConfig
    from wsss.segmentation.inference import predict_logits

    seed_everything(0)
    model, _, _ = _segmentation_case(args.recipe, 1)
    model.eval()
    fast = _fast_paths(variant)
    fast.prepare(model)
    scales = recipe_section(args.recipe, "seg_inference", SegInferenceConfig).scales
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    forward = model
    build = None

    def call() -> None:
        with torch.no_grad():
            predict_logits(forward, image, device="cpu", scales=scales, flip=True, fast_paths=fast)

    if variant == "compile":
        forward = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        call()
        build = time.perf_counter() - start
    return _median_seconds(call, args.repeats, args.warmup), build


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    variants = [v for v in VARIANTS if v != "compile" or args.compile]
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} calls after "
          f"{args.warmup} warm-up; oneDNN bf16 supported: {torch.backends.mkldnn.is_available() and _bf16_supported()}")
    print("The cores are shared with other processes: compare the ratios within this run, not the seconds "
          "across runs.")
    print(f"{'case':<20} {'variant':<20} {'s/call':>8} {'speed-up':>8}  note")
    for case in cases:
        baseline = None
        what = "inference, 1 image" if case == "inference" else f"{case} update"
        for variant in variants:
            try:
                if case == "inference":
                    seconds, build = time_inference(variant, args)
                else:
                    seconds, build = time_training(case, variant, args)
            except Exception as exc:  # a variant that does not run here is reported, not fatal
                print(f"{what:<20} {variant:<20} {'-':>8} {'-':>8}  failed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:80] if str(exc) else ''}", flush=True)
                continue
            if baseline is None:
                baseline = seconds
            note = f"compiled in {build:.1f} s" if build is not None else ""
            print(f"{what:<20} {variant:<20} {seconds:8.4f} {baseline / seconds:7.2f}x  {note}", flush=True)
    return 0


def _bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
