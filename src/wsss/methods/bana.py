"""BANA and the plain box baseline as methods: stages for box-supervised pseudo masks and DeepLab.

**bana** (Oh, Kim and Ham, "Background-Aware Pooling and Noise-Aware Loss for Weakly-Supervised
Semantic Segmentation", CVPR 2021; reference ``cvlab-yonsei/BANA``)::

    bana.classifier -> bana.labels -> bana.pseudo_eval -> bana.seg -> bana.predict -> bana.final_eval

* ``bana.classifier`` (stage 1): the BAP classifier on ``data.train_split`` and its boxes
  (:func:`wsss.training.bana.train_bap`, section ``bana:``), ``<workdir>/bap_net.pt``; one process.
* ``bana.labels`` (stage 2): Y_crf into ``pseudo/bana/`` and Y_ret into ``pseudo/bana_ret/`` for
  every image of ``data.seed_split`` (:func:`wsss.refine.bana_labels.make_bana_labels`, section
  ``bana_labels:``), sharded over the processes and resumable image by image. The share of pixels
  where Y_crf and Y_ret disagree (the region the noise-aware loss down-weights) is the stage's
  return value and ``pseudo/bana_labels.json``.
* ``bana.pseudo_eval``: Y_crf scored like every method's pseudo masks (``eval/bana_pseudo.json``).
* stage 3: the recipe's ``segmentation`` network with BANA's cosine classifier and noise-aware
  loss on the two targets (section ``bana_seg:``), then prediction and the final score as for
  every method.

``until``: ``seeds`` stops after stage 1 (BANA has no seeds), ``pseudo`` after the pseudo-mask
score.

**boxes**, the baseline box-supervised papers compare against::

    boxes.pseudo -> boxes.pseudo_eval -> boxes.seg -> boxes.predict -> boxes.final_eval

every box filled with its class (the smaller box on top where boxes overlap,
:mod:`wsss.refine.box_masks`) as the pseudo masks, then the recipe's ``segmentation`` unchanged
(the image-level methods' DeepLab and loss). It trains no classifier.

Both read boxes (VOC XML or COCO JSON) for every image of the splits they use, and never image
labels. What ``wsss run`` refuses before the first stage (one line naming the XML or JSON, exit
status 2) and what it uses:

* refused: a missing or malformed XML, an object without a box, an unknown class name (COCO: an
  unknown category), a box with no width or height (VOC ``xmax < xmin``, or nothing left inside the
  image, as ``xmin = xmax = 0``), a box outside its image by more than a pixel (COCO: also a
  negative width or height);
* used: a box within a pixel of the image (clipped); VOC's ``xmin = xmax`` (its coordinates are
  inclusive: one pixel wide); a box of a class the image's labels lack (VOC's labels come from its
  masks, the boxes from its XML: the box is the supervision);
* left out with a warning naming the annotation: a COCO box of zero width or height (COCO 2017's
  training file holds two, annotations 918 and 2206849), as detection loaders do;
* an image without boxes: refused by ``bana`` (stage 1's loss and stage 2's labels are over boxes;
  list the images with boxes in a split file); background for ``boxes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from wsss.config import Settings, check_ranges, result_settings
from wsss.errors import ConfigError, DataError, WsssError
from wsss.methods.base import Context, Method, Stage, Work, count, register, remover
from wsss.methods.chain import eval_stage, scale_dependency, seg_stages
from wsss.refine.bana_labels import BG_THRESHOLD
from wsss.segmentation.losses import NAL_DAMPING, UNRELIABLE_WEIGHT
from wsss.training.bana import BapConfig

__all__ = [
    "BANA_CLASSIFIER",
    "BanaLabelConfig",
    "BanaMethod",
    "BanaSegConfig",
    "BoxBaselineMethod",
    "box_problems",
]

BANA_CLASSIFIER = "bana.classifier"
"""The stage that trains the BAP classifier (stage 1)."""

SEG_LOSSES = ("nal", "entropy", "bootstrap", "ce")


@dataclass
class BanaLabelConfig(Settings):
    """Stage 2: Y_crf and Y_ret (:mod:`wsss.refine.bana_labels`)."""

    option_name: ClassVar[str] = "bana_labels"

    bg_threshold: float = BG_THRESHOLD  # BANA configs/stage2.yml MODEL.BG_THRESHOLD (0.99 of the maximum)
    crf: str = "bana"  # BANA configs/stage2.yml MODEL.DCRF [4, 55, 3, 3, 3] (wsss.refine.crf.CRF_PRESETS)

    def validate(self) -> None:
        from wsss.refine.crf import CRF_PRESETS

        check_ranges(self, "bana_labels", at_least={"bg_threshold": 0}, at_most={"bg_threshold": 1})
        if self.crf not in CRF_PRESETS:
            raise ConfigError(f"bana_labels.crf must be one of {', '.join(CRF_PRESETS)}, got {self.crf!r}")


@dataclass
class BanaSegConfig(Settings):
    """Stage 3: what BANA changes in the recipe's ``segmentation`` section (the rest, network,
    schedule and crops, is that section's).

    The cosine classifier's tau is :data:`wsss.models.deeplab.COSINE_SCALE` (20, BANA
    configs/stage3_vgg.yml MODEL.TEMP), which the noise-aware loss reads off the network.
    """

    option_name: ClassVar[str] = "bana_seg"

    classifier: str = "cosine"  # BANA stage3_vgg.py: cosine classifier (supplement Eq. 3); "dot": DeepLab's
    loss: str = "nal"  # BANA main paper Sec. 3.3; entropy / bootstrap: supplement Eqs. 4-8; ce: Y_crf alone
    damping: float = NAL_DAMPING  # gamma = 7, BANA configs/stage3_vgg.yml MODEL.DAMP (nal only)
    unreliable_weight: float = UNRELIABLE_WEIGHT  # lambda = 0.1, BANA MODEL.LAMBDA (not for ce)

    def validate(self) -> None:
        check_ranges(self, "bana_seg", at_least={"damping": 0, "unreliable_weight": 0})
        if self.loss not in SEG_LOSSES:
            raise ConfigError(f"bana_seg.loss must be one of {', '.join(SEG_LOSSES)}, got {self.loss!r}")
        if self.classifier not in ("cosine", "dot"):
            raise ConfigError(f"bana_seg.classifier must be cosine or dot, got {self.classifier!r}")
        if self.loss == "nal" and self.classifier != "cosine":
            raise ConfigError("bana_seg.loss=nal reads its cosines off the cosine classifier: "
                              "set bana_seg.classifier=cosine")

    def loss_options(self) -> dict[str, float]:
        """The options :func:`wsss.segmentation.losses.make_loss` gets for ``loss``."""
        if self.loss == "ce":
            return {}
        options = {"unreliable_weight": float(self.unreliable_weight)}
        if self.loss == "nal":
            options["damping"] = float(self.damping)
        return options


def box_problems(ctx: Context, split: str, use: str, *, need_boxes: bool) -> list[WsssError]:
    """The images of ``split`` whose boxes cannot be read (missing or malformed XML, an unknown
    class, a box empty or outside its image) and, with ``need_boxes``, those with no box at all,
    as at most one line per kind naming the first example and its file (the module docstring
    lists what is refused). Reads image headers only."""
    try:
        dataset = ctx.dataset(split)
    except WsssError:
        return []  # the pipeline reports an unreadable split itself
    broken: list[tuple[str, DataError]] = []
    empty: list[str] = []
    for image_id in dataset.ids:
        try:
            boxes, _ = dataset.boxes(image_id)
        except DataError as exc:
            broken.append((image_id, exc))
            continue
        if need_boxes and len(boxes) == 0:
            empty.append(image_id)
    problems: list[WsssError] = []
    if broken:
        image_id, first = broken[0]
        problems.append(DataError(f"{use} needs the boxes of split {split!r}, but {len(broken)} of its "
                                  f"{len(dataset.ids)} images have none usable; first, {image_id!r}: "
                                  f"{first}"))
    if empty:
        problems.append(DataError(f"image {empty[0]!r} has no box: {use} needs at least one box per image, but "
                                  f"{len(empty)} of the {len(dataset.ids)} images of split {split!r} have none "
                                  "(list the images with boxes in a split file)", dataset.box_file(empty[0])))
    return problems


@register
class BanaMethod(Method):
    name = "bana"
    description = "background-aware pooling and noise-aware loss from boxes (Oh et al., CVPR 2021)"
    sections = {"bana": BapConfig, "bana_labels": BanaLabelConfig, "bana_seg": BanaSegConfig}
    quick = ("bana.steps=50", "bana.milestones=[35]")

    def check_inputs(self, ctx: Context) -> list[Exception]:
        data = ctx.recipe.data
        problems = box_problems(ctx, data.train_split, "BANA's classifier (stage 1)", need_boxes=True)
        if ctx.recipe.until != "seeds" and data.seed_split != data.train_split:
            problems += box_problems(ctx, data.seed_split, "BANA's pseudo labels (stage 2)", need_boxes=True)
        weights = ctx.recipe.bana.weights
        if weights:
            try:
                bap_weights_fit(ctx.recipe.bana)
            except WsssError as exc:
                problems.append(exc)
        return problems

    def pictures(self, ctx: Context) -> dict[str, Path]:
        return {"bana Y_crf": ctx.pseudo_dir(self.name), "bana Y_ret": ctx.pseudo_dir(f"{self.name}_ret")}

    def stages(self, ctx: Context) -> list[Stage]:
        recipe = ctx.recipe
        stages = [bana_classifier_stage(ctx)]
        if recipe.until == "seeds":
            return stages
        crf_dir = ctx.pseudo_dir(self.name)
        stages += [bana_labels_stage(ctx),
                   eval_stage(ctx, self.name, "pseudo", "bana.labels", crf_dir, ctx.eval_split)]
        if recipe.until == "final":
            settings = recipe.bana_seg
            config = recipe.segmentation.replace(classifier=settings.classifier, loss=settings.loss,
                                                 loss_options=settings.loss_options())
            targets = {"target": crf_dir}
            if settings.loss != "ce":
                targets["target_ret"] = ctx.pseudo_dir(f"{self.name}_ret")
            stages += seg_stages(ctx, self.name, targets, ("bana.labels",), config=config)
        return stages


def bap_weights_fit(config: BapConfig) -> tuple[int, int]:
    """Check that ``bana.weights`` would initialise the BAP classifier's backbone, without
    loading it (:func:`wsss.models.weights.check_weights_fit`).

    Returns:
        ``(found, total)``: how many of the backbone's tensors the file holds, of how many.

    Raises:
        DataError: the file is missing or unreadable.
        ConfigError: it is for another network.
    """
    from wsss.models.bap_net import VGG_NAME
    from wsss.models.weights import check_weights_fit

    if not Path(config.weights).is_file():
        raise DataError("weights file named by bana.weights not found (wsss never downloads weights: give a "
                        "local file)", config.weights)
    if config.backbone == VGG_NAME:
        from wsss.models.deeplab import VGG16LargeFOV

        return check_weights_fit(lambda: VGG16LargeFOV(fc_dilation=1), config.weights,
                                 ignore_prefixes=("classifier.",))
    from wsss.models.backbones import create_backbone

    return check_weights_fit(lambda: create_backbone(config.backbone, config.output_stride), config.weights)


def bana_classifier_stage(ctx: Context) -> Stage:
    """Stage 1: the BAP classifier on ``data.train_split``'s boxes (``<workdir>/bap_net.pt``)."""
    recipe = ctx.recipe
    out, checkpoints = ctx.model_path("bap_net"), ctx.workdir / "bap_net"
    settings = ctx.seeded(recipe.bana)

    def run() -> dict[str, Any]:
        from wsss.training.bana import train_bap

        result = train_bap(ctx.dataset(recipe.data.train_split), settings, device=ctx.device, out=out,
                           checkpoint_dir=checkpoints, progress=recipe.runtime.progress, fast_paths=ctx.fast_paths)
        return {"history": result.history}

    def work() -> Work:
        config = recipe.bana
        images = len(ctx.dataset(recipe.data.train_split))
        problem = None
        if images < config.batch_size:
            problem = (f"{images} training images, fewer than one batch of {config.batch_size} (bana.batch_size): "
                       "training would make no update")
        return Work(images, f"{count(config.steps)} updates, each a batch of {config.batch_size} images with "
                            "their boxes (forward + backward)", problem)

    return Stage(BANA_CLASSIFIER, run=run, clear=remover(out, checkpoints), needs=(), main_only=True, work=work,
                 depends_on={"data": [recipe.data.root, recipe.data.train_split],
                             "bana": result_settings(settings), **ctx.fast_paths.dependency})


def bana_labels_stage(ctx: Context) -> Stage:
    """Stage 2: Y_crf (``pseudo/bana``) and Y_ret (``pseudo/bana_ret``) on ``data.seed_split``,
    and the share of their pixels that disagree (``pseudo/bana_labels.json``)."""
    recipe = ctx.recipe
    crf_dir, ret_dir = ctx.pseudo_dir("bana"), ctx.pseudo_dir("bana_ret")
    summary = ctx.workdir / "pseudo" / "bana_labels.json"

    def run() -> dict[str, Any]:
        from wsss.io import write_json
        from wsss.refine.bana_labels import make_bana_labels
        from wsss.runtime import barrier, dist_info_from_env
        from wsss.stores.masks import MaskStore
        from wsss.training.bana import load_bap_net

        dataset = ctx.dataset(recipe.data.seed_split)
        model = load_bap_net(ctx.model_path("bap_net"), map_location=ctx.device).to(ctx.device).eval()
        settings = recipe.bana_labels
        made = make_bana_labels(model, dataset, crf_dir, ret_dir, device=ctx.device, mean=recipe.bana.mean,
                                std=recipe.bana.std, bg_threshold=settings.bg_threshold, crf=settings.crf,
                                scale=recipe.scale, progress=recipe.runtime.progress)
        barrier()  # every process's share written: the disagreement is over the whole split
        if not dist_info_from_env().is_main:
            return made
        crf_store, ret_store = MaskStore(crf_dir), MaskStore(ret_dir)
        differ = pixels = 0
        for image_id in dataset.ids:
            y_crf, y_ret = crf_store.load(image_id), ret_store.load(image_id)
            differ += int((y_crf != y_ret).sum())
            pixels += int(y_crf.size)
        result = {"images": len(dataset.ids), "computed_now": made["images"],
                  "disagreement": differ / pixels if pixels else 0.0}
        write_json(summary, result)
        return result

    def work() -> Work:
        return Work(len(ctx.dataset(recipe.data.seed_split)),
                    f"one forward pass, a dense CRF (preset {recipe.bana_labels.crf}) and a retrieval per image")

    return Stage("bana.labels", run=run, clear=remover(crf_dir, ret_dir, summary), needs=(BANA_CLASSIFIER,), work=work,
                 depends_on={"split": recipe.data.seed_split, "bana_labels": result_settings(recipe.bana_labels),
                             **scale_dependency(ctx)})


@register
class BoxBaselineMethod(Method):
    name = "boxes"
    description = "the plain box baseline: every box filled with its class (smaller boxes on top)"
    sections: ClassVar[dict[str, type]] = {}

    def check_inputs(self, ctx: Context) -> list[Exception]:
        if ctx.recipe.until == "seeds":
            return []
        return box_problems(ctx, ctx.recipe.data.seed_split, "the box baseline", need_boxes=False)

    def pictures(self, ctx: Context) -> dict[str, Path]:
        return {"filled boxes": ctx.pseudo_dir(self.name)}

    def stages(self, ctx: Context) -> list[Stage]:
        recipe = ctx.recipe
        if recipe.until == "seeds":
            return []  # no seeds: the box masks are its pseudo masks
        out = ctx.pseudo_dir(self.name)

        def run() -> dict[str, Any]:
            from wsss.refine.box_masks import make_box_masks

            return make_box_masks(ctx.dataset(recipe.data.seed_split), out, progress=recipe.runtime.progress)

        stages = [Stage(f"{self.name}.pseudo", run=run, clear=remover(out), needs=(),
                        depends_on={"split": recipe.data.seed_split, "fill": "smaller box on top"},
                        work=lambda: Work(len(ctx.dataset(recipe.data.seed_split)), "its boxes filled, per image")),
                  eval_stage(ctx, self.name, "pseudo", f"{self.name}.pseudo", out, ctx.eval_split)]
        if recipe.until == "final":
            stages += seg_stages(ctx, self.name, out, (f"{self.name}.pseudo",))
        return stages
