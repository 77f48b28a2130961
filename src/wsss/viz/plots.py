"""Curves as PNG files: threshold sweeps (the papers' seed mIoU vs background threshold) and
training histories.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global backend switch) and
written atomically through :mod:`wsss.io`.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.io import write_bytes


TITLE_WIDTH = 70  # characters per title line at fontsize 10 on a 6-inch figure
LABEL_STEP = 11  # points between stacked best-point labels (fontsize 8)


def label_rows(points: Sequence[tuple[float, float]], x_span: float, y_span: float,
               near: tuple[float, float] = (0.15, 0.06)) -> list[int]:
    """The row (0, 1, ...) above its point at which each best-point label goes, so that labels of
    near-equal optima stack instead of overlapping.

    Points are taken from the lowest up; a label goes one row above the highest row used by the
    labels of already placed points within ``near`` (fractions of the spans: about a label's
    width and height) of it, so a stack of labels rises above its cluster in the points' order.
    """
    x_near, y_near = near[0] * (x_span or 1.0), near[1] * (y_span or 1.0)
    rows = [0] * len(points)
    placed: list[int] = []
    for index in sorted(range(len(points)), key=lambda i: points[i][1]):
        x, y = points[index]
        close = [rows[j] for j in placed if abs(points[j][0] - x) < x_near and abs(points[j][1] - y) < y_near]
        rows[index] = max(close) + 1 if close else 0
        placed.append(index)
    return rows


def plot_sweep(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    **options,
) -> Path:
    """Draw mIoU against threshold for one or several methods in one figure (:func:`sweep_png`,
    its ``options``) and write it to ``path``, atomically.

    Returns:
        ``path``.
    """
    path = Path(path)
    write_bytes(path, sweep_png(curves, **options))
    return path


def sweep_png(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str | None = None,
    markers: Mapping[str, float] | None = None,
    xlabel: str = "background threshold t",
    ylabel: str = "mIoU (%)",
    percent: bool = True,
    dpi: int = 120,
) -> bytes:
    """mIoU against threshold for one or several methods in one figure, as PNG file contents.

    Args:
        curves: name -> (thresholds, mIoU). mIoU as fractions in [0, 1] (what
            ``SweepResult.curve`` returns); drawn in percent unless ``percent`` is False. Each
            curve's best point is marked.
        title: the figure title.
        markers: label -> threshold, drawn as dashed vertical lines (e.g. the fixed and the
            label-free thresholds).
    """
    if not curves:
        raise ValueError("a sweep plot needs at least one curve")
    figure = Figure(figsize=(6.0, 4.0), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    scale = 100.0 if percent else 1.0
    bests = []  # (x, y, colour) of each curve's best point
    all_x, all_y = [], []
    for name, (thresholds, mious) in curves.items():
        x = np.asarray(thresholds, dtype=np.float64)
        y = np.asarray(mious, dtype=np.float64) * scale
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"curve '{name}': thresholds and mIoU must be 1-D of equal length")
        (line,) = axes.plot(x, y, marker=".", markersize=3, linewidth=1.5, label=name)
        all_x.append(x)
        all_y.append(y[np.isfinite(y)])
        if x.size and not np.isnan(y).all():
            best = int(np.nanargmax(y))
            axes.plot([x[best]], [y[best]], "o", color=line.get_color(), label=f"{name}: best (oracle)")
            bests.append((x[best], y[best], line.get_color()))
    xs, ys = np.concatenate(all_x), np.concatenate(all_y)
    spans = (float(np.ptp(xs)) if xs.size else 1.0, float(np.ptp(ys)) if ys.size else 1.0)
    rows = label_rows([(x, y) for x, y, _ in bests], *spans)
    for (x, y, colour), row in zip(bests, rows):
        axes.annotate(f"{y:.1f} @ {x:.2f}", (x, y), textcoords="offset points", xytext=(4, 6 + LABEL_STEP * row),
                      fontsize=8, color=colour)
    for index, (label, threshold) in enumerate((markers or {}).items()):
        axes.axvline(float(threshold), linestyle="--", linewidth=1, color=f"C{(index + len(curves)) % 10}",
                     label=label)
    axes.margins(y=0.12 + 0.06 * max(rows, default=0))  # room for the best-point labels
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(textwrap.fill(title, TITLE_WIDTH), fontsize=10)  # wrapped, never cut at the edge
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _png(figure: Figure, dpi: float | None = None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def history_png(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    title: str | None = None,
    xlabel: str = "epoch",
    dpi: int = 110,
) -> bytes:
    """Training histories side by side, one panel per quantity, as PNG file contents.

    Args:
        panels: y-axis label (``"loss"``, ``"learning rate"``) -> line name -> (x, y).
        title: the figure title.
        xlabel: the x-axis label of every panel.
    """
    if not panels:
        raise ValueError("a history plot needs at least one panel")
    figure = Figure(figsize=(3.6 * len(panels) + 0.6, 3.4), dpi=dpi)
    FigureCanvasAgg(figure)
    for index, (ylabel, lines) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for name, (x, y) in lines.items():
            axes.plot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), marker=".",
                      markersize=4, linewidth=1.5, label=name)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        if len(lines) > 1:
            axes.legend(fontsize=7)
    if title:
        figure.suptitle(textwrap.fill(title, TITLE_WIDTH + 20 * (len(panels) - 1)), fontsize=10)
    figure.tight_layout()
    return _png(figure)
