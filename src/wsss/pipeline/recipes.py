"""Recipes: a method's stages, assembled from a typed configuration.

A recipe names the dataset, the runtime, each stage's settings and the methods to run. The
stages themselves call the library (``wsss.training``, ``wsss.attribution``, ``wsss.refine``,
``wsss.segmentation``, ``wsss.evaluation``); this module only wires their inputs and outputs in
the work directory:

```
<workdir>/classifier.pt                 CAM classifier (shared by the image-level methods)
<workdir>/classifier_wood.pt            the classifier fine-tuned with OoD images (W-OoD)
<workdir>/maps/<method>/<id>.npz        localization maps (the map store)        -> seeds
<workdir>/ir_labels/<method>/<id>.png   confident fg / bg / 255 (two CRF passes)
<workdir>/irn/<method>.pt               IRN (boundary + displacement), trained on them
<workdir>/edges/<method>/<id>.npz       boundary maps at stride 4
<workdir>/pseudo/<method>/<id>.png      random-walk pseudo masks                  -> pseudo
<workdir>/seg/<method>/model.pt         DeepLab trained on the pseudo masks (and checkpoints)
<workdir>/predictions/<method>/<id>.png its predictions on the val split         -> final
<workdir>/eval/<method>_{seed,pseudo,final}.json
```
The fully supervised baseline (``fully_supervised``) trains the same network on the ground truth
of the same images.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss.attribution.advcam import AdvCamConfig
from wsss.attribution.cam import CAM_SCALES
from wsss.attribution.rib import RibConfig
from wsss.refine.random_walk import BETA, EXP_TIMES, RADIUS
from wsss.segmentation.inference import SEG_SCALES
from wsss.segmentation.train import SegTrainConfig
from wsss.training.irn import IrnConfig
from wsss.training.wood import WoodConfig
from wsss.config import build, to_dict
from wsss.errors import ConfigError
from wsss.io import read_json
from wsss.pipeline.runner import Stage
from wsss.training.classifier import ClassifierConfig

log = logging.getLogger(__name__)

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    """Where the images and labels are."""

    root: str = ""  # a VOC-layout root (VOCdevkit/, VOCdevkit/VOC2012/ or the like)
    train_split: str = "train"  # classifier training (IRN: train_aug)
    seed_split: str = "train"  # seeds and pseudo masks are evaluated on train (IRN, AdvCAM: VOC train)
    val_split: str = "val"  # final segmentation is evaluated on val
    ood_list: str | None = None  # OoD images for W-OoD: a list of paths relative to the list's folder


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 0
    progress: bool = True


@dataclass
class CamConfig:
    """Multi-scale CAM extraction (IRN ``make_cam``)."""

    scales: tuple[float, ...] = CAM_SCALES  # IRN --cam_scales
    flip: bool = True  # IRN: every scale with its horizontal flip


@dataclass
class SeedEvalConfig:
    """How seeds (maps) are scored: the three protocols side by side."""

    sweep: str = "0.01:0.80:0.01"  # oracle: best threshold on ground truth (AdvCAM sweeps 0.15-0.34; wider here)
    fixed_threshold: float = 0.15  # IRN --cam_eval_thres, fixed without ground truth
    label_free: str = "otsu"  # threshold chosen from the maps alone


@dataclass
class IrLabelConfig:
    """Seeds -> IR labels (IRN ``cam_to_ir_label``). None: the method's reference value."""

    fg_threshold: float | None = None  # conf_fg_thres: IRN 0.30, AdvCAM/RIB 0.35, W-OoD 0.30
    bg_threshold: float | None = None  # conf_bg_thres: IRN 0.05, AdvCAM 0.15, RIB 0.17, W-OoD 0.15
    crf: str = "irn"  # CRF parameter set (wsss.refine.crf.CRF_PRESETS)
    workers: int = 0  # CRF worker processes (0: in the main process)


@dataclass
class RandomWalkConfig:
    """IRN's random walk (``make_sem_seg_labels``). None: the method's reference value."""

    cam_power: float | None = None  # np_power: IRN/W-OoD 1.0, RIB 1.3, AdvCAM 1.5
    bg_threshold: float | None = None  # sem_seg_bg_thres: IRN 0.25, RIB 0.27, AdvCAM+W-OoD 0.22
    beta: float = BETA
    exp_times: int = EXP_TIMES  # 2 ** 8 = 256 steps
    radius: int = RADIUS


@dataclass
class SegInferenceConfig:
    """Segmentation inference on the val split."""

    scales: tuple[float, ...] = SEG_SCALES  # multi-scale inputs, each with its flip
    flip: bool = True
    merge: str = "max"  # max (AdvCAM, deeplab-pytorch) or mean (BANA)
    crf: str | None = None  # a CRF preset (e.g. deeplab) for post-processing; None: none


@dataclass
class Recipe:
    methods: tuple[str, ...] = ("cam",)
    until: str = "final"  # seeds | pseudo | final: how far each method goes
    fully_supervised: bool = True  # also train the network on ground truth (with until=final)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    advcam: AdvCamConfig = field(default_factory=AdvCamConfig)
    rib: RibConfig = field(default_factory=RibConfig)
    wood: WoodConfig = field(default_factory=WoodConfig)
    seed_eval: SeedEvalConfig = field(default_factory=SeedEvalConfig)
    ir_labels: IrLabelConfig = field(default_factory=IrLabelConfig)
    irn: IrnConfig = field(default_factory=IrnConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    segmentation: SegTrainConfig = field(default_factory=SegTrainConfig)
    seg_inference: SegInferenceConfig = field(default_factory=SegInferenceConfig)


UNTIL = ("seeds", "pseudo", "final")


@dataclass(frozen=True)
class RefineDefaults:
    """A method's post-processing values in its reference code (``run_sample.py``)."""

    fg_threshold: float
    bg_threshold: float
    cam_power: float
    sem_seg_bg_threshold: float
    source: str


REFINE_DEFAULTS: dict[str, RefineDefaults] = {
    "cam": RefineDefaults(0.30, 0.05, 1.0, 0.25, "IRN run_sample.py"),
    "advcam": RefineDefaults(0.35, 0.15, 1.5, 0.25, "AdvCAM run_sample.py, make_sem_seg_labels.py"),
    "rib": RefineDefaults(0.35, 0.17, 1.3, 0.27, "RIB run_sample.py (VOC)"),
    "wood": RefineDefaults(0.30, 0.15, 1.0, 0.25, "W-OoD run_sample.py"),
    "advcam_wood": RefineDefaults(0.30, 0.15, 1.5, 0.22, "W-OoD run_sample_pseudo_gt.py"),
}


def recipe_path(name: str | Path) -> Path:
    """A recipe file: a path, or a name like ``synth/demo`` under the packaged ``configs/``."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    packaged = RECIPE_DIR / f"{name}.yaml"
    if packaged.exists():
        return packaged
    known = sorted(str(p.relative_to(RECIPE_DIR).with_suffix("")) for p in RECIPE_DIR.rglob("*.yaml"))
    raise ConfigError(f"recipe {name!r} not found (a YAML file, or one of: {', '.join(known)})")


def load_recipe(name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Defaults, then the recipe file (if any), then ``section.key=value`` overrides."""
    recipe = build(Recipe, None if name is None else recipe_path(name), overrides)
    unknown = [m for m in recipe.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    if recipe.until not in UNTIL:
        raise ConfigError(f"until must be one of {', '.join(UNTIL)}, got {recipe.until!r}")
    if recipe.seg_inference.merge not in ("max", "mean"):
        raise ConfigError(f"seg_inference.merge must be max or mean, got {recipe.seg_inference.merge!r}")
    # fail before hours of classifier training, not after
    if {"advcam", "advcam_wood"} & set(recipe.methods):
        recipe.advcam.validate()
    if "rib" in recipe.methods:
        recipe.rib.validate()
    if {"wood", "advcam_wood"} & set(recipe.methods):
        recipe.wood.validate()
        if not recipe.data.ood_list:
            raise ConfigError("W-OoD needs OoD images: set data.ood_list=LIST")
    if recipe.until == "final":
        recipe.segmentation.validate()
    return recipe


@dataclass
class Context:
    """What the stages of one run share: the recipe, the work directory, opened datasets."""

    recipe: Recipe
    workdir: Path
    _datasets: dict[str, Any] = field(default_factory=dict)

    def dataset(self, split: str):
        from wsss.data.voc import VOCDataset

        if not self.recipe.data.root:
            raise ConfigError("no dataset: set data.root (e.g. --set data.root=PATH)")
        if split not in self._datasets:
            self._datasets[split] = VOCDataset(self.recipe.data.root, split)
        return self._datasets[split]

    @property
    def device(self):
        from wsss.runtime import resolve_device

        return resolve_device(self.recipe.runtime.device)

    @property
    def classifier_path(self) -> Path:
        return self.workdir / "classifier.pt"

    @property
    def wood_classifier_path(self) -> Path:
        return self.workdir / "classifier_wood.pt"

    def maps_dir(self, method: str) -> Path:
        return self.workdir / "maps" / method

    def seed_eval_path(self, method: str) -> Path:
        return self.eval_path(method, "seed")

    def eval_path(self, method: str, what: str) -> Path:
        """``what``: seed, pseudo or final."""
        return self.workdir / "eval" / f"{method}_{what}.json"

    def ir_label_dir(self, method: str) -> Path:
        return self.workdir / "ir_labels" / method

    def irn_path(self, method: str) -> Path:
        return self.workdir / "irn" / f"{method}.pt"

    def edge_dir(self, method: str) -> Path:
        return self.workdir / "edges" / method

    def pseudo_dir(self, method: str) -> Path:
        return self.workdir / "pseudo" / method

    def seg_dir(self, method: str) -> Path:
        return self.workdir / "seg" / method

    def prediction_dir(self, method: str) -> Path:
        return self.workdir / "predictions" / method

    def ood(self):
        from wsss.data.ood import OoDImages

        if not self.recipe.data.ood_list:
            raise ConfigError("no OoD images: set data.ood_list=LIST")
        return OoDImages(self.recipe.data.ood_list)


def _remove(*paths: Path) -> Callable[[], None]:
    def clear() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    return clear


def classifier_stage(ctx: Context) -> Stage:
    recipe = ctx.recipe

    def run() -> dict[str, Any]:
        from wsss.training.classifier import train_classifier

        result = train_classifier(
            ctx.dataset(recipe.data.train_split), recipe.classifier, device=ctx.device,
            out=ctx.classifier_path, val_source=ctx.dataset(recipe.data.val_split),
            progress=recipe.runtime.progress, seed=recipe.runtime.seed,
        )
        return {"history": result.history, "seconds": result.seconds}

    # one process trains (the classifier is small; its training is not distributed)
    return Stage(
        "classifier", run=run, clear=_remove(ctx.classifier_path), needs=(), main_only=True,
        depends_on={"data": [recipe.data.root, recipe.data.train_split], "classifier": recipe.classifier,
                    "seed": recipe.runtime.seed},
    )


def wood_classifier_stage(ctx: Context) -> Stage:
    """W-OoD: the CAM classifier fine-tuned with OoD images (shared by ``wood`` and ``advcam_wood``)."""
    recipe = ctx.recipe

    def run() -> dict[str, Any]:
        from wsss.training.wood import train_wood

        result = train_wood(
            ctx.dataset(recipe.data.train_split), ctx.ood(), recipe.wood, recipe.classifier,
            device=ctx.device, out=ctx.wood_classifier_path, init=ctx.classifier_path,
            val_source=ctx.dataset(recipe.data.val_split), progress=recipe.runtime.progress,
            seed=recipe.runtime.seed,
        )
        return {"history": result.history, "seconds": result.seconds}

    return Stage(
        "wood.classifier", run=run, clear=_remove(ctx.wood_classifier_path), needs=("classifier",),
        main_only=True, depends_on={"ood": recipe.data.ood_list, "wood": recipe.wood},
    )


def _classifier_of(ctx: Context, classifier: str) -> Path:
    return ctx.wood_classifier_path if classifier == "wood.classifier" else ctx.classifier_path


def cam_maps_stage(ctx: Context, method: str = "cam", classifier: str = "classifier") -> Stage:
    recipe = ctx.recipe

    def run() -> None:
        from wsss.attribution.cam import make_cams
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_cam_net_for(_classifier_of(ctx, classifier), dataset, ctx.device)
        make_cams(model, dataset, ctx.maps_dir(method), device=ctx.device,
                  scales=recipe.cam.scales, flip=recipe.cam.flip, progress=recipe.runtime.progress)

    return Stage(
        f"{method}.maps", run=run, clear=_remove(ctx.maps_dir(method)), needs=(classifier,),
        depends_on={"split": recipe.data.seed_split, "cam": recipe.cam},
    )


def advcam_maps_stage(ctx: Context, method: str = "advcam", classifier: str = "classifier") -> Stage:
    recipe = ctx.recipe

    def run() -> None:
        from wsss.attribution.advcam import make_advcams
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_cam_net_for(_classifier_of(ctx, classifier), dataset, ctx.device)
        make_advcams(model, dataset, ctx.maps_dir(method), config=recipe.advcam, device=ctx.device,
                     progress=recipe.runtime.progress)

    # batching settings change speed and memory, not the maps: changing them reruns nothing
    settings = {k: v for k, v in to_dict(recipe.advcam).items()
                if k not in ("images_per_batch", "max_batch_pairs")}
    return Stage(
        f"{method}.maps", run=run, clear=_remove(ctx.maps_dir(method)), needs=(classifier,),
        depends_on={"split": recipe.data.seed_split, "advcam": settings},
    )


def rib_maps_stage(ctx: Context, method: str = "rib") -> Stage:
    recipe = ctx.recipe

    def run() -> None:
        from wsss.attribution.rib import make_ribs
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_cam_net_for(ctx.classifier_path, dataset, ctx.device)
        make_ribs(model, dataset, ctx.maps_dir(method), config=recipe.rib, device=ctx.device,
                  progress=recipe.runtime.progress, seed=recipe.runtime.seed,
                  pool=ctx.dataset(recipe.data.train_split))

    return Stage(
        f"{method}.maps", run=run, clear=_remove(ctx.maps_dir(method)), needs=("classifier",),
        depends_on={"split": recipe.data.seed_split, "pool": recipe.data.train_split, "rib": recipe.rib,
                    "seed": recipe.runtime.seed},
    )


def eval_stage(ctx: Context, method: str, what: str, needs: str, predictions: Path, split: str) -> Stage:
    """Score ``predictions`` (a map store or label PNGs) on ``split``: seed, pseudo or final."""
    recipe = ctx.recipe
    path = ctx.eval_path(method, what)

    def run() -> None:
        from wsss.evaluation.run import evaluate_predictions, write_report

        options = {}
        if what == "seed":
            options = dict(sweep=recipe.seed_eval.sweep, threshold=recipe.seed_eval.fixed_threshold,
                           label_free=recipe.seed_eval.label_free)
        report = evaluate_predictions(ctx.dataset(split), predictions, progress=recipe.runtime.progress,
                                      **options)
        write_report(report, path)

    return Stage(f"{method}.{what}_eval", run=run, clear=_remove(path), needs=(needs,),
                 depends_on={"split": split, "seed_eval": recipe.seed_eval if what == "seed" else None},
                 main_only=True)


def seed_eval_stage(ctx: Context, method: str, maps_stage: str) -> Stage:
    return eval_stage(ctx, method, "seed", maps_stage, ctx.maps_dir(method), ctx.recipe.data.seed_split)


def refine_defaults(method: str) -> RefineDefaults:
    return REFINE_DEFAULTS.get(method, REFINE_DEFAULTS["cam"])


def ir_label_stage(ctx: Context, method: str) -> Stage:
    recipe, defaults = ctx.recipe, refine_defaults(method)
    config = recipe.ir_labels
    fg = defaults.fg_threshold if config.fg_threshold is None else config.fg_threshold
    bg = defaults.bg_threshold if config.bg_threshold is None else config.bg_threshold
    out = ctx.ir_label_dir(method)

    def run() -> None:
        from wsss.refine.ir_labels import make_ir_labels

        make_ir_labels(ctx.dataset(recipe.data.seed_split), ctx.maps_dir(method), out, fg_threshold=fg,
                       bg_threshold=bg, crf=config.crf, workers=config.workers, progress=recipe.runtime.progress)

    return Stage(f"{method}.ir_labels", run=run, clear=_remove(out), needs=(f"{method}.maps",),
                 depends_on={"fg": fg, "bg": bg, "crf": config.crf})


def irn_stage(ctx: Context, method: str) -> Stage:
    """IRN on the method's IR labels; its backbone starts from the shared CAM classifier's."""
    recipe = ctx.recipe
    path = ctx.irn_path(method)

    def run() -> None:
        from wsss.training.irn import train_irn

        train_irn(ctx.dataset(recipe.data.seed_split), ctx.ir_label_dir(method), recipe.irn,
                  device=ctx.device, out=path, init_backbone_from=ctx.classifier_path,
                  progress=recipe.runtime.progress, seed=recipe.runtime.seed)

    return Stage(f"{method}.irn", run=run, clear=_remove(path), needs=(f"{method}.ir_labels", "classifier"),
                 main_only=True, depends_on={"irn": recipe.irn, "seed": recipe.runtime.seed})


def edges_stage(ctx: Context, method: str) -> Stage:
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

    return Stage(f"{method}.edges", run=run, clear=_remove(out), needs=(f"{method}.irn",),
                 depends_on=[irn.edge_scales, irn.edge_flip, irn.edge_pad_to])


def pseudo_stage(ctx: Context, method: str) -> Stage:
    recipe, defaults = ctx.recipe, refine_defaults(method)
    walk = recipe.random_walk
    power = defaults.cam_power if walk.cam_power is None else walk.cam_power
    bg = defaults.sem_seg_bg_threshold if walk.bg_threshold is None else walk.bg_threshold
    out = ctx.pseudo_dir(method)

    def run() -> None:
        from wsss.refine.pseudo_masks import make_pseudo_masks

        make_pseudo_masks(ctx.dataset(recipe.data.seed_split), ctx.maps_dir(method), ctx.edge_dir(method), out,
                          cam_power=power, bg_threshold=bg, beta=walk.beta, exp_times=walk.exp_times,
                          radius=walk.radius, device=ctx.device, progress=recipe.runtime.progress)

    return Stage(f"{method}.pseudo", run=run, clear=_remove(out), needs=(f"{method}.maps", f"{method}.edges"),
                 depends_on={"cam_power": power, "bg": bg, "walk": walk})


def seg_stages(ctx: Context, method: str, masks: Path | None, needs: tuple[str, ...]) -> list[Stage]:
    """Train the segmentation network on ``masks`` (None: ground truth), predict val, score it."""
    recipe = ctx.recipe
    seg_dir, pred_dir = ctx.seg_dir(method), ctx.prediction_dir(method)
    train_set = recipe.data.seed_split

    def train() -> None:
        from wsss.segmentation.train import train_segmentation

        train_segmentation(ctx.dataset(train_set), masks, recipe.segmentation, device=ctx.device,
                           out_dir=seg_dir, progress=recipe.runtime.progress)

    def predict() -> None:
        from wsss.segmentation.inference import predict_dataset
        from wsss.segmentation.train import load_trained_model

        dataset = ctx.dataset(recipe.data.val_split)
        model, _ = load_trained_model(seg_dir / "model.pt", num_classes=dataset.num_classes,
                                      map_location=ctx.device)
        inference = recipe.seg_inference
        predict_dataset(model.to(ctx.device), dataset, pred_dir, device=ctx.device, scales=inference.scales,
                        flip=inference.flip, merge=inference.merge, crf=inference.crf,
                        progress=recipe.runtime.progress)

    return [
        # every rank trains (DDP under torchrun)
        Stage(f"{method}.seg", run=train, clear=_remove(seg_dir), needs=needs,
              depends_on={"train": train_set, "segmentation": recipe.segmentation}),
        Stage(f"{method}.predict", run=predict, clear=_remove(pred_dir), needs=(f"{method}.seg",),
              depends_on={"val": recipe.data.val_split, "inference": recipe.seg_inference}),
        eval_stage(ctx, method, "final", f"{method}.predict", pred_dir, recipe.data.val_split),
    ]


def refine_and_train(ctx: Context, method: str) -> list[Stage]:
    """Seeds -> IR labels -> IRN -> random walk -> pseudo masks (-> segmentation), per ``until``."""
    if ctx.recipe.until == "seeds":
        return []
    stages = [ir_label_stage(ctx, method), irn_stage(ctx, method), edges_stage(ctx, method),
              pseudo_stage(ctx, method),
              eval_stage(ctx, method, "pseudo", f"{method}.pseudo", ctx.pseudo_dir(method),
                         ctx.recipe.data.seed_split)]
    if ctx.recipe.until == "final":
        stages += seg_stages(ctx, method, ctx.pseudo_dir(method), (f"{method}.pseudo",))
    return stages


def _seeds(maps_stage: Stage, ctx: Context, method: str) -> list[Stage]:
    return [maps_stage, seed_eval_stage(ctx, method, maps_stage.name), *refine_and_train(ctx, method)]


def cam_method(ctx: Context) -> list[Stage]:
    return _seeds(cam_maps_stage(ctx, "cam"), ctx, "cam")


def advcam_method(ctx: Context) -> list[Stage]:
    return _seeds(advcam_maps_stage(ctx, "advcam"), ctx, "advcam")


def rib_method(ctx: Context) -> list[Stage]:
    return _seeds(rib_maps_stage(ctx, "rib"), ctx, "rib")


def wood_method(ctx: Context) -> list[Stage]:
    """CAM of the classifier fine-tuned with OoD images."""
    return _seeds(cam_maps_stage(ctx, "wood", classifier="wood.classifier"), ctx, "wood")


def advcam_wood_method(ctx: Context) -> list[Stage]:
    """AdvCAM of the W-OoD classifier (the W-OoD paper's best seeds)."""
    return _seeds(advcam_maps_stage(ctx, "advcam_wood", classifier="wood.classifier"), ctx, "advcam_wood")


# method name -> the stages it adds after the shared classifier.
METHODS: dict[str, Callable[[Context], list[Stage]]] = {
    "cam": cam_method, "advcam": advcam_method, "rib": rib_method, "wood": wood_method,
    "advcam_wood": advcam_wood_method,
}
NEEDS_WOOD_CLASSIFIER = ("wood", "advcam_wood")


def build_stages(ctx: Context) -> list[Stage]:
    """The shared classifier(s), every method's stages in the recipe's order, then the
    fully supervised baseline."""
    stages = [classifier_stage(ctx)]
    if set(NEEDS_WOOD_CLASSIFIER) & set(ctx.recipe.methods):
        stages.append(wood_classifier_stage(ctx))
    for method in ctx.recipe.methods:
        stages.extend(METHODS[method](ctx))
    if ctx.recipe.until == "final" and ctx.recipe.fully_supervised:
        stages.extend(seg_stages(ctx, "fully_supervised", None, ()))
    return stages


def final_summary(ctx: Context, method: str, what: str) -> float | None:
    """mIoU of a finished pseudo or final evaluation, or None when it did not run."""
    path = ctx.eval_path(method, what)
    if not path.is_file():
        return None
    return read_json(path)["results"][0]["miou"]


def seed_summary(ctx: Context, method: str) -> dict[str, Any]:
    """The seed numbers of a finished method, from its evaluation JSON."""
    report = read_json(ctx.seed_eval_path(method))
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
        "seed_protocols": {k: v["protocol"] for k, v in by_kind.items()},
    }
