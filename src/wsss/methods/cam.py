"""CAM (IRN recipe) as a method: multi-scale CAMs of the shared classifier, then IRN's chain.

The algorithm is :mod:`wsss.attribution.cam` (IRN ``make_cam``); this module only places it in
the chain. Refinement values: IRN ``run_sample.py`` (``conf_fg_thres`` 0.30, ``conf_bg_thres``
0.05, ``sem_seg_bg_thres`` 0.25, no power).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.attribution.cam import CAM_SCALES
from wsss.config import result_settings
from wsss.errors import ConfigError
from wsss.methods.base import Context, Method, RefineDefaults, Stage, Work, register
from wsss.methods.chain import classifier_maps_stage, image_level_chain, passes

__all__ = ["CamConfig", "CamMethod", "cam_maps_stage"]


@dataclass
class CamConfig:
    """Multi-scale CAM extraction (IRN ``make_cam``)."""

    scales: tuple[float, ...] = CAM_SCALES  # IRN --cam_scales
    flip: bool = True  # IRN: every scale with its horizontal flip

    def validate(self) -> None:
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ConfigError(f"cam.scales must be positive, got {list(self.scales)}")


def cam_maps_stage(ctx: Context, method: str, classifier: str = "classifier",
                   classifier_path: Path | None = None) -> Stage:
    """CAMs of the classifier trained by stage ``classifier`` (its checkpoint ``classifier_path``)."""
    recipe = ctx.recipe

    def make(model, dataset, out: Path) -> None:
        from wsss.attribution.cam import make_cams

        make_cams(model, dataset, out, device=ctx.device, scales=recipe.cam.scales, flip=recipe.cam.flip,
                  progress=recipe.runtime.progress)

    def work(dataset) -> Work:
        return Work(len(dataset), f"{passes(recipe.cam.scales, recipe.cam.flip)} forward passes per image")

    return classifier_maps_stage(ctx, method, make, {"cam": result_settings(recipe.cam)}, classifier,
                                 classifier_path, work=work)


@register
class CamMethod(Method):
    name = "cam"
    description = "class activation maps of the classifier (IRN's recipe)"
    sections = {"cam": CamConfig}
    refine = RefineDefaults(0.30, 0.05, 1.0, 0.25, "IRN run_sample.py")

    def stages(self, ctx: Context) -> list[Stage]:
        return image_level_chain(ctx, self.name, cam_maps_stage(ctx, self.name), self.refine)
