"""The per-class table as the papers print it, and its CSV form.

Layout (IRN, AdvCAM, RIB, W-OoD): background first, one column per class, the mean last; IoU
in percent with one decimal. Each row is one way of producing the prediction (a protocol), and
the protocol is written under the table so that no number appears without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from wsss.evaluation.semantic import SegmentationScores
from wsss.io import write_csv

METRICS = ("iou", "precision", "recall", "fp", "fn")
_MEAN_NAMES = {"iou": "mIoU", "precision": "mean", "recall": "mean", "fp": "mean", "fn": "mean"}
_MIN_WIDTH = 5


def _as_list(scores: SegmentationScores | Sequence[SegmentationScores]) -> list[SegmentationScores]:
    rows = [scores] if isinstance(scores, SegmentationScores) else list(scores)
    if not rows:
        raise ValueError("no scores to tabulate")
    return rows


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{100.0 * value:.1f}"


def _metric(scores: SegmentationScores, metric: str) -> tuple[np.ndarray, float]:
    """(per-class values, mean) for one metric; the mIoU comes from SegmentationScores.miou."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    per_class = getattr(scores, metric)
    mean = scores.miou if metric == "iou" else getattr(scores, f"mean_{metric}")
    return per_class, mean


def table_cells(
    scores: SegmentationScores | Sequence[SegmentationScores],
    classes: Sequence[str] | None = None,
    *,
    metric: str = "iou",
) -> tuple[list[str], list[list[str]]]:
    """The papers' table as cells, for any rendering (text, Markdown, HTML).

    Returns:
        The header (background .. last class, then the mean) and one row per scores: its name,
        then the values in percent with one decimal ('-' where undefined).
    """
    rows = _as_list(scores)
    names = list(classes if classes is not None else rows[0].classes)
    for row in rows:
        if row.num_classes != len(names):
            raise ValueError(f"scores '{row.name}' have {row.num_classes} classes, table has {len(names)}")
    cells = []
    for row in rows:
        per_class, mean = _metric(row, metric)
        cells.append([row.name, *(_cell(v) for v in per_class), _cell(mean)])
    return [*names, _MEAN_NAMES[metric]], cells


def format_table(
    scores: SegmentationScores | Sequence[SegmentationScores],
    classes: Sequence[str] | None = None,
    title: str | None = None,
    *,
    metric: str = "iou",
) -> str:
    """The papers' table: one row per scores, columns background .. last class, then mIoU.

    Args:
        scores: one or several results over the same classes.
        classes: column names (default: the scores' own class names).
        title: a first line.
        metric: ``"iou"`` (default), ``"precision"``, ``"recall"``, ``"fp"`` or ``"fn"``.

    Returns:
        Lines of text: title, header, one row per result, then ``name: protocol`` for each row.
    """
    rows = _as_list(scores)
    header, cells = table_cells(rows, classes, metric=metric)
    widths = [max(len(name), _MIN_WIDTH) for name in header]
    label_width = max(len(row.name) for row in rows)
    lines = [title] if title else []
    lines.append(" " * label_width + "  " + " ".join(n.rjust(w) for n, w in zip(header, widths)))
    for name, *values in cells:
        lines.append(name.ljust(label_width) + "  " + " ".join(c.rjust(w) for c, w in zip(values, widths)))
    lines.append(table_note(metric))
    lines.extend(protocol_lines(rows))
    return "\n".join(lines)


def table_note(metric: str = "iou") -> str:
    """The line under a table that says what its numbers are."""
    unit = "IoU" if metric == "iou" else metric
    return f"({unit} in percent; '-' = class absent from ground truth and prediction)"


def protocol_lines(scores: SegmentationScores | Sequence[SegmentationScores]) -> list[str]:
    """``name: protocol`` for each row (the protocol alone where it is the name)."""
    return [f"{row.name}: {row.protocol}" if row.name != row.protocol else row.protocol
            for row in _as_list(scores)]


def format_details(
    scores: SegmentationScores, classes: Sequence[str] | None = None, *, header: bool = True
) -> str:
    """One line per class: IoU, precision, recall, FP and FN ratios (percent), then the means.

    ``header=False`` leaves out the first line (name and protocol), for use under
    :func:`format_table` which already states it.
    """
    names = list(classes if classes is not None else scores.classes)
    width = max(max(len(n) for n in names), len("mean"))
    columns = ("IoU", "prec", "recall", "FP", "FN")
    lines = [f"{scores.name}: {scores.protocol}"] if header else []
    lines.append("class".ljust(width) + "  " + " ".join(c.rjust(6) for c in columns))
    values = [scores.iou, scores.precision, scores.recall, scores.fp, scores.fn]
    for index, name in enumerate(names):
        lines.append(name.ljust(width) + "  " + " ".join(_cell(v[index]).rjust(6) for v in values))
    means = [scores.miou, scores.mean_precision, scores.mean_recall, scores.mean_fp, scores.mean_fn]
    lines.append("mean".ljust(width) + "  " + " ".join(_cell(v).rjust(6) for v in means))
    summary = f"pixel accuracy {_cell(scores.pixel_accuracy)}, {scores.num_images} images"
    if scores.num_unlabelled or scores.unlabelled == "exclude":
        how = "counted as background" if scores.unlabelled == "background" else "excluded"
        summary += f", labelled coverage {_cell(scores.coverage)} (unlabelled pixels {how})"
    lines.append(summary)
    return "\n".join(lines)


def table_rows(scores: SegmentationScores | Sequence[SegmentationScores]) -> list[list[object]]:
    """CSV rows: a header, then per result one row per metric; values in percent, unrounded.

    Columns: protocol, threshold, threshold_uses_ground_truth, metric, the classes, mean.
    """
    rows = _as_list(scores)
    classes = list(rows[0].classes)
    out: list[list[object]] = [
        ["protocol", "threshold", "threshold_uses_ground_truth", "metric", *classes, "mean"]
    ]
    for row in rows:
        threshold = "" if row.threshold is None else row.threshold
        for metric in METRICS:
            per_class, mean = _metric(row, metric)
            values = ["" if math.isnan(v) else round(100.0 * float(v), 6) for v in (*per_class, mean)]
            out.append([row.protocol, threshold, row.threshold_uses_ground_truth, metric, *values])
    return out


def write_table_csv(path: str | Path, scores: SegmentationScores | Sequence[SegmentationScores]) -> None:
    """Write :func:`table_rows` atomically."""
    write_csv(path, table_rows(scores))
