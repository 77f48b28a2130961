"""The demo: the benchmark, every implemented method, one table and ``results.json``.

Also draws ``seed_sweep.png`` (seed mIoU against the background threshold, every method) and
``seed_maps.png`` (image, ground truth and each method's map for the first training images).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsss.errors import DataError
from wsss.io import image_size, read_json, write_json, write_text
from wsss.pipeline.recipes import Context, build_stages, load_recipe, seed_summary
from wsss.pipeline.runner import Runner

log = logging.getLogger(__name__)

QUICK_SYNTH = {"train": 160, "val": 60, "ood": 60}
QUICK_OVERRIDES = ("classifier.epochs=4",)


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
    """Crop and rescale range of the synth recipe, scaled to another dataset's image size."""
    low, high = round(long_side * 0.875), round(long_side * 1.125)
    return [f"classifier.crop_size={long_side}", f"classifier.resize_long=[{low}, {high}]"]


def _scores_from_json(result: dict[str, Any], classes: Sequence[str], name: str):
    from wsss.evaluation.semantic import SegmentationScores

    return SegmentationScores(confusion=np.asarray(result["confusion"]), classes=tuple(classes),
                              protocol=result["protocol"], name=name, threshold=result.get("threshold"))


def _cell(value: float | None, threshold: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" + (f" (t={threshold:.2f})" if threshold is not None else "")


def summary_table(results: dict[str, Any]) -> str:
    header = ["method", "seed mIoU, oracle t", "seed mIoU, label-free t", "pseudo mIoU", "final mIoU", "seconds"]
    rows = [header]
    for method, r in results["methods"].items():
        rows.append([method, _cell(r["seed_miou"], r["seed_threshold"]),
                     _cell(r["seed_miou_label_free"], r["seed_threshold_label_free"]),
                     _cell(r["pseudo_miou"]), _cell(r["final_miou"]), f"{r['seconds']:.0f}"])
    fs = results["fully_supervised"]
    rows.append(["fully supervised", "-", "-", "-", _cell(fs.get("final_miou")), "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(out: Path, *, data: str | None = None, ood: str | None = None, quick: bool = False,
             recipe: str = "synth/demo", overrides: Sequence[str] = (), seed: int = 0) -> dict[str, Any]:
    """Run the demo into ``out``; return what it writes to ``out/results.json``."""
    from wsss.data.voc import VOCDataset
    from wsss.evaluation.tables import format_table
    from wsss.viz.overlays import seed_grid
    from wsss.viz.plots import plot_sweep

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        root, ood_list = prepare_data(out, seed, quick)
        extra: list[str] = []
    else:
        root = Path(data)
        if not root.exists():
            raise DataError("dataset folder not found", root)
        ood_list = Path(ood) if ood else None
        extra = size_overrides(typical_long_side(VOCDataset(root, "train")))
    settings = [f"data.root={root}", f"runtime.seed={seed}", *extra,
                *(QUICK_OVERRIDES if quick else ()), *overrides]
    if ood_list is not None:
        settings.append(f"data.ood_list={ood_list}")
    config = load_recipe(recipe, settings)
    ctx = Context(config, out / "work")
    stage_results = Runner(ctx.workdir, config).run(build_stages(ctx))

    classes = ctx.dataset(config.data.seed_split).classes
    results: dict[str, Any] = {"methods": {}, "fully_supervised": {"final_miou": None},
                               "dataset": {"root": str(root), "classes": list(classes),
                                           "generated": data is None, "quick": quick}}
    score_rows, curves = [], {}
    for method in config.methods:
        summary = seed_summary(ctx, method)
        seconds = sum(r.seconds for name, r in stage_results.items()
                      if name == "classifier" or name.startswith(f"{method}."))
        results["methods"][method] = {**summary, "pseudo_miou": None, "final_miou": None,
                                      "seconds": round(seconds, 1)}
        report = read_json(ctx.seed_eval_path(method))
        for result in report["results"]:
            kind = "oracle" if result["threshold_uses_ground_truth"] else result["protocol"].split(" t=")[0]
            score_rows.append(_scores_from_json(result, classes, f"{method} seed, {kind}"))
        sweep = report["sweep"]
        curves[method] = (np.asarray(sweep["thresholds"]), np.asarray(sweep["miou"]) / 100.0)
    results["seconds"] = round(time.perf_counter() - start, 1)

    plot_sweep(curves, out / "seed_sweep.png", title="Seed mIoU against the background threshold")
    seed_set = ctx.dataset(config.data.seed_split)
    seed_grid(seed_set, {m: ctx.maps_dir(m) for m in config.methods}, seed_set.ids[:8], out / "seed_maps.png")
    text = "\n\n".join([
        summary_table(results),
        format_table(score_rows, classes, title=f"Seeds on split '{config.data.seed_split}', per class (IoU %)"),
        "Oracle: the background threshold is chosen on the ground truth (the papers' protocol). "
        "Label-free: chosen from the maps alone. Pseudo masks and final segmentation: not implemented yet.",
    ])
    write_text(out / "results.txt", text + "\n")
    write_json(out / "results.json", results)
    print(text)
    print(f"\nwrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return results
