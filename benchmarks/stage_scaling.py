"""How cost grows with the image size: seconds per image of every per-image stage of the demo
recipe, and seconds per update of every training, at several image sizes; and (``--demo-model``)
the demo's time estimated from those unit costs at several training-set sizes.

For each size in ``--sizes`` (default 128, 256, 512 px) the script generates a small benchmark
set at that size (:mod:`wsss.data.synth`; one batch of training images of one object each, so
that every image costs the same at every size: AdvCAM climbs once per class in an image, BBAM
optimises once per object; the demo model scales them by the generator's means),
reads the demo recipe (``synth/demo``) with the demo's own crop and rescale settings scaled to the
size (:func:`wsss.pipeline.demo.size_overrides`, what ``wsss demo --data`` does for another
dataset), and times the functions the demo's stages call (``wsss.methods.chain``, ``cam``,
``advcam``, ``rib``, ``bana``, ``bbam``), with the recipe's settings:

* per image, on ``--images`` images: CAM maps (``make_cams``, the recipe's scales and flips),
  AdvCAM maps (``make_advcams``), RIB maps (``make_ribs``), IR labels (``make_ir_labels``: two
  dense CRFs), IRN's boundary maps (``make_edges``), the random walk (``make_pseudo_masks``),
  BANA's stage-2 labels (``make_bana_labels``: CRF and retrieval), BBAM's labels
  (``make_bbam_labels``), segmentation prediction (``predict_dataset``, the recipe's scales and
  flips);
* per object: BBAM's attribution (``make_bbam_maps``);
* per update (a batch of the recipe's size): the classifier (``train_classifier``), IRN
  (``train_irn``), DeepLab (``train_segmentation``), BANA's BAP classifier (``train_bap``) and
  BBAM's detector (``train_detector``), timed through their callbacks after ``--warmup-updates``
  untimed updates.

Only time matters, so the networks are the recipe's architectures after a few updates from random
weights (the trainings above write the checkpoints the per-image stages read). Three stages would
stop early on such networks; the script keeps them to their full work: RIB's margin and explode
stops are switched off (every step runs, the recipe's upper bound); BBAM's detector gets class
scores that favour the object's class and box deltas near zero, so that jittered boxes are kept
as a trained detector keeps them (every object is optimised, the output says how many proposals
were kept); the walk and CRFs cost the same whatever the maps hold. AdvCAM, RIB and BBAM run a
cut number of steps (``--advcam-iterations``, ``--rib-steps``, ``--bbam-steps``) and their time
is extrapolated linearly to the recipe's (the output says so: AdvCAM and RIB in proportion to
the steps, BBAM from runs of 1 and ``--bbam-steps`` steps, since its proposal selection is a
fixed cost); everything else runs as the recipe sets it. ``--set`` overrides recipe settings
(the test uses it to make everything cheap).

The table gives seconds per image (or object, or update) at each size and the ratio of the largest
size to the smallest. The CPUs are shared: the script prints the load average
(``os.getloadavg``) before and after; absolute seconds are inflated by the load, and the ratios
between sizes are what the table is for.

``--demo-model`` adds the demo's stage-by-stage time estimated from the unit costs at the smallest
size (the demo's 128 px) and the recipe's counts, at 500, 1000 and 2000 training images
(``--train-counts``), with the seed images fixed at 200 (the demo's ``SEED_IMAGES``) and with seed
images = 20% of the training images. ``--json`` also writes the measured seconds.

Examples::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stage_scaling.py --demo-model
    .venv/bin/python benchmarks/stage_scaling.py --sizes 128 256 --images 1 --advcam-iterations 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from wsss.attribution.advcam import scale_schedule


@dataclass(frozen=True)
class Row:
    """One row of the table: a stage, its unit (image, object or update) and how it is timed."""

    key: str
    label: str
    unit: str


ROWS = (
    Row("cam", "CAM maps", "image"),
    Row("advcam", "AdvCAM maps", "image"),
    Row("rib", "RIB maps", "image"),
    Row("ir_labels", "IR labels (2 dense CRFs)", "image"),
    Row("edges", "IRN boundary maps", "image"),
    Row("walk", "random walk", "image"),
    Row("bana_labels", "BANA stage-2 labels", "image"),
    Row("bbam", "BBAM attribution", "object"),
    Row("bbam_labels", "BBAM labels", "object"),
    Row("predict", "segmentation prediction", "image"),
    Row("classifier_update", "classifier update", "update"),
    Row("irn_update", "IRN update", "update"),
    Row("seg_update", "DeepLab update", "update"),
    Row("bap_update", "BANA BAP update", "update"),
    Row("detector_update", "BBAM detector update", "update"),
)
"""Every row the table has, in order."""


@dataclass
class SizeResult:
    """What one size measured: seconds per unit by row key, and notes (cuts, extrapolations)."""

    size: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def changed(config, **changes):
    """A copy of a recipe section with ``changes``."""
    return dataclasses.replace(config, **changes)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def per_update(train: Callable[[Callable[[int, float], None]], object], warmup: int) -> float:
    """Seconds per update of ``train(callback)`` after ``warmup`` (at least 1) untimed updates,
    from the callback's time stamps (the last untimed update's starts the clock)."""
    stamps: list[float] = []
    train(lambda step, loss: stamps.append(time.perf_counter()))
    if len(stamps) < warmup + 1:
        raise RuntimeError(f"training made {len(stamps)} updates, fewer than {warmup + 1}")
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def advcam_steps(config) -> int:
    """Climbing steps per class trajectory over the recipe's scales."""
    return sum(iterations for _, iterations, _ in scale_schedule(config))


def keep_every_proposal(detector: torch.nn.Module, cls: int) -> None:
    """Make a barely trained detector keep BBAM's proposals of class ``cls``: class scores
    constant but for a tiny image-dependent part, class ``cls`` the largest, and box deltas near
    zero (a jittered box stays where it is, so it is kept when it overlaps the object enough).
    The steps then optimise as many proposals as the recipe allows, as with a trained detector."""
    predictor = detector.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.normal_(0.0, 1e-4)
        predictor.cls_score.bias.fill_(-20.0)
        predictor.cls_score.bias[cls] = 0.0
        predictor.bbox_pred.weight.normal_(0.0, 1e-4)
        predictor.bbox_pred.bias.zero_()


def generate_data(root: Path, size: int, images: int) -> Path:
    """A benchmark set of ``images`` training and 2 val images of ``size`` px, one object each (so
    every image costs the same: AdvCAM climbs once per class, BBAM's steps run per object)."""
    from wsss.data import synth

    config = synth.SynthConfig(seed=0, train=images, val=2, ood=1, size=size, objects_per_image=(1.0,))
    synth.generate(root, config, progress=False)
    return root


def measure_size(size: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Every row of the table at ``size`` px (the module docstring says how)."""
    from wsss.attribution.advcam import make_advcams
    from wsss.attribution.bbam import bbam_summary, make_bbam_maps
    from wsss.attribution.cam import make_cams
    from wsss.attribution.rib import make_ribs
    from wsss.data.voc import VOCDataset
    from wsss.models.cam_net import load_cam_net_for
    from wsss.models.irn import load_irn
    from wsss.pipeline.demo import size_overrides
    from wsss.pipeline.recipes import load_recipe
    from wsss.refine.bana_labels import make_bana_labels
    from wsss.refine.bbam_labels import make_bbam_labels
    from wsss.refine.ir_labels import make_ir_labels
    from wsss.refine.pseudo_masks import make_pseudo_masks
    from wsss.segmentation.inference import predict_dataset
    from wsss.segmentation.train import load_trained_model, train_segmentation
    from wsss.stores.masks import MaskStore
    from wsss.training.bana import load_bap_net, train_bap
    from wsss.training.classifier import train_classifier
    from wsss.training.detector import load_detector, train_detector
    from wsss.training.irn import make_edges, train_irn

    result = SizeResult(size)
    recipe = load_recipe(args.recipe, [*size_overrides(size), "runtime.device=cpu", "runtime.progress=false",
                                       *args.set])
    updates = args.warmup_updates + args.timed_updates
    batch = max(recipe.classifier.batch_size, recipe.irn.batch_size, recipe.segmentation.batch_size,
                recipe.bana.batch_size, recipe.bbam_detector.batch_size)
    root = generate_data(work / "data", size, batch)
    dataset = VOCDataset(root, "train")
    ids = dataset.ids[:args.images]
    objects = sum(len(dataset.boxes(image_id)[1]) for image_id in ids)
    device = torch.device("cpu")
    torch.manual_seed(0)

    def per_image(seconds: float) -> float:
        return seconds / len(ids)

    # trainings: seconds per update, and the checkpoints the per-image stages read
    classifier_path = work / "classifier.pt"
    result.seconds["classifier_update"] = per_update(lambda callback: train_classifier(
        dataset, changed(recipe.classifier, epochs=updates), device=device, out=classifier_path, progress=False,
        seed=0, callback=callback), args.warmup_updates)
    ir_train = MaskStore(work / "ir_train")  # IRN trains on the true masks: an update costs the same
    for image_id in dataset.ids:
        ir_train.save(image_id, dataset.load_mask(image_id))
    irn_path = work / "irn.pt"
    result.seconds["irn_update"] = per_update(lambda callback: train_irn(
        dataset, work / "ir_train", changed(recipe.irn, mean_shift_images=1), device=device, out=irn_path,
        init_backbone_from=classifier_path, progress=False, seed=0, max_steps=updates, callback=callback),
        args.warmup_updates)
    seg_dir = work / "seg"
    seg_config = changed(recipe.segmentation, epochs=None, iterations=updates, checkpoint_every=10**9)
    result.seconds["seg_update"] = per_update(lambda callback: train_segmentation(
        dataset, None, seg_config, device=device, out_dir=seg_dir, progress=False, resume=False,
        callback=callback), args.warmup_updates)
    bap_path = work / "bap_net.pt"
    result.seconds["bap_update"] = per_update(lambda callback: train_bap(
        dataset, changed(recipe.bana, steps=updates, milestones=(updates,)), device=device, out=bap_path,
        checkpoint_dir=work / "bap_net", resume=False, callback=callback), args.warmup_updates)
    detector_path = work / "detector.pt"
    result.seconds["detector_update"] = per_update(lambda callback: train_detector(
        dataset, changed(recipe.bbam_detector, steps=updates, milestones=(updates,), warmup_steps=0),
        device=device, out=detector_path, checkpoint_dir=work / "detector", resume=False, callback=callback),
        args.warmup_updates)

    # image-level maps (CAM's for the chain after them)
    model = load_cam_net_for(classifier_path, dataset, device)
    result.seconds["cam"] = per_image(timed(lambda: make_cams(
        model, dataset, work / "maps" / "cam", device=device, ids=ids, scales=recipe.cam.scales,
        flip=recipe.cam.flip, progress=False)))

    full, cut = recipe.advcam, changed(recipe.advcam, iterations=min(args.advcam_iterations, recipe.advcam.iterations))
    factor = advcam_steps(full) / advcam_steps(cut)
    result.seconds["advcam"] = factor * per_image(timed(lambda: make_advcams(
        model, dataset, work / "maps" / "advcam", config=cut, device=device, ids=ids, progress=False,
        scale=recipe.scale)))
    result.notes.append(f"AdvCAM: {advcam_steps(cut)} of the recipe's {advcam_steps(full)} climbing steps per "
                        f"class run, time x {factor:.3g} (linear extrapolation)")

    steps = min(args.rib_steps, recipe.rib.steps)
    # no early stop: every step runs (a barely trained network would stop at random points)
    rib_config = changed(recipe.rib, steps=steps, margin=1e30, explode_ratio=1.0)
    factor = recipe.rib.steps / steps
    result.seconds["rib"] = factor * per_image(timed(lambda: make_ribs(
        model, dataset, work / "maps" / "rib", config=rib_config, device=device, progress=False, seed=0,
        ids=ids, pool=dataset, scale=recipe.scale)))
    result.notes.append(f"RIB: {steps} of the recipe's {recipe.rib.steps} steps run (margin and explode stops "
                        f"off), time x {factor:.3g} (linear extrapolation)")

    # IRN's chain on CAM's maps: IR labels, boundary maps, random walk
    ir = recipe.ir_labels
    result.seconds["ir_labels"] = per_image(timed(lambda: make_ir_labels(
        dataset, work / "maps" / "cam", work / "ir_labels", fg_threshold=0.30 if ir.fg_threshold is None
        else ir.fg_threshold, bg_threshold=0.05 if ir.bg_threshold is None else ir.bg_threshold, crf=ir.crf,
        scale=recipe.scale, ids=ids, progress=False)))
    irn = load_irn(irn_path, map_location=device)
    result.seconds["edges"] = per_image(timed(lambda: make_edges(
        irn, dataset, work / "edges", device=device, ids=ids, scales=recipe.irn.edge_scales,
        flip=recipe.irn.edge_flip, pad_to=recipe.irn.edge_pad_to, progress=False)))
    walk = recipe.random_walk
    result.seconds["walk"] = per_image(timed(lambda: make_pseudo_masks(
        dataset, work / "maps" / "cam", work / "edges", work / "pseudo", cam_power=1.0 if walk.cam_power is None
        else walk.cam_power, bg_threshold=0.25 if walk.bg_threshold is None else walk.bg_threshold,
        beta=walk.beta, exp_times=walk.exp_times, radius=walk.radius, scale=recipe.scale, device=device, ids=ids,
        progress=False)))

    # BANA stage 2
    bap = load_bap_net(bap_path, map_location=device).eval()
    labels = recipe.bana_labels
    result.seconds["bana_labels"] = per_image(timed(lambda: make_bana_labels(
        bap, dataset, work / "bana_crf", work / "bana_ret", ids=ids, device=device, mean=recipe.bana.mean,
        std=recipe.bana.std, bg_threshold=labels.bg_threshold, crf=labels.crf, scale=recipe.scale)))

    # BBAM: the attribution per object, then its labels
    detector = load_detector(detector_path, map_location=device)
    full_steps, steps = recipe.bbam.steps, min(args.bbam_steps, recipe.bbam.steps)

    def bbam_seconds(run_steps: int, folder: str) -> float:
        seconds = 0.0
        for image_id in ids:
            keep_every_proposal(detector, int(dataset.boxes(image_id)[1][0]))
            seconds += timed(lambda: make_bbam_maps(detector, dataset, work / "maps" / folder,
                                                    config=changed(recipe.bbam, steps=run_steps), device=device,
                                                    ids=[image_id], progress=False, scale=recipe.scale))
        return seconds

    if steps > 1:  # a fixed cost (the proposal selection) and a cost per step
        one, more = bbam_seconds(1, "bbam_one_step"), bbam_seconds(steps, "bbam")
        seconds = one + max(more - one, 0.0) / (steps - 1) * (full_steps - 1)
        how = f"1 and {steps} steps run, extrapolated linearly to the recipe's {full_steps}"
    else:
        seconds = full_steps * bbam_seconds(1, "bbam")
        how = f"1 step run, time x {full_steps}"
    result.seconds["bbam"] = seconds / max(objects, 1)
    kept = bbam_summary(work / "maps" / "bbam", ids)
    result.notes.append(f"BBAM: {how} ({objects} object(s), {kept['mean_kept']:.0f} proposals kept per object on "
                        f"average, {kept['no_proposal_share']:.0%} with none; the recipe keeps at most "
                        f"{recipe.bbam.max_proposals})")
    bbam_labels = recipe.bbam_labels
    result.seconds["bbam_labels"] = per_image(timed(lambda: make_bbam_labels(
        dataset, work / "maps" / "bbam", work / "bbam_semantic", work / "bbam_instances",
        work / "bbam_instances.json", ids=ids, thresholds=(bbam_labels.object_threshold,
                                                           bbam_labels.possible_threshold),
        crf=bbam_labels.crf, scale=recipe.scale, progress=False)))

    # segmentation prediction
    seg_model, _ = load_trained_model(seg_dir / "model.pt", num_classes=dataset.num_classes, map_location=device)
    inference = recipe.seg_inference
    result.seconds["predict"] = per_image(timed(lambda: predict_dataset(
        seg_model, dataset, work / "predictions", device=device, scales=inference.scales, flip=inference.flip,
        merge=inference.merge, crf=inference.crf, crf_scale=recipe.scale, ids=ids, progress=False)))
    return result


def format_seconds(value: float) -> str:
    return f"{value:.3g}"


def scaling_table(results: Sequence[SizeResult]) -> str:
    """Rows = stages, columns = sizes (seconds per unit) and the ratio of the last size to the first."""
    first, last = results[0], results[-1]
    head = ["stage", "per", *(f"{r.size} px" for r in results), f"{last.size}/{first.size}"]
    rows = [head]
    for row in ROWS:
        values = [format_seconds(r.seconds[row.key]) for r in results]
        ratio = last.seconds[row.key] / first.seconds[row.key] if first.seconds[row.key] > 0 else float("nan")
        rows.append([row.label, row.unit, *values, f"{ratio:.1f}x"])
    widths = [max(len(line[c]) for line in rows) for c in range(len(head))]
    lines = []
    for number, line in enumerate(rows):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                 *(cell.rjust(width) for cell, width in zip(line[2:], widths[2:]))]
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("|" + "|".join(("-" * (w + 1) + (":" if c >= 2 else "-")) for c, w in enumerate(widths)) + "|")
    return "\n".join(lines)


@dataclass(frozen=True)
class DemoCounts:
    """The demo recipe's counts that its time depends on (``demo_counts`` reads them)."""

    classifier_epochs: int
    classifier_batch: int
    irn_epochs: int
    irn_batch: int
    seg_epochs: int
    seg_batch: int
    bap_steps: int
    detector_steps: int
    image_level_methods: tuple[str, ...]  # every method running IRN's chain (maps, IRN, walk, DeepLab)
    advcam_methods: int  # AdvCAM maps per seed image (advcam, advcam_wood)
    cam_methods: int  # CAM maps per seed image (cam, wood)
    rib_methods: int
    val_images: int
    objects_per_image: float
    classes_per_image: float
    fully_supervised: bool  # a DeepLab trained on the ground truth too


def demo_counts(recipe_name: str = "synth/demo", overrides: Sequence[str] = ()) -> DemoCounts:
    """The counts of the recipe's run on the generated benchmark."""
    from wsss.data.synth import SynthConfig
    from wsss.pipeline.recipes import load_recipe

    recipe = load_recipe(recipe_name, overrides)
    methods = tuple(recipe.methods)
    image_level = tuple(m for m in methods if m in ("cam", "advcam", "rib", "wood", "advcam_wood"))
    synth = SynthConfig()
    chances = np.asarray(synth.objects_per_image, dtype=float)
    objects = float((np.arange(1, len(chances) + 1) * chances).sum() / chances.sum())
    seg = recipe.segmentation
    if seg.epochs is None:
        raise SystemExit("the demo model needs segmentation.epochs (the recipe sets iterations)")
    return DemoCounts(
        classifier_epochs=recipe.classifier.epochs, classifier_batch=recipe.classifier.batch_size,
        irn_epochs=recipe.irn.epochs, irn_batch=recipe.irn.batch_size, seg_epochs=seg.epochs,
        seg_batch=seg.batch_size, bap_steps=recipe.bana.steps if "bana" in methods else 0,
        detector_steps=recipe.bbam_detector.steps if "bbam" in methods else 0, image_level_methods=image_level,
        advcam_methods=sum(m in ("advcam", "advcam_wood") for m in methods),
        cam_methods=sum(m in ("cam", "wood") for m in methods), rib_methods=int("rib" in methods),
        val_images=synth.val, objects_per_image=objects,
        classes_per_image=1.0 + synth.new_class_prob * (objects - 1.0),
        fully_supervised=recipe.until == "final" and recipe.fully_supervised)


def demo_estimate(unit: dict[str, float], counts: DemoCounts, train: int, seeds: int) -> list[tuple[str, float]]:
    """Estimated seconds of each demo stage group with ``train`` training and ``seeds`` seed images,
    from the per-unit costs ``unit`` (seconds, by row key)."""
    methods = counts.image_level_methods
    seg_methods = (len(methods) + int(counts.bap_steps > 0) + int(counts.detector_steps > 0)
                   + int(counts.fully_supervised))
    seg_updates = counts.seg_epochs * (seeds // counts.seg_batch)
    return [
        ("classifier training", counts.classifier_epochs * (train // counts.classifier_batch)
         * unit["classifier_update"]),
        ("CAM maps", counts.cam_methods * seeds * unit["cam"]),
        ("AdvCAM maps", counts.advcam_methods * seeds * counts.classes_per_image * unit["advcam"]),
        ("RIB maps", counts.rib_methods * seeds * unit["rib"]),
        ("IR labels", len(methods) * seeds * unit["ir_labels"]),
        ("IRN training", len(methods) * counts.irn_epochs * (seeds // counts.irn_batch) * unit["irn_update"]),
        ("IRN boundary maps", len(methods) * seeds * unit["edges"]),
        ("random walk", len(methods) * seeds * unit["walk"]),
        ("BANA BAP training", counts.bap_steps * unit["bap_update"]),
        ("BANA stage-2 labels", (counts.bap_steps > 0) * seeds * unit["bana_labels"]),
        ("BBAM detector training", counts.detector_steps * unit["detector_update"]),
        ("BBAM attribution", (counts.detector_steps > 0) * seeds * counts.objects_per_image * unit["bbam"]),
        ("BBAM labels", (counts.detector_steps > 0) * seeds * counts.objects_per_image * unit["bbam_labels"]),
        ("DeepLab training", seg_methods * seg_updates * unit["seg_update"]),
        ("segmentation prediction (val)", seg_methods * counts.val_images * unit["predict"]),
    ]


def demo_model_text(unit: SizeResult, train_counts: Sequence[int], recipe_name: str,
                    overrides: Sequence[str] = ()) -> str:
    """The demo's estimated time per stage group at ``train_counts`` training images (seeds fixed
    at the demo's 200, and seeds = 20% of the training images), from the costs measured at
    ``unit.size`` px."""
    from wsss.pipeline.demo import SEED_IMAGES

    counts = demo_counts(recipe_name, overrides)
    columns = []
    for train in train_counts:
        columns.append((f"{train} / {SEED_IMAGES}", demo_estimate(unit.seconds, counts, train, SEED_IMAGES)))
    for train in train_counts:
        seeds = round(0.2 * train)
        columns.append((f"{train} / {seeds}", demo_estimate(unit.seconds, counts, train, seeds)))
    head = ["stage (minutes)", *(name for name, _ in columns)]
    rows = [head]
    names = [name for name, _ in columns[0][1]]
    for index, name in enumerate(names):
        rows.append([name, *(f"{column[index][1] / 60:.1f}" for _, column in columns)])
    rows.append(["total", *(f"{sum(s for _, s in column) / 60:.1f}" for _, column in columns)])
    widths = [max(len(line[c]) for line in rows) for c in range(len(head))]
    lines = [f"ESTIMATE, not a measured run: the demo's time per stage group from the unit costs measured at "
             f"{unit.size} px above and the recipe's counts (columns: training images / seed images). "
             f"Methods {', '.join(counts.image_level_methods)} each run IRN's chain; BANA and BBAM their own; "
             f"{'the fully supervised baseline trains a DeepLab too; ' if counts.fully_supervised else ''}"
             f"{counts.val_images} val images are predicted per DeepLab; the one-object images' AdvCAM time "
             f"x {counts.classes_per_image:.2f} classes per image, BBAM's per object x {counts.objects_per_image:.2f} "
             "objects per image (the generator's means). Not included: W-OoD's fine-tuning, Mask R-CNN, evaluations, "
             "data generation and start-up."]
    for number, line in enumerate(rows):
        lines.append("| " + " | ".join([line[0].ljust(widths[0]),
                                        *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]) + " |")
        if number == 0:
            lines.append("|" + "|".join("-" * (w + 1) + (":" if c else "-") for c, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="image sides in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--images", type=int, default=1, help="images per per-image stage (default 1)")
    parser.add_argument("--advcam-iterations", type=int, default=2,
                        help="AdvCAM iterations run (the recipe's are extrapolated linearly)")
    parser.add_argument("--rib-steps", type=int, default=2, help="RIB steps run (extrapolated linearly)")
    parser.add_argument("--bbam-steps", type=int, default=5, help="BBAM steps run (extrapolated linearly)")
    parser.add_argument("--warmup-updates", type=int, default=1,
                        help="untimed updates before the timed ones (at least 1)")
    parser.add_argument("--timed-updates", type=int, default=2, help="timed updates per training")
    parser.add_argument("--recipe", default="synth/demo", help="the recipe (default synth/demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a recipe override (after the size's crops; repeatable)")
    parser.add_argument("--demo-model", action="store_true",
                        help="also print the demo's time estimated from the smallest size's unit costs")
    parser.add_argument("--train-counts", type=int, nargs="+", default=[500, 1000, 2000],
                        help="training-set sizes of the demo model")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the measured seconds, notes and load averages to this file")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if min(args.images, args.timed_updates, args.warmup_updates) < 1 or not args.sizes:
        parser.error("--images, --timed-updates and --warmup-updates must be at least 1")
    if min(args.advcam_iterations, args.rib_steps, args.bbam_steps) < 1:
        parser.error("--advcam-iterations, --rib-steps and --bbam-steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        for size in sorted(args.sizes):
            results.append(measure_size(size, args, work / f"size{size}"))
            print(f"measured {size} px ({time.perf_counter() - start:.0f} s so far)", flush=True)
    load_after = os.getloadavg()
    overrides = f" and {' '.join(args.set)}" if args.set else ""
    print(f"\nSeconds per image, object or update ({args.threads} thread(s), {args.images} image(s) per "
          f"per-image stage, {args.timed_updates} timed updates of the recipe's batch after "
          f"{args.warmup_updates}), recipe {args.recipe} with its crops scaled to each size{overrides}:\n")
    print(scaling_table(results))
    print(f"\nLoad average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
          f"{', '.join(f'{v:.1f}' for v in load_after)} on {os.cpu_count()} CPUs. Absolute seconds are inflated "
          "by that load; the ratios between sizes are what the table is for.")
    for result in results:
        for note in result.notes:
            print(f"  {result.size} px: {note}")
    if args.json is not None:
        from wsss.io import write_json

        write_json(args.json, {"sizes": [r.size for r in results], "seconds": {r.size: r.seconds for r in results},
                               "notes": {r.size: r.notes for r in results}, "threads": args.threads,
                               "load_before": load_before, "load_after": load_after})
    if args.demo_model:
        print()
        print(demo_model_text(results[0], args.train_counts, args.recipe, args.set))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
