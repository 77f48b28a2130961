"""BBAM as a method: the detector, its per-object attribution maps, semantic and instance pseudo
labels, DeepLab and Mask R-CNN.

**bbam** (Lee, Yi, Shin and Yoon, "BBAM: Bounding Box Attribution Map for Weakly Supervised
Semantic and Instance Segmentation", CVPR 2021; reference ``jbeomlee93/BBAM``)::

    bbam.detector -> bbam.maps -> bbam.labels -> bbam.pseudo_eval
        -> bbam.seg -> bbam.predict -> bbam.final_eval                  (semantic: DeepLab)
        -> bbam.mask_rcnn -> bbam.instance_eval                          (instances: Mask R-CNN)
    instances_fully_supervised.mask_rcnn -> instances_fully_supervised.instance_eval   (the oracle)

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
* ``bbam.labels``: per object the top-(1 - th) saturation, blur and two-label CRF at th 0.85 and
  0.2 (:func:`wsss.refine.bbam_labels.make_bbam_labels`, section ``bbam_labels:``): semantic
  masks in ``pseudo/bbam/`` (255 where classes overlap and in the 0.2 band), one-image instance
  files in ``pseudo/bbam_instances/`` gathered into ``pseudo/bbam_instances.json`` (COCO JSON,
  the band as each instance's ignore region); sharded and resumable. Its summary
  (``pseudo/bbam_labels.json``) repeats the maps' kept-proposal numbers beside the objects whose
  mask failed.
* ``bbam.pseudo_eval``: the semantic pseudo masks scored like every method's, their 255 pixels as
  background (the first result, the demo's column), and again with those pixels left out (the
  second, with the labelled coverage): the band is ignored, not background, when DeepLab trains
  (``eval/bbam_pseudo.json``).
* ``bbam.seg`` / ``predict`` / ``final_eval``: the recipe's ``segmentation`` network on the
  semantic masks (255 ignored), as the image-level methods.
* ``bbam.mask_rcnn``: Mask R-CNN (:func:`wsss.training.mask_rcnn.train_mask_rcnn`, section
  ``mask_rcnn:``) on the pseudo instances, the band left out of its mask loss,
  ``<workdir>/mask_rcnn_bbam.pt``; one process. ``bbam.instance_eval``: mask AP at IoU 0.25, 0.5,
  0.7, 0.75 and COCO's mAP on ``data.val_split``'s ground-truth instances
  (``eval/bbam_instance.json``).
* With ``fully_supervised`` (the recipe's), the same Mask R-CNN trained on the ground-truth
  instances of the same images (``<workdir>/mask_rcnn_fully_supervised.pt``,
  ``eval/instances_fully_supervised_instance.json``): the oracle beside BBAM's.

The instance stages need ground-truth instances of ``data.val_split`` (VOC ``SegmentationObject``
PNGs with the class PNGs, or COCO segmentations), and the oracle those of ``data.seed_split``:
where a split has none, its stages are left out (logged), not failed mid-run.

``until``: ``seeds`` stops after the maps (BBAM has no seeds), ``pseudo`` after the pseudo-mask
score.

Needs boxes (VOC XML or COCO JSON) for the images of both splits, checked before the first stage
as for BANA (:mod:`wsss.methods.bana` lists what is refused, clipped and left out). An image
without boxes is used as background: the detector trains on it with no object, its map file has no
channels, its semantic pseudo label is all background and it has no pseudo instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from wsss.attribution.bbam import BbamConfig
from wsss.config import Settings, check_ranges, result_settings, run_only_field
from wsss.errors import ConfigError, WsssError
from wsss.methods.bana import box_problems
from wsss.methods.base import INSTANCE_ORACLE, Context, Method, Stage, register, remover
from wsss.methods.chain import eval_stage, scale_dependency, seg_stages
from wsss.refine.bbam_labels import BANDS, CRF_PRESET, THRESHOLD_OBJECT, THRESHOLD_POSSIBLE
from wsss.training.detector import DetectorConfig
from wsss.training.mask_rcnn import MaskRcnnConfig

log = logging.getLogger(__name__)

__all__ = [
    "BBAM_DETECTOR",
    "BBAM_LABELS",
    "BBAM_MAPS",
    "INSTANCE_ORACLE",
    "BbamLabelConfig",
    "BbamMethod",
    "bbam_detector_stage",
    "bbam_labels_stage",
    "bbam_maps_stage",
    "instance_stages",
]

BBAM_DETECTOR = "bbam.detector"
"""The stage that trains the detector."""
NO_PROPOSAL_WARNING = 0.25
"""Above this share of objects with no kept proposal the maps stage warns: BBAM is then mostly
the box baseline. Measured on 200 generated images: a small detector from scratch at lr 0.01 with
the reference's 512 RoIs per image still calls every jittered box background after 300 updates;
at lr 0.04 with 128 RoIs, 3% of the training objects keep none after 300 (the synth recipe)."""
BBAM_MAPS = "bbam.maps"
"""The stage that writes the per-object attribution maps (``maps/bbam/``)."""
BBAM_LABELS = "bbam.labels"
"""The stage that writes the semantic and instance pseudo labels."""


@dataclass
class BbamLabelConfig(Settings):
    """BBAM's pseudo labels from the per-object maps (:mod:`wsss.refine.bbam_labels`)."""

    option_name: ClassVar[str] = "bbam_labels"

    object_threshold: float = THRESHOLD_OBJECT  # BBAM make_cocoann_topCRF_parallel.py th_fgs[0] 0.85
    possible_threshold: float = THRESHOLD_POSSIBLE  # th_fgs[1] 0.2: its excess over the object is ignored
    crf: str = CRF_PRESET  # anno_utils.py get_final_mask_with_topCRF (wsss.refine.crf.CRF_PRESETS "bbam")
    # the semantic masks' band (possible object, not object): ignore = 255 (the reference's);
    # possible = painted with its class (a variant: DeepLab learns the objects' outer parts too)
    band: str = "ignore"
    workers: int = run_only_field(0)  # CRF worker processes (0: in the stage's process)

    def validate(self) -> None:
        from wsss.refine.crf import CRF_PRESETS

        check_ranges(self, "bbam_labels", at_least={"object_threshold": 0, "possible_threshold": 0, "workers": 0},
                     at_most={"object_threshold": 1, "possible_threshold": 1})
        if self.possible_threshold > self.object_threshold:
            raise ConfigError(f"bbam_labels.possible_threshold ({self.possible_threshold}) must not exceed "
                              f"object_threshold ({self.object_threshold}): the possible-object mask holds the object")
        if self.crf not in CRF_PRESETS:
            raise ConfigError(f"bbam_labels.crf must be one of {', '.join(CRF_PRESETS)}, got {self.crf!r}")
        if self.band not in BANDS:
            raise ConfigError(f"bbam_labels.band must be one of {', '.join(BANDS)}, got {self.band!r}")


def _has_instances(ctx: Context, split: str) -> bool:
    """Whether ``split`` has ground-truth instances (False when it cannot be opened: the pipeline
    reports an unreadable split itself)."""
    try:
        return bool(ctx.dataset(split).has_instances)
    except WsssError:
        return False


@register
class BbamMethod(Method):
    name = "bbam"
    description = "bounding box attribution maps of a Faster R-CNN (Lee et al., CVPR 2021)"
    sections = {"bbam_detector": DetectorConfig, "bbam": BbamConfig, "bbam_labels": BbamLabelConfig,
                "mask_rcnn": MaskRcnnConfig}
    quick = ("bbam_detector.steps=20", "bbam_detector.milestones=[15]", "bbam_detector.warmup_steps=5",
             "bbam.steps=10", "bbam.proposals=200", "mask_rcnn.steps=20", "mask_rcnn.milestones=[15]",
             "mask_rcnn.warmup_steps=5")

    def check_inputs(self, ctx: Context) -> list[Exception]:
        data = ctx.recipe.data
        problems = box_problems(ctx, data.train_split, "BBAM's detector", need_boxes=False)
        if data.seed_split != data.train_split:
            problems += box_problems(ctx, data.seed_split, "BBAM's attribution maps", need_boxes=False)
        return problems

    def pictures(self, ctx: Context) -> dict[str, Path]:
        return {"bbam masks": ctx.pseudo_dir(self.name)}

    def stages(self, ctx: Context) -> list[Stage]:
        recipe = ctx.recipe
        stages = [bbam_detector_stage(ctx), bbam_maps_stage(ctx)]
        if recipe.until == "seeds":
            return stages
        semantic = ctx.pseudo_dir(self.name)
        stages += [bbam_labels_stage(ctx),
                   eval_stage(ctx, self.name, "pseudo", BBAM_LABELS, semantic, recipe.data.seed_split,
                              also_excluding_unlabelled=True)]
        if recipe.until == "final":
            stages += seg_stages(ctx, self.name, semantic, (BBAM_LABELS,))
            stages += instance_stages(ctx)
        return stages


def bbam_detector_stage(ctx: Context) -> Stage:
    """The detector on ``data.train_split``'s boxes (``<workdir>/bbam_detector.pt``)."""
    recipe = ctx.recipe
    out, checkpoints = ctx.model_path("bbam_detector"), ctx.workdir / "bbam_detector"
    settings = ctx.seeded(recipe.bbam_detector)

    def run() -> dict[str, Any]:
        from wsss.training.detector import train_detector

        result = train_detector(ctx.dataset(recipe.data.train_split), settings, device=ctx.device,
                                out=out, checkpoint_dir=checkpoints, progress=recipe.runtime.progress,
                                fast_paths=ctx.fast_paths)
        return {"history": result.history}

    return Stage(BBAM_DETECTOR, run=run, clear=remover(out, checkpoints), needs=(), main_only=True,
                 depends_on={"data": [recipe.data.root, recipe.data.train_split],
                             "bbam_detector": result_settings(settings), **ctx.fast_paths.dependency})


def bbam_maps_stage(ctx: Context) -> Stage:
    """Per-object BBAM masks of ``data.seed_split`` (``maps/bbam/``) and what selection kept
    (``maps/bbam_summary.json``)."""
    recipe = ctx.recipe
    maps_dir = ctx.maps_dir("bbam")
    summary = ctx.workdir / "maps" / "bbam_summary.json"
    settings = ctx.seeded(recipe.bbam)  # the jitter's seed

    def run() -> dict[str, Any]:
        from wsss.attribution.bbam import bbam_summary, make_bbam_maps
        from wsss.io import write_json
        from wsss.runtime import barrier, dist_info_from_env
        from wsss.training.detector import load_detector

        dataset = ctx.dataset(recipe.data.seed_split)
        detector = load_detector(ctx.model_path("bbam_detector"), map_location=ctx.device).to(ctx.device)
        made = make_bbam_maps(detector, dataset, maps_dir, config=settings, device=ctx.device,
                              scale=recipe.scale, progress=recipe.runtime.progress)
        barrier()  # every process's share written: the summary is over the whole split
        if not dist_info_from_env().is_main:
            return {"computed_now": made}
        result = {"images": len(dataset.ids), "computed_now": made, **bbam_summary(maps_dir, dataset.ids)}
        write_json(summary, result)
        if result["objects"] and result["no_proposal_share"] > NO_PROPOSAL_WARNING:
            log.warning("BBAM kept no proposal for %.0f%% of the %d objects: their masks are all zero and "
                        "their pseudo labels will be filled boxes; the detector calls jittered boxes "
                        "background or misplaces them (train it longer or faster: bbam_detector.steps, lr; "
                        "fewer bbam_detector.rois_per_image)",
                        100 * result["no_proposal_share"], result["objects"])
        return result

    return Stage(BBAM_MAPS, run=run, clear=remover(maps_dir, summary), needs=(BBAM_DETECTOR,),
                 depends_on={"split": recipe.data.seed_split, "bbam": result_settings(settings),
                             **scale_dependency(ctx)})


def bbam_labels_stage(ctx: Context) -> Stage:
    """Semantic (``pseudo/bbam/``) and instance (``pseudo/bbam_instances.json``) pseudo labels of
    ``data.seed_split`` from the per-object maps; summary in ``pseudo/bbam_labels.json``."""
    recipe = ctx.recipe
    semantic, instance_dir = ctx.pseudo_dir("bbam"), ctx.pseudo_dir("bbam_instances")
    instances_path, summary = _pseudo_instances_path(ctx), ctx.workdir / "pseudo" / "bbam_labels.json"

    def run() -> dict[str, Any]:
        from wsss.attribution.bbam import bbam_summary
        from wsss.io import write_json
        from wsss.refine.bbam_labels import make_bbam_labels
        from wsss.runtime import dist_info_from_env

        dataset = ctx.dataset(recipe.data.seed_split)
        settings = recipe.bbam_labels
        made = make_bbam_labels(dataset, ctx.maps_dir("bbam"), semantic, instance_dir, instances_path,
                                thresholds=(settings.object_threshold, settings.possible_threshold), crf=settings.crf,
                                scale=recipe.scale, band=settings.band, workers=settings.workers,
                                progress=recipe.runtime.progress)
        if not dist_info_from_env().is_main:
            return made
        kept = bbam_summary(ctx.maps_dir("bbam"), dataset.ids)
        objects = made.get("objects", 0)
        result = {"images": len(dataset.ids), "computed_now": made["images"], "objects": objects,
                  "failed": made.get("failed", 0), "failed_share": made.get("failed", 0) / objects if objects else 0.0,
                  "no_proposal_share": kept["no_proposal_share"], "mean_kept": kept["mean_kept"]}
        write_json(summary, result)
        return result

    return Stage(BBAM_LABELS, run=run, clear=remover(semantic, instance_dir, instances_path, summary),
                 needs=(BBAM_MAPS,),
                 depends_on={"split": recipe.data.seed_split, "bbam_labels": result_settings(recipe.bbam_labels),
                             **scale_dependency(ctx)})


def _pseudo_instances_path(ctx: Context) -> Path:
    return ctx.workdir / "pseudo" / "bbam_instances.json"


def instance_stages(ctx: Context) -> list[Stage]:
    """Mask R-CNN on BBAM's pseudo instances and its instance AP on ``data.val_split``; with the
    recipe's ``fully_supervised``, the same on ground-truth instances (the oracle). A split without
    ground-truth instances leaves its stages out (module docstring)."""
    recipe = ctx.recipe
    data = recipe.data
    if not _has_instances(ctx, data.val_split):
        log.info("split %r has no ground-truth instances: BBAM's Mask R-CNN and its instance AP are left out",
                 data.val_split)
        return []

    def pseudo_instances(dataset: Any) -> Any:
        from wsss.stores.instances import InstanceStore

        return InstanceStore(_pseudo_instances_path(ctx)).load(dataset.classes)

    stages = _mask_rcnn_stages(ctx, "bbam", pseudo_instances, (BBAM_LABELS,), "bbam pseudo instances")
    if recipe.fully_supervised:
        if _has_instances(ctx, data.seed_split):
            def ground_truth(dataset: Any) -> dict[str, Any]:
                return {image_id: dataset.ground_truth_instances(image_id) for image_id in dataset.ids}

            stages += _mask_rcnn_stages(ctx, INSTANCE_ORACLE, ground_truth, (), "ground truth")
        else:
            log.info("split %r has no ground-truth instances: the Mask R-CNN oracle is left out", data.seed_split)
    return stages


def _mask_rcnn_stages(ctx: Context, name: str, instances: Any, needs: tuple[str, ...], source: str) -> list[Stage]:
    """``<name>.mask_rcnn`` (Mask R-CNN on ``instances(dataset)`` of the seed split) and
    ``<name>.instance_eval`` (its mask AP on the val split, ``eval/<name>_instance.json``)."""
    recipe = ctx.recipe
    data = recipe.data
    out, checkpoints = ctx.model_path(f"mask_rcnn_{name}"), ctx.workdir / f"mask_rcnn_{name}"
    report_path = ctx.eval_path(name, "instance")
    settings = ctx.seeded(recipe.mask_rcnn)

    def train() -> dict[str, Any]:
        from wsss.training.mask_rcnn import train_mask_rcnn

        dataset = ctx.dataset(data.seed_split)
        result = train_mask_rcnn(dataset, instances(dataset), settings, classes=dataset.classes,
                                 ids=dataset.ids, device=ctx.device, out=out, checkpoint_dir=checkpoints,
                                 progress=recipe.runtime.progress, fast_paths=ctx.fast_paths)
        return {"history": result.history}

    def evaluate() -> dict[str, Any]:
        from wsss.evaluation.instances import evaluate_instance_model
        from wsss.io import write_json
        from wsss.training.mask_rcnn import load_mask_rcnn

        dataset = ctx.dataset(data.val_split)
        model, _ = load_mask_rcnn(out, map_location=ctx.device)
        report = evaluate_instance_model(model.to(ctx.device).eval(), dataset, device=ctx.device,
                                         progress=recipe.runtime.progress)
        result = {"model": name, "trained_on": source, "split": data.val_split, **report.to_dict(dataset.classes)}
        write_json(report_path, result)
        return {key: result[key] for key in result if key.startswith(("AP", "mAP"))}

    return [
        # priority: BBAM's detector -> maps -> labels -> Mask R-CNN is the demo's longest chain (31 of its
        # 57.7 minutes, measured); listed last, it started at minute 25 (docs/speed.md, "The demo")
        Stage(f"{name}.mask_rcnn", run=train, clear=remover(out, checkpoints), needs=needs, main_only=True, priority=1,
              depends_on={"train": data.seed_split, "instances": source,
                          "mask_rcnn": result_settings(settings), **ctx.fast_paths.dependency}),
        Stage(f"{name}.instance_eval", run=evaluate, clear=remover(report_path), needs=(f"{name}.mask_rcnn",),
              main_only=True, depends_on={"val": data.val_split}),
    ]
