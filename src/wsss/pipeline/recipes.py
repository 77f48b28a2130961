"""Recipes: the schema assembled from the registered methods, loading, and the run's stages.

A recipe names the dataset, the runtime, the methods to run and how far (``until``), and one
section per stage's settings. The sections come from :data:`wsss.methods.chain.SHARED_SECTIONS`
(the classifier and IRN's chain, shared by every image-level method) and from each registered
method (:func:`wsss.methods.method_sections`), so this module names no method: a new method's
section appears here by being registered.

:func:`load_recipe` checks settings only; :func:`check_inputs` checks the files a run needs, all
of them, before its first stage. :func:`build_stages` lists every selected method's stages (a
stage two methods share, such as the classifier, once), then the fully supervised baseline.
The work directory's layout is :class:`wsss.methods.Context`'s.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss.config import ScaleMode, build, check_finite, recipe_path
from wsss.errors import ConfigError, DataError, WsssError
from wsss.io import ensure_writable_folder, read_json
from wsss.methods import Context, DataConfig, RuntimeConfig, Stage, Work, get_method, method_sections
from wsss.methods.base import count
from wsss.methods.chain import SHARED_SECTIONS, UNTIL, seg_stages
from wsss.pipeline.runner import finished_stages

log = logging.getLogger(__name__)

__all__ = ["InputReport", "Recipe", "StageFactory", "build_stages", "check_inputs", "final_summary", "inspect_inputs", "load_recipe",
           "seed_summary", "stage_work"]

@dataclass
class _RecipeHead:
    methods: tuple[str, ...] = ("cam",)
    until: str = "final"  # seeds | pseudo | final: how far each method goes
    fully_supervised: bool = True  # also train the network on ground truth (with until=final)
    # reference: the references' values in pixels, grid cells and logits as they are (VOC's scale);
    # image: relative to each image, equal to them at VOC's scale (wsss.config.SCALE_MODES, docs/scale.md)
    scale: ScaleMode = "reference"
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def _recipe_class() -> type:
    sections = {**SHARED_SECTIONS, **method_sections()}
    return dataclasses.make_dataclass(
        "Recipe", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()],
        bases=(_RecipeHead,), namespace={"__doc__": "A run's configuration: the shared sections and "
                                                    "every registered method's."})


Recipe = _recipe_class()


def load_recipe(name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Defaults, then the recipe file (if any), then ``section.key=value`` overrides, checked.

    Only settings are checked here (types, ranges, NaN and infinity, every selected method's
    own), so ``wsss config`` shows a recipe that names no data yet; :func:`check_inputs` checks
    the files a run needs.
    """
    recipe = build(Recipe, None if name is None else recipe_path(name), overrides)
    if recipe.until not in UNTIL:
        raise ConfigError(f"until must be one of {', '.join(UNTIL)}, got {recipe.until!r}")
    methods = [get_method(name) for name in recipe.methods]
    check_finite(recipe, "recipe")
    recipe.runtime.validate()
    # the shared sections a run uses (IRN's only past the seeds, DeepLab's only to the end)
    unused = {"seeds": ("ir_labels", "irn", "random_walk", "segmentation"), "pseudo": ("segmentation",)}
    for section in SHARED_SECTIONS:
        config = getattr(recipe, section)
        if section not in unused.get(recipe.until, ()) and hasattr(config, "validate"):
            config.validate()
    for method in methods:
        method.validate(recipe)
    return recipe


@dataclass
class InputReport:
    """What :func:`inspect_inputs` found.

    Attributes:
        problems: every problem, each a one-line :class:`WsssError`, without repeats.
        notes: what was looked at and found usable, one line each (the splits, the weight
            files, the work folder), for ``wsss run --dry-run`` to print.
    """

    problems: list[WsssError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


SIMILAR_PROBLEMS = 3
"""More problems of a split with the same message than this become one line counting them."""


def open_run(folder: str | Path, recipe_file: str | Path | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, Context]:
    """``(recipe, Context)`` of a finished or partial run: a demo's output folder (``work/``
    inside it) or a work folder, read with the ``config.yaml`` it holds or with ``recipe_file``,
    and ``overrides`` on top (for scripts that read a run, such as the benchmarks).

    Raises:
        DataError: ``folder`` is not a folder.
        ConfigError: no recipe to read (one line saying what to give instead).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("work folder not found", folder)
    workdir = folder / "work" if (folder / "work" / "config.yaml").is_file() else folder
    recipe_file = Path(recipe_file) if recipe_file else workdir / "config.yaml"
    if not recipe_file.is_file():
        raise ConfigError(f"{recipe_file}: no recipe (give the demo's --out folder, a work folder holding "
                          "config.yaml, or --recipe)")
    recipe = load_recipe(recipe_file, list(overrides))
    return recipe, Context(recipe, workdir)


def check_inputs(ctx: Context, stages: list[Stage]) -> list[WsssError]:
    """Every problem with what a run of ``stages`` needs, found before the first stage runs.

    Looks at the work folder (writable), ``data.root`` and the three
    splits (layout, split files, every listed image present, masks where seeds and predictions
    are scored), the weight files the recipe names (present and fitting their networks), the
    selected methods' own inputs (W-OoD's OoD list, BANA's boxes), settings that cannot work with
    the data (a batch larger than its split), and a finished classifier checkpoint against the
    dataset's classes. Reads no image (:func:`inspect_inputs` with ``read=True`` does).

    Returns:
        The problems, each a one-line :class:`WsssError`, without repeats; empty when all is well.
    """
    return inspect_inputs(ctx, stages).problems


def inspect_inputs(ctx: Context, stages: list[Stage], read: bool = False) -> InputReport:
    """:func:`check_inputs`, with notes on what was found; with ``read`` (``wsss run --dry-run``)
    also every listed image's header, every mask (decoded: its size against its image's, its
    values against the classes) and every image's labels, as ``wsss check-data`` reads them
    (:meth:`~wsss.data.voc.VOCDataset.find_problems`), and without creating the work folder."""
    recipe = ctx.recipe
    report = InputReport()
    problems = report.problems

    def attempt(check: Callable[[], Any]) -> Any:
        try:
            return check()
        except WsssError as exc:
            problems.append(exc)
            return None

    note = _check_work_folder(ctx.workdir, create=not read)
    if isinstance(note, WsssError):
        problems.append(note)
    else:
        report.notes.append(note)
    train = None
    if not recipe.data.root:
        problems.append(ConfigError("no dataset: set data.root (e.g. --set data.root=PATH)"))
    else:
        uses: dict[str, list[str]] = {}
        for split, use in ((recipe.data.train_split, "classifier training"), (recipe.data.seed_split, "seeds"),
                           (recipe.data.eval_split, "scores of seeds and pseudo masks"),
                           (recipe.data.val_split, "validation")):
            if split:
                uses.setdefault(split, []).append(use)
        for split, what in uses.items():
            dataset = attempt(lambda: ctx.dataset(split))
            if dataset is None:
                continue
            if split == recipe.data.train_split:
                train = dataset
            role = ", ".join(what)
            missing = [image_id for image_id in dataset.ids if not dataset.image_path(image_id).exists()]
            if missing:
                problems.append(DataError(f"{len(missing)} of the {len(dataset.ids)} images of split "
                                          f"{split!r} ({role}) are missing, e.g. {missing[0]!r}",
                                          dataset.image_path(missing[0]).parent))
            scored = split == ctx.eval_split or (split == recipe.data.val_split and recipe.until == "final")
            if scored and not dataset.has_masks:
                problems.append(DataError(f"split {split!r} lacks ground-truth masks for some images; they "
                                          "score the seeds (eval_split, else seed_split) and the predictions "
                                          "(val_split)", dataset.root))
            if split == recipe.data.eval_split and split != recipe.data.seed_split:
                seeds = attempt(lambda: ctx.dataset(recipe.data.seed_split))
                outside = [] if seeds is None else sorted(set(dataset.ids) - set(seeds.ids))
                if outside:
                    problems.append(ConfigError(
                        f"{len(outside)} of the {len(dataset.ids)} images of eval_split {split!r} are not in "
                        f"seed_split {recipe.data.seed_split!r}, which makes the maps scored, e.g. {outside[0]!r}"))
            found = f"{count(len(dataset.ids))} images"
            if read:
                checked, more = _read_split(dataset, split, {dataset.image_path(i) for i in missing},
                                            recipe.runtime.progress)
                problems += more
                found = checked
            report.notes.append(f"split {split!r} ({role}): {found}")
        if train is not None:
            names = ", ".join(train.classes[1:6]) + (", ..." if train.num_classes > 6 else "")
            report.notes.append(f"classes: {train.num_classes - 1} and background ({names})")
    weights = _named_weights(ctx, stages, train)
    for setting, path, check in weights:
        if not Path(path).is_file():
            problems.append(DataError(f"weights file named by {setting} not found (wsss never downloads "
                                      "weights: give a local file)", path))
            continue
        fit = attempt(check)
        if fit is not None:
            report.notes.append(f"{setting}: {path}: {fit[0]} of the network's {fit[1]} tensors")
    trains_classifier = any(stage.name == "classifier" for stage in stages)
    if trains_classifier and not recipe.classifier.weights and recipe.classifier.frozen_stages > 0:
        problems.append(ConfigError(
            f"classifier.frozen_stages={recipe.classifier.frozen_stages} fine-tunes a pretrained backbone but "
            "classifier.weights names no file; set it, or train from scratch with "
            "classifier.frozen_stages=0 and classifier.freeze_bn=false"))
    for name in recipe.methods:
        problems += get_method(name).check_inputs(ctx)
    by_problem: dict[str, list[str]] = {}  # the same setting fails every method's copy of a stage
    for stage in stages:
        work = stage_work(stage)
        if work is not None and work.problem:
            by_problem.setdefault(work.problem, []).append(stage.name)
    for problem, names in by_problem.items():
        problems.append(ConfigError(f"stage{'s' if len(names) > 1 else ''} {', '.join(names)}: {problem}"))
    if train is not None and "classifier" in finished_stages(ctx.workdir, stages):
        attempt(lambda: _check_classifier_classes(ctx.classifier_path, train))
    unique: dict[str, WsssError] = {}
    for problem in problems:
        unique.setdefault(str(problem), problem)
    report.problems = list(unique.values())
    return report


def _check_work_folder(workdir: Path, create: bool) -> str | WsssError:
    """A note on the work folder, or the problem with it (not writable). Without ``create`` a
    folder that does not exist yet is not made: its nearest existing parent must be writable."""
    try:
        if workdir.is_dir():
            ensure_writable_folder(workdir, "work folder")
            markers = len(list((workdir / ".stages").glob("*.json")))
            if markers:
                return f"work folder {workdir}: a wsss run's, {markers} stage markers"
            if any(workdir.iterdir()):
                return f"work folder {workdir}: holds files but no stage marker (outputs there are remade)"
            return f"work folder {workdir}: empty"
        if create:
            ensure_writable_folder(workdir, "work folder")
            return f"work folder {workdir}: new"
        parent = workdir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return DataError(f"the work folder cannot be made: {parent} is a file", workdir)
        ensure_writable_folder(parent, "folder the work folder goes in")
        return f"work folder {workdir}: new (the run makes it)"
    except WsssError as exc:
        return exc
    except OSError as exc:
        return DataError(f"cannot read the work folder ({exc.strerror or type(exc).__name__})", workdir)


def _read_split(dataset: Any, split: str, missing: set[Path], progress: bool) -> tuple[str, list[WsssError]]:
    """Every image header, mask and label of ``dataset`` read as ``check-data`` reads them (the
    missing images, reported already, left out); problems with the same message (``SIMILAR_PROBLEMS``
    or more) become one line counting them."""
    report, found = dataset.find_problems(decode_images=False, progress=progress)
    by_message: dict[str, list[WsssError]] = {}
    for problem in found:
        if problem.path in missing:
            continue  # a missing image: one line for all of them already
        message = str(problem)
        if problem.path is not None and message.startswith(f"{problem.path}: "):
            message = message[len(f"{problem.path}: "):]
        by_message.setdefault(message, []).append(problem)
    problems: list[WsssError] = []
    for message, group in by_message.items():
        if len(group) > SIMILAR_PROBLEMS:
            problems.append(type(group[0])(f"{len(group)} files of split {split!r}: {message}, e.g. "
                                           f"{group[0].path}"))
        else:
            problems += group
    return report.summary(), problems


def _named_weights(ctx: Context, stages: list[Stage], train: Any
                   ) -> list[tuple[str, str, Callable[[], tuple[int, int]]]]:
    """The weight files the run's shared stages load (the CAM classifier, IRN, the segmentation
    network, where a stage trains them): (setting, path, a check that the file fits the network,
    returning how many of its tensors the file holds)."""
    from wsss.models.backbones import create_backbone
    from wsss.models.deeplab import check_segmentation_weights
    from wsss.models.weights import check_weights_fit

    recipe = ctx.recipe
    classifier, irn, seg = recipe.classifier, recipe.irn, recipe.segmentation
    names = [stage.name for stage in stages]
    named = []
    if classifier.weights and "classifier" in names:
        named.append(("classifier.weights", classifier.weights, lambda: check_weights_fit(
            lambda: create_backbone(classifier.backbone, classifier.output_stride, dilated=classifier.dilated),
            classifier.weights)))
    if irn.weights and any(name.endswith(".irn") for name in names):
        named.append(("irn.weights", irn.weights, lambda: check_weights_fit(
            lambda: create_backbone(irn.backbone, irn.output_stride, dilated=irn.dilated), irn.weights)))
    if seg.weights and any(name.endswith(".seg") for name in names):
        classes = train.num_classes if train is not None else 2
        named.append(("segmentation.weights", seg.weights,
                      lambda: check_segmentation_weights(seg.model, classes, seg.weights, seg.classifier)))
    return named


def stage_work(stage: Stage) -> Work | None:
    """The stage's work estimate, or None (none, or its data unreadable: reported elsewhere)."""
    if stage.work is None:
        return None
    try:
        return stage.work()
    except WsssError:
        return None


def _check_classifier_classes(path: Path, dataset: Any) -> None:
    """A finished run's classifier must classify the dataset's classes (its classes.txt may
    have changed since, which no fingerprint sees)."""
    from wsss.models.cam_net import read_checkpoint

    if not path.is_file():
        return
    checkpoint = read_checkpoint(path)
    classes = checkpoint.get("classes")
    count = int(checkpoint["config"]["num_classes"])
    if count != dataset.num_classes - 1:
        why = f"classifies {count} foreground classes but the dataset has {dataset.num_classes - 1}"
    elif classes is not None and list(classes) != list(dataset.classes):
        why = f"was trained on classes {', '.join(map(str, classes[1:]))}, not {', '.join(dataset.classes[1:])}"
    else:
        return
    raise ConfigError(f"the finished classifier {why} (classes.txt changed?); use another --work, or delete "
                      "the checkpoint to train again", path)


def build_stages(ctx: Context) -> list[Stage]:
    """Every method's stages in the recipe's order (shared ones once), then the fully
    supervised baseline."""
    stages: dict[str, Stage] = {}
    for name in ctx.recipe.methods:
        for stage in get_method(name).stages(ctx):
            stages.setdefault(stage.name, stage)
    if ctx.recipe.until == "final" and ctx.recipe.fully_supervised:
        for stage in seg_stages(ctx, "fully_supervised", None, ()):
            stages[stage.name] = stage
    return list(stages.values())


@dataclass(frozen=True)
class StageFactory:
    """:func:`build_stages` of a recipe and work folder, picklable: how a worker process of
    :class:`~wsss.pipeline.runner.Runner` (``jobs`` > 1) makes the stages it runs. The recipe
    travels as a plain dictionary and is rebuilt in the worker; progress bars are off there (several
    running at once would overwrite each other's line)."""

    recipe: dict[str, Any]
    workdir: str

    @classmethod
    def of(cls, ctx: Context) -> StageFactory:
        from wsss.config import to_dict

        return cls(to_dict(ctx.recipe), str(ctx.workdir))

    def __call__(self) -> list[Stage]:
        recipe = build(Recipe, self.recipe)
        recipe = dataclasses.replace(recipe, runtime=dataclasses.replace(recipe.runtime, progress=False))
        return build_stages(Context(recipe, Path(self.workdir)))


def final_summary(ctx: Context, method: str, what: str) -> float | None:
    """mIoU of a finished pseudo or final evaluation, or None when it did not run."""
    path = ctx.eval_path(method, what)
    if not path.is_file():
        return None
    return read_json(path)["results"][0]["miou"]


def seed_summary(ctx: Context, method: str) -> dict[str, Any]:
    """The seed numbers of a finished method, from its evaluation JSON."""
    report = read_json(ctx.eval_path(method, "seed"))
    by_kind: dict[str, dict[str, Any]] = {}
    for result in report["results"]:
        protocol = result["protocol"]
        kind = "oracle" if protocol.startswith("oracle") else "label_free" if "label-free" in protocol else "fixed"
        by_kind[kind] = result
    return {
        "seed_miou": by_kind["oracle"]["miou"],
        "seed_threshold": by_kind["oracle"]["threshold"],
        "seed_miou_label_free": by_kind["label_free"]["miou"] if "label_free" in by_kind else None,
        "seed_threshold_label_free": by_kind["label_free"]["threshold"] if "label_free" in by_kind else None,
        "seed_miou_fixed": by_kind["fixed"]["miou"] if "fixed" in by_kind else None,
        "seed_threshold_fixed": by_kind["fixed"]["threshold"] if "fixed" in by_kind else None,
        "seed_protocols": {k: v["protocol"] for k, v in by_kind.items()},
    }
