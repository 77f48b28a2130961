"""A finished run's numbers, read from its evaluation files: the results table every run prints.

One row per method: seed mIoU under each of the three seed protocols (oracle, fixed and
label-free background threshold), pseudo-mask mIoU, final mIoU, its share of the fully supervised
network's, and the seconds its stages took (from the stage markers). Every number comes from
``eval/<method>_{seed,pseudo,final}.json``; a stage that did not run leaves its cell ``-``.
``wsss run``, ``wsss demo`` and ``wsss report`` print or draw this same table
(:func:`results_cells`, :func:`format_results`).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np

from wsss.io import read_json
from wsss.methods import INSTANCE_ORACLE, Context, get_method, registered_methods
from wsss.pipeline.recipes import final_summary, seed_summary
from wsss.pipeline.runner import read_marker

__all__ = ["NO_SEEDS", "PROTOCOL_NOTE", "collect_results", "format_results", "format_timings", "results_cells",
           "scores_of", "stage_timings", "text_table"]

NO_SEEDS = {"seed_miou": None, "seed_threshold": None, "seed_miou_label_free": None,
            "seed_threshold_label_free": None, "seed_miou_fixed": None, "seed_threshold_fixed": None,
            "seed_protocols": {}}
"""The seed columns of a method without seeds (the box-supervised ones) or whose seeds were not scored."""

PROTOCOL_NOTE = (
    "Seeds: the maps cut at a background threshold t, scored on the seed split. Oracle t: chosen on "
    "the ground truth (the papers' protocol); fixed t: set in advance (seed_eval.fixed_threshold, IRN's 0.15 "
    "by default); label-free t: chosen from the images and maps alone by the rule seed_eval.label_free names "
    "(by default edges: the lowest t whose contours follow the images' edges). Pseudo masks: the refined "
    "labels of the same images, no ground truth used. Final: the segmentation network trained on the pseudo "
    "masks, scored on the validation split; the fully supervised row trains the same network on the "
    "ground-truth masks."
)


def _seconds(ctx: Context, names: Sequence[str]) -> float | None:
    """Seconds the finished stages ``names`` took (their markers), None when none finished."""
    total, found = 0.0, False
    for name in names:
        marker = read_marker(ctx.workdir, name)
        if marker and marker.get("state") == "done":
            total += float(marker.get("seconds", 0.0))
            found = True
    return round(total, 1) if found else None


def _method_stages(ctx: Context, method: str) -> list[str]:
    """The stages of ``method`` (shared ones included); its ``<method>.*`` markers for a method
    this wsss does not know."""
    if method in registered_methods():
        try:
            return [stage.name for stage in get_method(method).stages(ctx)]
        except Exception:  # a recipe this version cannot build: fall back to the markers' names
            pass
    stages = ctx.workdir / ".stages"
    return sorted(p.stem for p in stages.glob(f"{method}.*.json")) if stages.is_dir() else []


def collect_results(ctx: Context, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Every method's row and the fully supervised one, read from the run's evaluation files.

    Args:
        ctx: the run (its work directory and recipe).
        methods: the methods to report (default: the recipe's).

    Returns:
        ``{"methods": {name: row}, "fully_supervised": {"final_miou", "seconds"}}``; a row holds
        ``seed_miou`` and ``seed_threshold`` (oracle), ``seed_miou_fixed``/``seed_threshold_fixed``,
        ``seed_miou_label_free``/``seed_threshold_label_free``, ``seed_protocols``, ``pseudo_miou``,
        ``final_miou``, ``final_fraction_of_fully_supervised`` and ``seconds``; None where a
        stage did not run.
    """
    methods = list(ctx.recipe.methods if methods is None else methods)
    results: dict[str, Any] = {"methods": {}}
    for method in methods:
        summary = dict(NO_SEEDS)
        if ctx.eval_path(method, "seed").is_file():
            summary.update(seed_summary(ctx, method))
        results["methods"][method] = {**summary, "pseudo_miou": final_summary(ctx, method, "pseudo"),
                                      "final_miou": final_summary(ctx, method, "final"),
                                      "seconds": _seconds(ctx, _method_stages(ctx, method))}
    for method in methods:
        instance = instance_summary(ctx, method)
        if instance is not None:
            results["methods"][method]["instance"] = instance
    fully = final_summary(ctx, "fully_supervised", "final")
    results["fully_supervised"] = {"final_miou": fully, "seconds": _seconds(
        ctx, [f"fully_supervised.{s}" for s in ("seg", "predict", "final_eval")])}
    oracle = instance_summary(ctx, INSTANCE_ORACLE)
    if oracle is not None:
        results["fully_supervised"]["instance"] = oracle
    for row in results["methods"].values():
        final = row["final_miou"]
        row["final_fraction_of_fully_supervised"] = (round(100.0 * final / fully, 1)
                                                     if final is not None and fully else None)
    return results


INSTANCE_COLUMNS = ("AP25", "AP50", "AP70", "AP75", "mAP")
"""The instance scores the results show (:mod:`wsss.evaluation.instances`, in percent)."""


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


def _cell(value: float | None, threshold: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" + (f" (t={threshold:.2f})" if threshold is not None else "")


def results_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The results table as cells: header and one row per method, then the fully supervised one."""
    header = ["method", "seed mIoU, oracle t", "seed mIoU, fixed t", "seed mIoU, label-free t",
              "pseudo mIoU", "final mIoU", "% of FS", "seconds"]
    rows = []
    for method, r in results["methods"].items():
        rows.append([method, _cell(r["seed_miou"], r["seed_threshold"]),
                     _cell(r.get("seed_miou_fixed"), r.get("seed_threshold_fixed")),
                     _cell(r["seed_miou_label_free"], r["seed_threshold_label_free"]),
                     _cell(r["pseudo_miou"]), _cell(r["final_miou"]),
                     _cell(r.get("final_fraction_of_fully_supervised")),
                     "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"])
    fully = results.get("fully_supervised") or {}
    if fully.get("final_miou") is not None:
        rows.append(["fully supervised", "-", "-", "-", "-", _cell(fully["final_miou"]), "100.0",
                     "-" if fully.get("seconds") is None else f"{fully['seconds']:.0f}"])
    return header, rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    table = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_results(results: dict[str, Any], width: int = 100) -> str:
    """The results table as text, with what each column's protocol is beneath it."""
    return text_table(*results_cells(results)) + "\n\n" + textwrap.fill(PROTOCOL_NOTE, width)


def scores_of(ctx: Context, method: str, what: str, label: str | None = None) -> list:
    """The :class:`~wsss.evaluation.semantic.SegmentationScores` in ``eval/<method>_<what>.json``
    (empty when that evaluation did not run), named ``label`` (default: the method), and for seeds
    ``"<label>, <protocol kind>"`` (oracle, fixed, label-free)."""
    from wsss.evaluation.semantic import SegmentationScores

    path = ctx.eval_path(method, what)
    if not path.is_file():
        return []
    report = read_json(path)
    classes = tuple(report["dataset"]["classes"])
    label = method if label is None else label
    scores = []
    for result in report["results"]:
        name = label
        if what != "seed" and len(report["results"]) > 1:
            # several protocols (BBAM's pseudo masks: 255 as background, 255 left out): named by theirs
            name = f"{label}, {result['protocol'].partition('(')[2].rstrip(')') or result['protocol']}"
        if what == "seed":
            protocol = result["protocol"]
            kind = ("oracle" if result.get("threshold_uses_ground_truth") else
                    "label-free" if "label-free" in protocol else "fixed")
            name = f"{label}, {kind}"
        scores.append(SegmentationScores(confusion=np.asarray(result["confusion"]), classes=classes,
                                         protocol=result["protocol"], name=name,
                                         threshold=result.get("threshold"),
                                         threshold_uses_ground_truth=bool(result.get("threshold_uses_ground_truth"))))
    return scores


STAGE_KINDS = {
    "classifier": "classifiers (CAM, W-OoD, BAP)",
    "maps": "maps (attribution)",
    "irn": "IRN training",
    "seg": "segmentation training",
    "predict": "segmentation prediction",
    "detector": "detector training",
    "mask_rcnn": "Mask R-CNN training",
}
"""How :func:`format_timings` names a kind of stage (the part of a stage's name after the method);
the kinds not listed (IR labels, boundary maps, walks, pseudo labels, evaluations) share one row."""

OTHER_STAGES = "IR labels, walks, pseudo labels, evaluations"


def stage_kind(name: str) -> str:
    """The kind of stage ``name`` in the timing table: ``classifier`` and ``wood.classifier`` are
    classifiers, ``cam.maps`` maps, ``fully_supervised.seg`` segmentation training, and so on."""
    return STAGE_KINDS.get(name.rpartition(".")[2], OTHER_STAGES)


def stage_timings(ctx: Context, names: Sequence[str]) -> dict[str, float]:
    """Seconds each finished stage of ``names`` took (its marker; a stage skipped on a rerun keeps
    its first run's seconds), in the order given; unfinished ones are left out."""
    timings = {}
    for name in names:
        marker = read_marker(ctx.workdir, name)
        if marker and marker.get("state") == "done" and marker.get("seconds") is not None:
            timings[name] = float(marker["seconds"])
    return timings


def format_timings(timings: dict[str, float]) -> str:
    """Where the time went: the seconds of each kind of stage (:func:`stage_kind`) summed over the
    methods, their share and how many stages each sums, heaviest first, then every stage."""
    if not timings:
        return "no stage finished: no timings"
    total = sum(timings.values()) or 1.0
    kinds: dict[str, list[float]] = {}
    for name, seconds in timings.items():
        kinds.setdefault(stage_kind(name), []).append(seconds)
    rows = [[kind, f"{sum(times):.0f}", f"{100.0 * sum(times) / total:.0f}%", str(len(times))]
            for kind, times in sorted(kinds.items(), key=lambda item: -sum(item[1]))]
    rows.append(["total", f"{sum(timings.values()):.0f}", "100%", str(len(timings))])
    each = [[name, f"{seconds:.1f}"] for name, seconds in timings.items()]
    return (text_table(["stage kind", "seconds", "share", "stages"], rows) + "\n\n"
            + text_table(["stage", "seconds"], each))
