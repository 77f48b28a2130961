"""Training Mask R-CNN on instance annotations with ignore regions (BBAM's pseudo instances, or
ground truth for the oracle), on the engine.

The model is :func:`wsss.models.mask_rcnn.build_mask_rcnn` (torchvision's Mask R-CNN whose mask
loss leaves ignored pixels out). Instances come from :class:`wsss.stores.instances.InstanceStore`
(``load()`` gives id -> :class:`~wsss.stores.instances.ImageInstances`): each instance's
``instance_ignore`` (BBAM: the band between the 0.2 and 0.85 masks) is ignored in its mask loss,
and so is the image's ``ignore`` region (crowd regions of a COCO file) where the instance's own
mask is not. Images come from a dataset (``load_image``).

Defaults are BBAM's Mask R-CNN recipe on VOC (``configs/pascal_voc/BBAM_VOC_aug_FPN_R101_MaskRCNN
.yaml``, maskrcnn-benchmark's ``config/defaults.py`` where the yaml is silent), each commented.
Departures:

* Sizes: the reference trains at a short side of 416-512 (at most 800) and tests at 512 on VOC;
  here every image keeps its own size by default (``min_size: null``, as BBAM's detector,
  :mod:`wsss.models.rcnn`), so a 128-px benchmark is not blown up to 800 px; ``min_size`` /
  ``max_size`` restore a fixed resize.
* Anchors: ``anchor_sizes`` default to torchvision's (32 ... 512, for an 800-px short side)
  scaled by the data's median short side / 800 (``min_size`` when set; the supplement: 21 ... 332
  on VOC at 512-800), :func:`wsss.models.rcnn.scaled_anchor_sizes`.
* Augmentation: a horizontal flip (maskrcnn-benchmark's default), drawn from the global torch RNG
  so that the engine's resume replays it.
* The mask loss: BBAM's seed-growing loss (``mask_head/loss.py`` L193-256) is replaced by the
  plain BCE over the pixels that are not ignored (:func:`wsss.models.mask_rcnn.ignore_mask_loss`).

Example:
    >>> instances = InstanceStore("work/pseudo/bbam_instances.json").load(dataset.classes)
    >>> result = train_mask_rcnn(dataset, instances, MaskRcnnConfig(backbone="resnet18_w16", steps=500),
    ...                          out="work/mask_rcnn.pt")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import MaskRCNN

from wsss.config import Settings, check_ranges, result_settings, run_only_field, to_dict
from wsss.errors import ConfigError, DataError
from wsss.io import atomic_write
from wsss.models.mask_rcnn import build_mask_rcnn, encode_targets, rebuild_mask_rcnn
from wsss.models.rcnn import ANCHOR_SIZES, scaled_anchor_sizes
from wsss.runtime import FastPaths, resolve_device, seed_everything
from wsss.stores.instances import ImageInstances
from wsss.training.engine import CheckpointSpec, ShuffledLoader, TrainingEngine, bias_groups, poly_sgd, warmup_multistep

log = logging.getLogger(__name__)

__all__ = [
    "InstanceDataset",
    "MaskRcnnConfig",
    "MaskRcnnTrainResult",
    "load_mask_rcnn",
    "train_mask_rcnn",
]

CHECKPOINT_FORMAT = "wsss-mask-rcnn-checkpoint"
MODEL_FORMAT = "wsss.mask_rcnn"


@dataclass
class MaskRcnnConfig(Settings):
    """How to train Mask R-CNN (BBAM's VOC recipe by default)."""

    option_name: ClassVar[str] = "mask_rcnn"

    backbone: str = "resnet101"  # BBAM_VOC_aug_FPN_R101_MaskRCNN.yaml: R-101-FPN
    weights: str | None = None  # the reference: MSRA ImageNet R-101; a local file here
    fpn_channels: int = 256  # maskrcnn-benchmark / torchvision
    representation_size: int = 1024  # FPN2MLPFeatureExtractor MLP_HEAD_DIM
    mask_channels: int = 256  # MaskRCNNFPNFeatureExtractor CONV_LAYERS (256, 256, 256, 256)
    rois_per_image: int = 512  # ROI_HEADS.BATCH_SIZE_PER_IMAGE (a quarter at most positive, the mask head's)
    anchor_sizes: tuple[int, ...] | None = None  # None: torchvision's scaled to the data (module docstring)
    min_size: int | None = None  # None: each image at its own size; BBAM: train 416-512, test 512
    max_size: int | None = None  # only with min_size (None then: 1333); BBAM: 800
    lr: float = 0.008  # BBAM yaml SOLVER.BASE_LR
    bias_lr_factor: float = 2.0  # maskrcnn-benchmark SOLVER.BIAS_LR_FACTOR
    momentum: float = 0.9  # maskrcnn-benchmark SOLVER.MOMENTUM
    weight_decay: float = 1e-4  # maskrcnn-benchmark SOLVER.WEIGHT_DECAY (0 for biases: WEIGHT_DECAY_BIAS)
    steps: int = 20005  # BBAM yaml SOLVER.MAX_ITER (the supplement: 2 x 10^4)
    milestones: tuple[int, ...] = (16000,)  # BBAM yaml SOLVER.STEPS, gamma 0.1
    warmup_steps: int = 500  # maskrcnn-benchmark SOLVER.WARMUP_ITERS (linear)
    warmup_factor: float = 1 / 3  # maskrcnn-benchmark SOLVER.WARMUP_FACTOR
    batch_size: int = 8  # BBAM yaml SOLVER.IMS_PER_BATCH
    hflip: bool = True  # maskrcnn-benchmark INPUT.HORIZONTAL_FLIP_PROB_TRAIN 0.5
    seed: int = 0
    checkpoint_every: int | None = run_only_field(None)
    amp: bool = run_only_field(False)

    def validate(self) -> None:
        check_ranges(self, "mask_rcnn", positive=("lr",),
                     at_least={"fpn_channels": 1, "representation_size": 1, "mask_channels": 1, "rois_per_image": 1,
                               "min_size": 1, "max_size": 1, "bias_lr_factor": 0, "momentum": 0, "weight_decay": 0, "steps": 1,
                               "warmup_steps": 0, "warmup_factor": 0, "batch_size": 1, "seed": 0,
                               "checkpoint_every": 1})
        if self.anchor_sizes is not None and (len(self.anchor_sizes) != len(ANCHOR_SIZES)
                                              or min(self.anchor_sizes) < 1):
            raise ConfigError(f"mask_rcnn.anchor_sizes needs {len(ANCHOR_SIZES)} positive sizes, one per FPN "
                              f"level, got {list(self.anchor_sizes)}")
        if self.max_size is not None and self.min_size is None:
            raise ConfigError("mask_rcnn.max_size needs min_size (min_size: null keeps each image's size)")
        if self.min_size is not None and self.max_size is not None and self.max_size < self.min_size:
            raise ConfigError(f"mask_rcnn.max_size ({self.max_size}) is below min_size ({self.min_size})")


def _ignore_of(instances: ImageInstances) -> np.ndarray | None:
    """Per-instance ignore: its own unsure pixels, and the image's ignore region outside its mask."""
    ignore = instances.instance_ignore
    if instances.ignore is not None:
        shared = instances.ignore[None] & ~instances.masks
        ignore = shared if ignore is None else ignore | shared
    return ignore


class InstanceDataset(Dataset):
    """Items ``(image (3, H, W) float in [0, 1], target)`` for torchvision's Mask R-CNN, the target
    holding ``boxes`` (n, 4) float32, ``labels`` (n,) int64 and ``masks`` (n, H, W) uint8 from
    :func:`wsss.models.mask_rcnn.encode_targets`.

    Raises (on access):
        DataError: naming the image: its instances are for another image size, or a box has no
            width or height.
    """

    def __init__(self, images, instances: Mapping[str, ImageInstances], ids: Sequence[str], *,
                 hflip: bool = True) -> None:
        self.images, self.instances, self.ids, self.hflip = images, instances, list(ids), hflip

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        image = self.images.load_image(image_id)
        found = self.instances[image_id]
        if found.image_size != image.shape[:2]:
            raise DataError(f"instances are for a {found.image_size[1]}x{found.image_size[0]} image but image "
                            f"{image_id!r} is {image.shape[1]}x{image.shape[0]}")
        boxes = found.boxes.copy()
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if empty.any():
            box = boxes[int(np.flatnonzero(empty)[0])]
            raise DataError(f"image {image_id!r}: box ({', '.join(f'{v:g}' for v in box)}) has no width or height")
        masks, ignore = found.masks, _ignore_of(found)
        if self.hflip and bool(torch.rand(()) < 0.5):  # the global torch RNG: the engine replays it on resume
            width = image.shape[1]
            image, masks = image[:, ::-1], masks[:, :, ::-1]
            ignore = None if ignore is None else ignore[:, :, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(found.classes.copy()),
                  "masks": encode_targets(np.ascontiguousarray(masks),
                                          None if ignore is None else np.ascontiguousarray(ignore))}
        return tensor, target


def _as_lists(items):
    return [image for image, _ in items], [target for _, target in items]


@dataclass
class MaskRcnnTrainResult:
    """The trained model, the engine's per-update history, and where it was saved."""

    model: MaskRCNN
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def train_mask_rcnn(
    images,
    instances: Mapping[str, ImageInstances],
    config: MaskRcnnConfig | None = None,
    *,
    classes: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    fast_paths: FastPaths | None = None,
) -> MaskRcnnTrainResult:
    """Train Mask R-CNN for ``config.steps`` updates on ``instances`` (ignore regions left out of
    the mask loss).

    Args:
        images: where the images come from (``load_image(id)``; a dataset).
        instances: image id -> :class:`ImageInstances` (an :class:`~wsss.stores.instances.InstanceSet`).
        config: the recipe (default: BBAM's).
        classes: class names, background first (default: ``instances.classes``).
        ids: the training images (default: every image of ``instances``).
        device: where to train.
        out: the trained model, written atomically (its config, classes and weights).
        checkpoint_dir: training checkpoints (every ``checkpoint_every`` updates and at the end).
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one.
        progress: a tqdm bar.
        callback: ``callback(iteration, loss)`` after each update.
        fast_paths: memory format and autocast of the training updates (default float32,
            contiguous; :class:`wsss.runtime.FastPaths`).

    Raises:
        ConfigError: bad settings, fewer images than one batch, no classes.
        DataError: an image whose instances do not fit it (naming it).
    """
    config = config or MaskRcnnConfig()
    config.validate()
    device = resolve_device(device)
    fast_paths = fast_paths or FastPaths()
    seed_everything(config.seed)
    classes = list(classes if classes is not None else getattr(instances, "classes", []))
    if len(classes) < 2:
        raise ConfigError("Mask R-CNN needs the class names (background first): pass classes=")
    ids = list(instances if ids is None else ids)
    if len(ids) < config.batch_size:
        raise ConfigError(f"the training set has {len(ids)} images, fewer than one batch of {config.batch_size}")
    anchors = config.anchor_sizes
    if anchors is None:
        side = config.min_size if config.min_size is not None else float(
            np.median([min(instances[image_id].image_size) for image_id in ids]))
        anchors = scaled_anchor_sizes(side)
    model = build_mask_rcnn(config.backbone, len(classes), min_size=config.min_size, max_size=config.max_size,
                            weights=config.weights, fpn_channels=config.fpn_channels,
                            representation_size=config.representation_size, mask_channels=config.mask_channels,
                            rois_per_image=config.rois_per_image, anchor_sizes=anchors).to(device)
    fast_paths.prepare(model)
    log.info("Mask R-CNN on %s: images %s, anchors %s", config.backbone,
             "at their own size" if config.min_size is None else f"at {config.min_size}-{model.transform.max_size} px",
             list(anchors))
    dataset = InstanceDataset(images, instances, ids, hflip=config.hflip)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, collate_fn=_as_lists,
                        num_workers=0, generator=torch.Generator().manual_seed(config.seed))
    optimizer, _ = poly_sgd(bias_groups(model, config.bias_lr_factor), config.lr, total_steps=config.steps,
                            weight_decay=config.weight_decay, momentum=config.momentum)
    scheduler = warmup_multistep(optimizer, config.milestones, config.warmup_steps, config.warmup_factor)
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "Mask R-CNN training checkpoint", every=config.checkpoint_every,
        at_epoch_end=True, metadata={"classes": classes, "config": to_dict(config)},
        settings={**result_settings(config), "ids": ids}, curve_title=f"Mask R-CNN ({config.backbone})")
    terms = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=config.steps, steps_per_epoch=len(loader),
                            device=device, amp=config.amp, fast_paths=fast_paths, desc="mask rcnn",
                            progress=progress, checkpoint=spec, epoch_keys=("loss", *terms), callback=callback)
    engine.restore(resume)

    def step(batch) -> tuple[torch.Tensor, dict[str, float]]:
        batch_images, targets = batch
        batch_images = [image.to(device) for image in batch_images]
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        with engine.autocast():
            losses = model(batch_images, targets)
        return sum(losses.values()), {name: float(value.detach()) for name, value in losses.items()}

    engine.fit(ShuffledLoader(loader), step)
    result = MaskRcnnTrainResult(model=model, history=engine.history)
    if out is not None:
        with atomic_write(out, "wb") as handle:
            torch.save({"format": MODEL_FORMAT, "version": 1, "config": model.wsss_config, "classes": classes,
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, handle)
        result.checkpoint = Path(out)
    return result


def load_mask_rcnn(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[MaskRCNN, list[str]]:
    """The model :func:`train_mask_rcnn` wrote to ``out``, and its class names.

    Raises:
        DataError: missing, unreadable or not a wsss Mask R-CNN file (naming it).
    """
    from wsss.models.weights import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise DataError("Mask R-CNN model not found", path)
    saved = load_torch_file(path, "wsss Mask R-CNN model", map_location)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise DataError("not a wsss Mask R-CNN model (train_mask_rcnn's out)", path)
    model = rebuild_mask_rcnn(saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model, list(saved["classes"])
