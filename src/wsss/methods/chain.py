"""The stages every image-level method shares, and their settings.

After its own maps, every image-level method runs the same chain (IRN's), each step one
:class:`~wsss.methods.base.Stage` built here::

    classifier -> <method>.maps -> seed_eval -> ir_labels -> irn -> edges -> pseudo -> pseudo_eval
               -> seg -> predict -> final_eval

``until`` (seeds | pseudo | final) stops it early. The refinement values a method's reference
uses (IR-label thresholds, the walk's power and background threshold) come from its
:class:`~wsss.methods.base.RefineDefaults`; a recipe value that is set wins. The sections here are
part of every recipe (:data:`SHARED_SECTIONS`).

The recipe's ``scale`` (``reference`` | ``image``, ``docs/scale.md``) reaches every stage with a
setting in pixels, grid cells or logits: the IR labels' CRF, the walk's steps, the prediction
CRF, and the maps of AdvCAM and RIB. Those stages fingerprint it with :func:`scale_dependency`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from wsss.config import check_ranges, result_settings
from wsss.errors import ConfigError
from wsss.methods.base import Context, RefineDefaults, Stage, Work, count, remover
from wsss.refine.random_walk import BETA, EXP_TIMES, RADIUS
from wsss.refine.thresholds import check_rule
from wsss.segmentation.inference import SEG_SCALES
from wsss.segmentation.train import SegTrainConfig
from wsss.training.classifier import ClassifierConfig
from wsss.training.irn import IrnConfig

__all__ = [
    "QUICK_SETTINGS",
    "SHARED_SECTIONS",
    "IrLabelConfig",
    "RandomWalkConfig",
    "SeedEvalConfig",
    "SegInferenceConfig",
    "UNTIL",
    "classifier_maps_stage",
    "classifier_stage",
    "eval_stage",
    "image_level_chain",
    "refine_and_train",
    "scale_dependency",
    "seg_stages",
    "training_work",
]

UNTIL = ("seeds", "pseudo", "final")


@dataclass
class SeedEvalConfig:
    """How seeds (maps) are scored: the three protocols side by side."""

    sweep: str = "0.01:0.80:0.01"  # oracle: best threshold on ground truth (AdvCAM sweeps 0.15-0.34; wider here)
    fixed_threshold: float = 0.15  # IRN --cam_eval_thres, fixed without ground truth
    label_free: str = "edges"  # threshold chosen from the images and maps alone (wsss.refine.thresholds)

    def validate(self) -> None:
        from wsss.evaluation.sweep import parse_thresholds

        try:
            parse_thresholds(self.sweep)
        except ConfigError as exc:
            raise ConfigError(f"seed_eval.sweep: {exc}") from None
        if self.label_free != "none":
            try:
                check_rule(self.label_free)
            except ConfigError as exc:
                raise ConfigError(f"seed_eval.label_free: {exc}") from None
        check_ranges(self, "seed_eval", at_least={"fixed_threshold": 0}, at_most={"fixed_threshold": 1})


@dataclass
class IrLabelConfig:
    """Seeds -> IR labels (IRN ``cam_to_ir_label``). None: the method's reference value."""

    fg_threshold: float | None = None  # conf_fg_thres: IRN 0.30, AdvCAM/RIB 0.35, W-OoD 0.30
    bg_threshold: float | None = None  # conf_bg_thres: IRN 0.05, AdvCAM 0.15, RIB 0.17, W-OoD 0.15
    crf: str = "irn"  # CRF parameter set (wsss.refine.crf.CRF_PRESETS); scale: image sizes its widths
    workers: int = 0  # CRF worker processes (0: in the main process)

    def validate(self) -> None:
        check_ranges(self, "ir_labels", at_least={"workers": 0, "fg_threshold": 0, "bg_threshold": 0},
                     at_most={"fg_threshold": 1, "bg_threshold": 1})


@dataclass
class RandomWalkConfig:
    """IRN's random walk (``make_sem_seg_labels``). None: the method's reference value."""

    cam_power: float | None = None  # np_power: IRN/W-OoD 1.0, RIB 1.3, AdvCAM 1.5
    # sem_seg_bg_thres: IRN 0.25, RIB 0.27, AdvCAM+W-OoD 0.22; or a label-free rule (edges, li, otsu,
    # triangle: wsss.refine.thresholds) choosing it from the walked scores, no mask
    bg_threshold: float | str | None = None
    beta: float = BETA
    exp_times: int = EXP_TIMES  # 2 ** 8 = 256 steps (scale: image -> 256 x grid area / 94 x 125)
    radius: int = RADIUS  # 5 cells at every scale (see wsss.refine.random_walk)

    def validate(self) -> None:
        if isinstance(self.bg_threshold, str):
            try:
                check_rule(self.bg_threshold)
            except ConfigError as exc:
                raise ConfigError(f"random_walk.bg_threshold: a number in [0, 1] or {exc}") from None
        check_ranges(self, "random_walk", positive=("cam_power", "beta"), at_least={"exp_times": 0, "radius": 1})
        if isinstance(self.bg_threshold, (int, float)) and not 0 <= self.bg_threshold <= 1:
            raise ConfigError(f"random_walk.bg_threshold must be in [0, 1], got {self.bg_threshold}")


@dataclass
class SegInferenceConfig:
    """Segmentation inference on the val split."""

    scales: tuple[float, ...] = SEG_SCALES  # multi-scale inputs, each with its flip
    flip: bool = True
    merge: str = "max"  # max (AdvCAM, deeplab-pytorch) or mean (BANA)
    crf: str | None = None  # a CRF preset (e.g. deeplab) for post-processing; None: none

    def validate(self) -> None:
        from wsss.errors import ConfigError

        if self.merge not in ("max", "mean"):
            raise ConfigError(f"seg_inference.merge must be max or mean, got {self.merge!r}")


def scale_dependency(ctx: Context) -> dict[str, Any]:
    """The recipe's ``scale`` as fingerprint entries of a stage that uses it: none at ``reference``
    (the literal values, what such a stage computed before the setting existed, so finished work
    stays valid), ``{"scale": "image"}`` otherwise."""
    scale = ctx.recipe.scale
    return {} if scale == "reference" else {"scale": scale}


def training_work(images: int, batch_size: int, epochs: int, what: str, setting: str) -> Work:
    """The :class:`Work` of a training of ``epochs`` passes over ``images`` in batches of
    ``batch_size`` without the last partial batch (IRN's ``drop_last``), naming ``setting`` (the
    batch size's key) when the split is smaller than one batch."""
    per_epoch = images // batch_size
    text = (f"{epochs} epochs x {count(per_epoch)} = {count(epochs * per_epoch)} updates, each a batch of "
            f"{batch_size} {what} (forward + backward)")
    problem = None
    if per_epoch == 0:
        problem = (f"{images} training images, fewer than one batch of {batch_size} ({setting}): "
                   "training would make no update")
    return Work(images, text, problem)


def passes(scales: tuple[float, ...] | list[float], flip: bool) -> int:
    """Inputs per image of a multi-scale pass: one per scale, twice with flips."""
    return len(scales) * (2 if flip else 1)


QUICK_SETTINGS: tuple[str, ...] = ("classifier.epochs=4", "irn.epochs=1", "segmentation.epochs=3")
"""The shared chain's smoke-run settings (``wsss demo --quick``): fewer epochs, every stage run."""

SHARED_SECTIONS: dict[str, type] = {
    "classifier": ClassifierConfig,
    "seed_eval": SeedEvalConfig,
    "ir_labels": IrLabelConfig,
    "irn": IrnConfig,
    "random_walk": RandomWalkConfig,
    "segmentation": SegTrainConfig,
    "seg_inference": SegInferenceConfig,
}
"""Recipe sections of the shared chain: name -> config class."""


def classifier_stage(ctx: Context) -> Stage:
    """The CAM classifier on ``data.train_split`` (shared by the image-level methods)."""
    recipe = ctx.recipe

    def run() -> dict[str, Any]:
        from wsss.training.classifier import train_classifier

        result = train_classifier(
            ctx.dataset(recipe.data.train_split), recipe.classifier, device=ctx.device,
            out=ctx.classifier_path, val_source=ctx.dataset(recipe.data.val_split),
            progress=recipe.runtime.progress, seed=recipe.runtime.seed, fast_paths=ctx.fast_paths,
        )
        return {"history": result.history, "seconds": result.seconds}

    def work() -> Work:
        config = recipe.classifier
        return training_work(len(ctx.dataset(recipe.data.train_split)), config.batch_size, config.epochs,
                             f"{config.crop_size}-px crops" if config.crop_size else "images",
                             "classifier.batch_size")

    # one process trains (the classifier is small; its training is not distributed)
    return Stage(
        "classifier", run=run, clear=remover(ctx.classifier_path), needs=(), main_only=True, work=work,
        depends_on={"data": [recipe.data.root, recipe.data.train_split],
                    "classifier": result_settings(recipe.classifier), "seed": recipe.runtime.seed,
                    **ctx.fast_paths.dependency},
    )


def classifier_maps_stage(ctx: Context, method: str, make: Callable[[Any, Any, Path], object],
                          depends_on: dict[str, Any], classifier: str = "classifier",
                          classifier_path: Path | None = None,
                          work: Callable[[Any], Work] | None = None) -> Stage:
    """``<method>.maps``: ``make(model, dataset, maps_dir)`` on the seed split with the CAM
    classifier that stage ``classifier`` trained (checkpoint ``classifier_path``, default the
    shared one); ``depends_on`` holds the method's settings (its fingerprint); ``work(dataset)``
    estimates the work on the seed split."""
    recipe = ctx.recipe
    checkpoint = ctx.classifier_path if classifier_path is None else classifier_path

    def run() -> None:
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        make(load_cam_net_for(checkpoint, dataset, ctx.device), dataset, ctx.maps_dir(method))

    return Stage(f"{method}.maps", run=run, clear=remover(ctx.maps_dir(method)), needs=(classifier,),
                 depends_on={"split": recipe.data.seed_split, **depends_on},
                 work=None if work is None else lambda: work(ctx.dataset(recipe.data.seed_split)))


def eval_stage(ctx: Context, method: str, what: str, needs: str, predictions: Path, split: str,
               also_excluding_unlabelled: bool = False) -> Stage:
    """Score ``predictions`` (a map store or label PNGs) on ``split``: seed, pseudo or final.

    Label PNGs are scored with their 255 pixels as background (IRN's protocol, every method's
    first result); ``also_excluding_unlabelled`` adds a second result that leaves them out (with
    the labelled coverage), for pseudo masks whose 255 is an ignore band the next network never
    trains on (BBAM's).
    """
    recipe = ctx.recipe
    path = ctx.eval_path(method, what)

    def run() -> None:
        from wsss.evaluation.run import evaluate_predictions, write_report

        options = {}
        if what == "seed":
            options = dict(sweep=recipe.seed_eval.sweep, threshold=recipe.seed_eval.fixed_threshold,
                           label_free=None if recipe.seed_eval.label_free == "none" else recipe.seed_eval.label_free)
        dataset = ctx.dataset(split)
        report = evaluate_predictions(dataset, predictions, progress=recipe.runtime.progress, **options)
        if also_excluding_unlabelled:
            report.results.extend(evaluate_predictions(dataset, predictions, unlabelled="exclude",
                                                       progress=recipe.runtime.progress).results)
        write_report(report, path)

    def work() -> Work:
        images = len(ctx.dataset(split))
        if what == "seed":
            from wsss.evaluation.sweep import parse_thresholds

            sweep = len(parse_thresholds(recipe.seed_eval.sweep))
            return Work(images, f"maps against the masks at {sweep} thresholds, the fixed one and "
                                f"{recipe.seed_eval.label_free}")
        return Work(images, "label maps against the masks")

    return Stage(f"{method}.{what}_eval", run=run, clear=remover(path), needs=(needs,),
                 depends_on={"split": split, "seed_eval": recipe.seed_eval if what == "seed" else None,
                             **({"unlabelled": ["background", "exclude"]} if also_excluding_unlabelled else {})},
                 main_only=True, work=work)


def _ir_label_stage(ctx: Context, method: str, defaults: RefineDefaults) -> Stage:
    recipe = ctx.recipe
    config = recipe.ir_labels
    fg = defaults.fg_threshold if config.fg_threshold is None else config.fg_threshold
    bg = defaults.bg_threshold if config.bg_threshold is None else config.bg_threshold
    out = ctx.ir_label_dir(method)

    def run() -> None:
        from wsss.refine.ir_labels import make_ir_labels

        make_ir_labels(ctx.dataset(recipe.data.seed_split), ctx.maps_dir(method), out, fg_threshold=fg,
                       bg_threshold=bg, crf=config.crf, scale=recipe.scale, workers=config.workers,
                       progress=recipe.runtime.progress)

    return Stage(f"{method}.ir_labels", run=run, clear=remover(out), needs=(f"{method}.maps",),
                 depends_on={"fg": fg, "bg": bg, "crf": config.crf, **scale_dependency(ctx)},
                 work=lambda: Work(len(ctx.dataset(recipe.data.seed_split)),
                                   f"2 dense-CRF passes per image (CPU, preset {config.crf})"))


def _irn_stage(ctx: Context, method: str) -> Stage:
    """IRN on the method's IR labels. Its frozen backbone is ``irn.weights`` when set (IRN's
    recipe: the ImageNet ResNet-50, ``net/resnet50_irn.py``), else the shared CAM classifier's
    (the benchmark's stand-in, where there is no ImageNet)."""
    recipe = ctx.recipe
    path = ctx.irn_path(method)

    def run() -> None:
        from wsss.training.irn import train_irn

        train_irn(ctx.dataset(recipe.data.seed_split), ctx.ir_label_dir(method), recipe.irn,
                  device=ctx.device, out=path, init_backbone_from=None if recipe.irn.weights else ctx.classifier_path,
                  progress=recipe.runtime.progress, seed=recipe.runtime.seed, fast_paths=ctx.fast_paths)

    def work() -> Work:
        config = recipe.irn
        return training_work(len(ctx.dataset(recipe.data.seed_split)), config.batch_size, config.epochs,
                             f"{config.crop_size}-px crops", "irn.batch_size")

    return Stage(f"{method}.irn", run=run, clear=remover(path), needs=(f"{method}.ir_labels", "classifier"),
                 main_only=True, depends_on={"irn": result_settings(recipe.irn), "seed": recipe.runtime.seed,
                                             **ctx.fast_paths.dependency},
                 work=work)


def _edges_stage(ctx: Context, method: str) -> Stage:
    recipe = ctx.recipe
    out = ctx.edge_dir(method)
    irn = recipe.irn

    def run() -> None:
        from wsss.models.irn import load_irn
        from wsss.training.irn import make_edges

        model = load_irn(ctx.irn_path(method), map_location=ctx.device).to(ctx.device)
        make_edges(model, ctx.dataset(recipe.data.seed_split), out, device=ctx.device,
                   scales=irn.edge_scales, flip=irn.edge_flip, pad_to=irn.edge_pad_to,
                   progress=recipe.runtime.progress)

    return Stage(f"{method}.edges", run=run, clear=remover(out), needs=(f"{method}.irn",),
                 depends_on=[irn.edge_scales, irn.edge_flip, irn.edge_pad_to],
                 work=lambda: Work(len(ctx.dataset(recipe.data.seed_split)),
                                   f"{passes(irn.edge_scales, irn.edge_flip)} IRN forward passes per image"))


def _pseudo_stage(ctx: Context, method: str, defaults: RefineDefaults) -> Stage:
    recipe = ctx.recipe
    walk = recipe.random_walk
    power = defaults.cam_power if walk.cam_power is None else walk.cam_power
    bg = defaults.sem_seg_bg_threshold if walk.bg_threshold is None else walk.bg_threshold
    out = ctx.pseudo_dir(method)

    def run() -> None:
        from wsss.refine.pseudo_masks import make_pseudo_masks

        make_pseudo_masks(ctx.dataset(recipe.data.seed_split), ctx.maps_dir(method), ctx.edge_dir(method), out,
                          cam_power=power, bg_threshold=bg, beta=walk.beta, exp_times=walk.exp_times,
                          radius=walk.radius, scale=recipe.scale, device=ctx.device,
                          progress=recipe.runtime.progress)

    return Stage(f"{method}.pseudo", run=run, clear=remover(out), needs=(f"{method}.maps", f"{method}.edges"),
                 depends_on={"cam_power": power, "bg": bg, "walk": walk, **scale_dependency(ctx)},
                 work=lambda: Work(len(ctx.dataset(recipe.data.seed_split)),
                                   f"one random walk of {2 ** walk.exp_times} steps per image at stride 4"))


def seg_stages(ctx: Context, method: str, masks: Path | Mapping[str, Path] | None, needs: tuple[str, ...],
               config: SegTrainConfig | None = None) -> list[Stage]:
    """Train the segmentation network on ``masks``, predict val, score it.

    ``masks``: one folder of label PNGs, ``None`` for the ground truth, or several targets by
    name (``{"target": <Y_crf folder>, "target_ret": <Y_ret folder>}``, BANA) for a loss that
    reads them. ``config``: the training settings, default the recipe's ``segmentation``
    section (a method that changes its loss or classifier passes its own copy of it); the
    stage's fingerprint is the settings it trains with.
    """
    recipe = ctx.recipe
    seg_dir, pred_dir = ctx.seg_dir(method), ctx.prediction_dir(method)
    train_set = recipe.data.seed_split
    settings = ctx.seeded(recipe.segmentation if config is None else config)
    targets = dict(masks) if isinstance(masks, Mapping) else masks

    def train() -> None:
        from wsss.segmentation.train import train_segmentation

        train_segmentation(ctx.dataset(train_set), targets, settings, device=ctx.device,
                           out_dir=seg_dir, progress=recipe.runtime.progress, fast_paths=ctx.fast_paths)

    def predict() -> None:
        from wsss.segmentation.inference import predict_dataset
        from wsss.segmentation.train import load_trained_model

        dataset = ctx.dataset(recipe.data.val_split)
        model, _ = load_trained_model(seg_dir / "model.pt", num_classes=dataset.num_classes,
                                      map_location=ctx.device)
        inference = recipe.seg_inference
        predict_dataset(model.to(ctx.device), dataset, pred_dir, device=ctx.device, scales=inference.scales,
                        flip=inference.flip, merge=inference.merge, crf=inference.crf, crf_scale=recipe.scale,
                        progress=recipe.runtime.progress, fast_paths=ctx.fast_paths)

    def train_work() -> Work:
        images = len(ctx.dataset(train_set))
        crops = f"{settings.crop_size}-px crops" if settings.crop_size else "images"
        if settings.epochs is not None:
            return training_work(images, settings.batch_size, settings.epochs, crops, "segmentation.batch_size")
        problem = None
        if images < settings.batch_size:
            problem = (f"{images} training images, fewer than one batch of {settings.batch_size} "
                       "(segmentation.batch_size): training would make no update")
        return Work(images, f"{count(settings.iterations)} updates of {settings.model}, each a batch of "
                            f"{settings.batch_size} {crops} (forward + backward)", problem)

    def predict_work() -> Work:
        inference = recipe.seg_inference
        crf = f", then a dense CRF ({inference.crf})" if inference.crf else ""
        return Work(len(ctx.dataset(recipe.data.val_split)),
                    f"{passes(inference.scales, inference.flip)} forward passes per image{crf}")

    return [
        # every rank trains (DDP under torchrun)
        Stage(f"{method}.seg", run=train, clear=remover(seg_dir), needs=needs,
              depends_on={"train": train_set, "segmentation": result_settings(settings), **ctx.fast_paths.dependency},
              work=train_work),
        Stage(f"{method}.predict", run=predict, clear=remover(pred_dir), needs=(f"{method}.seg",),
              depends_on={"val": recipe.data.val_split, "inference": recipe.seg_inference,
                          **(scale_dependency(ctx) if recipe.seg_inference.crf else {}), **ctx.fast_paths.dependency},
              work=predict_work),
        eval_stage(ctx, method, "final", f"{method}.predict", pred_dir, recipe.data.val_split),
    ]


def refine_and_train(ctx: Context, method: str, defaults: RefineDefaults) -> list[Stage]:
    """Seeds -> IR labels -> IRN -> random walk -> pseudo masks (-> segmentation), per ``until``."""
    if ctx.recipe.until == "seeds":
        return []
    stages = [_ir_label_stage(ctx, method, defaults), _irn_stage(ctx, method), _edges_stage(ctx, method),
              _pseudo_stage(ctx, method, defaults),
              eval_stage(ctx, method, "pseudo", f"{method}.pseudo", ctx.pseudo_dir(method), ctx.eval_split)]
    if ctx.recipe.until == "final":
        stages += seg_stages(ctx, method, ctx.pseudo_dir(method), (f"{method}.pseudo",))
    return stages


def image_level_chain(ctx: Context, method: str, maps: Stage, defaults: RefineDefaults,
                      before: tuple[Stage, ...] = ()) -> list[Stage]:
    """The CAM classifier, ``before`` (e.g. W-OoD's fine-tuning), the method's ``maps`` stage
    (named ``<method>.maps``), their seed evaluation and the shared refinement chain."""
    seed_eval = eval_stage(ctx, method, "seed", maps.name, ctx.maps_dir(method), ctx.eval_split)
    return [classifier_stage(ctx), *before, maps, seed_eval, *refine_and_train(ctx, method, defaults)]
