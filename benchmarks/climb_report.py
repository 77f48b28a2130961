"""How AdvCAM and RIB climb at both ``scale`` settings, on a finished work folder.

Run by hand on a work folder holding the CAM classifier (``wsss demo --out DIR`` or ``wsss run``
past the classifier stage). On the first ``--limit`` images of the recipe's seed split (default
8), every labelled class climbs under both settings of ``docs/scale.md``: ``reference`` (the
papers' literal lambda, learning rates and margin) and ``image`` (scaled to act on this
classifier and these images as the literal values act on VOC). It prints one table per method and
writes the numbers to ``--out``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/climb_report.py DEMO_OUT --out /tmp/climb
    .venv/bin/python benchmarks/climb_report.py WORKDIR --methods advcam --limit 20 \\
        --steps 0,1,2,4,8,16,26 --set advcam.iterations=40

``DEMO_OUT`` is the folder holding ``data/`` and ``work/`` (the recipe is ``work/config.yaml``);
a work folder alone is read with the ``config.yaml`` it holds, or with ``--recipe``. The layout
is :class:`wsss.methods.Context`'s: the classifier is ``<workdir>/classifier.pt``, the images
the recipe's ``data.seed_split`` (the split the maps stages climb on), RIB's other images its
``data.train_split``, drawn with ``runtime.seed`` (as the ``rib.maps`` stage draws them). The
methods' settings are the recipe's ``advcam`` and ``rib`` sections; ``--set section.key=value``
changes them (``--set rib.steps=5``). Outputs go to ``--out`` (default
``<workdir>/climb_report/``): ``climb_report.json`` (the settings, the tables and every image's
trace), ``climb_report.csv`` (long format: method, setting, step, metric, value, pairs) and
``climb_report.txt`` (the tables as printed). Nothing else is written.

What is measured, per method and setting, as means over the (image, labelled class) pairs:

* **AdvCAM** (:func:`wsss.attribution.advcam.climb_report`): every class climbs
  ``advcam.iterations`` steps (27) from the image at one input scale (``--input-scale``, 1.0:
  the image as it is; the pipeline climbs at every ``advcam.scales``, this looks at one to stay
  light), with its flip. Reported: lambda (``mask_weight``) and the strength
  ``lambda hw / (2 P_c)`` it gives (the reference's is 2.6); at the steps of ``--steps`` the
  class score ``y_c`` (mean of the ReLU'd class map, over the flip pair) and the area of that
  step's attribution map ``A_t``; the area of the accumulated map ``sum_t A_t`` at the last step.
* **RIB** (:func:`wsss.attribution.rib.climb_report`): every image is fine-tuned for up to
  ``rib.steps`` steps (10) exactly as the ``rib.maps`` stage does, at the recipe's
  ``rib.scales`` and ``rib.loss_scales`` (the margin bounds a sum over the loss scales, so they
  are kept; ``--set rib.scales=[1.0] --set rib.loss_scales=[1.0]`` gives a lighter, different
  climb). Reported: the logit scale ``c`` (1 at ``reference``; at ``image`` the step-0 pooled
  logit over 4.6) and the margin ``c * rib.margin``; at every step the class score (the
  classifier's own pooled logit, mean over the loss scales and flips), the area of the first
  scale's map, the target's logit sum the margin bounds (none at a run's last step, which makes
  no update); how runs ended (steps, margin, explode); the area of the maps RIB writes
  (every scale accumulated, normalised, stride 4). A run that stops early has no later steps:
  the ``pairs`` column counts the pairs a step's means are over.

The area of a map is the share of its cells above 0.3 of its maximum (0 for an all-zero map).
AdvCAM's steps 0 and 1 are the same at both settings: the drift penalty is zero at the unperturbed
image, so lambda first acts on the second update. The climbs run on the recipe's device
(``runtime.device``; ``--device`` overrides), one CPU thread by default (``--threads``). On the
demo (128 x 128 images, ResNet-18 at quarter width, 1.6 classes per image), on a loaded 2-core
machine, one thread, 8 images took 4.5 minutes: AdvCAM about 6 s per image (both settings), RIB
about 13 s per image and setting.
"""

from __future__ import annotations

import argparse
import dataclasses
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

SETTINGS = ("reference", "image")
METHODS = ("advcam", "rib")
DEFAULT_STEPS = (0, 1, 3, 9, 18, 26)
AREA_THRESHOLD = 0.3  # the share of a map's max a cell must pass to count in its area (the issue's)


# --------------------------------------------------------------------------- climbing


@dataclass
class ImageClimb:
    """Both methods' climbs of one image: ``advcam`` and ``rib`` map a setting to the library's
    :class:`~wsss.attribution.advcam.ClimbTrace` / :class:`~wsss.attribution.rib.RibResult`
    (None for a method left out); ``seconds`` per method, both settings together."""

    image_id: str
    keys: np.ndarray
    advcam: dict[str, Any] | None = None
    rib: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def climb_images(model, dataset, ids: Sequence[str], *, advcam=None, rib=None, pool=None, index=None,
                 seed: int = 0, device: torch.device | str = "cpu", input_scale: float = 1.0,
                 progress: bool = True) -> list[ImageClimb]:
    """Climb every image of ``ids`` with each method whose config is given, at both settings.

    Args:
        model: the CAM classifier, in eval mode, on ``device`` (not modified).
        dataset: the targets' dataset (``load_image``, ``image_labels``).
        ids: the images to climb.
        advcam: :class:`~wsss.attribution.advcam.AdvCamConfig`, or None to leave AdvCAM out.
        rib: :class:`~wsss.attribution.rib.RibConfig`, or None to leave RIB out.
        pool: the dataset RIB's other images come from (default ``dataset``).
        index: a :class:`~wsss.attribution.rib.DisjointClassIndex` over ``pool`` (default: built).
        seed: the run's seed (RIB's other images, as ``make_ribs``).
        device: where to run the network.
        input_scale: AdvCAM's input scale.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    from wsss.attribution import advcam as advcam_module
    from wsss.attribution import rib as rib_module
    from wsss.attribution.cam import check_keys

    pool = dataset if pool is None else pool
    if rib is not None and rib.batch_size and index is None:
        index = rib_module.DisjointClassIndex.from_source(pool, num_classes=model.num_classes)
    climbs = []
    for image_id in tqdm(ids, desc="climbs", leave=False, disable=not progress or None):
        where = dataset.image_path(image_id) if hasattr(dataset, "image_path") else image_id
        keys = check_keys(dataset.image_labels(image_id), model.num_classes, where)
        image = dataset.load_image(image_id)
        climb = ImageClimb(image_id, keys)
        if advcam is not None:
            start = time.perf_counter()
            climb.advcam = advcam_module.climb_report(model, image, keys, config=advcam, device=device,
                                                      input_scale=input_scale, area_threshold=AREA_THRESHOLD,
                                                      where=where)
            climb.seconds["advcam"] = time.perf_counter() - start
        if rib is not None:
            start = time.perf_counter()
            others = (rib_module.OtherImageBatches(pool, index, image_id, keys, rib, seed=seed, where=where)
                      if rib.batch_size else None)
            climb.rib = rib_module.climb_report(model, image, keys, others, rib, device=device, where=where)
            climb.seconds["rib"] = time.perf_counter() - start
        climbs.append(climb)
    return climbs


# --------------------------------------------------------------------------- summaries


def map_area(maps: np.ndarray, threshold: float = AREA_THRESHOLD) -> np.ndarray:
    """(C,) share of each (C, h, w) map's cells above ``threshold`` of its max (0 for a zero map)."""
    maps = np.asarray(maps, dtype=np.float64)
    peak = maps.max(axis=(-2, -1), keepdims=True)
    return ((maps > threshold * peak) & (peak > 0)).mean(axis=(-2, -1))


def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def shown_steps(steps: Sequence[int], count: int) -> list[int]:
    """The steps of ``steps`` a climb of ``count`` steps has, and always its last one."""
    return sorted({s for s in steps if 0 <= s < count} | {count - 1})


def summarise_advcam(climbs: Sequence[ImageClimb], steps: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per setting: pair count, mean lambda and strength, per step the mean class score and map
    area (and of the accumulated map), and the accumulated map's mean area at the last step."""
    summary = {}
    for setting in SETTINGS:
        traces = [c.advcam[setting] for c in climbs if c.advcam is not None]
        score = np.concatenate([t.score for t in traces])  # (pairs, T)
        area = np.concatenate([t.area for t in traces])
        accumulated = np.concatenate([t.accumulated_area for t in traces])
        count = score.shape[1]
        summary[setting] = {
            "pairs": int(score.shape[0]),
            "iterations": int(count),
            "input_scale": traces[0].input_scale,
            "cells": sorted({t.cells for t in traces}),
            "mask_weight": float(np.concatenate([t.mask_weight for t in traces]).mean()),
            "strength": float(np.concatenate([t.strength for t in traces]).mean()),
            "steps": {int(s): {"score": float(score[:, s].mean()), "area": float(area[:, s].mean()),
                               "accumulated_area": float(accumulated[:, s].mean()), "pairs": int(score.shape[0])}
                      for s in shown_steps(steps, count)},
            "final_accumulated_area": float(accumulated[:, -1].mean()),
        }
    return summary


def summarise_rib(climbs: Sequence[ImageClimb], margin: float, max_steps: int) -> dict[str, dict[str, Any]]:
    """Per setting: pair and image counts, mean logit scale ``c`` and margin, how runs ended, per
    step (every step up to ``max_steps``) the mean class score, map area and target logit sum
    over the runs that reached it, and the mean area of the written (accumulated) maps."""
    summary = {}
    for setting in SETTINGS:
        results = [c.rib[setting] for c in climbs if c.rib is not None]
        stops: dict[str, int] = {}
        for result in results:
            stops[result.stop] = stops.get(result.stop, 0) + 1
        per_step = {}
        for step in range(max_steps):
            reached = [r.trace[step] for r in results if len(r.trace) > step]
            scores = [v for entry in reached for v in entry["score"]]
            areas = [v for entry in reached for v in entry["area"]]
            per_step[step] = {"score": _mean(scores), "area": _mean(areas),
                              "target_sum": _mean([entry["target_sum"] for entry in reached]),
                              "pairs": len(scores), "images": len(reached)}
        scales = [r.logit_scale for r in results]
        summary[setting] = {
            "pairs": int(sum(len(r.keys) for r in results)),
            "images": len(results),
            "logit_scale": _mean(scales),
            "logit_scale_range": [min(scales), max(scales)],
            "margin": _mean([margin * c for c in scales]),
            "steps_taken": _mean([r.steps for r in results]),
            "stops": dict(sorted(stops.items())),
            "steps": per_step,
            "final_accumulated_area": _mean([a for r in results for a in map_area(r.strided.numpy())]),
        }
    return summary


def image_records(climbs: Sequence[ImageClimb]) -> list[dict[str, Any]]:
    """Every image's traces as plain JSON."""
    records = []
    for climb in climbs:
        record: dict[str, Any] = {"id": climb.image_id, "keys": climb.keys.tolist(), "seconds": climb.seconds}
        if climb.advcam is not None:
            record["advcam"] = {setting: trace.to_dict() for setting, trace in climb.advcam.items()}
        if climb.rib is not None:
            record["rib"] = {setting: {"logit_scale": result.logit_scale, "steps": result.steps, "stop": result.stop,
                                       "trace": result.trace,
                                       "final_accumulated_area": map_area(result.strided.numpy()).tolist()}
                             for setting, result in climb.rib.items()}
        records.append(record)
    return records


# --------------------------------------------------------------------------- tables


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def format_rows(rows: list[list[str]]) -> str:
    """Rows as columns, the first left-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def advcam_table(summary: dict[str, dict[str, Any]], config) -> str:
    ref, img = summary["reference"], summary["image"]
    cells = "/".join(map(str, ref["cells"]))
    title = (f"[advcam] {ref['pairs']} image-classes, input scale {ref['input_scale']:g} ({cells} map cells), "
             f"{ref['iterations']} steps, xi {config.step_size:g}, tau {config.mask_threshold:g}\n"
             "score: y_c (mean ReLU'd class map); area: share of cells > 0.3 x max; acc.: the accumulated map")
    settings = [f"{name}: lambda {_f(s['mask_weight'])}, strength lambda hw / (2 P_c) {_f(s['strength'])}"
                for name, s in summary.items()]
    rows = [["step", "score ref", "score img", "area ref", "area img", "acc. area ref", "acc. area img"]]
    for step in ref["steps"]:
        a, b = ref["steps"][step], img["steps"][step]
        rows.append([str(step), _f(a["score"]), _f(b["score"]), _f(a["area"]), _f(b["area"]),
                     _f(a["accumulated_area"]), _f(b["accumulated_area"])])
    final = (f"accumulated map's area after step {ref['iterations'] - 1}: reference "
             f"{_f(ref['final_accumulated_area'])}, image {_f(img['final_accumulated_area'])}")
    return "\n".join([title, *settings, format_rows(rows), final])


def rib_table(summary: dict[str, dict[str, Any]], config) -> str:
    ref, img = summary["reference"], summary["image"]
    scales, loss_scales = ("/".join(f"{s:g}" for s in values) for values in (config.scales, config.loss_scales))
    title = (f"[rib] {ref['pairs']} image-classes on {ref['images']} images, up to {config.steps} steps, "
             f"scales {scales} (loss {loss_scales}), {config.batch_size} other images per step\n"
             "score: the pooled logit (mean over the loss scales and flips); area: the first scale's map, share "
             "of cells > 0.3 x max;\nsum: the target's logit sum the margin bounds; pairs: the image-classes "
             "whose run reached the step")
    settings = []
    for name, s in summary.items():
        low, high = s["logit_scale_range"]
        stops = ", ".join(f"{reason} {count}" for reason, count in s["stops"].items())
        settings.append(f"{name}: logit scale c {_f(s['logit_scale'])} ({_f(low)}..{_f(high)}), margin "
                        f"{_f(s['margin'])}, steps taken {_f(s['steps_taken'], 2)}; ended by {stops}")
    rows = [["step", "score ref", "score img", "area ref", "area img", "sum ref", "sum img", "pairs ref", "pairs img"]]
    for step in ref["steps"]:
        a, b = ref["steps"][step], img["steps"][step]
        rows.append([str(step), _f(a["score"]), _f(b["score"]), _f(a["area"]), _f(b["area"]),
                     _f(a["target_sum"]), _f(b["target_sum"]), str(a["pairs"]), str(b["pairs"])])
    final = (f"area of the maps RIB writes (every scale, stride 4): reference {_f(ref['final_accumulated_area'])}, "
             f"image {_f(img['final_accumulated_area'])}")
    return "\n".join([title, *settings, format_rows(rows), final])


def csv_rows(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[list[Any]]:
    rows: list[list[Any]] = [["method", "setting", "step", "metric", "value", "pairs"]]
    scalars = {"advcam": ("mask_weight", "strength", "final_accumulated_area"),
               "rib": ("logit_scale", "margin", "steps_taken", "final_accumulated_area")}
    for method, summary in summaries.items():
        for setting, numbers in summary.items():
            for metric in scalars[method]:
                rows.append([method, setting, "", metric, numbers[metric], numbers["pairs"]])
            for step, values in numbers["steps"].items():
                for metric, value in values.items():
                    if metric not in ("pairs", "images"):
                        rows.append([method, setting, step, metric, "" if value is None else value, values["pairs"]])
    return rows


# --------------------------------------------------------------------------- command line


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--steps: not a list of integers: {text!r}") from None
    if not steps or min(steps) < 0:
        raise ConfigError(f"--steps: give step numbers >= 0, got {text!r}")
    return steps


def run(args: argparse.Namespace) -> str:
    from wsss.io import ensure_writable_folder, write_csv, write_json, write_text
    from wsss.models.cam_net import load_cam_net_for
    from wsss.runtime import resolve_device

    steps = parse_steps(args.steps)
    if args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if not args.input_scale > 0:
        raise ConfigError(f"--input-scale must be positive, got {args.input_scale}")
    torch.set_num_threads(args.threads)
    recipe, ctx = open_run(args.work, args.recipe, args.set or ())
    out = ensure_writable_folder(Path(args.out) if args.out else ctx.workdir / "climb_report")
    device = resolve_device(args.device or recipe.runtime.device)
    dataset = ctx.dataset(recipe.data.seed_split)
    ids = [i for i in dataset.ids if len(dataset.image_labels(i))][: args.limit]
    if not ids:
        raise DataError("no image of the seed split has a labelled class", ctx.workdir)
    model = load_cam_net_for(ctx.classifier_path, dataset, device).eval()
    methods = list(dict.fromkeys(args.methods))
    pool = ctx.dataset(recipe.data.train_split) if "rib" in methods else None

    start = time.perf_counter()
    climbs = climb_images(model, dataset, ids, advcam=recipe.advcam if "advcam" in methods else None,
                          rib=recipe.rib if "rib" in methods else None, pool=pool, seed=recipe.runtime.seed,
                          device=device, input_scale=args.input_scale, progress=not args.quiet)
    seconds = time.perf_counter() - start
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    parts = [f"climb report: {ctx.workdir}, seed split {recipe.data.seed_split}, {len(ids)} images "
             f"(--limit {args.limit}), recipe scale {recipe.scale} (both settings are climbed here), "
             f"device {device}"]
    if "advcam" in methods:
        summaries["advcam"] = summarise_advcam(climbs, steps)
        parts.append(advcam_table(summaries["advcam"], recipe.advcam))
    if "rib" in methods:
        summaries["rib"] = summarise_rib(climbs, recipe.rib.margin, recipe.rib.steps)
        parts.append(rib_table(summaries["rib"], recipe.rib))
    per_method = {m: sum(c.seconds.get(m, 0.0) for c in climbs) for m in methods}
    parts.append("seconds (both settings): " + ", ".join(f"{m} {s:.1f}" for m, s in per_method.items())
                 + f"; total {seconds:.1f} ({torch.get_num_threads()} thread(s))")
    text = "\n\n".join(parts) + "\n"
    document = {"workdir": str(ctx.workdir), "seed_split": str(recipe.data.seed_split), "ids": ids,
                "device": str(device), "recipe_scale": recipe.scale, "input_scale": args.input_scale,
                "area_threshold": AREA_THRESHOLD, "seconds": {**per_method, "total": seconds},
                "settings": {m: dataclasses.asdict(getattr(recipe, m)) for m in methods},
                "summary": summaries, "images": image_records(climbs)}
    write_json(out / "climb_report.json", document)
    write_csv(out / "climb_report.csv", csv_rows(summaries))
    write_text(out / "climb_report.txt", text)
    written = ", ".join(str(out / f"climb_report.{ext}") for ext in ("json", "csv", "txt"))
    return text + f"\nwritten: {written}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="the demo's --out folder (holding data/ and work/) or a work folder")
    parser.add_argument("--recipe", help="the recipe (default: config.yaml of the work folder)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="change a recipe setting, e.g. rib.steps=5 (repeatable)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to climb (default: both)")
    parser.add_argument("--limit", type=int, default=8, help="climb the first N labelled images of the seed "
                        "split (default %(default)s)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="AdvCAM steps shown (default %(default)s; the last step is always shown; "
                        "RIB shows all of its steps)")
    parser.add_argument("--input-scale", type=float, default=1.0, help="AdvCAM's input scale (default 1.0)")
    parser.add_argument("--device", help="override the recipe's runtime.device")
    parser.add_argument("--out", help="output folder (default <workdir>/climb_report)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        print(run(args), end="")
    except WsssError as exc:
        print(f"climb_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
