"""Training the CAM classifier on image-level labels (IRN ``step/train_cam.py``).

Two recipes:

* ``irn``: IRN's recipe for PASCAL VOC with an ImageNet-pretrained ResNet-50 (pass the
  torchvision weights file as ``weights``); every default below is IRN's, commented with where
  it comes from.
* ``synth``: the generated benchmark (128 px images, about a thousand training images): a
  quarter-width ResNet-18 trained from scratch in a few CPU minutes.

Example:
    >>> config = classifier_recipe("synth")
    >>> result = train_classifier(VOCDataset(root, "train"), config, device=torch.device("cpu"),
    ...                           out="work/cam_net.pt", val_source=VOCDataset(root, "val"))
    >>> result.history[-1]["val"]["exact_match"]
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
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.data.transforms import ClassificationDataset, EvalTransform, ImageLabelSource, TrainTransform
from wsss.config import Settings, check_ranges, recipe_section, result_settings, run_only_field, to_dict
from wsss.errors import ConfigError
from wsss.models.cam_net import CamNet
from wsss.runtime import FastPaths, eval_mode, resolve_device, seed_everything
from wsss.training.engine import CheckpointSpec, ShuffledLoader, TrainingEngine, poly_sgd
from wsss.training.schedule import check_momentum

log = logging.getLogger(__name__)

__all__ = [
    "ClassifierConfig",
    "ClassifierMetrics",
    "RECIPES",
    "TrainResult",
    "classification_metrics",
    "classifier_recipe",
    "evaluate_classifier",
    "predict_logits",
    "train_classifier",
]


@dataclass
class ClassifierConfig(Settings):
    """How to train the CAM classifier. Defaults are IRN's (``run_sample.py``, ``train_cam.py``)."""

    option_name: ClassVar[str] = "classifier"

    backbone: str = "resnet50"  # IRN net/resnet50_cam.py
    output_stride: int | None = 16  # IRN strides=(2, 2, 2, 1), no dilation
    dilated: bool | None = False  # IRN: layer4 stride 1 without dilation
    weights: str | None = None  # IRN: torchvision resnet50-19c8e357.pth (ImageNet); a local file here
    freeze_bn: bool = True  # IRN FixedBatchNorm: running statistics never update
    frozen_stages: int = 2  # IRN: stage2(x).detach(), so conv1..layer2 get no gradient
    lr: float = 0.1  # IRN --cam_learning_rate
    classifier_lr_mult: float = 10.0  # IRN train_cam.py: 10 * cam_learning_rate for the head
    weight_decay: float = 1e-4  # IRN --cam_weight_decay
    # IRN's SGD(params, lr, weight_decay) puts the weight decay in SGD's momentum slot: momentum
    # 1e-4, the published computation. False: SGD with `momentum` and `nesterov` below.
    reference_momentum_quirk: bool = True
    momentum: float = 0.0  # used when reference_momentum_quirk is false (IRN's evident intent: none)
    nesterov: bool = False
    poly_power: float = 0.9  # IRN PolyOptimizer
    batch_size: int = 16  # IRN --cam_batch_size
    epochs: int = 5  # IRN --cam_num_epoches
    crop_size: int | None = 512  # IRN --cam_crop_size, random crop padded with 0 (normalised)
    resize_long: tuple[int, int] | None = (320, 640)  # IRN train_cam.py resize_long=(320, 640)
    hflip: bool = True  # IRN hor_flip=True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # IRN TorchvisionNormalize (ImageNet)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # IRN TorchvisionNormalize (ImageNet)
    num_workers: int | None = None  # IRN: cpu_count // 2 (None); 0 loads in the main process
    seed: int = 0  # IRN sets none; ours makes runs repeatable
    eval_batch_size: int = 16
    eval_resize_long: int | None = None  # validation on full images, as IRN's make_cam input
    amp: bool = run_only_field(False)  # wsss: mixed precision, on CUDA only (IRN trains in float32)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting out of range (NaN and infinity included)."""
        check_ranges(self, "classifier", positive=("lr", "eval_resize_long"), ranges=("resize_long",),
                     at_least={"batch_size": 1, "epochs": 1, "crop_size": 1, "eval_batch_size": 1,
                               "classifier_lr_mult": 0, "weight_decay": 0, "momentum": 0, "poly_power": 0,
                               "frozen_stages": 0, "num_workers": 0, "seed": 0})
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"classifier.std must be positive, got {list(self.std)}")
        check_momentum(self, "classifier")


def irn_recipe() -> ClassifierConfig:
    """IRN's CAM-classifier recipe (PASCAL VOC, ImageNet-pretrained ResNet-50)."""
    return ClassifierConfig()


def synth_recipe() -> ClassifierConfig:
    """The generated benchmark: 128 px images, a small ResNet trained from scratch on CPU.

    Measured on the default benchmark (1000 train / 300 val images, 8 classes), one CPU
    thread: 99.1% per-label accuracy and 93% exact match on val after 10 epochs (1250 updates)
    in about 4 minutes. From scratch, BatchNorm must train and nothing is frozen; the head is as
    new as the rest, so it gets no learning-rate boost; momentum matters from scratch, and so
    does the number of updates (hence the small batch).

    The values are the ``classifier`` section of the packaged ``synth/demo`` recipe (one place for them).
    """
    return recipe_section("synth/demo", "classifier", ClassifierConfig)


RECIPES = {"irn": irn_recipe, "synth": synth_recipe}


def classifier_recipe(name: str) -> ClassifierConfig:
    """A named recipe (``irn`` or ``synth``)."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ConfigError(f"unknown classifier recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None


@dataclass
class ClassifierMetrics:
    """Multi-label classification quality on a set of images.

    Attributes:
        exact_match: fraction of images whose thresholded label set is exactly right.
        label_accuracy: fraction of (image, class) decisions that are right.
        mean_ap: mean over classes (with at least one positive) of average precision.
        num_images: how many images.
    """

    exact_match: float
    label_accuracy: float
    mean_ap: float
    num_images: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> ClassifierMetrics:
    """Metrics of (N, K) logits against (N, K) multi-hot labels; positive when logit > threshold."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    predicted = logits > threshold
    correct = predicted == labels
    aps = []
    for k in range(labels.shape[1]):
        positives = int(labels[:, k].sum())
        if positives == 0:
            continue
        order = np.argsort(-logits[:, k], kind="stable")
        hits = labels[order, k]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision_at * hits).sum() / positives))
    return ClassifierMetrics(
        exact_match=float(correct.all(axis=1).mean()) if len(labels) else float("nan"),
        label_accuracy=float(correct.mean()) if labels.size else float("nan"),
        mean_ap=float(np.mean(aps)) if aps else float("nan"),
        num_images=int(len(labels)),
    )


@torch.no_grad()
def predict_logits(
    model: CamNet,
    source: ImageLabelSource,
    *,
    device: torch.device,
    ids: Sequence[str] | None = None,
    batch_size: int = 16,
    transform: EvalTransform | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and labels (N, K) for ``ids``, batching consecutive images of equal size.

    The model is put in eval mode for the pass and restored to its previous mode afterwards.
    """
    ids = list(source.ids if ids is None else ids)
    transform = transform or EvalTransform()
    logits, labels, batch = [], [], []

    def flush() -> None:
        if batch:
            logits.append(model(torch.stack(batch).to(device)).float().cpu())
            batch.clear()

    with eval_mode(model):
        for image_id in tqdm(ids, desc="classify", disable=not progress, leave=False):
            image = transform(source.load_image(image_id))
            if batch and (image.shape != batch[0].shape or len(batch) >= batch_size):
                flush()
            batch.append(image)
            labels.append(np.asarray(source.label_vector(image_id), dtype=np.float32))
        flush()
    k = model.num_classes
    return (torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32),
            np.stack(labels) if labels else np.zeros((0, k), np.float32))


def evaluate_classifier(model: CamNet, source: ImageLabelSource, *, device: torch.device,
                        ids: Sequence[str] | None = None, batch_size: int = 16,
                        resize_long: int | None = None, progress: bool = False) -> ClassifierMetrics:
    """:func:`classification_metrics` of ``model`` on ``source`` (logit > 0, i.e. p > 0.5)."""
    logits, labels = predict_logits(model, source, device=device, ids=ids, batch_size=batch_size,
                                    transform=EvalTransform(resize_long=resize_long), progress=progress)
    return classification_metrics(logits, labels)


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns.

    Attributes:
        model: the trained network (in train mode, on ``device``).
        history: one dict per epoch: ``epoch``, ``loss`` (mean), ``lr`` (at the end), ``seconds``
            and, with a validation set, ``val`` (:class:`ClassifierMetrics` as a dict).
        seconds: training time, validation excluded.
        checkpoint: where the model was saved, if anywhere.
    """

    model: CamNet
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None


def _num_foreground_classes(source: ImageLabelSource) -> tuple[int, list[str] | None]:
    classes = getattr(source, "classes", None)
    if classes is not None:
        return len(classes) - 1, list(classes)
    if not source.ids:
        raise ConfigError("the training set is empty")
    return int(np.asarray(source.label_vector(source.ids[0])).shape[0]), None


CHECKPOINT_FORMAT = "wsss-classifier-checkpoint"


def train_classifier(
    source: ImageLabelSource,
    config: ClassifierConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    val_source: ImageLabelSource | None = None,
    progress: bool = True,
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[int, float], None] | None = None,
    fast_paths: FastPaths | None = None,
) -> TrainResult:
    """Train a :class:`CamNet` with multilabel soft-margin loss and poly-decayed SGD.

    Args:
        source: training images and labels (``ids``, ``load_image``, ``label_vector``, and
            optionally ``classes``).
        config: the recipe (default: IRN's).
        device: where to train.
        out: checkpoint path, written atomically at the end (with the config and history).
        val_source: evaluated after every epoch if given.
        progress: show tqdm bars.
        seed: overrides ``config.seed`` (e.g. a pipeline's run-wide seed).
        checkpoint_dir: a folder for a training checkpoint at every epoch end (with
            ``history.json`` and ``training_curve.png``); ``None``: none.
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one (the same
            weights as an uninterrupted run with ``num_workers=0``); ``False`` starts over.
        callback: ``callback(iteration, loss)`` after every update; raising stops training.
        fast_paths: memory format and autocast of the training updates (default float32,
            contiguous); validation runs in float32.

    Returns:
        A :class:`TrainResult`.
    """
    config = config or ClassifierConfig()
    if seed is not None:
        config = config.replace(seed=int(seed))
    config.validate()
    device = resolve_device(device)
    fast_paths = fast_paths or FastPaths()
    seed_everything(config.seed)
    num_classes, classes = _num_foreground_classes(source)

    model = CamNet(
        config.backbone, num_classes,
        output_stride=config.output_stride, dilated=config.dilated, weights=config.weights,
        freeze_bn=config.freeze_bn, frozen_stages=config.frozen_stages, classes=classes,
    ).to(device)
    fast_paths.prepare(model)

    dataset = ClassificationDataset(
        source, TrainTransform(config.crop_size, config.resize_long, config.hflip, config.mean, config.std)
    )
    if len(dataset) < config.batch_size:
        raise ConfigError(
            f"the training set has {len(dataset)} images, fewer than one batch of {config.batch_size}"
        )
    if config.crop_size is None and config.batch_size > 1:
        log.warning("crop_size is None: batching needs every training image to have the same size")
    num_workers = (os.cpu_count() or 2) // 2 if config.num_workers is None else config.num_workers
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,  # IRN: drop_last=True
        num_workers=num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed), persistent_workers=num_workers > 0,
    )
    steps_per_epoch = len(dataset) // config.batch_size
    max_steps = steps_per_epoch * config.epochs  # IRN: (len(train) // batch) * epochs
    backbone_params, head_params = model.parameter_groups()
    optimizer, scheduler = poly_sgd(
        [(backbone_params, 1.0), (head_params, config.classifier_lr_mult)], config.lr,
        total_steps=max_steps, power=config.poly_power, weight_decay=config.weight_decay,
        momentum=config.momentum, nesterov=config.nesterov,
        reference_momentum_quirk=config.reference_momentum_quirk,
    )
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "classifier training checkpoint", at_epoch_end=True,
        metadata={"classes": classes, "config": to_dict(config)}, settings=result_settings(config),
        curve_title=f"CAM classifier ({config.backbone})",
    )
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=max_steps, steps_per_epoch=steps_per_epoch,
                            device=device, amp=config.amp, fast_paths=fast_paths, desc="classifier", progress=progress,
                            checkpoint=spec, callback=callback)
    engine.restore(resume)
    log.info("training %s (%d classes) on %d images for %d steps on %s",
             config.backbone, num_classes, len(dataset), max_steps, device)

    def step(batch: dict[str, Any]) -> torch.Tensor:
        images = fast_paths.inputs(batch["image"].to(device, non_blocking=True))
        labels = batch["label"].to(device, non_blocking=True)
        with engine.autocast():
            logits = model(images)
        return F.multilabel_soft_margin_loss(logits.float(), labels)

    def validate(record: dict[str, Any]) -> None:
        if val_source is None:
            return
        metrics = evaluate_classifier(model, val_source, device=device, batch_size=config.eval_batch_size,
                                      resize_long=config.eval_resize_long)
        record["val"] = metrics.as_dict()
        log.info("epoch %d/%d: val exact match %.3f, label accuracy %.4f, mAP %.4f", record["epoch"],
                 config.epochs, metrics.exact_match, metrics.label_accuracy, metrics.mean_ap)

    engine.fit(ShuffledLoader(loader), step, on_epoch_end=validate)
    result = TrainResult(model=model, history=engine.epochs,
                         seconds=sum(record["seconds"] for record in engine.epochs))
    if out is not None:
        model.save(out, extra={"recipe": config.to_dict(), "history": result.history,
                               "train_seconds": result.seconds})
        result.checkpoint = Path(out)
        log.info("saved %s", out)
    return result
