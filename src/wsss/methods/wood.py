"""W-OoD as methods: the classifier fine-tuned with OoD images, then CAM (``wood``) or AdvCAM
(``advcam_wood``, the paper's best seeds) on it, then IRN's chain.

The training is :mod:`wsss.training.wood`. The fine-tuned classifier is one stage,
``wood.classifier`` (checkpoint ``classifier_wood.pt``), run once for both methods. Refinement
values: W-OoD ``run_sample.py`` (``wood``: 0.30 / 0.15, no power, 0.25) and
``run_sample_pseudo_gt.py`` (``advcam_wood``: 0.30 / 0.15, power 1.5, 0.22).
"""

from __future__ import annotations

from typing import Any

from wsss.attribution.advcam import AdvCamConfig
from wsss.config import result_settings
from wsss.errors import ConfigError, WsssError
from wsss.methods.advcam import advcam_maps_stage
from wsss.methods.base import Context, Method, RefineDefaults, Stage, Work, count, register, remover
from wsss.methods.cam import CamConfig, cam_maps_stage
from wsss.methods.chain import image_level_chain, training_work
from wsss.training.wood import WoodConfig

__all__ = ["AdvCamWoodMethod", "WOOD_CLASSIFIER", "WoodMethod", "wood_classifier_stage"]

WOOD_CLASSIFIER = "wood.classifier"
"""The stage that fine-tunes the classifier with OoD images (shared by both W-OoD methods)."""


def wood_classifier_stage(ctx: Context) -> Stage:
    """W-OoD: the CAM classifier fine-tuned with OoD images."""
    recipe = ctx.recipe
    out = ctx.model_path("classifier_wood")

    def run() -> dict[str, Any]:
        from wsss.training.wood import train_wood

        result = train_wood(
            ctx.dataset(recipe.data.train_split), ctx.ood(), recipe.wood, recipe.classifier,
            device=ctx.device, out=out, init=ctx.classifier_path,
            val_source=ctx.dataset(recipe.data.val_split), progress=recipe.runtime.progress,
            seed=recipe.runtime.seed,
        )
        return {"history": result.history, "seconds": result.seconds}

    def work() -> Work:
        config, classifier = recipe.wood, recipe.classifier
        images = len(ctx.dataset(recipe.data.train_split))
        epochs = config.epochs if config.epochs is not None else classifier.epochs
        training = training_work(images, classifier.batch_size, epochs,
                                 f"crops and {config.ood_batch_size} OoD images", "classifier.batch_size")
        try:
            ood = len(ctx.ood())
            if config.ood_images is not None:
                ood = min(ood, config.ood_images)
            ood_text = count(ood)
        except WsssError:
            ood, ood_text = None, "the"
        problem = training.problem
        if problem is None and ood is not None and config.ood_weight > 0 and ood < config.ood_batch_size:
            problem = f"{ood} OoD images, fewer than one OoD batch of {config.ood_batch_size} (wood.ood_batch_size)"
        if problem is None and ood is not None and ood < config.ood_clusters:
            problem = f"{ood} OoD images, fewer than the {config.ood_clusters} OoD prototypes (wood.ood_clusters)"
        return Work(images, f"prototypes from {count(images)} + {ood_text} OoD images, then {training.what}",
                    problem)

    return Stage(
        WOOD_CLASSIFIER, run=run, clear=remover(out), needs=("classifier",), main_only=True, work=work,
        depends_on={"ood": recipe.data.ood_list, "wood": result_settings(recipe.wood)},
    )


class _WoodBase(Method):
    def check_inputs(self, ctx: Context) -> list[Exception]:
        if not ctx.recipe.data.ood_list:
            return [ConfigError("W-OoD needs OoD images: set data.ood_list=LIST")]
        try:
            ctx.ood()  # the list and every image it names
        except WsssError as exc:
            return [exc]
        return []


@register
class WoodMethod(_WoodBase):
    name = "wood"
    description = "CAM of the classifier fine-tuned with out-of-distribution images (Lee et al., CVPR 2022)"
    sections = {"cam": CamConfig, "wood": WoodConfig}
    quick = ("wood.epochs=1",)
    refine = RefineDefaults(0.30, 0.15, 1.0, 0.25, "W-OoD run_sample.py")

    def stages(self, ctx: Context) -> list[Stage]:
        maps = cam_maps_stage(ctx, self.name, WOOD_CLASSIFIER, ctx.model_path("classifier_wood"))
        return image_level_chain(ctx, self.name, maps, self.refine, before=(wood_classifier_stage(ctx),))


@register
class AdvCamWoodMethod(_WoodBase):
    name = "advcam_wood"
    description = "AdvCAM of the W-OoD classifier (the W-OoD paper's best seeds)"
    sections = {"advcam": AdvCamConfig, "wood": WoodConfig}
    quick = ("advcam.iterations=4", "wood.epochs=1")
    refine = RefineDefaults(0.30, 0.15, 1.5, 0.22, "W-OoD run_sample_pseudo_gt.py")

    def stages(self, ctx: Context) -> list[Stage]:
        maps = advcam_maps_stage(ctx, self.name, WOOD_CLASSIFIER, ctx.model_path("classifier_wood"))
        return image_level_chain(ctx, self.name, maps, self.refine, before=(wood_classifier_stage(ctx),))
