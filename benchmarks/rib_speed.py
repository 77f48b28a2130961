"""RIB speed: the reference's per-image loop against the fast implementation.

A pool of random images with random labels (1-3 of ``--num-classes``) stands in for the
dataset. For each of a few target images, the other images of every step are drawn and
augmented once (:class:`wsss.attribution.rib.OtherImageBatches`) and the same tensors go to

* ``reference_rib`` (``wsss.attribution.rib_reference``): the reference's loop: the state dict
  loaded before the image, every scale through the whole network each step (frozen stages in
  autograd mode, then detached), GNDRP as a loop over rows and classes, an update every step;
* ``compute_rib`` (``wsss.attribution.rib``): frozen-stage features of the target once per image,
  working copies of the fine-tuned parameters through ``torch.func.functional_call``, vectorised
  GNDRP, channels-last images on a CPU, no update (nor other images, nor backward) on the step
  that ends the run;
* with ``--variant FIELD=VALUE[,...]`` (repeatable), ``compute_rib`` again with those
  :class:`~wsss.attribution.rib.RibConfig` fields, e.g. ``--variant bfloat16=true``;

and the script prints seconds per image (wall and process CPU), the ratios, and the largest
difference between two sets of maps (max |a - b| / max |b| over ``high_res``): the default's
against the reference's, each variant's against the default's and the reference's. It also
times the disjoint-class search: the reference rescans the list for every image, the fast
version builds an index once.

The network is the synth recipe's classifier architecture (``resnet18_w16``, output stride 8)
with random weights (class weights drawn with a positive mean so every class has a map, as after
training), or a trained checkpoint (``--checkpoint``), on the CPU in float32. The other images are
cropped to the target's size (``--crop``, default ``--size``; the reference crops 512 for ~500 px
VOC images).

Where the time goes: almost all of it (87% of the CPU time, profiled) is the convolutions of the
last two stages, forward and backward, on the ``B`` other images and the target's loss scales,
which both versions must do. The fast version saves the frozen stages of the target (about an
eighth of a forward pass), the last step's update and the Python loops, so the ratio is modest
with every step taken (1.1-1.25x); it grows when runs stop early (``--margin``) because the
stopping step's update is skipped, and with ``--fixed-others`` (one batch reused, its frozen-stage
features computed once). ``--variant bfloat16=true`` (those convolutions in bfloat16, AVX-512
BF16) reaches about 2x the reference. Other processes share the machine: compare only ratios
from the same run, and prefer the CPU ratios. The measured table, lever by lever: docs/speed.md.

Examples::

    .venv/bin/python benchmarks/rib_speed.py --threads 1 --explode-ratio 1.0
    .venv/bin/python benchmarks/rib_speed.py --threads 1 --explode-ratio 1.0 --variant bfloat16=true
    .venv/bin/python benchmarks/rib_speed.py --images 2 --steps 4 --batch 8
    .venv/bin/python benchmarks/rib_speed.py --margin 40
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
import yaml

# the shared helpers of the AdvCAM benchmark (this folder is on sys.path when a script runs)
from advcam_speed import benchmark_net, random_image, relative_difference, timed

from wsss.attribution.rib import DisjointClassIndex, OtherImageBatches, RibConfig, compute_rib
from wsss.attribution.rib_reference import reference_rib


class RandomPool:
    """``count`` random images with 1-3 random classes each (the images made on first use)."""

    def __init__(self, count: int, size: int, num_classes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.classes = ["background", *(f"class{c}" for c in range(1, num_classes + 1))]
        self.ids = [f"img{i:05d}" for i in range(count)]
        self._labels = {i: np.sort(rng.choice(np.arange(1, num_classes + 1), size=int(rng.integers(1, 4)),
                                              replace=False)) for i in self.ids}
        self._size, self._seed, self._images = size, seed, {}

    def image_labels(self, image_id: str) -> np.ndarray:
        return self._labels[image_id]

    def load_image(self, image_id: str) -> np.ndarray:
        if image_id not in self._images:
            rng = np.random.default_rng([self._seed, int(image_id[3:])])
            self._images[image_id] = random_image(self._size, rng)
        return self._images[image_id]


def reference_disjoint_scan(pool: RandomPool, image_id: str) -> list[str]:
    """The reference's per-image search: a Python pass over every image's labels."""
    target = set(pool.image_labels(image_id).tolist())
    return [i for i in pool.ids if not target & set(pool.image_labels(i).tolist())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="target image size (square)")
    parser.add_argument("--crop", type=int, help="other images' crop (default: --size)")
    parser.add_argument("--images", type=int, default=3, help="target images")
    parser.add_argument("--pool", type=int, default=2000, help="images in the pool of other images")
    parser.add_argument("--steps", type=int, default=10, help="RIB steps (reference: 10)")
    parser.add_argument("--batch", type=int, default=20, help="other images per step (reference: 20)")
    parser.add_argument("--margin", type=float, default=600.0, help="margin stop (reference: 600)")
    parser.add_argument("--lr", type=float, default=8e-6, help="learning rate (reference: 8e-6)")
    parser.add_argument("--explode-ratio", type=float, default=0.7,
                        help="explode stop (reference: 0.7; random weights give diffuse maps that "
                             "explode at step 1: use 1.0 to run every step)")
    parser.add_argument("--fixed-others", action="store_true", help="one batch of other images, reused")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=8, help="classes of the random network (synth: 8)")
    parser.add_argument("--checkpoint", help="a trained classifier instead of random weights")
    parser.add_argument("--skip-reference", action="store_true", help="time the fast version only")
    parser.add_argument("--variant", action="append", default=[], metavar="FIELD=VALUE[,...]",
                        help="also time the fast version with these RibConfig fields (repeatable), "
                             "e.g. bfloat16=true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = benchmark_net(args.checkpoint, args.num_classes, positive_classifier=True).eval()
    crop = args.crop or args.size
    config = RibConfig(steps=args.steps, batch_size=args.batch, margin=args.margin, lr=args.lr,
                       explode_ratio=args.explode_ratio,
                       other_crop_size=crop, other_resize_long=(int(crop * 0.875), int(crop * 1.125)),
                       resample_others=not args.fixed_others)
    variants = [(text, dataclasses.replace(config, **_fields(text))) for text in args.variant]
    pool = RandomPool(args.pool, args.size, net.num_classes, args.seed)

    # the disjoint-class search: per image (reference) against an index built once
    _, (scan_wall, _) = timed(lambda: [reference_disjoint_scan(pool, i) for i in pool.ids[:20]], 20)
    index, (index_wall, _) = timed(
        lambda: DisjointClassIndex.from_source(pool, num_classes=net.num_classes), 1)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {net.backbone.name} OS{net.output_stride}, "
          f"{'trained' if args.checkpoint else 'random'} weights, float32, {args.size} px, "
          f"{args.steps} steps, B={args.batch} (crop {crop}), margin {args.margin:g}, "
          f"explode ratio {args.explode_ratio:g}, "
          f"{'fixed' if args.fixed_others else 'fresh'} other images")
    print(f"disjoint search over {len(pool.ids)} images: reference scan {scan_wall * 1e3:.1f} ms/image; "
          f"index built once in {index_wall * 1e3:.0f} ms, "
          f"then {_time_lookup(index, pool) * 1e3:.2f} ms/image")

    # warm-up (the first optimizer imports torch._dynamo, seconds, once per process)
    tiny = np.zeros((16, 16, 3), dtype=np.uint8)
    compute_rib(net, tiny, [1], None, dataclasses.replace(config, steps=2))

    rows, variant_rows = [], {text: [] for text, _ in variants}
    for image_id in pool.ids[: args.images]:
        image, keys = pool.load_image(image_id), pool.image_labels(image_id)
        drawn = OtherImageBatches(pool, index, image_id, keys, config, seed=args.seed)
        batches = [drawn[t] for t in range(len(drawn))]  # the same tensors for both
        if args.fixed_others:
            batches = batches[0]
        fast, (fast_wall, fast_cpu) = timed(lambda: compute_rib(net, image, keys, batches, config), 1)
        line = (f"{image_id} classes {keys.tolist()}: fast {fast_wall:6.2f} s (cpu {fast_cpu:6.2f}), "
                f"{fast.steps} steps, stop {fast.stop}")
        if not args.skip_reference:
            loop, (loop_wall, loop_cpu) = timed(lambda: reference_rib(net, image, keys, batches, config), 1)
            difference = relative_difference(fast.high_res, loop.high_res)
            rows.append((loop_wall / fast_wall, loop_cpu / fast_cpu, difference))
            line += (f"; reference {loop_wall:6.2f} s (cpu {loop_cpu:6.2f}), {loop.steps} steps, "
                     f"ratio {loop_wall / fast_wall:4.2f}x (cpu {loop_cpu / fast_cpu:4.2f}x), "
                     f"max rel. diff {difference:.1e}")
        print(line, flush=True)
        for text, variant in variants:
            other, (wall, cpu) = timed(lambda: compute_rib(net, image, keys, batches, variant), 1)
            line = (f"  {text}: {wall:6.2f} s (cpu {cpu:6.2f}), {other.steps} steps, stop {other.stop}, "
                    f"{fast_wall / wall:4.2f}x the default (cpu {fast_cpu / cpu:4.2f}x), "
                    f"max rel. diff to the default {relative_difference(other.high_res, fast.high_res):.1e}")
            if not args.skip_reference:
                variant_rows[text].append((loop_wall / wall, loop_cpu / cpu,
                                           relative_difference(other.high_res, loop.high_res)))
                line += f"; {loop_wall / wall:4.2f}x the reference (cpu {loop_cpu / cpu:4.2f}x)"
            print(line, flush=True)
    for name, found in [("default", rows), *variant_rows.items()]:
        if found:
            print(f"{name}: median ratio to the reference {statistics.median(r[0] for r in found):4.2f}x "
                  f"(cpu {statistics.median(r[1] for r in found):4.2f}x), "
                  f"max rel. diff {max(r[2] for r in found):.1e}")


def _fields(text: str) -> dict:
    """``"a=1,b=true"`` -> ``{"a": 1, "b": True}`` (values read as YAML)."""
    fields = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        fields[name.strip()] = yaml.safe_load(value)
    return fields


def _time_lookup(index: DisjointClassIndex, pool: RandomPool) -> float:
    start = time.perf_counter()
    for image_id in pool.ids[:20]:
        index.disjoint(pool.image_labels(image_id))
    return (time.perf_counter() - start) / 20


if __name__ == "__main__":
    main()
