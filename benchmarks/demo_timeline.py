"""Where a finished demo's wall time went, and what it would be at other sizes.

Reads the stage markers of a finished ``wsss demo`` folder (``<out>/work/.stages/*.json``: each
stage's seconds and the time it finished) and prints:

* the timeline: each stage's start and end (seconds from the first stage's start) and its
  seconds, with the time two workers sat idle (``--timeline`` prints every stage, otherwise only
  those over a minute);
* the wall time of the same stages replayed in ``--jobs`` workers (a simulation from the measured
  seconds) in three orders: the list order among ready stages (the runner before
  ``Stage.priority``), the runner's order now (:func:`wsss.pipeline.runner.start_order`) and the
  longest remaining chain first (the best order a scheduler could know, with the seconds known in
  advance);
* the whole demo at ``--train`` training images, with the seed images fixed at the run's count and
  at a fifth of the training images: each stage's seconds scaled by what it iterates over (the
  classifier and W-OoD's fine-tuning: epochs over the training images; BANA's classifier, BBAM's
  detector and the Mask R-CNNs: a fixed number of updates; prediction and evaluation on val: fixed;
  everything else: per seed image or epochs over them), replayed in the runner's order.

The replay assumes a stage costs the same whatever runs beside it, which two single-thread
workers on two cores roughly give (their memory and caches are shared). It reads no image and
runs no network::

    python benchmarks/demo_timeline.py demo_out
    python benchmarks/demo_timeline.py demo_out --timeline --train 500 1000 2000
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from wsss.methods import Context
from wsss.pipeline.recipes import build_stages, load_recipe
from wsss.pipeline.runner import stage_needs, start_order

TRAINING_EPOCHS = {"classifier", "wood.classifier"}  # epochs over the training images
FIXED = ("detector", "mask_rcnn", "bana.classifier", "predict", "final_eval", "instance_eval")


def work_folder(out: Path) -> Path:
    """The work folder of a ``wsss demo --out`` folder (``out/work``) or ``out`` itself (``wsss run --work``)."""
    work = out / "work" if (out / "work" / ".stages").is_dir() else out
    if not (work / ".stages").is_dir() or not (work / "config.yaml").is_file():
        raise SystemExit(f"{out}: no .stages/ and config.yaml (not a demo or run folder)")
    return work


def measured(work: Path) -> dict[str, tuple[float, float]]:
    """Each finished stage's (start, seconds), start in seconds since the epoch."""
    stages = {}
    for path in sorted((work / ".stages").glob("*.json")):
        marker = json.loads(path.read_text())
        if marker.get("state") == "done" and "finished" in marker:
            end = datetime.fromisoformat(marker["finished"]).timestamp()
            stages[path.stem] = (end - marker["seconds"], marker["seconds"])
    if not stages:
        raise SystemExit(f"{work}: no finished stage marker in .stages")
    return stages


def replay(names: list[str], needs: dict, seconds: dict[str, float], order: dict[str, float], jobs: int) -> float:
    """The wall time of ``names`` in ``jobs`` workers, each free worker taking the ready stage
    lowest in ``order`` (list scheduling, as :class:`wsss.pipeline.runner.Runner` does)."""
    todo = sorted(names, key=lambda name: order[name])
    done: set[str] = set()
    running: list[tuple[float, str]] = []
    now = 0.0
    while todo or running:
        for name in [n for n in todo if all(need in done for need in needs[n])]:
            if len(running) >= jobs:
                break
            todo.remove(name)
            running.append((now + seconds[name], name))
        running.sort()
        now, name = running.pop(0)
        done.add(name)
    return now


def scale_factor(name: str, train: int, seeds: int, run_train: int, run_seeds: int) -> float:
    if name in TRAINING_EPOCHS:
        return train / run_train
    if name.endswith(FIXED):
        return 1.0
    return seeds / run_seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a finished `wsss demo --out` folder (or `wsss run --work` folder)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="every stage, not only those over a minute")
    parser.add_argument("--train", type=int, nargs="*", default=[500, 1000, 2000],
                        help="training-set sizes for the whole-demo estimate")
    parser.add_argument("--what-if", dest="what_if", action="append", default=[], metavar="SUFFIX=FACTOR",
                        help="also replay with the seconds of the stages whose names end in SUFFIX times FACTOR "
                             "(e.g. .mask_rcnn=0.5 for half the updates; repeatable, each alone and all together)")
    args = parser.parse_args(argv)
    what_if = []
    for item in args.what_if:
        suffix, _, factor = item.partition("=")
        try:
            what_if.append((suffix, float(factor)))
        except ValueError:
            parser.error(f"--what-if {item!r}: expected SUFFIX=FACTOR, e.g. .seg=0.5")

    work = work_folder(args.out)
    recipe = load_recipe(work / "config.yaml")  # the recipe the run resolved, as the runner wrote it
    ctx = Context(recipe, work)
    stages = build_stages(ctx)
    names = [stage.name for stage in stages]
    needs = stage_needs(stages)
    runs = measured(work)
    missing = [name for name in names if name not in runs]
    if missing:
        raise SystemExit(f"{args.out}: stages without a finished marker: {', '.join(missing)}")
    seconds = {name: runs[name][1] for name in names}
    first = min(start for start, _ in runs.values())
    wall = max(start + sec for start, sec in runs.values()) - first
    total = sum(seconds.values())

    print(f"{args.out}: {len(names)} stages, {total / 60:.1f} min of stage time in {wall / 60:.1f} min "
          f"from the first stage's start to the last one's end ({total / wall:.2f} stages at once on average)")
    print(f"\n{'start':>7} {'end':>7} {'seconds':>8}  stage")
    for name in sorted(names, key=lambda n: runs[n][0]):
        start, sec = runs[name]
        if args.timeline or sec >= 60:
            print(f"{start - first:7.0f} {start - first + sec:7.0f} {sec:8.1f}  {name}")

    index = {name: i for i, name in enumerate(names)}
    tails: dict[str, float] = {}
    for name in reversed(names):  # the longest chain of measured seconds from each stage to the end
        after = [tails[other] for other in names if name in needs[other]]
        tails[name] = seconds[name] + max(after, default=0.0)
    orders = {
        "list order (the runner before Stage.priority)": {n: index[n] for n in names},
        "the runner's order (priority, then list)": {n: i for i, n in enumerate(start_order(stages))},
        "longest remaining chain first (seconds known in advance)": {n: -tails[n] for n in names},
    }
    print(f"\nreplayed in {args.jobs} workers from the measured seconds (min):")
    for label, order in orders.items():
        print(f"  {label:58s} {replay(names, needs, seconds, order, args.jobs) / 60:6.1f}")
    print(f"  {'the longest chain alone':58s} {max(tails.values()) / 60:6.1f}")
    print(f"  {'all stage time / workers':58s} {total / args.jobs / 60:6.1f}")

    if what_if:
        runner_order = orders["the runner's order (priority, then list)"]
        print(f"\nwhat if (the runner's order, {args.jobs} workers; stage time and wall, min):")
        cases = [[case] for case in what_if] + ([what_if] if len(what_if) > 1 else [])
        for case in cases:
            scaled = dict(seconds)
            for suffix, factor in case:
                matched = [n for n in names if n.endswith(suffix)]
                if not matched:
                    raise SystemExit(f"--what-if {suffix}: no stage name ends so")
                for name in matched:
                    scaled[name] *= factor
            label = ", ".join(f"{suffix} x{factor:g}" for suffix, factor in case)
            wall = replay(names, needs, scaled, runner_order, args.jobs)
            print(f"  {label:58s} {sum(scaled.values()) / 60:6.1f} {wall / 60:6.1f}")

    run_train, run_seeds = len(ctx.dataset(recipe.data.train_split)), len(ctx.dataset(recipe.data.seed_split))
    runner_order = orders["the runner's order (priority, then list)"]
    print(f"\nthe whole demo at other sizes (this run: {run_train} training images, {run_seeds} seed images):")
    print("| training images | seed images | stage time (min) | wall, replayed (min) |")
    print("| --- | --- | --- | --- |")
    for train in args.train:
        for seeds in sorted({run_seeds, max(1, train // 5)}):
            scaled = {n: seconds[n] * scale_factor(n, train, seeds, run_train, run_seeds) for n in names}
            print(f"| {train} | {seeds} | {sum(scaled.values()) / 60:.0f} | "
                  f"{replay(names, needs, scaled, runner_order, args.jobs) / 60:.0f} |")


if __name__ == "__main__":
    main()
