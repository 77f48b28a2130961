"""W-OoD with fewer OoD images: the |D_ood| ablation of the W-OoD supplement (Table A1).

The paper trains W-OoD with 0, 20, 500 and all 5190 OoD images and reports the final mIoU
(67.5, 68.1, 69.0, 69.8 on VOC val; 0 is the baseline without W-OoD). This script does the same
on a finished demo (``wsss demo --out DIR``): for each size it fine-tunes the demo's classifier
with ``wood.ood_images=N`` (N OoD images drawn with the run's seed) and runs the ``wood`` chain
(seeds, IRN, pseudo masks, DeepLab on the demo's seed images, val) in ``DIR/wood_ood_size/n<N>``,
reusing the demo's data, classifier and recipe. The size-0 row is the demo's ``cam`` row (the
same classifier without W-OoD); ``--control`` adds the same fine-tune without the W-OoD losses,
which separates the OoD images' effect from that of training longer.

It prints seed mIoU (oracle and fixed threshold), IoU and precision on the classes that own a
context (boat/water and train/rail on the benchmark), pseudo-mask and final mIoU. A killed run
resumes: each size is a recipe work directory with stage markers.

Examples::

    .venv/bin/python benchmarks/wood_ood_size.py --demo demo_out
    .venv/bin/python benchmarks/wood_ood_size.py --demo demo_out --sizes 20 100 --until seeds
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.io import read_json, write_bytes, write_json
from wsss.methods import Context
from wsss.pipeline.recipes import build_stages, final_summary, load_recipe, seed_summary
from wsss.pipeline.runner import Runner


CONTROL = "0 (fine-tune, no W-OoD losses)"


def class_scores(result: dict, index: int) -> tuple[float, float]:
    """IoU and precision (%) of class ``index`` from an evaluation result's confusion matrix."""
    confusion = np.asarray(result["confusion"], dtype=np.float64)  # rows: truth, columns: prediction
    hit = confusion[index, index]
    predicted, actual = confusion[:, index].sum(), confusion[index, :].sum()
    iou = hit / max(predicted + actual - hit, 1.0)
    precision = hit / max(predicted, 1.0)
    return 100.0 * iou, 100.0 * precision


def method_row(ctx: Context, method: str, context_classes: list[int]) -> dict:
    summary = seed_summary(ctx, method)
    oracle = next(r for r in read_json(ctx.eval_path(method, "seed"))["results"] if r["threshold_uses_ground_truth"])
    return {
        "seed": summary["seed_miou"], "threshold": summary["seed_threshold"], "fixed": summary["seed_miou_fixed"],
        "context": [class_scores(oracle, c) for c in context_classes],
        "pseudo": final_summary(ctx, method, "pseudo"), "final": final_summary(ctx, method, "final"),
    }


def plot(rows: dict[str, dict], sizes: dict[str, int], path: Path) -> None:
    """mIoU (seed, pseudo masks, final) against |D_ood| on a symmetric-log axis."""
    figure = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    labels = [label for label in rows if label in sizes]
    x = [sizes[label] for label in labels]
    for key, name in (("seed", "seed (oracle t)"), ("fixed", "seed (t=0.15)"), ("pseudo", "pseudo masks"),
                      ("final", "final (val)")):
        y = [rows[label][key] for label in labels]
        if all(v is not None for v in y):
            axes.plot(x, y, marker="o", label=name)
    control = rows.get(CONTROL)
    if control is not None:  # the same fine-tune without the W-OoD losses, at |D_ood| = 0
        axes.plot([0], [control["seed"]], marker="x", linestyle="none", color="black",
                  label="seed (oracle t), fine-tune without W-OoD losses")
    axes.set_xscale("symlog", linthresh=10)
    axes.set_xticks(x, [str(v) for v in x])
    axes.set_xlabel("|D_ood| (OoD images)")
    axes.set_ylabel("mIoU (%)")
    axes.set_title("W-OoD with fewer OoD images (Table A1 on the benchmark)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())


def prepare(demo_work: Path, work: Path) -> None:
    """A work directory that starts from the demo's trained classifier (its stage marker too)."""
    (work / ".stages").mkdir(parents=True, exist_ok=True)
    for name in ("classifier.pt", ".stages/classifier.json"):
        if not (work / name).exists():
            shutil.copy2(demo_work / name, work / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"), help="a finished `wsss demo` output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 300], help="OoD set sizes |D_ood|")
    parser.add_argument("--control", action="store_true", help="also fine-tune without the W-OoD losses")
    parser.add_argument("--until", choices=("seeds", "pseudo", "final"), default="final")
    parser.add_argument("--context-classes", type=int, nargs="+", default=[1, 2],
                        help="class ids that own a context (the benchmark's boat and train)")
    args = parser.parse_args()

    demo_work = args.demo / "work"
    if not (demo_work / "config.yaml").is_file() or not (demo_work / "classifier.pt").is_file():
        sys.exit(f"{args.demo}: not a demo output with a trained classifier (work/config.yaml, work/classifier.pt)")
    base = ["methods=[wood]", "fully_supervised=false", f"until={args.until}"]
    runs: list[tuple[str, list[str]]] = []
    if args.control:
        runs.append(("control", ["wood.distance_weight=0", "wood.ood_weight=0"]))
    runs += [(f"n{size}", [f"wood.ood_images={size}"]) for size in args.sizes]

    rows: dict[str, dict] = {}
    sizes: dict[str, int] = {}
    demo_ctx = Context(load_recipe(demo_work / "config.yaml"), demo_work)
    if demo_ctx.eval_path("cam", "seed").is_file():
        rows["0 (classifier, no W-OoD)"] = method_row(demo_ctx, "cam", args.context_classes)
        sizes["0 (classifier, no W-OoD)"] = 0
    for name, overrides in runs:
        work = args.demo / "wood_ood_size" / name
        prepare(demo_work, work)
        recipe = load_recipe(demo_work / "config.yaml", [*base, *overrides])
        ctx = Context(recipe, work)
        print(f"--- {name}: {' '.join(overrides)} in {work}", flush=True)
        Runner(ctx.workdir, recipe).run(build_stages(ctx))
        label = CONTROL if name == "control" else name[1:]
        rows[label] = method_row(ctx, "wood", args.context_classes)
        if name != "control":
            sizes[label] = int(name[1:])

    classes = demo_ctx.dataset(demo_ctx.recipe.data.seed_split).classes
    context_names = [classes[c] for c in args.context_classes]
    header = ["|D_ood|", "seed (oracle t)", "seed (t=0.15)"]
    header += [f"{n} IoU / prec." for n in context_names] + ["pseudo", "final"]
    table = [header]
    for label, r in rows.items():
        cells = [label, f"{r['seed']:.1f} ({r['threshold']:.2f})", f"{r['fixed']:.1f}"]
        cells += [f"{iou:.1f} / {precision:.1f}" for iou, precision in r["context"]]
        cells += ["-" if r[k] is None else f"{r[k]:.1f}" for k in ("pseudo", "final")]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    out = args.demo / "wood_ood_size"
    write_json(out / "results.json", {"classes": list(classes), "context_classes": args.context_classes,
                                      "rows": rows, "sizes": sizes})
    plot(rows, sizes, out / "ood_size.png")
    print(f"wrote {out / 'results.json'} and {out / 'ood_size.png'}")


if __name__ == "__main__":
    main()
