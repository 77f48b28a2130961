"""Training IRN on IR labels and writing its boundary maps (IRN ``step/train_irn.py``).

**Supervision.** An IR label (:mod:`wsss.refine.ir_labels`; 0 background, 1..K classes, 255
unsure) is downsampled to stride 4 (nearest) and turned into labels of pixel pairs by the path
index at radius 10 (:mod:`wsss.models.path_index`): a pair is *bg-pos* when both pixels are
background, *fg-pos* when both hold the same class, *neg* when their labels differ, and is ignored
when either is 255.

**Losses** (IRN ``AffinityDisplacementLoss`` and ``train_irn.py``), with the affinity
``a_ij = 1 - max_{k on the path i->j} sigmoid(edge_k)`` and displacements D (dy, dx):

* ``L_bg = mean_bg-pos -log(a + 1e-5)``, ``L_fg = mean_fg-pos -log(a + 1e-5)``,
  ``L_neg = mean_neg -log(1 + 1e-5 - a)``;
* ``L_dp_fg = mean_fg-pos |D_i - D_j - delta_ij|`` and ``L_dp_bg = mean_bg-pos |D_i - D_j|``,
  each averaged over the two components as well (delta_ij = (dy, dx) from i to j);
* ``total = (L_bg / 2 + L_fg / 2 + L_neg) / 2 + (L_dp_fg + L_dp_bg) / 2``.

Means are ``sum / (count + 1e-5)`` over the batch, as the reference.

**Recipe.** IRN: ImageNet ResNet-50 frozen, random rescale 0.5-1.5, flip, 512 crop (image padded
with the mean colour, label with 255), batch 32, 3 epochs, SGD lr 0.1 (displacement branch 10x),
weight decay 1e-4, poly decay. After training the mean displacement over images is stored in the
model's ``mean_shift`` (IRN measures it on ``infer_list`` 512-px crops; here on the training
images at their own size).

**Backbone.** IRN starts from ImageNet weights (``IrnConfig.weights``). On the generated
benchmark there is no ImageNet: ``init_backbone_from`` copies the backbone of our trained CAM
classifier (its architecture, output stride and dilation are taken from that checkpoint), which
is then frozen like IRN's.

Example:
    >>> result = train_irn(dataset, "work/ir_label", irn_recipe("synth"), device=torch.device("cpu"),
    ...                    out="work/irn.pt", init_backbone_from="work/classifier.pt")
    >>> make_edges(result.model, dataset, "work/edges", device=torch.device("cpu"))
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.config import Settings, check_ranges, recipe_section, result_settings, run_only_field, to_dict
from wsss.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, normalize, random_crop_arrays, resize_image,
                                  scaled_size, to_chw_tensor)
from wsss.errors import ConfigError, DataError
from wsss.io import IGNORE_INDEX, image_size
from wsss.models.irn import IRNet, edge_and_displacement
from wsss.models.path_index import PathIndex, max_along_paths, pair_indices
from wsss.runtime import DistInfo, FastPaths, eval_mode, resolve_device, run_per_image, seed_everything
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import strided_size
from wsss.stores.masks import MaskStore
from wsss.training.engine import CheckpointSpec, ShuffledLoader, TrainingEngine, poly_sgd, sequential_mean
from wsss.training.schedule import check_momentum

log = logging.getLogger(__name__)

__all__ = [
    "AffinityDisplacementLoss",
    "IrnConfig",
    "IrnLosses",
    "IrnTrainResult",
    "IrnTrainingDataset",
    "build_irn",
    "irn_recipe",
    "make_edges",
    "pair_labels",
    "synth_recipe",
    "train_irn",
]

LABEL_STRIDE = 4  # IRN: labels rescaled by 0.25 to the network's stride-4 outputs
EPS = 1e-5  # IRN train_irn.py / resnet50_irn.py


@dataclass
class IrnConfig(Settings):
    """How to train IRN. Defaults are IRN's (``run_sample.py``, ``step/train_irn.py``)."""

    option_name: ClassVar[str] = "IRN"

    backbone: str = "resnet50"  # IRN net/resnet50_irn.py
    output_stride: int | None = 16  # IRN resnet50(strides=[2, 2, 2, 1])
    dilated: bool | None = False  # IRN: layer4 stride 1 without dilation
    weights: str | None = None  # IRN: ImageNet resnet50 (a local torchvision-format file here)
    head_width: float | None = None  # None: stem width / 64 (1 for ResNet-50, IRN's widths)
    radius: int = 10  # IRN train_irn.py PathIndex(radius=10)
    lr: float = 0.1  # IRN --irn_learning_rate (edge branch)
    displacement_lr_mult: float = 10.0  # IRN train_irn.py: 10 * lr for the displacement branch
    weight_decay: float = 1e-4  # IRN --irn_weight_decay
    # IRN's PolyOptimizer puts the weight decay in SGD's momentum slot: momentum 1e-4, the
    # published computation. False: SGD with `momentum` and `nesterov` below.
    reference_momentum_quirk: bool = True
    momentum: float = 0.0  # used when reference_momentum_quirk is false (IRN's evident intent: none)
    nesterov: bool = False
    poly_power: float = 0.9  # IRN PolyOptimizer
    batch_size: int = 32  # IRN --irn_batch_size
    epochs: int = 3  # IRN --irn_num_epoches
    crop_size: int = 512  # IRN --irn_crop_size; image padded with 0 (normalised), label with 255
    rescale: tuple[float, float] | None = (0.5, 1.5)  # IRN train_irn.py rescale=(0.5, 1.5)
    hflip: bool = True  # IRN hor_flip=True
    mean: tuple[float, float, float] = IMAGENET_MEAN  # IRN TorchvisionNormalize
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int | None = None  # IRN: cpu_count // 2 (None); 0 loads in the main process
    seed: int = 0  # IRN sets none
    mean_shift_images: int | None = None  # images measured for the mean displacement; None: all
    edge_scales: tuple[float, ...] = (1.0,)  # IRN EdgeDisplacement: one scale
    edge_flip: bool = True  # IRN: edge logits averaged with the flipped image's
    # IRN EdgeDisplacement pads every input to 512 x 512 (the published computation; it crops larger
    # images, which wsss does not: they run whole). None: no pad (docs/quirks.md)
    edge_pad_to: int | None = 512
    amp: bool = run_only_field(False)  # wsss: mixed precision, on CUDA only (IRN trains in float32)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting out of range (NaN and infinity included)."""
        check_ranges(self, "irn", positive=("lr", "head_width"), ranges=("rescale",),
                     at_least={"batch_size": 1, "epochs": 1, "crop_size": 1, "radius": 1,
                               "displacement_lr_mult": 0, "weight_decay": 0, "momentum": 0, "poly_power": 0,
                               "num_workers": 0, "seed": 0, "mean_shift_images": 1, "edge_pad_to": 1})
        if not self.edge_scales or any(not s > 0 for s in self.edge_scales):
            raise ConfigError(f"irn.edge_scales must be positive, got {list(self.edge_scales)}")
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"irn.std must be positive, got {list(self.std)}")
        check_momentum(self, "irn")


def irn_recipe_default() -> IrnConfig:
    """IRN's recipe (PASCAL VOC, ImageNet-pretrained ResNet-50 given as ``weights``)."""
    return IrnConfig()


def synth_recipe() -> IrnConfig:
    """The generated benchmark: 128 px images, the CAM classifier's small backbone, on CPU.

    The backbone comes from the trained classifier (``train_irn(init_backbone_from=...)``), so
    ``backbone``/``output_stride``/``dilated`` here only matter without one. The images are
    128 px, so the crop is the image size (labels 32 x 32 at stride 4) and batches are small to
    get enough updates from about a thousand images.

    Measured on a 160-image set (a briefly trained classifier; IR labels at IRN's thresholds
    covering 93% of the pixels at 78% precision): after 200 updates the mean boundary
    probability is 0.32 on ground-truth class boundaries against 0.16 elsewhere (momentum 0,
    IRN's: 0.37 against 0.33); about 0.2 s per update on two idle CPU threads. The
    displacement loss hardly moves in that budget (it only serves instance masks).

    The values are the ``irn`` section of the packaged ``synth/demo`` recipe (one place for them).
    """
    return recipe_section("synth/demo", "irn", IrnConfig)


RECIPES = {"irn": irn_recipe_default, "synth": synth_recipe}


def irn_recipe(name: str) -> IrnConfig:
    """A named recipe (``irn`` or ``synth``)."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ConfigError(f"unknown IRN recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None


# --------------------------------------------------------------------------------------------
# Pair labels and losses


def pair_labels(labels: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bg-pos, fg-pos and neg indicators of the pixel pairs of ``index`` (IRN ``GetAffinityLabel...``).

    Args:
        labels: (B, h, w) integer labels at stride 4 (0 background, 1..K, 255 ignored).
        index: the path index.

    Returns:
        Three float32 tensors (B, D, h', w') in the grid of :func:`~wsss.models.path_index.
        max_along_paths`: both background; same foreground class; different labels. Pairs
        touching 255 are 0 in all three.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, h, w), got shape {tuple(labels.shape)}")
    height, width = labels.shape[-2:]
    source, destination = pair_indices(height, width, index, device=labels.device)
    flat = labels.reshape(labels.shape[0], -1).long()
    from_label = flat[:, source]
    to_label = flat[:, destination]
    valid = (from_label != IGNORE_INDEX) & (to_label != IGNORE_INDEX)
    same = from_label == to_label
    bg_pos = valid & same & (from_label == 0)
    fg_pos = valid & same & (from_label > 0)
    neg = valid & ~same
    return bg_pos.float(), fg_pos.float(), neg.float()


@dataclass
class IrnLosses:
    """The loss terms of one batch (scalars) and their IRN-weighted total."""

    bg_pos: torch.Tensor
    fg_pos: torch.Tensor
    neg: torch.Tensor
    dp_fg: torch.Tensor
    dp_bg: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """``(bg_pos / 2 + fg_pos / 2 + neg) / 2 + (dp_fg + dp_bg) / 2`` (IRN train_irn.py)."""
        return (self.bg_pos / 2 + self.fg_pos / 2 + self.neg) / 2 + (self.dp_fg + self.dp_bg) / 2

    def as_dict(self) -> dict[str, float]:
        terms = {f.name: float(getattr(self, f.name).detach()) for f in dataclasses.fields(self)}
        terms["total"] = float(self.total.detach())
        return terms


class AffinityDisplacementLoss:
    """IRN's affinity and displacement losses for a path index (pair indices cached per size).

    Args:
        radius: the path-index radius (IRN: 10).
    """

    def __init__(self, radius: int = 10) -> None:
        self.index = PathIndex(radius)
        self._pairs: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _pair_indices(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (height, width, str(device))
        if key not in self._pairs:
            self._pairs[key] = pair_indices(height, width, self.index, device=device)
        return self._pairs[key]

    def affinity(self, edge_logits: torch.Tensor) -> torch.Tensor:
        """``1 - max sigmoid(edge)`` along each path: (B, D, h', w') from logits (B, 1, h, w)."""
        return 1.0 - max_along_paths(torch.sigmoid(edge_logits[:, 0]), self.index)

    def pair_displacement(self, displacement: torch.Tensor) -> torch.Tensor:
        """``D_source - D_destination`` for every pair: (B, 2, D, h', w')."""
        height, width = displacement.shape[-2:]
        source, destination = self._pair_indices(height, width, displacement.device)
        flat = displacement.flatten(2)
        return flat[:, :, source] - flat[:, :, destination]

    def __call__(self, edge_logits: torch.Tensor, displacement: torch.Tensor, labels: torch.Tensor) -> IrnLosses:
        """The loss terms for network outputs and stride-4 labels (B, h, w) of the same size."""
        if edge_logits.shape[-2:] != labels.shape[-2:] or displacement.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"outputs {tuple(edge_logits.shape[-2:])} / {tuple(displacement.shape[-2:])} and labels "
                f"{tuple(labels.shape[-2:])} differ in size"
            )
        bg_pos, fg_pos, neg = pair_labels(labels, self.index)
        affinity = self.affinity(edge_logits)
        pos_loss = -torch.log(affinity + EPS)
        neg_loss = -torch.log(1.0 + EPS - affinity)
        pair_disp = self.pair_displacement(displacement)
        offsets = torch.as_tensor(self.index.offsets.T, dtype=pair_disp.dtype, device=pair_disp.device)
        dp_fg = (pair_disp - offsets.view(1, 2, -1, 1, 1)).abs()
        dp_bg = pair_disp.abs()
        fg_weight, bg_weight = fg_pos.unsqueeze(1), bg_pos.unsqueeze(1)
        return IrnLosses(
            bg_pos=(bg_pos * pos_loss).sum() / (bg_pos.sum() + EPS),
            fg_pos=(fg_pos * pos_loss).sum() / (fg_pos.sum() + EPS),
            neg=(neg * neg_loss).sum() / (neg.sum() + EPS),
            dp_fg=(dp_fg * fg_weight).sum() / (2 * fg_pos.sum() + EPS),
            dp_bg=(dp_bg * bg_weight).sum() / (2 * bg_pos.sum() + EPS),
        )


# --------------------------------------------------------------------------------------------
# Data


def downsample_label(label: np.ndarray, stride: int = LABEL_STRIDE) -> np.ndarray:
    """Nearest-neighbour (PIL) resize of a label map by ``1 / stride`` (IRN ``pil_rescale(.., 0)``)."""
    height, width = label.shape
    size = scaled_size(height, width, 1.0 / stride)
    return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


class IrnTrainingDataset(Dataset):
    """Augmented (image, stride-4 IR label) pairs for IRN training.

    Items are dicts ``{"id", "image": float32 (3, S, S), "label": int64 (S/4, S/4)}``.

    Args:
        source: ``ids``, ``load_image`` (and optionally ``num_classes``, ``image_path``).
        label_dir: folder of ``<id>.png`` IR labels.
        config: crop, rescale, flip and normalisation.
        ids: subset of ``source.ids``.
    """

    def __init__(self, source: Any, label_dir: str | os.PathLike, config: IrnConfig,
                 ids: Sequence[str] | None = None) -> None:
        self.source = source
        self.label_dir = Path(label_dir)
        self.labels = MaskStore(self.label_dir)
        self.config = config
        self.ids = list(source.ids if ids is None else ids)
        self.num_classes = getattr(source, "num_classes", None)

    def label_path(self, image_id: str) -> Path:
        return self.labels.path(image_id)

    def check(self) -> None:
        """Every label exists and has its image's size (reads only file headers).

        Raises:
            DataError: naming the first missing or mis-sized label file.
        """
        if not self.label_dir.is_dir():
            raise DataError("IR-label folder not found", self.label_dir)
        for image_id in self.ids:
            path = self.label_path(image_id)
            if not path.is_file():
                raise DataError("IR label not found (run the IR-label stage first)", path)
            if hasattr(self.source, "image_size"):
                expected = tuple(self.source.image_size(image_id))
            elif hasattr(self.source, "image_path"):
                expected = image_size(self.source.image_path(image_id))
            else:
                continue
            found = image_size(path)
            if found != expected:
                raise DataError(
                    f"IR label is {found[1]}x{found[0]} (WxH) but its image is {expected[1]}x{expected[0]}", path
                )

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The image and its IR label, checked against each other (size; values 0..K or 255)."""
        image = self.source.load_image(image_id)
        return image, self.labels.load(image_id, image.shape[:2], self.num_classes)

    def transform(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
        """IRN's augmentation: rescale, flip, normalise, crop; then the label to stride 4."""
        config = self.config
        if config.rescale is not None:
            low, high = config.rescale
            scale = low + rng.random() * (high - low)
            size = scaled_size(*label.shape, scale)
            image = resize_image(image, size)  # bicubic, IRN order 3
            label = np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))
        if config.hflip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        array = normalize(np.ascontiguousarray(image), config.mean, config.std)
        # IRN random_crop: one window for both, padded 0 / 255 where smaller
        array, label = random_crop_arrays([array, np.ascontiguousarray(label)], [0.0, IGNORE_INDEX],
                                          config.crop_size, rng)
        return array, downsample_label(label)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: int) -> dict[str, Any]:
        image_id = self.ids[item]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        image, label = self.transform(*self.load(image_id), rng)
        return {"id": image_id, "image": to_chw_tensor(image),
                "label": torch.from_numpy(label.astype(np.int64))}


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class IrnTrainResult:
    """What :func:`train_irn` returns.

    Attributes:
        model: the trained network (eval mode, on ``device``), with its mean shift measured.
        history: one dict per epoch: ``epoch``, ``step``, mean loss terms, ``lr``, ``seconds``.
        seconds: training time (mean-shift measurement excluded).
        checkpoint: where the model was saved, if anywhere.
    """

    model: IRNet
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None


def build_irn(config: IrnConfig, init_backbone_from: str | os.PathLike | None = None) -> IRNet:
    """The untrained network of ``config``; with a classifier checkpoint, its backbone.

    With ``init_backbone_from`` the backbone architecture (name, output stride, dilation) is the
    checkpoint's; ``config.backbone`` must name the same backbone.

    Raises:
        ConfigError: the checkpoint's backbone differs from ``config.backbone``.
        DataError: the checkpoint is missing or not a CAM classifier.
    """
    if init_backbone_from is None:
        return IRNet(config.backbone, output_stride=config.output_stride, dilated=config.dilated,
                     weights=config.weights, head_width=config.head_width)
    from wsss.models.cam_net import read_checkpoint

    classifier = read_checkpoint(init_backbone_from)["config"]
    if classifier["backbone"] != config.backbone:
        raise ConfigError(
            f"the classifier uses backbone {classifier['backbone']!r} but the IRN config says "
            f"{config.backbone!r}", init_backbone_from,
        )
    model = IRNet(classifier["backbone"], output_stride=int(classifier["output_stride"]),
                  dilated=classifier.get("dilated"), head_width=config.head_width)
    model.load_backbone_from_classifier(init_backbone_from)
    log.info("IRN backbone initialised from the classifier %s", init_backbone_from)
    return model


@torch.no_grad()
def measure_mean_displacement(model: IRNet, source: Any, ids: Sequence[str], *, device: torch.device,
                              config: IrnConfig, progress: bool = False) -> torch.Tensor:
    """Mean (dy, dx) of the raw displacement over ``ids`` (IRN stores it in ``mean_shift``)."""
    saved = model.mean_shift.running_mean.clone()
    model.mean_shift.running_mean.zero_()
    try:
        with eval_mode(model):
            means = []
            for image_id in tqdm(ids, desc="mean shift", disable=not progress, leave=False):
                tensor = to_chw_tensor(normalize(source.load_image(image_id), config.mean, config.std))
                _, displacement = model(tensor[None].to(device))
                means.append(displacement.float().mean(dim=(0, 2, 3)))
            return torch.stack(means).mean(0) if means else torch.zeros(2, device=device)
    finally:
        model.mean_shift.running_mean.copy_(saved)


CHECKPOINT_FORMAT = "wsss-irn-checkpoint"
IRN_TERMS = ("bg_pos", "fg_pos", "neg", "dp_fg", "dp_bg", "total")  # IrnLosses.as_dict(), per epoch


def train_irn(
    dataset: Any,
    ir_label_dir: str | os.PathLike,
    config: IrnConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    init_backbone_from: str | os.PathLike | None = None,
    progress: bool = True,
    seed: int | None = None,
    max_steps: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[int, float], None] | None = None,
    fast_paths: FastPaths | None = None,
) -> IrnTrainResult:
    """Train IRN's boundary and displacement branches on IR labels.

    Args:
        dataset: training images (``ids``, ``load_image``; ``num_classes`` and ``image_size`` or
            ``image_path`` for checks).
        ir_label_dir: folder of ``<id>.png`` IR labels (:func:`wsss.refine.ir_labels.make_ir_labels`).
        config: the recipe (default: IRN's).
        device: where to train.
        out: checkpoint path, written atomically at the end.
        init_backbone_from: a CAM-classifier checkpoint whose backbone IRN uses (the benchmark's
            stand-in for IRN's ImageNet backbone); ``None`` uses ``config.weights``.
        progress: show tqdm bars.
        seed: overrides ``config.seed``.
        max_steps: stop after this many updates (the schedule still spans all epochs); for tests.
        checkpoint_dir: a folder for a training checkpoint at every epoch end (and where
            ``max_steps`` stops); ``None``: none.
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one (the same weights
            as an uninterrupted run with ``num_workers=0``); ``False`` starts over.
        callback: ``callback(iteration, loss)`` after every update; raising stops training.
        fast_paths: memory format and autocast of the training updates (default float32,
            contiguous); the losses and the mean displacement are computed in float32.

    Returns:
        An :class:`IrnTrainResult`.

    Raises:
        DataError: a missing, mis-sized or out-of-range IR label (naming the file).
        ConfigError: fewer images than a batch, or backbone mismatches.
    """
    config = config or IrnConfig()
    if seed is not None:
        config = config.replace(seed=int(seed))
    config.validate()
    device = resolve_device(device)
    fast_paths = fast_paths or FastPaths()
    seed_everything(config.seed)

    data = IrnTrainingDataset(dataset, ir_label_dir, config)
    if len(data) < config.batch_size:
        raise ConfigError(f"the training set has {len(data)} images, fewer than one batch of {config.batch_size}")
    if config.crop_size % LABEL_STRIDE:
        raise ConfigError(f"crop_size must be a multiple of {LABEL_STRIDE}, got {config.crop_size}")
    cells, needed = config.crop_size // LABEL_STRIDE, 2 * config.radius - 1  # a source has radius - 1 cells each side
    if cells < needed:
        raise ConfigError(f"irn.crop_size {config.crop_size} gives {cells} label cells across (stride {LABEL_STRIDE}); "
                          f"radius {config.radius} needs at least {needed}: crop_size >= {LABEL_STRIDE * needed}")
    data.check()
    model = fast_paths.prepare(build_irn(config, init_backbone_from).to(device))
    loss_fn = AffinityDisplacementLoss(config.radius)

    num_workers = (os.cpu_count() or 2) // 2 if config.num_workers is None else config.num_workers
    loader = DataLoader(
        data, batch_size=config.batch_size, shuffle=True, drop_last=True,  # IRN: drop_last=True
        num_workers=num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed), persistent_workers=num_workers > 0,
    )
    steps_per_epoch = len(data) // config.batch_size
    total_steps = steps_per_epoch * config.epochs  # IRN: (len(train) // batch) * epochs
    edge_params, displacement_params = model.parameter_groups()
    optimizer, scheduler = poly_sgd(
        [(edge_params, 1.0), (displacement_params, config.displacement_lr_mult)], config.lr,
        total_steps=total_steps, power=config.poly_power, weight_decay=config.weight_decay,
        momentum=config.momentum, nesterov=config.nesterov, reference_momentum_quirk=config.reference_momentum_quirk,
    )
    backbone_from = None if init_backbone_from is None else str(init_backbone_from)
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "IRN training checkpoint", at_epoch_end=True,
        metadata={"config": to_dict(config)},
        settings={**result_settings(config), "init_backbone_from": backbone_from},
        curve_title=f"IRN ({model.backbone.name})",
    )
    # IRN averages an epoch's terms with a running sum (kept, so the history stays the same).
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                            device=device, amp=config.amp, fast_paths=fast_paths, epoch_keys=IRN_TERMS, epoch_mean=sequential_mean,
                            desc="irn", progress=progress, checkpoint=spec, callback=callback)
    engine.restore(resume)
    log.info("training IRN (%s) on %d images for %d steps on %s", model.backbone.name, len(data),
             total_steps, device)

    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = fast_paths.inputs(batch["image"].to(device, non_blocking=True))
        labels = batch["label"].to(device, non_blocking=True)
        with engine.autocast():
            edge, displacement = model(images)
        losses = loss_fn(edge.float(), displacement.float(), labels)
        return losses.total, losses.as_dict()

    engine.fit(ShuffledLoader(loader), step, stop_at=max_steps)
    result = IrnTrainResult(model=model, history=engine.epochs,
                            seconds=sum(record["seconds"] for record in engine.epochs))

    ids = data.ids if config.mean_shift_images is None else data.ids[: config.mean_shift_images]
    shift = measure_mean_displacement(model, dataset, ids, device=device, config=config, progress=progress)
    model.mean_shift.running_mean.copy_(shift.to(model.mean_shift.running_mean))
    model.eval()
    if out is not None:
        model.save(out, extra={"recipe": config.to_dict(), "history": result.history,
                               "train_seconds": result.seconds, "init_backbone_from": backbone_from})
        result.checkpoint = Path(out)
        log.info("saved %s", out)
    return result


# --------------------------------------------------------------------------------------------
# Boundary maps per image

def make_edges(
    model: IRNet,
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    ids: Sequence[str] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    pad_to: int | None = None,
    displacement: bool = True,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Write ``<out_dir>/<id>.npz`` boundary maps (:class:`~wsss.stores.edges.EdgeStore`).

    Each file holds the edge map float16 (h, w) at stride 4 and, with ``displacement``, the
    displacement field (2, h, w). Resumable (existing files are skipped) and sharded by
    ``RANK``/``WORLD_SIZE``. The model is put in eval mode for the run and restored afterwards.

    Args:
        model: a trained :class:`~wsss.models.irn.IRNet`.
        dataset: ``ids`` and ``load_image``.
        out_dir: where the files go.
        device: where to run the network.
        ids: subset of ``dataset.ids``.
        scales, flip, pad_to: see :func:`~wsss.models.irn.edge_and_displacement`.
        displacement: also store the displacement field.
        dist: this process's rank.
        progress: show a progress bar.

    Returns:
        How many images were processed in this call.
    """
    store = EdgeStore(out_dir)
    device = torch.device(device)
    ids = list(dataset.ids if ids is None else ids)

    def work(image_id: str) -> None:
        image = dataset.load_image(image_id)
        edge, disp = edge_and_displacement(model, image, device, scales, flip, pad_to=pad_to)
        assert edge.shape == strided_size(*image.shape[:2])
        store.save(image_id, edge, disp if displacement else None)

    with eval_mode(model):
        return run_per_image(ids, work, store.has, desc="edges", dist=dist, progress=progress)
