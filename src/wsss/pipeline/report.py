"""The report of a work directory: one self-contained HTML page and the same tables as Markdown.

:func:`build_report` reads what a run left in its work directory and writes ``report.html``
(pictures embedded as base64 PNG, no other file, no script) and ``report.md`` (the tables and
the configuration; pictures only in the HTML page):

* the results table (:mod:`wsss.pipeline.results`) and the stages' timings;
* per-class IoU tables in the papers' layout (background first, one column per class, mIoU last;
  with more than :data:`CLASSES_AS_COLUMNS` classes the table turns, one row per class, as the
  COCO tables of the papers' supplements do) for the seeds, the pseudo masks and the final
  predictions;
* the seeds' threshold sweeps, every method in one figure;
* the training curves of every network the run trained;
* a few images with each method's map, IR labels and pseudo mask (seed split), and every
  method's predictions (validation split);
* the resolved configuration (``config.yaml``).

A piece that is missing (a stage that did not run, a dataset that moved) is left out with a note
saying so; the report is still written. Both files are written atomically.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wsss import __version__
from wsss.errors import DataError, WsssError
from wsss.io import ensure_writable_folder, read_json, write_text
from wsss.methods import Context, get_method, registered_methods
from wsss.methods.chain import UNTIL
from wsss.pipeline.results import PROTOCOL_NOTE, collect_results, results_cells, scores_of

log = logging.getLogger(__name__)

__all__ = ["CLASSES_AS_COLUMNS", "HTML_NAME", "MARKDOWN_NAME", "build_report"]

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
CLASSES_AS_COLUMNS = 25
"""Up to this many classes (VOC's 21) a per-class table has one column per class; beyond (COCO's
81) one row per class."""
WHAT = {"seed": "Seeds", "pseudo": "Pseudo masks", "final": "Final segmentation"}


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One heading of the report: paragraphs, tables, pictures (HTML only) and a preformatted block."""

    title: str
    anchor: str
    parts: list[Any] = field(default_factory=list)  # str (paragraph) | Table | Picture | Code

    def note(self, text: str) -> None:
        self.parts.append(Note(text))


@dataclass
class Note:
    text: str


@dataclass
class Picture:
    png: bytes
    caption: str


@dataclass
class Code:
    text: str


# ---------------------------------------------------------------------------------- reading
def _is_work_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("config.yaml", ".stages", "eval"))


def _load_recipe(workdir: Path, data: str | None) -> tuple[Any, str | None]:
    """The run's recipe from its ``config.yaml`` (``data`` replacing ``data.root``), or None and why."""
    from wsss.pipeline.recipes import load_recipe

    path = workdir / "config.yaml"
    if not path.is_file():
        return None, "no config.yaml in the work folder: methods taken from eval/, no pictures"
    try:
        return load_recipe(path, [f"data.root={data}"] if data else []), None
    except WsssError as exc:
        return None, f"config.yaml could not be read as a recipe ({exc}): methods taken from eval/, no pictures"


def _methods_from_files(workdir: Path) -> list[str]:
    """Method names from ``eval/<method>_<what>.json`` (a run whose recipe could not be read)."""
    names: dict[str, None] = {}
    for path in sorted((workdir / "eval").glob("*.json")):
        method, _, what = path.stem.rpartition("_")
        if method and what in WHAT and method != "fully_supervised":
            names.setdefault(method, None)
    return list(names)


def _planned_stages(ctx: Context) -> list[str] | None:
    if ctx.recipe is None:
        return None
    from wsss.pipeline.recipes import build_stages

    try:
        return [stage.name for stage in build_stages(ctx)]
    except Exception:  # a recipe this version builds no more: no plan, only what the markers say
        return None


def _markers(workdir: Path) -> dict[str, dict[str, Any]]:
    markers = {}
    folder = workdir / ".stages"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            marker = read_json(path)
        except DataError:
            continue
        if isinstance(marker, dict):
            markers[path.stem] = marker
    return markers


def _not_run_why(ctx: Context, what: str) -> str:
    """Why a run has no ``what`` (seed, pseudo, final) evaluation: its recipe stops before, or not known."""
    until = getattr(ctx.recipe, "until", None)
    if until in UNTIL and list(WHAT).index(what) > UNTIL.index(until):  # UNTIL: seeds, pseudo, final
        return f"not part of this run (until: {until})"
    return "no evaluation in eval/"


# ---------------------------------------------------------------------------------- sections
def _results_section(ctx: Context, methods: list[str], planned: list[str] | None) -> Section:
    section = Section("Results", "results")
    results = collect_results(ctx, methods)
    header, rows = results_cells(results)
    section.parts.append(Table(header, rows, "mIoU (%) of each method at each step of the chain"))
    section.parts.append(PROTOCOL_NOTE)
    stage_names = {"seed": "seed_eval", "pseudo": "pseudo_eval", "final": "final_eval"}
    for method in [*methods, "fully_supervised"]:
        for what, stage in stage_names.items():
            if method == "fully_supervised" and what != "final":
                continue
            if ctx.eval_path(method, what).is_file():
                continue
            name = f"{method}.{stage}"
            if planned is not None and name not in planned:
                if method == "fully_supervised" or what != "seed":
                    continue  # not part of this recipe (until, fully_supervised: false): nothing to say
                section.note(f"{method}: no seeds to score (its chain does not start from maps)")
            else:
                section.note(f"{method}: no {WHAT[what].lower()} evaluation (stage {name} did not run "
                             f"or did not finish; eval/{method}_{what}.json is missing)")
    return section


def _timing_section(workdir: Path, planned: list[str] | None) -> Section:
    section = Section("Stages", "stages")
    markers = _markers(workdir)
    if not markers:
        section.note("no stage markers (.stages/): no stage has run in this folder")
        return section
    order = [name for name in planned or [] if name in markers] + sorted(set(markers) - set(planned or []))
    rows = []
    for name in order:
        marker = markers[name]
        seconds = marker.get("seconds")
        rows.append([name, str(marker.get("state", "?")), "-" if seconds is None else f"{float(seconds):.1f}",
                     str(marker.get("finished", "-"))])
    for name in planned or []:
        if name not in markers:
            rows.append([name, "not run", "-", "-"])
    section.parts.append(Table(["stage", "state", "seconds", "finished"], rows,
                               "each stage's marker in .stages/ (skipped stages keep their first run's seconds)"))
    return section


def _per_class_table(scores: list, caption: str) -> Table:
    from wsss.evaluation.tables import protocol_lines, table_cells, table_note

    header, cells = table_cells(scores)
    if len(header) - 1 > CLASSES_AS_COLUMNS:  # one row per class, one column per result
        names = [row[0] for row in cells]
        rows = [[header[i], *(row[i + 1] for row in cells)] for i in range(len(header))]
        return Table(["class", *names], rows, caption, [table_note(), *protocol_lines(scores)])
    return Table(["", *header], cells, caption, [table_note(), *protocol_lines(scores)])


def _per_class_section(ctx: Context, methods: list[str]) -> Section:
    section = Section("Per-class IoU", "per-class")
    for what in WHAT:
        scores = []
        described = None
        for method in [*methods, *(["fully_supervised"] if what == "final" else [])]:
            label = "fully supervised" if method == "fully_supervised" else method
            rows = scores_of(ctx, method, what, label)
            if rows and described is None:
                dataset = read_json(ctx.eval_path(method, what))["dataset"]
                described = f"split '{Path(str(dataset['split'])).name}', {dataset['num_images']} images"
            scores += rows
        if not scores:
            section.note(f"{WHAT[what]}: {_not_run_why(ctx, what)}, no table")
            continue
        if len({s.num_classes for s in scores}) > 1:
            section.note(f"{WHAT[what]}: the evaluations disagree on the classes, no table")
            continue
        section.parts.append(_per_class_table(scores, f"{WHAT[what]} on {described}: IoU (%) per class"))
    return section


def _sweep_section(ctx: Context, methods: list[str]) -> Section:
    from wsss.viz.plots import sweep_png

    section = Section("Threshold sweeps", "sweeps")
    curves, fixed = {}, set()
    for method in methods:
        path = ctx.eval_path(method, "seed")
        if not path.is_file():
            continue
        sweep = read_json(path).get("sweep") or {}
        if sweep.get("thresholds"):
            curves[method] = (np.asarray(sweep["thresholds"]), np.asarray(sweep["miou"], dtype=np.float64) / 100.0)
            if sweep.get("fixed_threshold") is not None:
                fixed.add(float(sweep["fixed_threshold"]))
    if not curves:
        section.note("no seed evaluation with a threshold sweep in eval/: no curve")
        return section
    markers = {f"fixed t={next(iter(fixed)):.2f}": next(iter(fixed))} if len(fixed) == 1 else None
    png = sweep_png(curves, title="Seed mIoU against the background threshold (seed split)", markers=markers)
    section.parts.append(Picture(png, "Seed mIoU at each background threshold; the marked maximum is the "
                                      "oracle threshold (chosen on the ground truth)."))
    return section


def _history_series(history: Sequence[dict[str, Any]], x_key: str) -> dict[str, dict[str, tuple]]:
    """A history's numbers as panels: losses, learning rate, validation scores (``val`` dicts)."""
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    skip = {"epoch", "step", "iteration", "seconds"}

    def add(panel: str, name: str, x: float, y: Any) -> None:
        if isinstance(y, (int, float)) and not isinstance(y, bool) and not name.startswith("num_"):
            xs, ys = panels.setdefault(panel, {}).setdefault(name, ([], []))
            xs.append(float(x))
            ys.append(float(y))

    for record in history:
        x = record.get(x_key)
        if x is None:
            continue
        for key, value in record.items():
            if key in skip:
                continue
            if isinstance(value, dict):
                for name, inner in value.items():
                    add("validation" if key == "val" else key, name, x, inner)
            else:
                add("learning rate" if key == "lr" else "loss", key, x, value)
    return panels


def _network_histories(workdir: Path) -> list[tuple[str, list[dict[str, Any]], str]]:
    """(name, history, x key) of the networks saved with their history: the classifiers at the
    top of the work folder and IRN's under irn/ (per epoch)."""
    from wsss.models.weights import load_torch_file

    found = []
    for path in [*sorted(workdir.glob("*.pt")), *sorted((workdir / "irn").glob("*.pt"))]:
        checkpoint = load_torch_file(path, "wsss checkpoint")
        extra = checkpoint.get("extra") if isinstance(checkpoint, dict) else None
        history = extra.get("history") if isinstance(extra, dict) else None
        if isinstance(history, list) and history and isinstance(history[0], dict):
            key = "epoch" if "epoch" in history[0] else "iteration"
            found.append((str(path.relative_to(workdir)), history, key))
    return found


def _training_section(workdir: Path) -> Section:
    from wsss.viz.plots import history_png

    section = Section("Training curves", "training")
    drawn = 0
    try:
        networks = _network_histories(workdir)
    except WsssError as exc:
        networks = []
        section.note(f"a network's history could not be read: {exc}")
    for name, history, key in networks:
        panels = _history_series(history, key)
        if panels:
            section.parts.append(Picture(history_png(panels, title=name, xlabel=key), f"{name}: its training history"))
            drawn += 1
    for folder in sorted({p.parent for p in workdir.glob("**/history.json")}):
        name = str(folder.relative_to(workdir))
        curve = folder / "training_curve.png"
        if curve.is_file():
            section.parts.append(Picture(curve.read_bytes(), f"{name}: loss per update, learning rate beneath"))
            drawn += 1
            continue
        history = read_json(folder / "history.json")
        panels = _history_series(history, "iteration") if isinstance(history, list) else {}
        if panels:
            section.parts.append(Picture(history_png(panels, title=name, xlabel="iteration"), f"{name}: loss per update"))
            drawn += 1
    if not drawn:
        section.note("no training history in the work folder (no network trained yet)")
    return section


def _pictures_section(ctx: Context, methods: list[str], images: int, max_side: int) -> Section:
    from wsss.stores.maps import MapStore
    from wsss.stores.masks import MaskStore
    from wsss.viz.overlays import draw_grid, png_bytes

    section = Section("Pictures", "pictures")
    if ctx.recipe is None:
        section.note("no recipe (config.yaml): the dataset is unknown, no pictures")
        return section
    recipe = ctx.recipe
    try:
        seed_set = ctx.dataset(recipe.data.seed_split)
    except WsssError as exc:
        section.note(f"the seed split could not be opened ({exc}): no pictures; give the dataset with --data")
        return section
    ids = seed_set.ids[:images]
    for method in methods:
        # the method's own names for its label maps (BANA's Y_crf and Y_ret) win over "pseudo mask"
        own = get_method(method).pictures(ctx) if method in registered_methods() else {}
        columns: dict[str, Any] = {}
        for title, folder, store in (("map", ctx.maps_dir(method), MapStore),
                                     ("IR labels", ctx.ir_label_dir(method), MaskStore),
                                     ("pseudo mask", ctx.pseudo_dir(method), MaskStore)):
            if folder.is_dir() and folder not in map(Path, own.values()):
                columns[title] = store(folder)
        columns.update({title: MaskStore(folder) for title, folder in own.items() if Path(folder).is_dir()})
        if not columns:
            section.note(f"{method}: no maps, IR labels or pseudo masks in the work folder")
            continue
        grid = draw_grid(seed_set, columns, ids, max_side=max_side)
        how = ["maps as heat maps (max over the image's classes)"] if "map" in columns else []
        if len(columns) > len(how):
            how.append("label maps in the palette's colours, ignored pixels white")
        section.parts.append(Picture(png_bytes(grid), f"{method} on the seed split ({', '.join(columns)}): "
                                                      + "; ".join(how)))
    predictions = {("fully supervised" if m == "fully_supervised" else m): MaskStore(ctx.prediction_dir(m))
                   for m in [*methods, "fully_supervised"] if ctx.prediction_dir(m).is_dir()}
    if not predictions:
        why = _not_run_why(ctx, "final")
        section.note("no predictions: " + (why if why.startswith("not part") else
                                           "none in the work folder (no segmentation network has predicted yet)"))
        return section
    try:
        val_set = ctx.dataset(recipe.data.val_split)
    except WsssError as exc:
        section.note(f"the validation split could not be opened ({exc}): no pictures of the predictions")
        return section
    grid = draw_grid(val_set, predictions, val_set.ids[:images], max_side=max_side)
    section.parts.append(Picture(png_bytes(grid), "Predictions on the validation split, every method"))
    return section


def _config_section(workdir: Path) -> Section:
    section = Section("Configuration", "config")
    path = workdir / "config.yaml"
    if path.is_file():
        section.parts.append("The resolved recipe the run used (config.yaml):")
        section.parts.append(Code(path.read_text()))
    else:
        section.note("no config.yaml in the work folder")
    return section


# ---------------------------------------------------------------------------------- rendering
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or " "


def _markdown(title: str, facts: list[tuple[str, str]], sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {name}: {value}" for name, value in facts]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        for part in section.parts:
            if isinstance(part, Table):
                if part.caption:
                    lines += [f"**{part.caption}**", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in part.header) + " |")
                lines.append("|" + "|".join(["---"] + ["---:"] * (len(part.header) - 1)) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in part.rows]
                lines += ["", *[f"{note}  " for note in part.notes], ""]
            elif isinstance(part, Picture):
                lines += [f"*Picture in {HTML_NAME}: {part.caption}*", ""]
            elif isinstance(part, Code):
                lines += ["```yaml", part.text.rstrip("\n"), "```", ""]
            elif isinstance(part, Note):
                lines += [f"> Note: {part.text}", ""]
            else:
                lines += [str(part), ""]
    return _squeeze_blank_lines(lines)


def _squeeze_blank_lines(lines: list[str]) -> str:
    """The lines joined, runs of blank lines made one (inside code fences kept as they are)."""
    kept: list[str] = []
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line == "" and kept and kept[-1] == "":
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n") + "\n"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #1b1b1b; background: #ffffff; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 3px solid #2f5d8a; padding-bottom: 6px; }
h2 { font-size: 1.25em; margin-top: 2em; color: #2f5d8a; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; margin: 0 0 1.2em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
p.caption { font-weight: 600; margin: 1.2em 0 0.2em 0; }
th, td { border: 1px solid #c8ced6; padding: 3px 8px; white-space: nowrap; }
th { background: #e8eef5; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 600; }
tbody tr:nth-child(even) { background: #f6f8fa; }
.notes { font-size: 0.85em; color: #444; margin: 0.3em 0 0 0; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 4px 10px; margin: 0.5em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #d0d0d0; }
figcaption { font-size: 0.85em; color: #444; }
pre { background: #f4f4f4; padding: 10px; overflow-x: auto; font-size: 0.82em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
"""


def _html(title: str, facts: list[tuple[str, str]], sections: list[Section]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
           '<dl class="facts">', *[f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts], "</dl>",
           "<nav>", *[f'<a href="#{s.anchor}">{e(s.title)}</a>' for s in sections], "</nav>"]
    for section in sections:
        out.append(f'<section id="{section.anchor}"><h2>{e(section.title)}</h2>')
        for part in section.parts:
            if isinstance(part, Table):
                if part.caption:
                    out.append(f'<p class="caption">{e(part.caption)}</p>')
                out.append('<div class="scroll"><table>')
                out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in part.header) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in part.rows]
                out.append("</tbody></table>")
                if part.notes:
                    out.append('<p class="notes">' + "<br>".join(e(n) for n in part.notes) + "</p>")
                out.append("</div>")
            elif isinstance(part, Picture):
                data = base64.b64encode(part.png).decode("ascii")
                out.append(f'<figure><img alt="{e(part.caption)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{e(part.caption)}</figcaption></figure>")
            elif isinstance(part, Code):
                out.append(f"<pre>{e(part.text)}</pre>")
            elif isinstance(part, Note):
                out.append(f'<p class="note">{e(part.text)}</p>')
            else:
                out.append(f"<p>{e(str(part))}</p>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- entry
def build_report(workdir: str | Path, out: str | Path | None = None, *, data: str | None = None,
                 images: int = 4, max_side: int = 160) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the run in ``workdir``.

    Args:
        workdir: a work directory of ``wsss run`` (or the demo's ``work/``).
        out: the folder for both files (default: ``workdir``).
        data: the dataset root, when it is no longer where the recipe says.
        images: images per picture grid.
        max_side: the long side of each picture cell, in pixels.

    Returns:
        The HTML and Markdown paths.

    Raises:
        DataError: ``workdir`` is not a work folder, or ``out`` cannot be written.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise DataError("work folder not found", workdir)
    if not _is_work_folder(workdir):
        raise DataError("not a wsss work folder (no config.yaml, .stages/ or eval/)", workdir)
    out = ensure_writable_folder(workdir if out is None else Path(out), "report folder")
    recipe, why = _load_recipe(workdir, data)
    ctx = Context(recipe, workdir)
    methods = list(recipe.methods) if recipe is not None else _methods_from_files(workdir)
    planned = _planned_stages(ctx)
    facts = [("work folder", str(workdir.resolve())), ("written", time.strftime("%Y-%m-%d %H:%M:%S")),
             ("wsss", __version__), ("methods", ", ".join(methods) or "none found")]
    if recipe is not None:
        facts += [("dataset", str(recipe.data.root)),
                  ("splits", f"train '{recipe.data.train_split}', seeds '{recipe.data.seed_split}', "
                             f"validation '{recipe.data.val_split}'"),
                  ("until", str(recipe.until))]

    builders: list[tuple[str, Callable[[], Section]]] = [
        ("Results", lambda: _results_section(ctx, methods, planned)),
        ("Per-class IoU", lambda: _per_class_section(ctx, methods)),
        ("Threshold sweeps", lambda: _sweep_section(ctx, methods)),
        ("Training curves", lambda: _training_section(workdir)),
        ("Pictures", lambda: _pictures_section(ctx, methods, images, max_side)),
        ("Stages", lambda: _timing_section(workdir, planned)),
        ("Configuration", lambda: _config_section(workdir)),
    ]
    sections = []
    for title, build in builders:
        try:
            section = build()
        except (WsssError, KeyError, ValueError, TypeError) as exc:  # a malformed file: say so, go on
            log.warning("report: %s left out: %s", title, exc)
            section = Section(title, title.lower().replace(" ", "-"))
            section.note(f"left out: {type(exc).__name__}: {exc}")
        sections.append(section)
    if why:
        sections[0].parts.insert(0, Note(why))
    title = f"wsss report: {workdir.resolve().name}"
    html_path, md_path = out / HTML_NAME, out / MARKDOWN_NAME
    write_text(md_path, _markdown(title, facts, sections))
    write_text(html_path, _html(title, facts, sections))
    return html_path, md_path
