"""``wsss run``: run a recipe's stages in a work directory.

Before the first stage, everything the run needs is checked (dataset layout, splits, images,
masks, weight files, OoD list, work folder) and every problem found is listed at once.
``--dry-run`` reads further (every image header, mask and label, the weight files against their
networks) and prints the stage plan with image counts and the work estimated, running nothing
and needing no GPU. Every stage skips what is already done with the same configuration,
per-image stages resume image by image, and under ``torchrun`` the per-image work is split across
ranks. At the end it prints the results table (seed, pseudo-mask and final mIoU per method, each
with its protocol) and writes the report (``WORK/report.html``, ``WORK/report.md``; see
``wsss report``)::

    wsss run synth/demo --work work --set data.root=data/synth
    wsss run voc/advcam --work work --set data.root=VOCdevkit --dry-run
    torchrun --nproc_per_node=2 -m wsss run voc/cam --work work --set data.root=VOCdevkit
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe YAML file or a packaged name such as synth/demo")
    parser.add_argument("--work", required=True, help="work directory (outputs, markers, config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set data.root=PATH (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every input (images, masks, labels, weights, work folder) and print the "
                             "stage plan with image counts and estimated work; run nothing")
    parser.add_argument("--no-report", action="store_true",
                        help="do not write WORK/report.html and report.md at the end (the table is printed)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wsss.errors import problems_error
    from wsss.methods import Context
    from wsss.pipeline.recipes import StageFactory, build_stages, check_inputs, load_recipe
    from wsss.pipeline.results import collect_results, format_results
    from wsss.pipeline.runner import Runner
    from wsss.runtime import PIPELINE_TIMEOUT, distributed_context

    recipe = load_recipe(args.recipe, args.overrides)
    ctx = Context(recipe, Path(args.work))
    stages = build_stages(ctx)
    if args.dry_run:
        from wsss.pipeline.plan import dry_run

        text, problems = dry_run(ctx, stages, str(args.recipe))
        print(text, flush=True)
        if problems:
            raise problems_error(problems, "with the recipe's inputs (dry run: nothing was run)")
        return 0
    problems = check_inputs(ctx, stages)  # all of them, before hours of training
    if problems:
        raise problems_error(problems, "with the recipe's inputs (nothing was run)")
    # under torchrun: one process group for the whole run (barriers between stages, DDP training)
    with distributed_context(ctx.device, timeout=PIPELINE_TIMEOUT) as (dist, _):
        results = Runner(ctx.workdir, recipe).run(stages, jobs=recipe.runtime.jobs, rebuild=StageFactory.of(ctx))
    if not dist.is_main:
        return 0
    width = max(len(name) for name in results)
    for name, result in results.items():
        state = "skipped (done)" if result.skipped else f"{result.seconds:.1f} s"
        print(f"{name:<{width}}  {state}")
    print()
    print(format_results(collect_results(ctx)))
    if not args.no_report:
        write_report(ctx.workdir)
    return 0


def write_report(workdir) -> None:
    """The run's report; a problem with it is a warning, never a failed run."""
    import logging

    from wsss.errors import WsssError
    from wsss.pipeline.report import build_report

    try:
        html_path, _ = build_report(workdir)
    except WsssError as exc:
        logging.getLogger(__name__).warning("the report was not written: %s", exc)
        return
    print(f"\nreport: {html_path} (and report.md beside it)")
