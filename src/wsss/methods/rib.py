"""RIB as a method: per-image fine-tuning of the shared classifier, then IRN's chain.

The algorithm is :mod:`wsss.attribution.rib`. Its other images come from ``data.train_split``
(the reference takes targets and other images from the same list) and are drawn with the run's
seed. Refinement values: RIB ``run_sample.py`` for VOC (``conf_fg_thres`` 0.35,
``conf_bg_thres`` 0.17, power 1.3, ``sem_seg_bg_thres`` 0.27). The recipe's ``scale: image`` puts
the learning rates and the margin in the classifier's own logit units (``docs/scale.md``).
"""

from __future__ import annotations

from pathlib import Path

from wsss.attribution.rib import RibConfig
from wsss.config import result_settings
from wsss.methods.base import Context, Method, RefineDefaults, Stage, Work, count, register
from wsss.methods.chain import classifier_maps_stage, image_level_chain, passes, scale_dependency

__all__ = ["RibMethod", "rib_maps_stage"]


def rib_maps_stage(ctx: Context, method: str = "rib") -> Stage:
    """RIB maps of the shared classifier, its other images drawn from ``data.train_split``."""
    recipe = ctx.recipe

    def make(model, dataset, out: Path) -> None:
        from wsss.attribution.rib import make_ribs

        make_ribs(model, dataset, out, config=recipe.rib, device=ctx.device, progress=recipe.runtime.progress,
                  seed=recipe.runtime.seed, pool=ctx.dataset(recipe.data.train_split), scale=recipe.scale)

    def work(dataset) -> Work:
        config = recipe.rib
        return Work(len(dataset), f"up to {config.steps} fine-tuning steps per image (up to "
                                  f"{count(len(dataset) * config.steps)}), each the image at "
                                  f"{passes(config.scales, config.flip)} inputs and {config.batch_size} other "
                                  "images, forward + backward")

    return classifier_maps_stage(ctx, method, make, {"pool": recipe.data.train_split,
                                                     "rib": result_settings(recipe.rib), "seed": recipe.runtime.seed,
                                                     **scale_dependency(ctx)}, work=work)


@register
class RibMethod(Method):
    name = "rib"
    description = "reducing the information bottleneck: per-image fine-tuning (Lee et al., NeurIPS 2021)"
    sections = {"rib": RibConfig}
    quick = ("rib.steps=3",)
    refine = RefineDefaults(0.35, 0.17, 1.3, 0.27, "RIB run_sample.py (VOC)")

    def stages(self, ctx: Context) -> list[Stage]:
        return image_level_chain(ctx, self.name, rib_maps_stage(ctx, self.name), self.refine)
