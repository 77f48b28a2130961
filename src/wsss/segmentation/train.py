"""Training the segmentation network (DeepLab) on pseudo masks or on the ground truth.

The last stage of every method: masks from the refinement stages (or the dataset's own, for the
fully supervised baseline) train a DeepLab with poly-decayed SGD. Two recipes:

* ``voc``: the DeepLab-v2 recipe AdvCAM and RIB report (ImageNet-initialised ResNet-101, batch
  10, lr 2.5e-4, 30k iterations, balanced cross-entropy); every default below says where it
  comes from.
* ``synth``: the generated benchmark (128 px images): a small network from scratch in a few
  CPU minutes.

The loop, its checkpoints and resume are :mod:`wsss.training.engine`'s. A run lives in
``out_dir``: ``config.yaml`` (the resolved config), ``checkpoint.pt`` (the last periodic
checkpoint: model, optimizer, scheduler, iteration, RNG states and the loss history),
``history.json``, ``training_curve.png`` and finally ``model.pt``. Every file is written
atomically by rank 0, and loads with ``torch.load(weights_only=True)``. A run that stops (killed,
or an exception) restarts from its last checkpoint and finishes with the same iterations, the
same data order and, on one device, the same weights as an uninterrupted run.

Several targets per image: ``masks`` may name them, ``{"target": <Y_crf folder>, "target_ret":
<Y_ret folder>}``, for a loss that needs more than one label map (BANA's noise-aware loss and
its alternatives, :mod:`wsss.segmentation.losses`); every target gets the same augmentation,
and the loss receives the ones it declares (``required_targets``). A loss whose targets are
not given is refused before anything is read.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls
:func:`train_segmentation` with the same arguments; it joins the process group (NCCL on CUDA,
gloo on CPU), wraps the model in DDP, gives each process ``batch_size / world_size`` images of
every global batch, and leaves the group at the end. The global batch of step ``t`` holds the
same images with the same augmentation whatever the number of processes, and DDP averages the
processes' gradients, so N processes take the step one process would take on the whole batch
when the loss's normaliser is the same in every share (e.g. a sum over pixels divided by the
pixel count; a mean over each share's valid pixels weights the shares slightly differently), and
BatchNorm aside: its statistics are per process unless ``sync_bn``, which needs CUDA.

Example:
    >>> config = seg_recipe("synth")
    >>> result = train_segmentation(VOCDataset(root, "train"), "work/pseudo_masks", config,
    ...                             device="cpu", out_dir="work/deeplab")
    >>> result.model_path
    PosixPath('work/deeplab/model.pt')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from wsss import io as wio
from wsss.config import Settings, check_finite, dump_yaml, recipe_section, result_settings, run_only_field, to_dict
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.runtime import DistInfo, FastPaths, barrier, distributed_context, resolve_device, seed_everything
from wsss.segmentation.data import TARGET, MaskSource, MaskSpec, SegmentationTrainDataset, SegmentationTransform
from wsss.training.engine import (
    CheckpointSpec,
    EpochLoaders,
    TrainingEngine,
    poly_sgd,
    read_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "RECIPES",
    "SegTrainConfig",
    "SegTrainResult",
    "load_trained_model",
    "read_training_checkpoint",
    "seg_recipe",
    "synth_recipe",
    "train_segmentation",
    "voc_recipe",
]

CHECKPOINT_FORMAT = "wsss-segmentation-checkpoint"
MODEL_FORMAT = "wsss-segmentation-model"
FORMAT_VERSION = 1

MODEL_NAME = "model.pt"
CONFIG_NAME = "config.yaml"

LossFunction = Callable[..., torch.Tensor]


@dataclass
class SegTrainConfig(Settings):
    """How to train the segmentation network. Defaults: the DeepLab-v2 VOC recipe of AdvCAM/RIB.

    AdvCAM's author (AdvCAM issue #9) and RIB's README point to kazuto1011's deeplab-pytorch
    (``configs/voc12.yaml``) for this stage; where the author's reply and that config differ,
    the reply wins and the comment says so. ``amp``, ``checkpoint_every`` and ``num_workers``
    change speed, not results (run-only): a resumed run may change them.
    """

    option_name: ClassVar[str] = "segmentation-training"

    model: str = "deeplab_v2_resnet101"  # AdvCAM #9 / RIB: DeepLab-v2, ResNet-101
    weights: str | None = None  # AdvCAM #9: ImageNet-initialised; a local file (nothing downloads)
    classifier: str = "dot"  # DeepLab-v2's 1x1 convolution classifier
    loss: str = "balanced_ce"  # AdvCAM #9: balanced cross-entropy (as DSRG)
    loss_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 10  # AdvCAM #9; deeplab-pytorch: 5 x ITER_SIZE 2. Global, over all processes
    iterations: int | None = 30000  # AdvCAM #9 (deeplab-pytorch's VOC12 default: 20k)
    epochs: int | None = None  # alternative to iterations: len(train) // batch_size updates each
    lr: float = 2.5e-4  # AdvCAM #9 and deeplab-pytorch LR
    momentum: float = 0.9  # deeplab-pytorch MOMENTUM
    weight_decay: float = 5e-4  # deeplab-pytorch WEIGHT_DECAY
    poly_power: float = 0.9  # deeplab-pytorch POLY_POWER
    crop_size: int | None = 321  # deeplab-pytorch CROP_SIZE
    scale_range: tuple[float, float] | None = (0.5, 1.5)  # deeplab-pytorch SCALES 0.5..1.5
    hflip: bool = True  # deeplab-pytorch: random flip
    mean: tuple[float, float, float] = IMAGENET_MEAN  # ImageNet, as wsss.data.transforms
    std: tuple[float, float, float] = IMAGENET_STD  # (deeplab-pytorch: Caffe BGR means)
    amp: bool = run_only_field(True)  # mixed precision, used on CUDA only
    sync_bn: bool = False  # DeepLab-v2 keeps BatchNorm frozen; SyncBatchNorm needs CUDA
    checkpoint_every: int = run_only_field(1000)  # iterations between checkpoints (and at the end)
    seed: int = 0  # data order, augmentation and initialisation
    num_workers: int | None = run_only_field(None)  # DataLoader workers per process; None: half the CPUs / world

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option (NaN and infinity included)."""
        check_finite(self, "segmentation")
        if (self.iterations is None) == (self.epochs is None):
            raise ConfigError("segmentation training: set exactly one of iterations and epochs "
                              f"(got iterations={self.iterations}, epochs={self.epochs})")
        for name in ("batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"segmentation training: {name} must be >= 1 (got {getattr(self, name)})")
        for name in ("iterations", "epochs"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ConfigError(f"segmentation training: {name} must be >= 1 (got {value})")
        if not self.lr > 0:
            raise ConfigError(f"segmentation training: lr must be positive (got {self.lr})")
        if self.crop_size is not None and self.crop_size < 1:
            raise ConfigError(f"segmentation training: crop_size must be >= 1 (got {self.crop_size})")
        if self.scale_range is not None:
            low, high = self.scale_range
            if not 0 < low <= high:
                raise ConfigError(f"segmentation training: scale_range must be 0 < low <= high "
                                  f"(got {tuple(self.scale_range)})")


def voc_recipe() -> SegTrainConfig:
    """DeepLab-v2 on PASCAL VOC as AdvCAM and RIB report it (pass ImageNet weights as ``weights``)."""
    return SegTrainConfig()


def synth_recipe() -> SegTrainConfig:
    """The generated benchmark: 128 px images, a small DeepLab from scratch in a few CPU minutes.

    From scratch nothing is pretrained, so the learning rate is SGD's usual 0.01 rather than
    DeepLab's fine-tuning 2.5e-4 (the model's head still gets its x10/x20), BatchNorm trains, and
    the loss is plain cross-entropy.

    Measured on the default benchmark (1000 train images) with ground-truth masks, one CPU
    thread on a loaded 2-core machine: 1000 updates in 593 s, training loss 3.4 -> 0.20, val
    mIoU 73.6% (single scale, first 150 val images). After 2 epochs it is 66.2%, with lr 0.01
    or 0.03 alike.

    The values are the ``segmentation`` section of the packaged ``synth/demo`` recipe (one place for them).
    """
    return recipe_section("synth/demo", "segmentation", SegTrainConfig)


RECIPES = {"voc": voc_recipe, "synth": synth_recipe}


def seg_recipe(name: str) -> SegTrainConfig:
    """A named recipe (``voc`` or ``synth``)."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown segmentation recipe {name!r}; known: {', '.join(sorted(RECIPES))}"
        ) from None


@dataclass
class SegTrainResult:
    """What :func:`train_segmentation` returns (on every rank).

    Attributes:
        model: the trained network (unwrapped from DDP, on ``device``, in train mode).
        iterations: updates done in all, counting those before a resume.
        history: one dict per update: ``iteration`` (1-based), ``loss`` (mean over processes),
            ``lr`` (of the first parameter group, used for that update).
        seconds: training time of this call.
        out_dir: the run's folder.
        model_path: ``out_dir/model.pt``.
        resumed_from: the iteration the run restarted from (0: a fresh run).
        world_size: number of processes that trained.
    """

    model: nn.Module
    iterations: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None
    model_path: Path | None = None
    resumed_from: int = 0
    world_size: int = 1


class _EpochBatches(Sampler):
    """This process's batches of one epoch, as lists of ``(epoch, index)`` keys.

    The order is :class:`DistributedSampler`'s (a permutation seeded by ``seed + epoch``, this
    process taking every ``world_size``-th position). Batch ``t`` of rank ``r`` is positions
    ``r + world_size * (t * b + j)``, so the global batch ``t`` is permutation positions
    ``t * B .. (t + 1) * B - 1`` for any number of processes. ``skip`` drops the batches a resumed
    run has already trained on.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int, batches: int, epoch: int,
                 skip: int = 0) -> None:
        self.sampler, self.batch_size, self.batches = sampler, batch_size, batches
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        for number in range(self.skip, self.batches):
            chunk = order[number * self.batch_size:(number + 1) * self.batch_size]
            yield [(self.epoch, int(index)) for index in chunk]

    def __len__(self) -> int:
        return self.batches - self.skip


# --------------------------------------------------------------------------------- checkpoints
def read_training_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A training checkpoint (``checkpoint.pt``), read with ``weights_only=True``.

    Keys: ``format``, ``version``, ``iteration``, ``num_classes``, ``classes``, ``config``,
    ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``history``, and
    the engine's (:class:`~wsss.training.engine.TrainingEngine`): ``settings``, ``epochs``,
    ``total_steps``, ``steps_per_epoch``, ``data``, ``streams``, ``tracked``.

    Raises:
        DataError: missing, unreadable, or not a segmentation training checkpoint.
    """
    return read_checkpoint(path, (CHECKPOINT_FORMAT,), "segmentation training checkpoint", map_location)


def load_trained_model(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    model: nn.Module | None = None,
    map_location: Any = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The network saved as ``model.pt`` by :func:`train_segmentation`, and its metadata.

    Args:
        path: the ``model.pt`` file (a ``checkpoint.pt`` works too).
        num_classes: the class count the caller expects (``K + 1``); a file for another count
            is an error rather than a silent mismatch.
        model: a network to load the weights into (default: built with
            ``create_segmentation_model`` from the names saved in the file).
        map_location: passed to ``torch.load``.

    Returns:
        (model in eval mode, the file's dict without the state dict).

    Raises:
        DataError: the file is missing, unreadable, of another format, or for another number
            of classes.
    """
    path = Path(path)
    obj = read_checkpoint(path, (MODEL_FORMAT, CHECKPOINT_FORMAT), "segmentation model", map_location)
    saved_classes = int(obj["num_classes"])
    if num_classes is not None and saved_classes != int(num_classes):
        raise DataError(
            f"the model was trained for {saved_classes} classes but {num_classes} are expected "
            "(a checkpoint of another dataset?)", path,
        )
    state = obj["model"]
    if model is None:
        from wsss.models.deeplab import create_segmentation_model

        # model_config: the keyword arguments that rebuild the network (rates, classifier, ...).
        build = dict(obj.get("model_config") or {})
        name = build.pop("name", None) or obj.get("config", {}).get("model")
        build.pop("num_classes", None)
        build.setdefault("classifier", obj.get("config", {}).get("classifier", "dot"))
        model = create_segmentation_model(name, saved_classes, **build)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"weights do not fit the network ({first})", path) from None
    model.eval()
    return model, {key: value for key, value in obj.items() if key != "model"}


def _check_classes(num_classes: int, classes: Sequence[str]) -> Callable[[dict[str, Any], Path], None]:
    """A checkpoint check: it must be for the dataset's classes."""

    def check(checkpoint: dict[str, Any], path: Path) -> None:
        saved_classes = int(checkpoint.get("num_classes", -1))
        if saved_classes != num_classes:
            raise DataError(
                f"checkpoint is for {saved_classes} classes but the dataset has {num_classes}; "
                "use another out_dir for another dataset", path,
            )
        if list(checkpoint.get("classes") or classes) != list(classes):
            raise DataError("checkpoint's class names differ from the dataset's; use another out_dir", path)

    return check


def _parameter_groups(model: nn.Module) -> list[Any]:
    """``model.parameter_groups()`` (dicts with ``params``, ``lr_mult``, ``weight_decay_mult``:
    DeepLab's caffe convention, head x10, biases x2/x20 without decay; or ``(params, lr_mult)``
    pairs), or one group of all parameters for a model without it."""
    if hasattr(model, "parameter_groups"):
        return list(model.parameter_groups())
    return [{"params": list(model.parameters())}]


def _loss_targets(loss_fn: LossFunction, name: str, given: Sequence[str]) -> tuple[str, ...]:
    """The further targets ``loss_fn`` declares (``required_targets``), all of them in ``given``.

    Raises:
        ConfigError: one line naming the loss, the missing target(s) and the targets given.
    """
    needs = tuple(getattr(loss_fn, "required_targets", ()))
    missing = [target for target in needs if target not in given]
    if missing:
        raise ConfigError(
            f"loss {name!r} needs {', '.join(missing)} besides the masks, but the data gives only "
            f"{', '.join(given)}; pass masks as a mapping, e.g. {{'{TARGET}': <Y_crf folder>, "
            f"'{missing[0]}': <folder>}}"
        )
    return needs


def _validate_masks(masks: MaskSource, ids: Sequence[str], info: DistInfo, progress: bool) -> None:
    """:meth:`MaskSource.validate`, each process reading its share of the masks.

    Every process lists the missing files (cheap) and reads ``ids[rank::world_size]``; the first
    problem found anywhere is raised in every process, so none waits forever for the others.
    """
    masks.validate(ids, check_contents=False)
    if info.world_size == 1:
        masks.validate(ids, progress=progress)
        return
    found: tuple[str, str | None] | None = None
    try:
        masks.validate(list(ids[info.rank::info.world_size]), progress=progress)
    except DataError as exc:
        found = (str(exc), None if exc.path is None else str(exc.path))
    reports: list[tuple[str, str | None] | None] = [None] * info.world_size
    dist.all_gather_object(reports, found)
    first = next((report for report in reports if report is not None), None)
    if first is not None:
        error = DataError(first[0])  # the text already starts with the file's name
        error.path = None if first[1] is None else Path(first[1])
        raise error


def _default_workers(world_size: int) -> int:
    return max(0, ((os.cpu_count() or 2) // 2) // world_size)


# --------------------------------------------------------------------------------- training
def train_segmentation(
    dataset: VOCDataset,
    masks: MaskSpec,
    config: SegTrainConfig | None = None,
    *,
    device: torch.device | str | None = "auto",
    out_dir: str | os.PathLike,
    progress: bool = True,
    resume: bool = True,
    model: nn.Module | None = None,
    loss_fn: LossFunction | None = None,
    callback: Callable[[int, float], None] | None = None,
    validate_masks: bool = True,
    fast_paths: FastPaths | None = None,
) -> SegTrainResult:
    """Train a segmentation network on ``dataset``'s images and ``masks`` with poly-decayed SGD.

    Call it in every process of a ``torchrun`` job with the same arguments (see the module
    docstring); in one process it trains alone.

    Args:
        dataset: the training images (``dataset.classes`` sets the class count).
        masks: a folder of pseudo-mask PNGs ``<id>.png``, ``None`` for the ground truth, a
            :class:`MaskSource`; or several targets by name, ``{"target": <one of those>,
            "target_ret": <folder>, ...}``, for a loss that needs them (see the module docstring).
        config: the recipe (default: :func:`voc_recipe`).
        device: where to train (``"auto"``: CUDA if available); under torchrun a CUDA device
            becomes ``cuda:LOCAL_RANK``.
        out_dir: the run's folder (see the module docstring for its files).
        progress: tqdm bars (rank 0 only).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one; ``False`` starts over.
        model: a network to train instead of ``create_segmentation_model(config.model, ...)``
            (e.g. a small stand-in in tests). Create it after seeding if several processes must
            agree; DDP copies rank 0's weights to the others anyway.
        loss_fn: ``loss(logits, target, **targets) -> scalar`` instead of ``make_loss(config.loss,
            **config.loss_options)``; logits come at the model's output stride and the masks at
            the crop size, so the loss aligns them. It gets the further targets it lists in a
            ``required_targets`` attribute, as keyword arguments.
        callback: called after every update (and its checkpoint) on every process with
            ``(iteration, loss)``; raising stops training (a simulated kill in tests).
        validate_masks: check every mask of every target up front (missing, values, sizes).
        fast_paths: memory format and autocast of the updates (default float32, contiguous); the
            loss is computed in float32. Under bfloat16 autocast ``config.amp`` is not used.

    Returns:
        A :class:`SegTrainResult`.

    Raises:
        DataError: masks missing or invalid; a checkpoint for another class count.
        ConfigError: an invalid config, a batch not divisible by the number of processes, a
            checkpoint whose config differs, a loss whose targets ``masks`` does not give.
        LossNotFinite: the loss became NaN or infinite (:mod:`wsss.training.engine`).
    """
    config = config or voc_recipe()
    config.validate()
    out_dir = Path(out_dir)
    requested = resolve_device(device)
    with distributed_context(requested) as (info, device):
        return _train(dataset, masks, config, info, device, out_dir, progress=progress, resume=resume,
                      model=model, loss_fn=loss_fn, callback=callback, validate_masks=validate_masks,
                      fast_paths=fast_paths or FastPaths())


def _make_loss(config: SegTrainConfig, model: nn.Module) -> LossFunction:
    """``make_loss(config.loss, **config.loss_options)``; the noise-aware loss reads its cosines
    off a cosine classifier's logits, so it takes that classifier's scale unless given one."""
    from wsss.segmentation.losses import make_loss

    options = dict(config.loss_options)
    if config.loss == "nal" and options.get("scale") is None and getattr(model, "cosine_scale", None):
        options["scale"] = float(model.cosine_scale)
    return make_loss(config.loss, **options)


def _train(dataset: VOCDataset, masks: MaskSpec, config: SegTrainConfig,
           info: DistInfo, device: torch.device, out_dir: Path, *, progress: bool, resume: bool,
           model: nn.Module | None, loss_fn: LossFunction | None,
           callback: Callable[[int, float], None] | None, validate_masks: bool,
           fast_paths: FastPaths) -> SegTrainResult:
    world, is_main = info.world_size, info.is_main
    if config.batch_size % world:
        raise ConfigError(f"segmentation training: batch_size {config.batch_size} is not divisible by "
                          f"the {world} processes (each takes batch_size / world_size images)")
    per_process = config.batch_size // world
    show = progress and is_main

    seed_everything(config.seed)
    transform = SegmentationTransform(config.crop_size, config.scale_range, config.hflip,
                                      config.mean, config.std)
    train_set = SegmentationTrainDataset(dataset, masks, transform, seed=config.seed, validate=False)
    num_classes, classes = train_set.num_classes, list(dataset.classes)
    steps_per_epoch = len(train_set) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"segmentation training: the training set has {len(train_set)} images, "
                          f"fewer than one batch of {config.batch_size}")
    if config.crop_size is None and per_process > 1:
        log.warning("crop_size is None: batching needs every training image to have the same size")
    total = config.iterations if config.iterations is not None else config.epochs * steps_per_epoch

    if model is None:
        from wsss.models.deeplab import create_segmentation_model

        model = create_segmentation_model(config.model, num_classes, weights=config.weights,
                                          classifier=config.classifier)
        model_name = config.model
    else:
        model_name = type(model).__name__
    model_classes = getattr(model, "num_classes", num_classes)
    if int(model_classes) != num_classes:
        raise ConfigError(f"the model predicts {model_classes} classes but the dataset has {num_classes}")
    loss_name = config.loss if loss_fn is None else getattr(loss_fn, "name", None) or getattr(
        loss_fn, "__name__", type(loss_fn).__name__)
    if loss_fn is None:
        loss_fn = _make_loss(config, model)
    # Checked before the masks are read: a missing target is a config error, found in a second.
    needs = _loss_targets(loss_fn, loss_name, list(train_set.targets))
    if validate_masks:
        for source in train_set.targets.values():
            _validate_masks(source, train_set.ids, info, progress=show)

    if config.sync_bn and world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("sync_bn needs CUDA: on %s each process keeps its own BatchNorm statistics",
                        device.type)
    model = fast_paths.prepare(model.to(device))
    model.train()
    optimizer, scheduler = poly_sgd(_parameter_groups(model), config.lr, total_steps=total, power=config.poly_power,
                                    weight_decay=config.weight_decay, momentum=config.momentum)
    spec = CheckpointSpec(
        out_dir, CHECKPOINT_FORMAT, "segmentation training checkpoint", every=config.checkpoint_every,
        metadata={"num_classes": num_classes, "classes": classes, "config": to_dict(config)},
        settings=result_settings(config), check=_check_classes(num_classes, classes),
        curve_title=f"{model_name}: {train_set.describe()}",
    )
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=total, steps_per_epoch=steps_per_epoch,
                            device=device, amp=config.amp, fast_paths=fast_paths, world_size=world, is_main=is_main,
                            desc="train segmentation", progress=progress, checkpoint=spec, callback=callback)
    if not resume and is_main:  # a stale model must not pass for this run's if it stops early
        (out_dir / MODEL_NAME).unlink(missing_ok=True)
    engine.restore(resume)
    start = engine.resumed_from

    if is_main:
        wio.write_text(out_dir / CONFIG_NAME, dump_yaml(config))
    wrapped: nn.Module = model
    if world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    num_workers = _default_workers(world) if config.num_workers is None else config.num_workers
    log.info("training %s (%d classes) on %d images (%s), %d iterations of %d images "
             "(%d per process x %d) on %s", model_name, num_classes,
             len(train_set), train_set.describe(), total, config.batch_size, per_process, world, device)

    def epoch_loader(epoch: int, skip: int) -> DataLoader:
        return DataLoader(
            train_set,
            batch_sampler=_EpochBatches(sampler, per_process, steps_per_epoch, epoch, skip),
            num_workers=num_workers, pin_memory=device.type == "cuda",
            # Its own generator, so building a loader never draws from the global RNG.
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )

    def step(batch: dict[str, Any]) -> torch.Tensor:
        images = fast_paths.inputs(batch["image"].to(device, non_blocking=True))
        targets = batch["mask"].to(device, non_blocking=True)
        extras = {name: batch[name].to(device, non_blocking=True) for name in needs}
        with engine.autocast():
            logits = wrapped(images)
        return loss_fn(logits.float(), targets, **extras)  # the loss aligns sizes (its recipe's way)

    engine.fit(EpochLoaders(epoch_loader), step)

    model_path = out_dir / MODEL_NAME
    if is_main:
        save_checkpoint(model_path, {
            "format": MODEL_FORMAT, "version": FORMAT_VERSION, "num_classes": num_classes,
            "classes": classes, "iterations": engine.iteration, "config": to_dict(config),
            "output_stride": getattr(model, "output_stride", None),
            "model_config": to_dict(getattr(model, "config", None) or {}), "model": model.state_dict(),
        })
        log.info("trained %d iterations in %.1f s; saved %s", engine.iteration - start, engine.seconds, model_path)
    barrier()  # every process returns once model.pt exists
    return SegTrainResult(model=model, iterations=engine.iteration, history=engine.history, seconds=engine.seconds,
                          out_dir=out_dir, model_path=model_path, resumed_from=start, world_size=world)
