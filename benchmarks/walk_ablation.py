"""What IRN's random walk does with its settings, and what perfect boundaries would let it do.

Run by hand on a finished work folder (``wsss demo --out DIR`` or ``wsss run``): for every
image-level method present in it (maps, IRN boundary maps and the IRN checkpoint on disk), on the
recipe's seed split, it prints four tables and writes them to one CSV (and the printed text
beside it).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/walk_ablation.py DEMO_OUT --out /tmp/walkab
    .venv/bin/python benchmarks/walk_ablation.py WORKDIR --recipe WORKDIR/config.yaml \\
        --methods cam advcam --limit 50 --steps 1,4,16,64,256 --thresholds 0.1,0.25,0.4

``DEMO_OUT`` is the folder holding ``data/`` and ``work/`` (the recipe is ``work/config.yaml``);
a work folder alone is read with the ``config.yaml`` it holds, or with ``--recipe``. The layout
is :class:`wsss.methods.Context`'s. Outputs go to ``--out`` (default ``<workdir>/walk_ablation/``):
``walk_ablation.csv`` (long format: table, method, boundaries, source, steps, bg_threshold, class,
metric, value) and ``walk_ablation.txt`` (the tables as printed). Nothing else is written.

The tables, per method:

1. **Walk grid on IRN's boundaries**: pseudo-mask mIoU (%) for each number of walk steps (rows)
   and background threshold (columns), everything else the recipe's (the method's ``cam_power``,
   ``beta``, ``radius``; ``wsss.refine.random_walk.propagate_to_labels``'s upsampling and
   normalisation). The step counts are taken literally, whatever the recipe's ``scale``. The
   transition matrix is built once per image and the walk stops at each count on its way to the
   largest (``random_walk_checkpoints``); the background thresholds of one count come from one
   pass (``wsss.evaluation.sweep.SweepAccumulator``). ``*`` marks the best cell (chosen on the
   ground truth: an oracle), ``^`` the recipe's own setting, which reproduces the pseudo masks
   on disk (exactly when they were made on the CPU; the line under the table compares their
   mIoU).
2. **Walk grid on ground-truth boundaries**: the same walk of the same maps on
   ``wsss.evaluation.boundaries.ground_truth_boundary``: 1 on every stride-4 cell whose 4 x 4
   block, widened by one pixel, holds two or more ground-truth values (255 counted as one), 0
   elsewhere. It separates every pair of differently labelled pixels by the thinnest band of
   cells, so the walk cannot leak across a class boundary: the upper bound of better boundaries
   with these maps.
3. **Precision and recall** (%) of the background, mean over the foreground classes (NaN
   skipped), and mIoU, of: the seeds (maps thresholded as the seed evaluation does, at the
   recipe's ``seed_eval.fixed_threshold`` and at the best threshold of ``seed_eval.sweep``, an
   oracle); the pseudo masks on disk; the best cell of each grid. Below it the same per class.
4. **IRN boundary probability** (this is also a library call,
   ``wsss.evaluation.boundaries.mean_boundary_probability``): the mean of the method's boundary
   map over the stride-4 cells within one cell of a change of ground-truth label (true boundary,
   255 left out), over cells of one foreground class (object interior) and over background
   cells, with the number of cells of each.

``--limit N`` scores the first N images of the seed split; ``--methods`` picks methods (default:
the recipe's that are present). The walk runs on the CPU, one thread (``--threads``): the
demo's 200 seed images of 128 x 128 take about 40 s per method with the default grid.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wsss.errors import ConfigError, DataError, WsssError
from wsss.pipeline.recipes import open_run

DEFAULT_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
BOUNDARIES = ("irn", "ground truth")


# --------------------------------------------------------------------------- the grid


class WalkGrid:
    """Confusion matrices of walk pseudo masks over (steps x background thresholds), streamed.

    Args:
        num_classes: K + 1.
        steps: the walk's step counts (any order; kept sorted).
        thresholds: background thresholds in [0, 1] (kept sorted).
    """

    def __init__(self, num_classes: int, steps: Sequence[int], thresholds: Sequence[float]) -> None:
        from wsss.evaluation.sweep import SweepAccumulator

        self.num_classes = num_classes
        self.steps = sorted({int(s) for s in steps})
        self.thresholds = np.unique(np.asarray(thresholds, dtype=np.float64))
        self._sweeps = {count: SweepAccumulator(num_classes, self.thresholds) for count in self.steps}

    def update(self, gt: np.ndarray, strided: np.ndarray, keys: np.ndarray, edge: np.ndarray, *,
               cam_power: float, beta: float, radius: int, where: Any = None) -> None:
        """Add one image: its (H, W) ground truth, (C, h, w) stride-4 maps with their keys, and
        the (h, w) boundary map the walk runs on."""
        from wsss.refine.random_walk import random_walk_checkpoints, walked_scores
        from wsss.stores.maps import LocalizationMaps

        height, width = gt.shape
        keys = np.asarray(keys, dtype=np.int64)
        maps = torch.from_numpy(np.asarray(strided, dtype=np.float32))
        if cam_power != 1.0:
            maps = maps ** cam_power
        boundary = torch.from_numpy(np.asarray(edge, dtype=np.float32))
        if len(keys) == 0:  # propagate_to_labels: background everywhere
            walks = ((count, None) for count in self.steps)
        else:
            walks = random_walk_checkpoints(maps, boundary, self.steps, beta=beta, radius=radius)
        for count, walked in walks:
            scores = None if walked is None else walked_scores(walked, (height, width))
            # Zero scores: no class exceeds any threshold, background everywhere (as the library).
            high_res = np.zeros((len(keys), height, width), np.float32) if scores is None else scores.numpy()
            self._sweeps[count].update(gt, LocalizationMaps(keys=keys, strided=None, high_res=high_res),
                                       maps_path=where)

    def confusions(self) -> np.ndarray:
        """(S, T, n, n) int64: the confusion matrix at each (steps, threshold)."""
        return np.stack([self._sweeps[count].confusions() for count in self.steps])

    def miou(self) -> np.ndarray:
        """(S, T) mIoU as fractions."""
        from wsss.evaluation.semantic import mean_iou

        return np.asarray(mean_iou(self.confusions()))

    def best(self) -> tuple[int, float, np.ndarray]:
        """(steps, threshold, confusion) of the highest mIoU (the first such cell)."""
        miou = self.miou()
        row, column = np.unravel_index(int(np.nanargmax(miou)), miou.shape)
        return self.steps[row], float(self.thresholds[column]), self.confusions()[row, column]

    def at(self, steps: int, threshold: float) -> np.ndarray | None:
        """The confusion matrix of one cell, None when it is not on the grid."""
        if steps not in self.steps:
            return None
        column = np.flatnonzero(np.isclose(self.thresholds, threshold, rtol=0, atol=1e-9))
        if column.size == 0:
            return None
        return self.confusions()[self.steps.index(steps), int(column[0])]


def precision_recall_row(confusion: np.ndarray) -> dict[str, float]:
    """mIoU, background precision/recall and their means over the foreground classes (fractions)."""
    from wsss.evaluation.semantic import mean_iou, nanmean_last, precision_recall

    precision, recall = precision_recall(confusion)
    return {"miou": float(mean_iou(confusion)), "bg_precision": float(precision[0]),
            "bg_recall": float(recall[0]), "fg_precision": float(nanmean_last(precision[1:])),
            "fg_recall": float(nanmean_last(recall[1:]))}


# --------------------------------------------------------------------------- the work folder


@dataclass
class MethodSetup:
    """Where one method's files are and the walk settings its pseudo stage used."""

    name: str
    maps_dir: Path
    edge_dir: Path
    pseudo_dir: Path
    cam_power: float
    bg_threshold: float
    beta: float
    exp_times: int
    radius: int
    scale: str


@dataclass
class MethodResult:
    setup: MethodSetup
    grids: dict[str, WalkGrid]
    seed_fixed: Any  # SegmentationScores
    seed_oracle: Any
    pseudo: Any | None  # SegmentationScores of the masks on disk, None when absent
    recipe_steps: list[int]
    boundary: Any  # BoundaryProbability
    seconds: float = 0.0
    rows: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # label -> (source, confusion)


def method_setups(ctx, names: Sequence[str] | None) -> tuple[list[MethodSetup], list[str]]:
    """The image-level methods present in the work folder, and why the others were left out."""
    from wsss.methods import get_method

    recipe = ctx.recipe
    asked = list(names) if names else list(recipe.methods)
    setups, skipped = [], []
    walk = recipe.random_walk
    for name in asked:
        method = get_method(name)
        missing = [what for what, path in (("maps", ctx.maps_dir(name)), ("boundary maps", ctx.edge_dir(name)))
                   if not (path.is_dir() and any(path.iterdir()))]
        if not ctx.irn_path(name).is_file():
            missing.append("IRN")
        why = "no random walk (not an image-level method)" if method.refine is None else f"no {', '.join(missing)}"
        if method.refine is None or missing:
            if names:
                raise DataError(f"method {name!r} cannot be scored here: {why}", ctx.workdir)
            skipped.append(f"{name} ({why})")
            continue
        defaults = method.refine
        bg = defaults.sem_seg_bg_threshold if walk.bg_threshold is None else walk.bg_threshold
        if isinstance(bg, str):  # a label-free rule: the value its run chose
            from wsss.refine.pseudo_masks import chosen_bg_threshold

            record = chosen_bg_threshold(ctx.pseudo_dir(name))
            bg = record["bg_threshold"] if record else defaults.sem_seg_bg_threshold
        setups.append(MethodSetup(
            name=name, maps_dir=ctx.maps_dir(name), edge_dir=ctx.edge_dir(name), pseudo_dir=ctx.pseudo_dir(name),
            cam_power=defaults.cam_power if walk.cam_power is None else walk.cam_power,
            bg_threshold=bg, beta=walk.beta, exp_times=walk.exp_times, radius=walk.radius, scale=recipe.scale))
    return setups, skipped


def evaluate_method(setup: MethodSetup, dataset, ids: Sequence[str], recipe, steps: Sequence[int],
                    thresholds: Sequence[float], progress: bool = True) -> MethodResult:
    """Every number of the four tables for one method."""
    from tqdm import tqdm

    from wsss.evaluation.boundaries import BoundaryProbe, ground_truth_boundary
    from wsss.evaluation.semantic import evaluate_labels
    from wsss.evaluation.sweep import evaluate_maps
    from wsss.refine.random_walk import walk_steps
    from wsss.stores.edges import EdgeStore
    from wsss.stores.maps import MapStore, strided_size

    start = time.perf_counter()
    maps_store, edges = MapStore(setup.maps_dir), EdgeStore(setup.edge_dir)
    # the recipe's count per image (one count unless scale is image)
    recipe_steps = {walk_steps(setup.exp_times, strided_size(*dataset.image_size(i)), setup.scale) for i in ids}
    grid_steps = sorted(set(steps) | (recipe_steps if len(recipe_steps) == 1 else set()))
    grids = {kind: WalkGrid(dataset.num_classes, grid_steps, thresholds) for kind in BOUNDARIES}
    probe = BoundaryProbe()
    for image_id in tqdm(ids, desc=f"{setup.name} walks", leave=False, disable=not progress or None):
        maps = maps_store.load(image_id)
        if maps.strided is None:
            raise DataError("maps have no stride-4 array (the random walk needs it)", maps_store.path(image_id))
        if not edges.has(image_id):
            raise DataError(f"no boundary map for image {image_id!r}", edges.path(image_id))
        edge, _ = edges.load(image_id)
        gt = dataset.load_mask(image_id)
        if gt.shape != maps.image_size:
            raise DataError(f"maps are {maps.image_size[0]}x{maps.image_size[1]} but the mask of {image_id!r} "
                            f"is {gt.shape[0]}x{gt.shape[1]}", maps_store.path(image_id))
        probe.update(gt, edge, where=edges.path(image_id))
        for kind, boundary in (("irn", edge), ("ground truth", ground_truth_boundary(gt))):
            grids[kind].update(gt, maps.strided, maps.keys, boundary, cam_power=setup.cam_power,
                               beta=setup.beta, radius=setup.radius, where=edges.path(image_id))
    seeds = evaluate_maps(dataset, maps_store, ids, thresholds=recipe.seed_eval.sweep,
                          fixed_threshold=recipe.seed_eval.fixed_threshold, label_free=None, progress=False)
    pseudo = None
    if setup.pseudo_dir.is_dir() and all((setup.pseudo_dir / f"{i}.png").is_file() for i in ids):
        pseudo = evaluate_labels(dataset, setup.pseudo_dir, ids, progress=False)
    result = MethodResult(setup=setup, grids=grids, seed_fixed=seeds.fixed, seed_oracle=seeds.best,
                          pseudo=pseudo, recipe_steps=sorted(recipe_steps), boundary=probe.result())
    result.rows[f"seeds t={_t(seeds.fixed.threshold)}"] = ("seeds fixed", seeds.fixed.confusion)
    result.rows[f"seeds oracle t={_t(seeds.best.threshold)}"] = ("seeds oracle", seeds.best.confusion)
    if pseudo is not None:
        result.rows["pseudo on disk"] = ("pseudo on disk", pseudo.confusion)
    for kind in BOUNDARIES:
        count, threshold, confusion = grids[kind].best()
        label = f"best walk, {'IRN' if kind == 'irn' else 'GT'} ({count}, {_t(threshold)})"
        result.rows[label] = (f"best walk {kind}", confusion)
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- tables


def _t(value: float) -> str:
    return f"{round(float(value), 3):g}"


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_rows(rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(w) if i < right_from else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def grid_table(result: MethodResult, kind: str) -> str:
    setup, grid = result.setup, result.grids[kind]
    miou = grid.miou()
    best = np.unravel_index(int(np.nanargmax(miou)), miou.shape)
    recipe_cell = None
    if len(result.recipe_steps) == 1 and result.recipe_steps[0] in grid.steps:
        close = np.flatnonzero(np.isclose(grid.thresholds, setup.bg_threshold, rtol=0, atol=1e-9))
        if close.size:
            recipe_cell = (grid.steps.index(result.recipe_steps[0]), int(close[0]))
    rows = [["steps \\ bg"] + [_t(t) for t in grid.thresholds]]
    for i, count in enumerate(grid.steps):
        row = [str(count)]
        for j in range(len(grid.thresholds)):
            mark = ("*" if (i, j) == tuple(best) else "") + ("^" if (i, j) == recipe_cell else "")
            row.append(_pct(miou[i, j]) + mark)
        rows.append(row)
    name = "IRN's boundary maps" if kind == "irn" else "ground-truth boundaries (upper bound)"
    title = (f"[{setup.name}] pseudo-mask mIoU (%), walk on {name}; cam_power {setup.cam_power:g}, "
             f"beta {setup.beta:g}, radius {setup.radius}; * best (oracle), ^ recipe "
             f"(steps {','.join(map(str, result.recipe_steps))}, bg {_t(setup.bg_threshold)})")
    text = title + "\n" + format_rows(rows)
    if kind == "irn" and result.pseudo is not None and recipe_cell is not None:
        cell = miou[recipe_cell]
        text += (f"\ncheck: recipe cell {100 * cell:.2f} vs pseudo masks on disk {100 * result.pseudo.miou:.2f} "
                 f"({'equal' if abs(cell - result.pseudo.miou) < 5e-5 else 'DIFFERENT'})")
    return text


def precision_recall_table(result: MethodResult) -> str:
    rows = [["source", "mIoU", "bg P", "bg R", "fg P", "fg R"]]
    for label, (_, confusion) in result.rows.items():
        r = precision_recall_row(confusion)
        rows.append([label] + [_pct(r[k]) for k in ("miou", "bg_precision", "bg_recall", "fg_precision",
                                                     "fg_recall")])
    return (f"[{result.setup.name}] precision / recall (%): bg = background, fg = mean over foreground classes; "
            f"(steps, bg threshold) of each best walk\n" + format_rows(rows))


def per_class_table(result: MethodResult, classes: Sequence[str]) -> str:
    from wsss.evaluation.semantic import precision_recall

    short = {"seeds fixed": "seed", "seeds oracle": "seed*", "pseudo on disk": "pseudo",
             "best walk irn": "IRN*", "best walk ground truth": "GT*"}
    sources = [(short[source], precision_recall(confusion)) for source, confusion in result.rows.values()]
    header = ["class"] + [f"{name} {what}" for name, _ in sources for what in ("P", "R")]
    rows = [header]
    for index, name in enumerate(classes):
        rows.append([name] + [_pct(pr[k][index]) for _, pr in sources for k in (0, 1)])
    return (f"[{result.setup.name}] per class precision (P) / recall (R) (%); seed: t fixed, seed*: oracle t, "
            f"pseudo: on disk, IRN* / GT*: best walk cells\n" + format_rows(rows))


def boundary_table(results: Sequence[MethodResult]) -> str:
    rows = [["method", "boundary", "interior", "background", "cells: boundary", "interior", "background"]]
    for result in results:
        b = result.boundary
        rows.append([result.setup.name] + [f"{b.mean[k]:.3f}" for k in ("boundary", "interior", "background")]
                    + [str(b.cells[k]) for k in ("boundary", "interior", "background")])
    return ("mean IRN boundary probability on stride-4 cells: true boundary (within one cell of a change of "
            "ground-truth label), object interior, background\n" + format_rows(rows))


def csv_rows(results: Sequence[MethodResult], classes: Sequence[str]) -> list[list[Any]]:
    from wsss.evaluation.semantic import iou_per_class, precision_recall

    rows: list[list[Any]] = [["table", "method", "boundaries", "source", "steps", "bg_threshold", "class",
                              "metric", "value"]]
    for result in results:
        name = result.setup.name
        for kind, grid in result.grids.items():
            miou = grid.miou()
            for i, count in enumerate(grid.steps):
                for j, threshold in enumerate(grid.thresholds):
                    rows.append(["grid", name, kind, "walk", count, float(threshold), "", "miou",
                                 100 * float(miou[i, j])])
        for label, (source, confusion) in result.rows.items():
            steps = threshold = ""
            if source.startswith("best walk"):
                steps, threshold, _ = result.grids[source[len("best walk "):]].best()
            elif source.startswith("seeds"):
                threshold = (result.seed_fixed if source == "seeds fixed" else result.seed_oracle).threshold
            summary = precision_recall_row(confusion)
            for metric, value in summary.items():
                rows.append(["scores", name, "", source, steps, threshold, "", metric, 100 * value])
            precision, recall = precision_recall(confusion)
            iou = iou_per_class(confusion)
            for index, class_name in enumerate(classes):
                for metric, values in (("precision", precision), ("recall", recall), ("iou", iou)):
                    value = values[index]
                    rows.append(["scores", name, "", source, steps, threshold, class_name, metric,
                                 "" if math.isnan(value) else 100 * float(value)])
        for region in ("boundary", "interior", "background"):
            rows.append(["boundary_probability", name, "irn", "", "", "", region, "mean",
                         result.boundary.mean[region]])
            rows.append(["boundary_probability", name, "irn", "", "", "", region, "cells",
                         result.boundary.cells[region]])
    return rows


# --------------------------------------------------------------------------- command line


def parse_list(text: str, kind: type, what: str) -> list:
    try:
        values = [kind(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{what}: not a list of {kind.__name__} values: {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: empty list")
    return values


def run(args: argparse.Namespace) -> str:
    from wsss.io import ensure_writable_folder, write_csv, write_text

    steps = parse_list(args.steps, int, "--steps")
    if min(steps) < 0:
        raise ConfigError(f"--steps: counts must be >= 0, got {steps}")
    thresholds = parse_list(args.thresholds, float, "--thresholds")
    if not all(0 <= t <= 1 for t in thresholds):
        raise ConfigError(f"--thresholds: values must lie in [0, 1], got {thresholds}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    torch.set_num_threads(args.threads)
    recipe, ctx = open_run(args.work, args.recipe)
    out = ensure_writable_folder(Path(args.out) if args.out else ctx.workdir / "walk_ablation")
    setups, skipped = method_setups(ctx, args.methods)
    if not setups:
        raise DataError(f"no image-level method complete here ({'; '.join(skipped) or 'none in the recipe'})",
                        ctx.workdir)
    dataset = ctx.dataset(recipe.data.seed_split)
    ids = list(dataset.ids)[: args.limit] if args.limit else list(dataset.ids)

    start = time.perf_counter()
    results = [evaluate_method(setup, dataset, ids, recipe, steps, thresholds, progress=not args.quiet)
               for setup in setups]
    seconds = time.perf_counter() - start
    header = (f"walk ablation: {ctx.workdir}, seed split {recipe.data.seed_split}, {len(ids)} images"
              f"{f' (--limit {args.limit})' if args.limit else ''}, scale {recipe.scale}; "
              f"methods {', '.join(s.name for s in setups)}"
              + (f"; left out: {'; '.join(skipped)}" if skipped else ""))
    parts = [header]
    for result in results:
        parts += [grid_table(result, "irn"), grid_table(result, "ground truth"), precision_recall_table(result),
                  per_class_table(result, dataset.classes)]
    parts.append(boundary_table(results))
    parts.append("seconds: " + ", ".join(f"{r.setup.name} {r.seconds:.1f}" for r in results)
                 + f"; total {seconds:.1f} ({torch.get_num_threads()} thread(s))")
    text = "\n\n".join(parts) + "\n"
    write_csv(out / "walk_ablation.csv", csv_rows(results, dataset.classes))
    write_text(out / "walk_ablation.txt", text)
    return text + f"\nwritten: {out / 'walk_ablation.csv'}, {out / 'walk_ablation.txt'}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="the demo's --out folder (holding data/ and work/) or a work folder")
    parser.add_argument("--recipe", help="the recipe (default: config.yaml of the work folder)")
    parser.add_argument("--methods", nargs="+", help="methods to score (default: the recipe's that are complete)")
    parser.add_argument("--limit", type=int, help="score only the first N images of the seed split")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="walk step counts (default %(default)s; the recipe's count is added)")
    parser.add_argument("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)),
                        help="background thresholds (default %(default)s)")
    parser.add_argument("--out", help="output folder (default <workdir>/walk_ablation)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        print(run(args), end="")
    except WsssError as exc:
        print(f"walk_ablation: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
