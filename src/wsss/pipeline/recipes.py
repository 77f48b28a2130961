"""Recipes: a method's stages, assembled from a typed configuration.

A recipe names the dataset, the runtime, each stage's settings and the methods to run. The
stages themselves call the library (``wsss.training``, ``wsss.attribution``,
``wsss.evaluation``); this module only wires their inputs and outputs in the work directory:

```
<workdir>/classifier.pt                 CAM classifier (shared by the image-level methods)
<workdir>/maps/<method>/<id>.npz        localization maps (the map store)
<workdir>/eval/<method>_seed.json       seed evaluation (+ .csv, _sweep.png)
```
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss.attribution.advcam import AdvCamConfig
from wsss.attribution.cam import CAM_SCALES
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
class Recipe:
    methods: tuple[str, ...] = ("cam",)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    advcam: AdvCamConfig = field(default_factory=AdvCamConfig)
    seed_eval: SeedEvalConfig = field(default_factory=SeedEvalConfig)


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
    if "advcam" in recipe.methods:
        recipe.advcam.validate()  # fail before hours of classifier training, not after
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
        from wsss.training.classifier import resolve_device

        return resolve_device(self.recipe.runtime.device)

    @property
    def classifier_path(self) -> Path:
        return self.workdir / "classifier.pt"

    def maps_dir(self, method: str) -> Path:
        return self.workdir / "maps" / method

    def seed_eval_path(self, method: str) -> Path:
        return self.workdir / "eval" / f"{method}_seed.json"


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

    return Stage(
        "classifier", run=run, clear=_remove(ctx.classifier_path), needs=(),
        depends_on={"data": [recipe.data.root, recipe.data.train_split], "classifier": recipe.classifier,
                    "seed": recipe.runtime.seed},
    )


def cam_maps_stage(ctx: Context, method: str = "cam") -> Stage:
    recipe = ctx.recipe

    def run() -> None:
        from wsss.attribution.cam import make_cams
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_cam_net_for(ctx.classifier_path, dataset, ctx.device)
        make_cams(model, dataset, ctx.maps_dir(method), device=ctx.device,
                  scales=recipe.cam.scales, flip=recipe.cam.flip, progress=recipe.runtime.progress)

    return Stage(
        f"{method}.maps", run=run, clear=_remove(ctx.maps_dir(method)), needs=("classifier",),
        depends_on={"split": recipe.data.seed_split, "cam": recipe.cam},
    )


def advcam_maps_stage(ctx: Context, method: str = "advcam") -> Stage:
    recipe = ctx.recipe

    def run() -> None:
        from wsss.attribution.advcam import make_advcams
        from wsss.models.cam_net import load_cam_net_for

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_cam_net_for(ctx.classifier_path, dataset, ctx.device)
        make_advcams(model, dataset, ctx.maps_dir(method), config=recipe.advcam, device=ctx.device,
                     progress=recipe.runtime.progress)

    # batching settings change speed and memory, not the maps: changing them reruns nothing
    settings = {k: v for k, v in to_dict(recipe.advcam).items()
                if k not in ("images_per_batch", "max_batch_pairs")}
    return Stage(
        f"{method}.maps", run=run, clear=_remove(ctx.maps_dir(method)), needs=("classifier",),
        depends_on={"split": recipe.data.seed_split, "advcam": settings},
    )


def seed_eval_stage(ctx: Context, method: str, maps_stage: str) -> Stage:
    recipe = ctx.recipe
    path = ctx.seed_eval_path(method)

    def run() -> None:
        from wsss.evaluation.run import evaluate_predictions, write_report

        report = evaluate_predictions(
            ctx.dataset(recipe.data.seed_split), ctx.maps_dir(method),
            sweep=recipe.seed_eval.sweep, threshold=recipe.seed_eval.fixed_threshold,
            label_free=recipe.seed_eval.label_free, progress=recipe.runtime.progress,
        )
        write_report(report, path)

    return Stage(f"{method}.seed_eval", run=run, clear=_remove(path), needs=(maps_stage,),
                 depends_on=recipe.seed_eval, main_only=True)


def cam_method(ctx: Context) -> list[Stage]:
    return [cam_maps_stage(ctx, "cam"), seed_eval_stage(ctx, "cam", "cam.maps")]


def advcam_method(ctx: Context) -> list[Stage]:
    return [advcam_maps_stage(ctx, "advcam"), seed_eval_stage(ctx, "advcam", "advcam.maps")]


# method name -> the stages it adds after the shared classifier.
METHODS: dict[str, Callable[[Context], list[Stage]]] = {"cam": cam_method, "advcam": advcam_method}


def build_stages(ctx: Context) -> list[Stage]:
    """The shared classifier, then every method's stages, in the recipe's order."""
    stages = [classifier_stage(ctx)]
    for method in ctx.recipe.methods:
        stages.extend(METHODS[method](ctx))
    return stages


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
