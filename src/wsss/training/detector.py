"""Training BBAM's detector on boxes: ``DetectorConfig``, ``DetectionDataset``, ``train_detector``.

A torchvision Faster R-CNN with FPN on a registered backbone (:mod:`wsss.models.detector`),
trained on a dataset's boxes (VOC XML, COCO JSON, the generated benchmark's XML) with the sum of
torchvision's four losses (RPN objectness and box regression, RoI classification and box
regression). The loop, checkpoints and exact resume are
:class:`wsss.training.engine.TrainingEngine`'s.

Defaults are BBAM's detector recipe (``configs/pascal_voc/BBAM_VOC_aug_FPN_R101_FasterRCNN.yaml``
and maskrcnn-benchmark's ``config/defaults.py``), commented with the place. Departures:

* Images keep their own size by default (``min_size: null``); the reference trains at a short
  side of 480-800 and tests at 800. ``min_size`` restores a fixed resize.
* Anchors default to torchvision's 32-512 scaled by the data's median short side / 800
  (:func:`wsss.models.rcnn.scaled_anchor_sizes`), so a 128-px benchmark gets 5-80 px anchors.
* Augmentation is a horizontal flip (the reference's only one besides the multi-scale resize).

Example:
    >>> result = train_detector(VOCDataset(root, "train"), DetectorConfig(backbone="resnet18_w16",
    ...                         steps=500, batch_size=8), device="cpu", out="work/detector.pt")
    >>> detector = load_detector("work/detector.pt")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN

from wsss.config import Settings, check_ranges, result_settings, run_only_field, to_dict
from wsss.errors import ConfigError, DataError
from wsss.io import atomic_write
from wsss.models.detector import build_detector, check_detection_boxes, load_detector_weights
from wsss.models.rcnn import ANCHOR_SIZES, scaled_anchor_sizes
from wsss.runtime import FastPaths, resolve_device, seed_everything
from wsss.training.engine import CheckpointSpec, ShuffledLoader, TrainingEngine, bias_groups, poly_sgd, warmup_multistep

log = logging.getLogger(__name__)

__all__ = [
    "DetectionDataset",
    "DetectorConfig",
    "DetectorTrainResult",
    "collate_detection",
    "detector_from_config",
    "load_detector",
    "train_detector",
]

CHECKPOINT_FORMAT = "wsss-detector-checkpoint"
MODEL_FORMAT = "wsss.detector"
LOSS_TERMS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class BoxSource(Protocol):
    """What the trainer reads: a dataset with boxes (``VOCDataset``, ``COCODataset``)."""

    ids: list[str]
    classes: list[str]

    def load_image(self, image_id: str) -> np.ndarray: ...

    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class DetectorConfig(Settings):
    """How to build and train BBAM's detector."""

    option_name: ClassVar[str] = "bbam_detector"

    backbone: str = "resnet101"  # BBAM BBAM_VOC_aug_FPN_R101_FasterRCNN.yaml: R-101-FPN (COCO: R-50-FPN)
    weights: str | None = None  # the reference: MSRA ImageNet R-101; a local torchvision-format file here
    detector_weights: str | None = None  # wsss: a whole torchvision Faster R-CNN state dict to start from
    fpn_channels: int = 256  # maskrcnn-benchmark MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    representation_size: int = 1024  # maskrcnn-benchmark MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM
    rois_per_image: int = 512  # maskrcnn-benchmark MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE (torchvision's too)
    min_size: int | None = None  # wsss: each image at its own size; reference INPUT.MIN_SIZE_TEST 800
    max_size: int | None = None  # only with min_size; None then: 1333 (reference INPUT.MAX_SIZE_TEST)
    anchor_sizes: tuple[int, ...] | None = None  # None: torchvision's 32..512 x (data's short side / 800)
    lr: float = 0.01  # BBAM yaml SOLVER.BASE_LR (batch 16)
    momentum: float = 0.9  # maskrcnn-benchmark SOLVER.MOMENTUM
    weight_decay: float = 1e-4  # maskrcnn-benchmark SOLVER.WEIGHT_DECAY
    steps: int = 18000  # BBAM yaml SOLVER.MAX_ITER
    schedule: str = "step"  # maskrcnn-benchmark WarmupMultiStepLR; "poly" for the engine's poly decay
    milestones: tuple[int, ...] = (12000, 16000)  # BBAM yaml SOLVER.STEPS (x0.1 each)
    warmup_steps: int = 500  # maskrcnn-benchmark SOLVER.WARMUP_ITERS (linear from 1/3)
    warmup_factor: float = 1.0 / 3  # maskrcnn-benchmark SOLVER.WARMUP_FACTOR
    poly_power: float = 0.9  # only with schedule "poly"
    batch_size: int = 16  # BBAM yaml SOLVER.IMS_PER_BATCH
    hflip: bool = True  # maskrcnn-benchmark INPUT.HORIZONTAL_FLIP_PROB_TRAIN 0.5
    seed: int = 0
    checkpoint_every: int | None = run_only_field(None)
    amp: bool = run_only_field(False)

    def validate(self) -> None:
        check_ranges(self, "bbam_detector", positive=("lr",),
                     at_least={"fpn_channels": 1, "representation_size": 1, "rois_per_image": 1, "min_size": 1, "max_size": 1,
                               "momentum": 0, "weight_decay": 0, "steps": 1, "warmup_steps": 0,
                               "warmup_factor": 0, "poly_power": 0, "batch_size": 1, "seed": 0,
                               "checkpoint_every": 1},
                     at_most={"warmup_factor": 1})
        if self.schedule not in ("step", "poly"):
            raise ConfigError(f"bbam_detector.schedule must be 'step' or 'poly', got {self.schedule!r}")
        if self.anchor_sizes is not None and (len(self.anchor_sizes) != len(ANCHOR_SIZES)
                                              or min(self.anchor_sizes) < 1):
            raise ConfigError(f"bbam_detector.anchor_sizes needs {len(ANCHOR_SIZES)} positive sizes "
                              f"(one per FPN level), got {list(self.anchor_sizes)}")
        if self.max_size is not None and self.min_size is None:
            raise ConfigError("bbam_detector.max_size needs min_size (min_size: null keeps each image's size)")


class DetectionDataset(Dataset):
    """Items ``{"id", "image": float (3, H, W) in [0, 1], "boxes": (N, 4), "labels": (N,)}``.

    Boxes are checked (:func:`wsss.models.detector.check_detection_boxes`): an empty box, one
    outside its image or of an unknown class is a :class:`DataError` naming the image. An image
    without boxes is kept (all background for the detector).
    """

    def __init__(self, source: BoxSource, *, hflip: bool = True) -> None:
        self.source, self.hflip = source, hflip
        self.num_classes = len(source.classes)

    def __len__(self) -> int:
        return len(self.source.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.source.ids[index]
        image = self.source.load_image(image_id)
        height, width = image.shape[:2]
        where = self.source.image_path(image_id) if hasattr(self.source, "image_path") else image_id
        boxes, classes = check_detection_boxes(*self.source.boxes(image_id), (height, width), self.num_classes,
                                               where)
        boxes = boxes.copy()
        if self.hflip and bool(torch.rand(()) < 0.5):  # the global torch RNG: the engine replays it on resume
            image = image[:, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return {"id": image_id, "image": tensor, "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(classes)}


def collate_detection(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lists (torchvision's detector takes images of different sizes and pads them itself)."""
    return {"ids": [item["id"] for item in items], "images": [item["image"] for item in items],
            "targets": [{"boxes": item["boxes"], "labels": item["labels"]} for item in items]}


@dataclass
class DetectorTrainResult:
    """The trained detector, the engine's per-update history, and where it was saved."""

    model: FasterRCNN
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def _short_side(source: BoxSource) -> float:
    """The median short side of the source's images (image headers where the source has them)."""
    sides = []
    for image_id in source.ids:
        if hasattr(source, "image_size"):
            height, width = source.image_size(image_id)
        else:
            height, width = source.load_image(image_id).shape[:2]
        sides.append(min(height, width))
    return float(np.median(sides))


def detector_from_config(config: DetectorConfig, num_classes: int, short_side: float | None = None) -> FasterRCNN:
    """The untrained detector of ``config`` (backbone weights and ``detector_weights`` loaded).

    Args:
        config: the settings.
        num_classes: K + 1.
        short_side: the data's typical short side, for the default anchors (``config.min_size``
            when it is set); needed when ``config.anchor_sizes`` is None.
    """
    anchors = config.anchor_sizes
    if anchors is None:
        side = config.min_size if config.min_size is not None else short_side
        if side is None:
            raise ConfigError("bbam_detector.anchor_sizes is null: the data's short side is needed to scale them")
        anchors = scaled_anchor_sizes(side)
    detector = build_detector(config.backbone, num_classes, weights=config.weights,
                              fpn_channels=config.fpn_channels, representation_size=config.representation_size,
                              rois_per_image=config.rois_per_image,
                              min_size=config.min_size, max_size=config.max_size, anchor_sizes=anchors,
                              frozen=config.weights is not None or config.detector_weights is not None)
    if config.detector_weights is not None:
        load_detector_weights(detector, config.detector_weights)
    return detector


def train_detector(
    source: BoxSource,
    config: DetectorConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    fast_paths: FastPaths | None = None,
) -> DetectorTrainResult:
    """Train BBAM's detector on ``source``'s boxes for ``config.steps`` updates.

    Args:
        source: images and boxes (``ids``, ``classes``, ``load_image``, ``boxes``).
        config: the recipe (default: the reference's).
        device: where to train.
        out: the trained detector, written atomically (its build settings, classes and weights);
            read it back with :func:`load_detector`.
        checkpoint_dir: training checkpoints (every ``checkpoint_every`` updates and at the end).
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one.
        progress: a tqdm bar.
        callback: ``callback(iteration, loss)`` after each update.
        fast_paths: memory format and autocast of the training updates (default float32,
            contiguous; :class:`wsss.runtime.FastPaths`).
    """
    config = config or DetectorConfig()
    config.validate()
    device = resolve_device(device)
    fast_paths = fast_paths or FastPaths()
    seed_everything(config.seed)
    classes = list(source.classes)
    short_side = None if config.anchor_sizes is not None or config.min_size is not None else _short_side(source)
    model = fast_paths.prepare(detector_from_config(config, len(classes), short_side).to(device))
    dataset = DetectionDataset(source, hflip=config.hflip)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"the training set has {len(dataset)} images, fewer than one batch of {config.batch_size}")
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_detection, num_workers=0,
                        generator=torch.Generator().manual_seed(config.seed))
    # maskrcnn-benchmark SOLVER.BIAS_LR_FACTOR 2, WEIGHT_DECAY_BIAS 0
    optimizer, poly = poly_sgd(bias_groups(model, 2.0), config.lr, total_steps=config.steps,
                               power=config.poly_power, weight_decay=config.weight_decay,
                               momentum=config.momentum)
    # Linear warm-up, then x0.1 at each milestone (maskrcnn-benchmark's WarmupMultiStepLR) or poly decay.
    scheduler = warmup_multistep(optimizer, config.milestones, config.warmup_steps, config.warmup_factor,
                                 decay=None if config.schedule == "step" else poly.lr_lambdas[0])
    saved = {"classes": classes, "detector": model.wsss_config}
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "detector training checkpoint", every=config.checkpoint_every,
        at_epoch_end=True, metadata={**saved, "config": to_dict(config)}, settings=result_settings(config),
        curve_title=f"Faster R-CNN ({config.backbone}-FPN)")
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=config.steps, steps_per_epoch=len(loader),
                            device=device, amp=config.amp, fast_paths=fast_paths, desc="detector",
                            progress=progress, checkpoint=spec, epoch_keys=("loss", *LOSS_TERMS), callback=callback)
    engine.restore(resume)

    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = [image.to(device) for image in batch["images"]]
        targets = [{k: v.to(device) for k, v in target.items()} for target in batch["targets"]]
        with engine.autocast():
            losses = model(images, targets)
        return sum(losses.values()), {name: float(value.detach()) for name, value in losses.items()}

    engine.fit(ShuffledLoader(loader), step)
    model.eval()
    result = DetectorTrainResult(model=model, history=engine.history)
    if out is not None:
        with atomic_write(out, "wb") as handle:
            torch.save({"format": MODEL_FORMAT, "version": 1, **saved,
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, handle)
        result.checkpoint = Path(out)
    return result


def load_detector(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FasterRCNN:
    """The detector :func:`train_detector` wrote to ``out``, in eval mode (with ``classes`` set).

    Raises:
        DataError: missing, unreadable (read with ``weights_only=True``) or not a detector file.
    """
    from wsss.models.weights import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise DataError("detector not found", path)
    saved = load_torch_file(path, "wsss detector", map_location)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise DataError("not a wsss detector (train_detector's out)", path)
    settings = dict(saved["detector"])
    detector = build_detector(settings.pop("backbone"), settings.pop("num_classes"), **settings)
    detector.load_state_dict(saved["state_dict"])
    detector.classes = list(saved["classes"])
    return detector.eval()
