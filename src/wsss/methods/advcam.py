"""AdvCAM as a method: anti-adversarial climbing on the shared classifier, then IRN's chain.

The algorithm is :mod:`wsss.attribution.advcam`. Refinement values: AdvCAM ``run_sample.py`` and
``make_sem_seg_labels.py`` (``conf_fg_thres`` 0.35, ``conf_bg_thres`` 0.15, power 1.5,
``sem_seg_bg_thres`` 0.25). Batching settings (``images_per_batch``, ``max_batch_pairs``) change
speed and memory, not the maps, so changing them reruns nothing. The recipe's ``scale: image``
gives lambda the reference's strength on this classifier and these maps (``docs/scale.md``).
"""

from __future__ import annotations

from pathlib import Path

from wsss.attribution.advcam import AdvCamConfig, scale_schedule
from wsss.config import result_settings
from wsss.errors import WsssError
from wsss.methods.base import Context, Method, RefineDefaults, Stage, Work, count, register
from wsss.methods.chain import classifier_maps_stage, image_level_chain, scale_dependency

__all__ = ["AdvCamMethod", "advcam_maps_stage"]


def advcam_maps_stage(ctx: Context, method: str, classifier: str = "classifier",
                      classifier_path: Path | None = None) -> Stage:
    """AdvCAM maps of the classifier trained by stage ``classifier`` (checkpoint ``classifier_path``)."""
    recipe = ctx.recipe

    def make(model, dataset, out: Path) -> None:
        from wsss.attribution.advcam import make_advcams

        make_advcams(model, dataset, out, config=recipe.advcam, device=ctx.device, progress=recipe.runtime.progress,
                     scale=recipe.scale)

    def work(dataset) -> Work:
        config = recipe.advcam
        steps = sum(iterations for _, iterations, _ in scale_schedule(config))
        pair = "flip pair" if config.flip else "image"
        try:  # one trajectory per labelled class
            trajectories = sum(len(dataset.image_labels(image_id)) for image_id in dataset.ids)
            text = f"{count(trajectories)} class trajectories x {steps} climbing steps = " \
                   f"{count(trajectories * steps)} forward + backward passes"
        except WsssError:
            text = f"{steps} climbing steps per labelled class (labels unreadable)"
        return Work(len(dataset), f"{text} of a {pair}, over {len(config.scales)} scales")

    return classifier_maps_stage(ctx, method, make, {"advcam": result_settings(recipe.advcam), **scale_dependency(ctx)},
                                 classifier, classifier_path, work=work)


@register
class AdvCamMethod(Method):
    name = "advcam"
    description = "anti-adversarial climbing on the classifier (Lee et al., CVPR 2021)"
    sections = {"advcam": AdvCamConfig}
    quick = ("advcam.iterations=4",)
    refine = RefineDefaults(0.35, 0.15, 1.5, 0.25, "AdvCAM run_sample.py, make_sem_seg_labels.py")

    def stages(self, ctx: Context) -> list[Stage]:
        return image_level_chain(ctx, self.name, advcam_maps_stage(ctx, self.name), self.refine)
