"""BBAM as a method: the detector and its per-object attribution maps.

**bbam** (Lee, Yi, Shin and Yoon, "BBAM: Bounding Box Attribution Map for Weakly Supervised
Semantic and Instance Segmentation", CVPR 2021; reference ``jbeomlee93/BBAM``)::

    bbam.detector -> bbam.maps -> (pseudo labels, Mask R-CNN: not in this module yet)

* ``bbam.detector``: a torchvision Faster R-CNN with FPN trained on ``data.train_split``'s boxes
  (:func:`wsss.training.detector.train_detector`, section ``bbam_detector:``),
  ``<workdir>/bbam_detector.pt`` and its checkpoints in ``<workdir>/bbam_detector/``; one process.
* ``bbam.maps``: one mask in [0, 1] per box of every image of ``data.seed_split``
  (:func:`wsss.attribution.bbam.make_bbam_maps`, section ``bbam:``), in the map store
  ``maps/bbam/<id>.npz`` (keys = the boxes' classes, ``boxes``, ``proposals`` = kept proposals
  per box; 0 means none was kept and the mask is all zero), sharded over the processes and
  resumable image by image. The share of objects with no kept proposal and the mean number kept
  are the stage's return value and ``maps/bbam_summary.json``. The recipe's ``scale`` sets the
  mask stride (``docs/scale.md``).

The pseudo labels (top-(1 - th) saturation, blur, two-label CRF at th 0.85 and 0.2), the semantic
and instance masks and Mask R-CNN read ``maps/bbam/`` through :class:`wsss.stores.maps.MapStore`.

Needs boxes (VOC XML or COCO JSON) for the images of both splits; a box that is empty, outside
its image or of an unknown class is found before the first stage.
"""

from __future__ import annotations

import logging
from typing import Any

from wsss.attribution.bbam import BbamConfig
from wsss.config import result_settings
from wsss.methods.bana import box_problems
from wsss.methods.base import Context, Method, Stage, register, remover
from wsss.methods.chain import scale_dependency
from wsss.training.detector import DetectorConfig

log = logging.getLogger(__name__)

__all__ = ["BBAM_DETECTOR", "BBAM_MAPS", "BbamMethod", "bbam_detector_stage", "bbam_maps_stage"]

BBAM_DETECTOR = "bbam.detector"
"""The stage that trains the detector."""
NO_PROPOSAL_WARNING = 0.25
"""Above this share of objects with no kept proposal the maps stage warns: BBAM is then mostly
the box baseline (measured here: a small detector after 80 updates on 64 generated images calls
every jittered box background, so it keeps none)."""
BBAM_MAPS = "bbam.maps"
"""The stage that writes the per-object attribution maps (``maps/bbam/``)."""


@register
class BbamMethod(Method):
    name = "bbam"
    description = "bounding box attribution maps of a Faster R-CNN (Lee et al., CVPR 2021)"
    sections = {"bbam_detector": DetectorConfig, "bbam": BbamConfig}
    quick = ("bbam_detector.steps=20", "bbam_detector.milestones=[15]", "bbam_detector.warmup_steps=5",
             "bbam.steps=10", "bbam.proposals=200")

    def check_inputs(self, ctx: Context) -> list[Exception]:
        data = ctx.recipe.data
        problems = box_problems(ctx, data.train_split, "BBAM's detector", need_boxes=False)
        if data.seed_split != data.train_split:
            problems += box_problems(ctx, data.seed_split, "BBAM's attribution maps", need_boxes=False)
        return problems

    def stages(self, ctx: Context) -> list[Stage]:
        return [bbam_detector_stage(ctx), bbam_maps_stage(ctx)]


def bbam_detector_stage(ctx: Context) -> Stage:
    """The detector on ``data.train_split``'s boxes (``<workdir>/bbam_detector.pt``)."""
    recipe = ctx.recipe
    out, checkpoints = ctx.model_path("bbam_detector"), ctx.workdir / "bbam_detector"

    def run() -> dict[str, Any]:
        from wsss.training.detector import train_detector

        result = train_detector(ctx.dataset(recipe.data.train_split), recipe.bbam_detector, device=ctx.device,
                                out=out, checkpoint_dir=checkpoints, progress=recipe.runtime.progress)
        return {"history": result.history}

    return Stage(BBAM_DETECTOR, run=run, clear=remover(out, checkpoints), needs=(), main_only=True,
                 depends_on={"data": [recipe.data.root, recipe.data.train_split],
                             "bbam_detector": result_settings(recipe.bbam_detector)})


def bbam_maps_stage(ctx: Context) -> Stage:
    """Per-object BBAM masks of ``data.seed_split`` (``maps/bbam/``) and what selection kept
    (``maps/bbam_summary.json``)."""
    recipe = ctx.recipe
    maps_dir = ctx.maps_dir("bbam")
    summary = ctx.workdir / "maps" / "bbam_summary.json"

    def run() -> dict[str, Any]:
        from wsss.attribution.bbam import bbam_summary, make_bbam_maps
        from wsss.io import write_json
        from wsss.runtime import barrier, dist_info_from_env
        from wsss.training.detector import load_detector

        dataset = ctx.dataset(recipe.data.seed_split)
        detector = load_detector(ctx.model_path("bbam_detector"), map_location=ctx.device).to(ctx.device)
        made = make_bbam_maps(detector, dataset, maps_dir, config=recipe.bbam, device=ctx.device,
                              scale=recipe.scale, progress=recipe.runtime.progress)
        barrier()  # every process's share written: the summary is over the whole split
        if not dist_info_from_env().is_main:
            return {"computed_now": made}
        result = {"images": len(dataset.ids), "computed_now": made, **bbam_summary(maps_dir, dataset.ids)}
        write_json(summary, result)
        if result["objects"] and result["no_proposal_share"] > NO_PROPOSAL_WARNING:
            log.warning("BBAM kept no proposal for %.0f%% of the %d objects: their masks are all zero and "
                        "their pseudo labels will be filled boxes; the detector calls jittered boxes "
                        "background or misplaces them (train it longer: bbam_detector.steps)",
                        100 * result["no_proposal_share"], result["objects"])
        return result

    return Stage(BBAM_MAPS, run=run, clear=remover(maps_dir, summary), needs=(BBAM_DETECTOR,),
                 depends_on={"split": recipe.data.seed_split, "bbam": result_settings(recipe.bbam),
                             **scale_dependency(ctx)})
