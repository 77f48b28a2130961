"""AdvCAM speed: the reference's per-class loop, the batched implementation, and the bare passes.

For each image size, a few random images with 1, 2 and 3 labelled classes go through

* ``reference_advcam`` (``wsss.attribution.advcam_reference``): one class and one scale at a
  time, a flip pair per forward, a Grad-CAM hook backward and a loss backward per step, both with
  parameter gradients -- the reference's computation;
* ``compute_advcam_batch`` (``wsss.attribution.advcam``): all classes of ``--per-batch``
  same-size images in one batch, one forward and one input-only backward per step;
* the bare passes (:func:`bare_passes`): the network passes the batched version runs and
  nothing else -- the same batches on the same climbing copy (BatchNorm folded, channels-last),
  per step one forward and one backward of a plain sum to the input (none at the last step,
  whose gradient AdvCAM does not use): what any implementation computing these maps this way
  must spend;

and the script prints seconds per image (wall and process CPU), the ratios batched / bare,
reference / batched and reference / bare, and the largest difference between the batched and the
reference maps (max |a - b| / max |b| over ``high_res``). The network is the synth recipe's
classifier architecture (``resnet18_w16``, output stride 8) with random weights, or a trained
checkpoint (``--checkpoint``), run on the CPU in float32. Only ratios measured in one run mean
anything; on a machine shared with other processes, take the CPU-time ratios (with one thread the
CPU time is the wall time of an idle machine).

Measured (docs/speed.md, "AdvCAM"; 2 cores shared with other processes, load 5 to 12, so CPU time;
``OMP_NUM_THREADS=1 ... --threads 1``, 3 images, classes 1, 2, 3, 3 per batch)::

    size    iterations  CPU s/image: reference  batched  bare   batched/bare  reference/batched  reference/bare
    128 px  27                       25.96      7.87   7.80   1.01          3.30               3.33
    320 px   9                       45.91     17.45  17.00   1.03          2.63               2.70

With ``--bfloat16`` the batched version also runs with ``bfloat16=True`` (the climb's network
passes under bfloat16 autocast), and the script prints its time, the ratios bfloat16 / batched
and reference / bfloat16 and how far its maps are from float32's. Measured in the same way::

    size    iterations  CPU s/image: reference  batched  bfloat16  bfloat16/batched  reference/bfloat16  max rel. diff
    128 px  27                       24.62      7.64     4.30      0.56              5.73                8.0e-2
    320 px   9                       46.79     16.50     8.91      0.54              5.25                1.0e-1

The batched version runs at its bare passes, and those run at about 84 GFLOP/s of convolution,
where one large convolution alone reaches about 100 on this core (AVX-512). The reference spends
a forward and two full backward passes (input and parameter gradients) per class and step, 2.5
times the batched version's arithmetic, on batches of two, which run less efficiently on small
images. So reference / batched is about 3 on small images and falls towards 2.5 on large ones;
the issue's 5x would need fewer operations than one forward and one input backward per step,
i.e. other maps.

In float32 the two differ by a few percent: batch size and BatchNorm folding change the
convolutions' rounding, and AdvCAM's map is discontinuous in the image (the counts N_b of positive
pixels and the mask M jump) while 27 normalised gradient steps amplify small differences. The
reference differs from itself by as much when run on a BatchNorm-folded copy of the same network
(``--noise-floor``). In float64 (``--float64``, slow) the maps agree to rounding.

Examples::

    .venv/bin/python benchmarks/advcam_speed.py --threads 1
    .venv/bin/python benchmarks/advcam_speed.py --threads 2 --sizes 128
    .venv/bin/python benchmarks/advcam_speed.py --sizes 320 --iterations 12
    .venv/bin/python benchmarks/advcam_speed.py --threads 1 --sizes 128 --bfloat16
    .venv/bin/python benchmarks/advcam_speed.py --checkpoint /tmp/cam_exp/b8.pt --data /tmp/synth_cam
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from wsss.attribution.advcam import AdvCamConfig, climbing_copy, climbing_layout, compute_advcam_batch, scale_schedule
from wsss.attribution.advcam_reference import reference_advcam
from wsss.attribution.cam import multiscale_inputs
from wsss.models.cam_net import CamNet, load_cam_net


def random_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random RGB image (upsampled noise), closer to a photo than white noise."""
    coarse = rng.integers(0, 256, size=(size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None],
                                            size=(size, size), mode="bilinear", align_corners=False)
    image = image[0].permute(1, 2, 0)
    return np.clip(image.numpy() + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)


def build_images(size: int, count: int, num_classes: int, seed: int, data: str | None):
    """``count`` images with 1, 2, 3, 1, ... classes (random, or the dataset's first images)."""
    rng = np.random.default_rng(seed)
    if data:
        from wsss.data.voc import VOCDataset

        dataset = VOCDataset(data, "train")
        picked = []
        for wanted in range(count):
            want = wanted % 3 + 1
            image_id = next(i for i in dataset.ids if len(dataset.image_labels(i)) == want
                            and i not in [p[0] for p in picked])
            picked.append((image_id, dataset.load_image(image_id), dataset.image_labels(image_id)))
        return [(image, keys) for _, image, keys in picked]
    images = []
    for index in range(count):
        keys = np.sort(rng.choice(np.arange(1, num_classes + 1), size=index % 3 + 1, replace=False))
        images.append((random_image(size, rng), keys))
    return images


def timed(function, count: int):
    """``function()`` and its (wall, process CPU) seconds divided by ``count``. On a shared machine
    the CPU time is the steadier number (with one thread it is the wall time of an idle machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, ((time.perf_counter() - wall) / count, (time.process_time() - cpu) / count)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def benchmark_net(checkpoint: str | None, num_classes: int, positive_classifier: bool = False) -> CamNet:
    """A trained classifier, or the synth recipe's architecture (``resnet18_w16``, output stride
    8) with random weights and random but non-trivial BatchNorm, as a trained net has; with
    ``positive_classifier`` the class weights get a positive mean so every class has a map."""
    if checkpoint:
        return load_cam_net(checkpoint)
    net = CamNet("resnet18_w16", num_classes, output_stride=8, freeze_bn=False, frozen_stages=0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.2, 0.2)
        if positive_classifier:
            net.classifier.weight.normal_(0.05, 0.1)
    return net


def bare_passes(net: CamNet, images: list[tuple[np.ndarray, np.ndarray]], config: AdvCamConfig) -> None:
    """The network passes the batched version runs, and nothing else: the same batches (every
    class of ``config.images_per_batch`` same-size images, ``max_batch_pairs`` at a time), on the
    same climbing copy in the same memory format, per step one forward and (except the last
    step, whose gradient AdvCAM does not need) one backward to the input only, of a plain sum."""
    climber = climbing_copy(net)
    dtype = climber.classifier.weight.dtype
    per_batch = config.images_per_batch
    for start in range(0, len(images), per_batch):
        group = images[start:start + per_batch]
        schedule = scale_schedule(config)
        inputs = [multiscale_inputs(image, [s for s, _, _ in schedule], flip=config.flip) for image, _ in group]
        owner = [i for i, (_, keys) in enumerate(group) for _ in keys]
        chunk = config.max_batch_pairs or len(owner)
        for index, (_, iterations, _) in enumerate(schedule):
            pairs = torch.stack([inputs[i][index] for i in owner]).to(dtype=dtype)
            layout = climbing_layout(pairs.device)
            for first in range(0, len(owner), chunk):
                image = pairs[first:first + chunk].flatten(0, 1).contiguous(memory_format=layout)
                for step in range(iterations):
                    last = step == iterations - 1
                    with torch.set_grad_enabled(not last):
                        image = image.detach().requires_grad_(not last)
                        logits = climber.class_maps(image)
                    if not last:
                        torch.autograd.grad(logits.sum(), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 320], help="image sizes (square)")
    parser.add_argument("--images", type=int, default=3, help="images per size (1, 2, 3, 1, ... classes)")
    parser.add_argument("--per-batch", type=int, default=3, help="images per batch in the batched run")
    parser.add_argument("--iterations", type=int, default=27, help="AdvCAM iterations (reference: 27)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=8, help="classes of the random network (synth: 8)")
    parser.add_argument("--checkpoint", help="a trained classifier instead of random weights")
    parser.add_argument("--data", help="with --checkpoint: take labelled images from this dataset")
    parser.add_argument("--float64", action="store_true", help="run both in float64 (slow)")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also time the batched version with bfloat16=True and compare its maps with float32's")
    parser.add_argument("--skip-reference", action="store_true", help="time the batched run only")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also run the reference on a BatchNorm-folded copy (same function, other "
                             "rounding) and print how far its maps move")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = benchmark_net(args.checkpoint, args.num_classes)
    # the reference's Net.train() (called by its model.eval()) freezes conv1 and bn1; every other
    # parameter gets a gradient in both of its backward passes
    net.backbone.conv1.requires_grad_(False)
    net.backbone.bn1.requires_grad_(False)
    net.eval()
    if args.float64:
        net.double()
    config = AdvCamConfig(iterations=args.iterations, images_per_batch=args.per_batch)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {net.backbone.name} OS{net.output_stride}, "
          f"{'trained' if args.checkpoint else 'random'} weights, "
          f"{'float64' if args.float64 else 'float32'}, {args.iterations} iterations")
    for size in args.sizes:
        data = args.data if args.checkpoint else None
        images = build_images(size, args.images, net.num_classes, args.seed, data)
        classes = [len(k) for _, k in images]
        size = images[0][0].shape[0] if args.data else size

        def run_batched(settings: AdvCamConfig = config):
            out = []
            for start in range(0, len(images), args.per_batch):
                group = images[start:start + args.per_batch]
                out += compute_advcam_batch(net, [i for i, _ in group], [k for _, k in group], config=settings)
            return out

        # warm-up: oneDNN builds its kernels for each new shape on first use; not timed
        short = dataclasses.replace(config, iterations=2)
        bare_passes(net, images, short)
        compute_advcam_batch(net, [i for i, _ in images[:args.per_batch]], [k for _, k in images[:args.per_batch]],
                             config=short)
        rounded_config = dataclasses.replace(config, bfloat16=True)
        if args.bfloat16:
            compute_advcam_batch(net, [i for i, _ in images[:args.per_batch]],
                                 [k for _, k in images[:args.per_batch]], config=dataclasses.replace(short, bfloat16=True))
        _, (bare_wall, bare_cpu) = timed(lambda: bare_passes(net, images, config), len(images))
        batched, (batched_wall, batched_cpu) = timed(run_batched, len(images))
        line = (f"{size:4d} px, classes {classes}: bare passes {bare_wall:6.2f} s/image (cpu {bare_cpu:6.2f}), "
                f"batched {batched_wall:6.2f} (cpu {batched_cpu:6.2f}), batched / bare "
                f"{batched_wall / bare_wall:4.2f}x (cpu {batched_cpu / bare_cpu:4.2f}x)")
        if args.bfloat16:
            rounded, (rounded_wall, rounded_cpu) = timed(lambda: run_batched(rounded_config), len(images))
            moved = [relative_difference(r.high_res, b.high_res) for r, b in zip(rounded, batched)]
            line += (f", bfloat16 {rounded_wall:6.2f} (cpu {rounded_cpu:6.2f}), bfloat16 / batched "
                     f"{rounded_wall / batched_wall:4.2f}x (cpu {rounded_cpu / batched_cpu:4.2f}x), bfloat16 vs "
                     f"batched max rel. diff {max(moved):.1e} (median {statistics.median(moved):.1e})")
        if not args.skip_reference:
            reference, (reference_wall, reference_cpu) = timed(
                lambda: [reference_advcam(net, image, keys, config=config) for image, keys in images],
                len(images))
            differences = [relative_difference(b.high_res, r.high_res) for b, r in zip(batched, reference)]
            line += (f", reference {reference_wall:6.2f} (cpu {reference_cpu:6.2f}), reference / batched "
                     f"{reference_wall / batched_wall:4.2f}x (cpu {reference_cpu / batched_cpu:4.2f}x), "
                     f"reference / bare {reference_wall / bare_wall:4.2f}x (cpu {reference_cpu / bare_cpu:4.2f}x), "
                     f"max rel. diff {max(differences):.1e} (median {statistics.median(differences):.1e})")
            if args.bfloat16:
                line += (f", reference / bfloat16 {reference_wall / rounded_wall:4.2f}x "
                         f"(cpu {reference_cpu / rounded_cpu:4.2f}x)")
        print(line, flush=True)
        if args.noise_floor and not args.skip_reference:
            # the reference's own computation on the same function with other rounding (BatchNorm
            # folded into the convolutions): how far float32 rounding alone moves AdvCAM's maps
            folded = climbing_copy(net).requires_grad_(True)
            again = [reference_advcam(folded, image, keys, config=config) for image, keys in images]
            floor = [relative_difference(a.high_res, r.high_res) for a, r in zip(again, reference)]
            print(f"      noise floor: reference vs reference with BatchNorm folded, max rel. diff "
                  f"{max(floor):.1e} (median {statistics.median(floor):.1e})", flush=True)


if __name__ == "__main__":
    main()
