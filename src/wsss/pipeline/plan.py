"""``wsss run --dry-run``: a recipe's inputs checked and its stages planned, nothing run.

:func:`dry_run` reads what a run would read first (every listed image's header, every mask,
every image's labels, the weight files against their networks, the work folder and its stage
markers) and returns the plan as text with every problem found. It needs no GPU, trains
nothing and writes nothing (not even the work folder).
"""

from __future__ import annotations

from wsss.errors import WsssError
from wsss.methods import Context, Stage
from wsss.pipeline.recipes import stage_work, inspect_inputs
from wsss.pipeline.runner import STAGE_STATES, stage_states

__all__ = ["dry_run"]


def dry_run(ctx: Context, stages: list[Stage], title: str = "") -> tuple[str, list[WsssError]]:
    """The inputs of a run of ``stages`` checked and its plan, without running anything.

    Args:
        ctx: the run's context (recipe, work folder).
        stages: the stages the run would run (:func:`wsss.pipeline.recipes.build_stages`).
        title: what to call the recipe in the first line (its name or file).

    Returns:
        ``(text, problems)``: the report, one line per input and per stage (its images, what a
        run would do with it given the work folder's markers, and its work), and every problem
        found (empty when the run can start).
    """
    recipe = ctx.recipe
    report = inspect_inputs(ctx, stages, read=True)
    states = stage_states(ctx.workdir, stages) if ctx.workdir.is_dir() else {}
    lines = [f"wsss run {title} --dry-run: nothing is run" if title else "wsss run --dry-run: nothing is run",
             f"recipe: methods {', '.join(recipe.methods)}; until {recipe.until}; scale {recipe.scale}"
             + ("; with the fully supervised baseline" if recipe.until == "final" and recipe.fully_supervised else ""),
             "inputs:"]
    lines += [f"  {note}" for note in report.notes]
    rows = [("stage", "images", "state", "work")]
    for stage in stages:
        work = stage_work(stage)
        images = "-" if work is None or work.images is None else f"{work.images:,}"
        state = STAGE_STATES[states.get(stage.name, "new")]
        rows.append((stage.name, images, state, "?" if work is None else work.what))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines.append(f"stages ({len(stages)}):")
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) if column != 1 else cell.rjust(width)
                                      for column, (cell, width) in enumerate(zip(row[:3], widths))) + f"  {row[3]}")
    changed = [name for name, state in states.items() if state == "changed"]
    if changed:
        lines.append(f"warning: {len(changed)} stages in {ctx.workdir} were finished with other settings or data; "
                     f"a run clears their outputs and makes them again: {', '.join(changed)}")
    if not report.problems:
        lines.append("ok: every input is in place; the same command without --dry-run runs these stages")
    return "\n".join(lines), report.problems
