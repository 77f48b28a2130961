"""The demo: the benchmark, every implemented method, one table and ``results.json``.

Also draws ``seed_sweep.png`` (seed mIoU against the background threshold, every method) and
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
from wsss.methods import INSTANCE_ORACLE, Context, get_method, quick_settings
from wsss.methods.chain import QUICK_SETTINGS
from wsss.pipeline.recipes import build_stages, check_inputs, final_summary, load_recipe, seed_summary
from wsss.pipeline.runner import Runner

log = logging.getLogger(__name__)

QUICK_SYNTH = {"train": 160, "val": 60, "ood": 60}


def quick_overrides() -> list[str]:
    """A smoke run of every stage (``--quick``): the shared chain's and each registered method's
    shorter schedules (:data:`wsss.methods.chain.QUICK_SETTINGS`, ``Method.quick``)."""
    return [*QUICK_SETTINGS, *quick_settings()]


SEED_IMAGES = 200
"""Training images that get seeds, pseudo masks and a segmentation network (the classifier sees
them all): per-image methods (AdvCAM, RIB) cost seconds per image on a CPU."""
QUICK_SEED_IMAGES = 40
NO_SEEDS = {"seed_miou": None, "seed_threshold": None, "seed_miou_label_free": None,
            "seed_threshold_label_free": None, "seed_miou_fixed": None, "seed_protocols": {}}
"""The seed columns of a method without seeds (the box-supervised ones)."""


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


def _scores_from_json(result: dict[str, Any], classes: Sequence[str], name: str):
    from wsss.evaluation.semantic import SegmentationScores

    return SegmentationScores(confusion=np.asarray(result["confusion"]), classes=tuple(classes),
                              protocol=result["protocol"], name=name, threshold=result.get("threshold"))


def _cell(value: float | None, threshold: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" + (f" (t={threshold:.2f})" if threshold is not None else "")


def summary_table(results: dict[str, Any]) -> str:
    header = ["method", "seed mIoU, oracle t", "seed mIoU, label-free t", "pseudo mIoU", "final mIoU",
              "% of FS", "seconds"]
    rows = [header]
    for method, r in results["methods"].items():
        rows.append([method, _cell(r["seed_miou"], r["seed_threshold"]),
                     _cell(r["seed_miou_label_free"], r["seed_threshold_label_free"]),
                     _cell(r["pseudo_miou"]), _cell(r["final_miou"]),
                     _cell(r.get("final_fraction_of_fully_supervised")), f"{r['seconds']:.0f}"])
    fs = results["fully_supervised"]
    rows.append(["fully supervised", "-", "-", "-", _cell(fs.get("final_miou")), "-",
                 f"{fs['seconds']:.0f}" if fs.get("seconds") is not None else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


INSTANCE_COLUMNS = ("AP25", "AP50", "AP70", "AP75", "mAP")
"""The instance scores the demo shows (:mod:`wsss.evaluation.instances`, in percent)."""


def instance_summary(ctx: Context, name: str) -> dict[str, float | None] | None:
    """The mask AP of a finished instance evaluation (``eval/<name>_instance.json``), or None."""
    path = ctx.eval_path(name, "instance")
    if not path.is_file():
        return None
    report = read_json(path)
    return {column: report.get(column) for column in INSTANCE_COLUMNS}


def instance_table(results: dict[str, Any]) -> str | None:
    """Mask AP of every method with an instance network and of the oracle, or None when none ran."""
    rows = [(method, r["instance"]) for method, r in results["methods"].items() if r.get("instance")]
    if not rows:
        return None
    oracle = results["fully_supervised"].get("instance")
    if oracle:
        rows.append(("fully supervised (ground-truth instances)", oracle))
    header = ["instances (mask AP, %)", *INSTANCE_COLUMNS]
    table = [header] + [[name, *(_cell(scores.get(c)) for c in INSTANCE_COLUMNS)] for name, scores in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
        stage_results = Runner(ctx.workdir, config).run(stages)
    if not dist_info.is_main:
        return {}

    classes = ctx.dataset(config.data.seed_split).classes
    results: dict[str, Any] = {"methods": {}, "fully_supervised": {"final_miou": None},
                               "dataset": {"root": str(root), "classes": list(classes),
                                           "generated": data is None, "quick": quick,
                                           "seed_images": len(ctx.dataset(config.data.seed_split))}}
    seed_rows, pseudo_rows, final_rows, curves = [], [], [], {}

    def rows_of(method: str, what: str, label: str) -> list:
        path = ctx.eval_path(method, what)
        if not path.is_file():
            return []
        results = read_json(path)["results"]
        if len(results) == 1:
            return [_scores_from_json(results[0], classes, label)]
        # several protocols (BBAM's pseudo masks: 255 as background, 255 left out): named by theirs
        return [_scores_from_json(r, classes, f"{label}, {r['protocol'].partition('(')[2].rstrip(')') or r['protocol']}")
                for r in results]

    for method in config.methods:
        # box-supervised methods (bana, boxes) have no seeds: their rows start at the pseudo masks
        has_seeds = ctx.eval_path(method, "seed").is_file()
        summary = seed_summary(ctx, method) if has_seeds else dict(NO_SEEDS)
        own = {stage.name for stage in get_method(method).stages(ctx)}  # shared stages included
        seconds = sum(r.seconds for name, r in stage_results.items() if name in own)
        results["methods"][method] = {**summary, "pseudo_miou": final_summary(ctx, method, "pseudo"),
                                      "final_miou": final_summary(ctx, method, "final"),
                                      "seconds": round(seconds, 1)}
        instance = instance_summary(ctx, method)
        if instance is not None:
            results["methods"][method]["instance"] = instance
        pseudo_rows += rows_of(method, "pseudo", method)
        final_rows += rows_of(method, "final", method)
        if not has_seeds:
            continue
        report = read_json(ctx.eval_path(method, "seed"))
        for result in report["results"]:
            kind = "oracle" if result["threshold_uses_ground_truth"] else result["protocol"].split(" t=")[0]
            seed_rows.append(_scores_from_json(result, classes, f"{method}, {kind}"))
        sweep = report["sweep"]
        curves[method] = (np.asarray(sweep["thresholds"]), np.asarray(sweep["miou"]) / 100.0)
    fully = final_summary(ctx, "fully_supervised", "final")
    results["fully_supervised"] = {"final_miou": fully,
                                   "seconds": round(sum(r.seconds for n, r in stage_results.items()
                                                        if n.startswith("fully_supervised.")), 1)}
    oracle = instance_summary(ctx, INSTANCE_ORACLE)
    if oracle is not None:
        results["fully_supervised"]["instance"] = oracle
    final_rows += rows_of("fully_supervised", "final", "fully supervised")
    if fully:
        for r in results["methods"].values():
            r["final_fraction_of_fully_supervised"] = (round(100.0 * r["final_miou"] / fully, 1)
                                                       if r["final_miou"] is not None else None)
    results["seconds"] = round(time.perf_counter() - start, 1)

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
    sections = [summary_table(results)]
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
    sections.append(
        "Oracle: the background threshold is chosen on the ground truth (the papers' protocol). "
        "Label-free: chosen from the maps alone. Pseudo masks and final segmentation use no ground "
        "truth; the fully supervised row trains the same network on the ground-truth masks."
    )
    text = "\n\n".join(sections)
    write_text(out / "results.txt", text + "\n")
    write_json(out / "results.json", results)
    print(text)
    print(f"\nwrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return results
