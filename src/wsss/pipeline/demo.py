"""The demo: the benchmark, every implemented method, one table and ``results.json``.

Also writes the run's report (``report.html``, ``report.md``: :mod:`wsss.pipeline.report`), and draws
``seed_sweep.png`` (seed mIoU against the background threshold, every method) and
``seed_maps.png`` (image, ground truth and each method's map for the first training images).
Methods without seeds (the box-supervised ``bana`` and ``boxes``, with ``--set methods=[...]``)
get rows from their pseudo masks on, no curve or map column, and ``pseudo_masks.png`` (image,
ground truth and the label maps each such method names, e.g. BANA's Y_crf and Y_ret).
A method with an instance network (BBAM's Mask R-CNN, ``eval/<method>_instance.json``) also gets
its mask AP row beside the oracle trained on ground-truth instances
(:data:`wsss.methods.INSTANCE_ORACLE`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsss.errors import DataError, problems_error
from wsss.io import image_size, read_json, write_json, write_text
from wsss.methods import Context, get_method, quick_settings
from wsss.methods.chain import QUICK_SETTINGS
from wsss.pipeline.recipes import StageFactory, build_stages, check_inputs, load_recipe
from wsss.pipeline.report import build_report
from wsss.pipeline.results import (collect_results, format_results, format_timings, instance_table, scores_of,
                                   stage_timings)
from wsss.pipeline.runner import Runner

log = logging.getLogger(__name__)

QUICK_SYNTH = {"train": 160, "val": 40, "ood": 60}

QUICK_RUNTIME = ("seg_inference.scales=[1.0]",)
"""What ``--quick`` changes beside the schedules: single-scale prediction. Its numbers only show
that every stage ran. (Not bfloat16: on a CPU without native bfloat16 it is slower, not faster.)"""


def quick_overrides() -> list[str]:
    """A smoke run of every stage (``--quick``): the shared chain's and each registered method's
    shorter schedules (:data:`wsss.methods.chain.QUICK_SETTINGS`, ``Method.quick``), and
    :data:`QUICK_RUNTIME`."""
    return [*QUICK_SETTINGS, *quick_settings(), *QUICK_RUNTIME]


DEMO_JOBS = 2
"""``wsss demo --jobs``: two stages at once, the threads shared out (one each on 2 cores, as the
numbers in docs/scale.md were measured). On 2 cores ``wsss demo --quick``'s stages took 115 s
instead of 137 s with one job (1.19x)."""

SEED_IMAGES = 200
"""Training images that get seeds, pseudo masks and a segmentation network (the classifier sees
them all): per-image methods (AdvCAM, RIB) cost seconds per image on a CPU."""
QUICK_SEED_IMAGES = 24


def seed_subset(dataset, count: int, path: Path) -> Path | None:
    """Write the first ``count`` ids of ``dataset`` as a split file; None when that is all of them
    (``count`` 0 or at least the split's size)."""
    if not 0 < count < len(dataset.ids):
        return None
    text = "\n".join(dataset.ids[:count]) + "\n"
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
    return path


def prepare_data(out: Path, seed: int, quick: bool) -> tuple[Path, Path]:
    """Generate the benchmark under ``out/data`` (resuming or reusing it); return root and OoD list."""
    from wsss.data import synth

    root = out / "data"
    config = synth.SynthConfig(seed=seed, **(QUICK_SYNTH if quick else {}))
    synth.generate(root, config, progress=True)
    return root, root / "ood" / "ood.txt"


BFLOAT16_OPTIONS = ("advcam.bfloat16", "rib.bfloat16")
"""The demo recipe's bfloat16 switches for the attribution methods (docs/speed.md)."""


def float32_fallback(config) -> list[str]:
    """Overrides that turn the recipe's bfloat16 off on a CPU without native bfloat16, where it
    would be slower than float32 (:func:`wsss.runtime.native_bfloat16`): the attribution methods'
    switches and ``runtime.autocast``; logged. The stages' fingerprints hold these settings, so a
    run's outputs are never a mix of the two."""
    from wsss.runtime import native_bfloat16, resolve_device

    if resolve_device(config.runtime.device).type != "cpu" or native_bfloat16():
        return []
    chosen = [f"{name}=false" for name in BFLOAT16_OPTIONS
              if getattr(getattr(config, name.split(".")[0]), "bfloat16")]
    if config.runtime.autocast == "bf16":
        chosen.append("runtime.autocast=none")
    if chosen:
        log.info("this CPU has no native bfloat16 (AVX512-BF16 or AMX): %s (float32 is faster here)",
                 ", ".join(chosen))
    return chosen


def typical_long_side(dataset, sample: int = 50) -> int:
    """Median long side of the first ``sample`` images (headers only)."""
    sides = [max(image_size(dataset.image_path(i))) for i in dataset.ids[:sample]]
    return int(np.median(sides))


def size_overrides(long_side: int) -> list[str]:
    """Crop and rescale ranges of the synth recipe, scaled to another dataset's image size."""
    low, high = round(long_side * 0.875), round(long_side * 1.125)
    return [f"classifier.crop_size={long_side}", f"classifier.resize_long=[{low}, {high}]",
            f"rib.other_crop_size={long_side}", f"rib.other_resize_long=[{low}, {high}]",
            f"irn.crop_size={long_side}", f"segmentation.crop_size={long_side}"]


def run_demo(out: Path, *, data: str | None = None, ood: str | None = None, quick: bool = False,
             recipe: str = "synth/demo", overrides: Sequence[str] = (), seed: int = 0,
             seed_images: int | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; return what it writes to ``out/results.json``."""
    from wsss.data.voc import VOCDataset
    from wsss.evaluation.tables import format_table
    from wsss.viz.overlays import mask_grid, seed_grid
    from wsss.viz.plots import plot_sweep

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        root, ood_list = out / "data", out / "data" / "ood" / "ood.txt"
        extra: list[str] = []
    else:
        root = Path(data)
        if not root.exists():
            raise DataError("dataset folder not found", root)
        ood_list = Path(ood) if ood else None
        extra = size_overrides(typical_long_side(VOCDataset(root, "train")))
    settings = [f"data.root={root}", f"runtime.seed={seed}", *extra,
                *(quick_overrides() if quick else ()), *overrides]
    settings = [*settings, *float32_fallback(load_recipe(recipe, settings))]
    if ood_list is not None:
        settings.append(f"data.ood_list={ood_list}")
    config = load_recipe(recipe, settings)
    if seed_images is None:
        seed_images = QUICK_SEED_IMAGES if quick else SEED_IMAGES
    from wsss.runtime import PIPELINE_TIMEOUT, barrier, distributed_context, resolve_device

    # Under torchrun: one process group for the whole demo; rank 0 writes the data, the others wait.
    with distributed_context(resolve_device(config.runtime.device), timeout=PIPELINE_TIMEOUT) as (dist_info, _):
        if dist_info.is_main:
            if data is None:
                prepare_data(out, seed, quick)
            seed_subset(VOCDataset(root, config.data.seed_split), seed_images, out / "seed_split.txt")
        barrier()
        seed_split = f"split '{config.data.seed_split}'"
        if 0 < seed_images < len(VOCDataset(root, config.data.seed_split).ids):
            seed_split = f"the first {seed_images} images of {seed_split}"
            config = load_recipe(recipe, [*settings, f"data.seed_split={out / 'seed_split.txt'}"])
        ctx = Context(config, out / "work")
        stages = build_stages(ctx)
        problems = check_inputs(ctx, stages)
        if problems:
            raise problems_error(problems, "with the demo's inputs (nothing was run)")
        Runner(ctx.workdir, config).run(stages, jobs=config.runtime.jobs, rebuild=StageFactory.of(ctx))
    if not dist_info.is_main:
        return {}

    classes = ctx.dataset(config.data.seed_split).classes
    results: dict[str, Any] = collect_results(ctx)
    results["dataset"] = {"root": str(root), "classes": list(classes), "generated": data is None,
                          "quick": quick, "seed_images": len(ctx.dataset(config.data.seed_split))}
    seed_rows, pseudo_rows, final_rows, curves = [], [], [], {}
    for method in config.methods:
        # box-supervised methods (bana, boxes) have no seeds: their rows start at the pseudo masks
        pseudo_rows += scores_of(ctx, method, "pseudo")
        final_rows += scores_of(ctx, method, "final")
        if not ctx.eval_path(method, "seed").is_file():
            continue
        seed_rows += scores_of(ctx, method, "seed")
        sweep = read_json(ctx.eval_path(method, "seed"))["sweep"]
        curves[method] = (np.asarray(sweep["thresholds"]), np.asarray(sweep["miou"]) / 100.0)
    final_rows += scores_of(ctx, "fully_supervised", "final", "fully supervised")
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["stages"] = stage_timings(ctx, [stage.name for stage in stages])

    seed_set = ctx.dataset(config.data.seed_split)
    if curves:
        plot_sweep(curves, out / "seed_sweep.png", title="Seed mIoU against the background threshold")
        seed_grid(seed_set, {m: ctx.maps_dir(m) for m in curves}, seed_set.ids[:8], out / "seed_maps.png")
    pictures: dict[str, Path] = {}
    for method in config.methods:
        if method not in curves:
            pictures.update({k: v for k, v in get_method(method).pictures(ctx).items() if v.is_dir()})
    if pictures:
        mask_grid(seed_set, pictures, seed_set.ids[:8], out / "pseudo_masks.png")
    sections = [format_results(results)]
    instances = instance_table(results)
    if instances is not None:
        sections.append(instances)
    if seed_rows:
        sections.append(format_table(seed_rows, classes, title=f"Seeds on {seed_split}, per class (IoU %)"))
    if pseudo_rows:
        own = [m for m in config.methods if m not in curves]  # no seeds: their own pseudo-mask stages
        how = "; ".join((["IRN random walk"] if curves else []) + ([f"{', '.join(own)}: their own"] if own else []))
        sections.append(format_table(pseudo_rows, classes,
                                     title=f"Pseudo masks ({how}) on {seed_split}, per class (IoU %)"))
    if final_rows:
        sections.append(format_table(final_rows, classes, title=f"Segmentation on split '{config.data.val_split}', "
                                     "trained on the pseudo masks of the same images, per class (IoU %)"))
    text = "\n\n".join(sections)
    timings = format_timings(results["stages"])
    write_text(out / "results.txt", text + "\n")
    write_text(out / "timings.txt", timings + "\n")
    write_json(out / "results.json", results)
    report, _ = build_report(ctx.workdir, out)
    print(text)
    print("\nWhere the time went (seconds of the stages, summed per kind; every stage in timings.txt):")
    print(timings.split("\n\n")[0])
    print(f"\nreport: {report} (and report.md beside it)")
    print(f"\nwrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return results
