"""BANA stage 1: training the BAP classifier on boxes (``BapConfig``, ``BoxDataset``, ``train_bap``).

One update: the batch's images through :class:`wsss.models.bap_net.BapNet`, background-aware
pooling of every box, then :func:`wsss.models.bap_net.bap_loss`: cross-entropy of each box's
2 x 2 foreground prototypes against its class and of each valid background cell against 0
(BANA ``stage1.py`` L104-110). The loop, checkpoints and exact resume are
:class:`wsss.training.engine.TrainingEngine`'s.

Defaults are the reference's (``configs/stage1.yml``, ``stage1.py``) where it has one, commented
with the place. Departures:

* Augmentation here is a horizontal flip only (the reference also rescales 0.5-1.5, crops 321
  and jitters colour, ``stage1.py`` L62-68). Images of a batch are zero-padded at the bottom and
  right to the largest one; the padding is *not* definite background (as the reference pads its
  crops' background mask with 0).
* ``pooling: gap`` trains the supplement's GAP baseline (Sec. 2, Table 2): the reference's GAP
  fallback for every image (:mod:`wsss.models.bap_net`, step 5).
* The learning-rate schedule is the reference's step decay (x0.1 at ``milestones``) by default,
  or the engine's poly decay with ``schedule: poly``.

Example:
    >>> result = train_bap(VOCDataset(root, "train"), BapConfig(backbone="resnet18_w16", steps=500),
    ...                    device="cpu", out="work/bap_net.pt")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from wsss.config import Settings, check_ranges, result_settings, run_only_field, to_dict
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, to_chw_tensor
from wsss.errors import ConfigError
from wsss.io import atomic_write
from wsss.models.bap_net import POOLINGS, BapNet, background_mask, bap_loss, check_boxes
from wsss.runtime import FastPaths, resolve_device, seed_everything
from wsss.training.engine import CheckpointSpec, ShuffledLoader, TrainingEngine, poly_sgd

log = logging.getLogger(__name__)

__all__ = ["BapConfig", "BapTrainResult", "BoxDataset", "BoxSource", "collate_boxes", "load_bap_net", "train_bap"]

CHECKPOINT_FORMAT = "wsss-bap-checkpoint"
MODEL_FORMAT = "wsss.bap_net"


class BoxSource(Protocol):
    """What the trainer reads: a dataset with boxes (``VOCDataset``, ``COCODataset``)."""

    ids: list[str]
    classes: list[str]

    def load_image(self, image_id: str) -> np.ndarray: ...

    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class BapConfig(Settings):
    """How to train the BAP classifier."""

    option_name: ClassVar[str] = "bana"

    backbone: str = "vgg16_largefov"  # BANA models/ClsNet.py L13: VGG16(dilation=1), 1024-d, stride 8
    output_stride: int | None = None  # registered backbones only; None: the backbone's default
    weights: str | None = None  # BANA: weights/vgg_caffe.pth (ImageNet); a local file here
    grid_size: int = 4  # BANA configs/stage1.yml MODEL.GRID_SIZE
    cells: tuple[int, int] = (2, 2)  # BANA configs/stage1.yml MODEL.ROI_SIZE
    box_samples: int = 16  # ours: see wsss.models.bap_net (Sampling)
    min_background: float = 0.125  # BANA stage1.py L103
    pooling: str = "bap"  # BANA main paper; "gap": GAP inside each box, the supplement's Sec. 2 / Table 2 baseline
    lr: float = 1e-3  # BANA configs/stage1.yml SOLVER.LR
    momentum: float = 0.9  # BANA configs/stage1.yml SOLVER.MOMENTUM
    weight_decay: float = 5e-4  # BANA configs/stage1.yml SOLVER.WEIGHT_DECAY
    steps: int = 8000  # BANA configs/stage1.yml SOLVER.MAX_ITER
    schedule: str = "step"  # BANA stage1.py: MultiStepLR(gamma 0.1); "poly" for the engine's poly decay
    milestones: tuple[int, ...] = (5000,)  # BANA configs/stage1.yml SOLVER.MILESTONES
    poly_power: float = 0.9  # only with schedule "poly"
    batch_size: int = 20  # BANA configs/stage1.yml DATA.BATCH_SIZE
    hflip: bool = True  # BANA stage1.py RandomHFlip(0.5)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # BANA: caffe BGR mean; ImageNet RGB here
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 0
    checkpoint_every: int | None = run_only_field(None)
    amp: bool = run_only_field(False)

    def validate(self) -> None:
        check_ranges(self, "bana", positive=("lr",),
                     at_least={"grid_size": 1, "box_samples": 1, "min_background": 0, "momentum": 0,
                               "weight_decay": 0, "steps": 1, "batch_size": 1, "poly_power": 0, "seed": 0,
                               "checkpoint_every": 1})
        if self.pooling not in POOLINGS:
            raise ConfigError(f"bana.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.schedule not in ("step", "poly"):
            raise ConfigError(f"bana.schedule must be 'step' or 'poly', got {self.schedule!r}")
        if any(self.box_samples % int(c) for c in self.cells):
            raise ConfigError(f"bana.box_samples ({self.box_samples}) must be a multiple of each of "
                              f"cells {list(self.cells)}")


class BoxDataset(Dataset):
    """Items ``{image (3, H, W), boxes (N, 4), classes (N,), background (H, W) bool, id}``.

    Boxes are checked (:func:`wsss.models.bap_net.check_boxes`): an image without boxes, an empty
    box, one outside the image or of an unknown class is a :class:`DataError` naming the image.
    """

    def __init__(self, source: BoxSource, *, hflip: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.source, self.hflip, self.mean, self.std = source, hflip, mean, std
        self.num_classes = len(source.classes)

    def __len__(self) -> int:
        return len(self.source.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.source.ids[index]
        image = self.source.load_image(image_id)
        boxes, classes = self.source.boxes(image_id)
        height, width = image.shape[:2]
        check_boxes(boxes, classes, (height, width), self.num_classes, where=image_id)
        boxes = np.asarray(boxes, dtype=np.float32).copy()
        if self.hflip and bool(torch.rand(()) < 0.5):  # the global torch RNG: the engine replays it on resume
            image = image[:, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        boxes_t = torch.from_numpy(boxes)
        background = background_mask(boxes_t, torch.zeros(len(boxes_t), dtype=torch.long), 1, height, width)[0]
        return {"id": image_id, "image": to_chw_tensor(normalize(image, self.mean, self.std)),
                "boxes": boxes_t, "classes": torch.as_tensor(classes, dtype=torch.long), "background": background}


def collate_boxes(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad images to the batch's largest size (bottom/right; padding is not background) and
    concatenate the boxes with ``box_image``, the index of each box's image."""
    height = max(item["image"].shape[1] for item in items)
    width = max(item["image"].shape[2] for item in items)
    images = torch.zeros(len(items), 3, height, width)
    background = torch.zeros(len(items), height, width, dtype=torch.bool)
    for index, item in enumerate(items):
        _, h, w = item["image"].shape
        images[index, :, :h, :w] = item["image"]
        background[index, :h, :w] = item["background"]
    return {
        "ids": [item["id"] for item in items],
        "images": images,
        "background": background,
        "boxes": torch.cat([item["boxes"] for item in items]),
        "classes": torch.cat([item["classes"] for item in items]),
        "box_image": torch.cat([torch.full((len(item["boxes"]),), i, dtype=torch.long)
                                for i, item in enumerate(items)]),
    }


@dataclass
class BapTrainResult:
    """The trained network, the engine's per-update history, and where it was saved."""

    model: BapNet
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def train_bap(
    source: BoxSource,
    config: BapConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    fast_paths: FastPaths | None = None,
) -> BapTrainResult:
    """Train a :class:`BapNet` on ``source``'s boxes for ``config.steps`` updates.

    Args:
        source: images and boxes (``ids``, ``classes``, ``load_image``, ``boxes``).
        config: the recipe (default: the reference's).
        device: where to train.
        out: the trained network, written atomically (config, classes and weights).
        checkpoint_dir: training checkpoints (every ``checkpoint_every`` updates and at the end).
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one.
        progress: a tqdm bar.
        callback: ``callback(iteration, loss)`` after each update.
        fast_paths: memory format and autocast of the training updates (default float32,
            contiguous; :class:`wsss.runtime.FastPaths`).
    """
    config = config or BapConfig()
    config.validate()
    device = resolve_device(device)
    fast_paths = fast_paths or FastPaths()
    seed_everything(config.seed)
    classes = list(source.classes)
    model = BapNet(config.backbone, len(classes), output_stride=config.output_stride, weights=config.weights,
                   grid_size=config.grid_size, cells=config.cells, box_samples=config.box_samples,
                   min_background=config.min_background, pooling=config.pooling, classes=classes).to(device)
    fast_paths.prepare(model)
    dataset = BoxDataset(source, hflip=config.hflip, mean=config.mean, std=config.std)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"the training set has {len(dataset)} images, fewer than one batch of {config.batch_size}")
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,  # BANA: drop_last
                        collate_fn=collate_boxes, num_workers=0,
                        generator=torch.Generator().manual_seed(config.seed))
    optimizer, scheduler = poly_sgd(model.parameter_groups(), config.lr, total_steps=config.steps,
                                    power=config.poly_power, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    if config.schedule == "step":
        milestones = tuple(int(m) for m in config.milestones)
        scheduler = LambdaLR(optimizer, lambda step: 0.1 ** sum(step >= m for m in milestones))
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "BAP training checkpoint", every=config.checkpoint_every,
        at_epoch_end=True, metadata={"classes": classes, "config": to_dict(config)},
        settings=result_settings(config), curve_title=f"BAP classifier ({config.backbone})")
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=config.steps, steps_per_epoch=len(loader),
                            device=device, amp=config.amp, fast_paths=fast_paths, desc="bap",
                            progress=progress, checkpoint=spec, epoch_keys=("loss", "bap_share"), callback=callback)
    engine.restore(resume)

    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        with engine.autocast():
            output = model(fast_paths.inputs(batch["images"].to(device)), batch["boxes"].to(device),
                           batch["box_image"].to(device),
                           batch["background"].to(device))
        loss = bap_loss(output, batch["classes"].to(device))
        return loss, {"bap_share": float(output.uses_bap.float().mean())}

    engine.fit(ShuffledLoader(loader), step)
    result = BapTrainResult(model=model, history=engine.history)
    if out is not None:
        with atomic_write(out, "wb") as handle:
            torch.save({"format": MODEL_FORMAT, "version": 1, "config": model.config, "classes": classes,
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, handle)
        result.checkpoint = Path(out)
    return result


def load_bap_net(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BapNet:
    """The network :func:`train_bap` wrote to ``out``.

    Raises:
        DataError: missing, unreadable or not a BAP-network file (naming it).
    """
    from wsss.errors import DataError
    from wsss.models.weights import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise DataError("BAP network not found", path)
    saved = load_torch_file(path, "wsss BAP network", map_location)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise DataError("not a wsss BAP network (train_bap's out)", path)
    config = dict(saved["config"])
    model = BapNet(config.pop("backbone"), config.pop("num_classes"), classes=saved.get("classes"), **config)
    model.load_state_dict(saved["state_dict"])
    return model
