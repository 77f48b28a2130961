"""W-OoD: CAM-classifier training with out-of-distribution images (Lee et al., CVPR 2022).

A trained CAM classifier is fine-tuned with two extra losses that use images showing none of
the dataset's classes (``D_ood``, :class:`wsss.data.ood.OoDImages`), so that background which
co-occurs with a class (water with boats, rails with trains) stops counting as that class:

* **Distance loss** ``L_d`` on the in-distribution batch. Before training, the GAP features
  of the initial classifier give one prototype per class (the mean feature of the images
  containing it) and ``K`` OoD prototypes (k-means over the OoD images' features). With
  ``d(f, p) = ||f - p||_2`` and a batch of B images with multi-hot labels ``y`` over C
  classes::

      L_d = (C / K) * mean_{b, c}(y_bc * d(f_b, p_c))
            - mean_{b, k}(d(f_b, q_k) * [d(f_b, q_k) < t])

  where ``t`` is the batch's ``tau``-quantile of the B*K OoD distances (the smallest of the
  ``int(B*K*(1 - tau))`` largest). The first term pulls each feature towards its classes'
  prototypes; the second pushes it away from the OoD prototypes that are nearest. Weight
  ``lambda``.
* **OoD classification loss** on a batch of OoD images, each first moved by one step that
  *raises* its largest logit, ``x' = x + eps * g / max|g|`` with ``g = d max_c logit_c / dx``,
  then classified against an all-zero target (multilabel soft margin), summed over the OoD
  images and divided by the in-distribution batch size. Weight ``ood_weight``.

The total is ``L_cls + lambda * L_d + ood_weight * L_ood``. The result is an ordinary
:class:`~wsss.models.cam_net.CamNet` checkpoint: CAM and AdvCAM run on it unchanged (AdvCAM +
W-OoD is the paper's best seed).

Where this differs from the reference code (``naver-ai/w-ood``, ``step/train_cam_clustering.py``):

* k-means starts, as the reference's, from the first K features (``kmeans_init="first"``, the
  published computation); ``"kmeans++"`` draws a seeded k-means++ start instead. An emptied
  cluster keeps its centroid (the reference divides by zero and then treats the prototype as
  absent).
* No checkpoint is selected with ground-truth masks: the last model is saved. The reference
  scores CAMs against VOC train masks during the last epoch and keeps the best.
* No OoD image is excluded by its predicted class; the reference drops those it predicts as
  "bottle" (hard-coded class 4). A hard-coded class, so not the default on every dataset:
  ``ood_ignore_classes=(5,)`` (VOC's bottle) reproduces it and the VOC recipes set it.
* Prototypes can be refreshed during training (``refresh_prototypes_every``); the reference
  computes them once.
* The push threshold is taken over all the batch's OoD distances; the reference leaves out
  zero distances, which only its absent (empty-cluster) prototypes produce.
* The reference's unused covariance ("Mahalanobis") estimate is not computed: its distance is
  Euclidean.

Example:
    >>> config = wood_recipe("synth")
    >>> result = train_wood(VOCDataset(root, "train"), OoDImages(root / "ood" / "ood.txt"),
    ...                     config, synth_recipe(), device=torch.device("cpu"),
    ...                     out="work/classifier_wood.pt", init="work/classifier.pt")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.data.transforms import ClassificationDataset, EvalTransform, ImageLabelSource, TrainTransform
from wsss.config import Settings, check_finite, recipe_section, result_settings, to_dict
from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import CamNet, load_cam_net
from wsss.models.climbing import climb_step
from wsss.runtime import eval_mode, resolve_device, seed_everything
from wsss.training.classifier import (
    ClassifierConfig,
    TrainResult,
    _num_foreground_classes,
    evaluate_classifier,
)
from wsss.training.engine import CheckpointSpec, EndlessLoader, ShuffledLoader, TrainingEngine, poly_sgd

log = logging.getLogger(__name__)

__all__ = [
    "WOOD_RECIPES",
    "WoodConfig",
    "class_prototypes",
    "distance_loss",
    "feature_distances",
    "kmeans",
    "ood_classification_loss",
    "ood_climb",
    "ood_prototypes",
    "pooled_features",
    "push_threshold",
    "train_wood",
    "wood_recipe",
]


@dataclass
class WoodConfig(Settings):
    """W-OoD settings; defaults are the reference's (``naver-ai/w-ood`` ``run_sample.py`` and
    ``step/train_cam_clustering.py``) unless noted. The optimiser, batch size and augmentation
    come from the :class:`~wsss.training.classifier.ClassifierConfig` passed beside it."""

    option_name: ClassVar[str] = "wood"

    distance_weight: float = 0.007  # reference --distance_lambda, lambda (paper Table A2: best at tau 20%)
    push_quantile: float = 0.2  # reference --ood_dist_topk, tau: OoD distances under this batch quantile are pushed
    ood_weight: float = 0.25  # reference --ood_coeff
    ood_batch_size: int = 16  # reference --ood_batch_size (= its cam_batch_size)
    ood_clusters: int = 50  # reference --cluster_K, K OoD prototypes
    kmeans_iterations: int = 10  # reference KMeans(Niter=10), Lloyd steps
    # reference: the first K features start k-means (the published computation); "kmeans++": a seeded draw
    kmeans_init: Literal["kmeans++", "first"] = "first"
    climb_step: float = 0.07  # reference adv_climb(img_ood, 0.07, grad), epsilon (normalised-image units)
    climb_iterations: int = 1  # reference: range(1), one step
    climb_normalisation: Literal["batch", "image", "sign"] = "batch"  # reference: g / max|g| over the whole OoD batch
    # Class ids 1..K: OoD images predicted as one of them get no OoD loss (reference: "bottle", hard-coded).
    ood_ignore_classes: tuple[int, ...] = ()
    ood_resize_long: int | None = 500  # reference: OoD images at long side 500 for the prototypes; None keeps them
    epochs: int | None = None  # None: the classifier recipe's (reference: cam_num_epoches 5, the full schedule again)
    lr: float | None = None  # None: the classifier recipe's (reference: cam_learning_rate 0.1, head x10)
    # Reference FixedBatchNorm: BN keeps the initial classifier's statistics, so OoD batches (and the
    # climbing pass) never enter them. None: as the checkpoint (False lets OoD batches update them).
    freeze_bn: bool | None = True
    refresh_prototypes_every: int = 0  # wsss: recompute the prototypes every N epochs; 0 = never (reference)
    feature_batch_size: int = 16  # wsss: same-size images per forward when computing prototypes (speed only)
    # wsss: use only this many of the listed OoD images, drawn with the run's seed; None = all.
    # The |D_ood| ablation of the W-OoD supplement (Table A1) varies it.
    ood_images: int | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` on settings that cannot work (NaN and infinity included)."""
        check_finite(self, "wood")
        if self.distance_weight < 0 or self.ood_weight < 0:
            raise ConfigError("wood.distance_weight and wood.ood_weight must be non-negative")
        if not 0.0 <= self.push_quantile < 1.0:
            raise ConfigError(f"wood.push_quantile must be in [0, 1), got {self.push_quantile}")
        for name in ("ood_batch_size", "ood_clusters", "kmeans_iterations", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"wood.{name} must be at least 1, got {getattr(self, name)}")
        if self.kmeans_init not in ("kmeans++", "first"):
            raise ConfigError(f"wood.kmeans_init must be 'kmeans++' or 'first', got {self.kmeans_init!r}")
        if self.climb_normalisation not in ("batch", "image", "sign"):
            raise ConfigError(
                f"wood.climb_normalisation must be 'batch', 'image' or 'sign', got {self.climb_normalisation!r}"
            )
        if self.climb_step < 0 or self.climb_iterations < 0:
            raise ConfigError("wood.climb_step and wood.climb_iterations must be non-negative")
        if any(int(c) < 1 for c in self.ood_ignore_classes):
            raise ConfigError(f"wood.ood_ignore_classes are class ids 1..K, got {list(self.ood_ignore_classes)}")
        if self.ood_resize_long is not None and self.ood_resize_long < 1:
            raise ConfigError(f"wood.ood_resize_long must be positive, got {self.ood_resize_long}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"wood.epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"wood.lr must be positive, got {self.lr}")
        if self.refresh_prototypes_every < 0:
            raise ConfigError(f"wood.refresh_prototypes_every must be >= 0, got {self.refresh_prototypes_every}")
        if self.ood_images is not None and self.ood_images < 1:
            raise ConfigError(
                f"wood.ood_images must be at least 1 (null = all), got {self.ood_images}; "
                "for no OoD images use the classifier itself (method cam)"
            )



def reference_recipe() -> WoodConfig:
    """The reference's settings (PASCAL VOC, ResNet-50, with the IRN classifier recipe)."""
    return WoodConfig()


def synth_recipe() -> WoodConfig:
    """The generated benchmark (128 px, ~1000 train and 300 OoD images, resnet18_w16).

    Fine-tunes the synth classifier (``wsss.training.classifier.synth_recipe``) with its batch
    of 8 and an OoD batch of the same size, as the reference pairs 16 with 16. Fewer clusters
    than the reference's 50: that is about 100 OoD images per prototype on VOC, 30 here.

    Measured once (seed 0) on the default benchmark, CAM seeds on train, oracle threshold:
    the synth classifier 50.5 mIoU (context-owning classes 1 and 2: 38.0 and 43.5); this
    recipe 51.0 (44.3, 46.6); the same 5 epochs without the W-OoD losses 49.7 (41.8, 43.7).
    Restarting at the classifier's lr 0.1, as the reference does from its frozen-BN ImageNet
    ResNet-50, wrecks the from-scratch network (val exact match 0.91 -> 0.69 after 5 epochs),
    hence 0.01. A W-OoD step costs about three classifier steps (climb, OoD pass, distances),
    so the demo fine-tunes for 2 epochs. The values are the ``wood`` section of the packaged
    ``synth/demo`` recipe (one place for them).
    """
    return recipe_section("synth/demo", "wood", WoodConfig)


WOOD_RECIPES = {"reference": reference_recipe, "synth": synth_recipe}


def wood_recipe(name: str) -> WoodConfig:
    """A named W-OoD recipe (``reference`` or ``synth``)."""
    try:
        return WOOD_RECIPES[name]()
    except KeyError:
        raise ConfigError(f"unknown W-OoD recipe {name!r}; known: {', '.join(sorted(WOOD_RECIPES))}") from None


# --- k-means -------------------------------------------------------------------------------


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist").square()


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of k seeds: the first uniform, each next drawn with probability ~ D(x)^2."""
    n = points.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = _squared_distances(points, points[chosen[-1]][None])[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            index = int(torch.multinomial(nearest / total, 1, generator=generator))
        else:  # every point sits on a seed already (duplicates): any point will do
            index = int(torch.randint(n, (1,), generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, _squared_distances(points, points[index][None])[:, 0])
    return torch.tensor(chosen, dtype=torch.long)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 10,
    seed: int = 0,
    init: Literal["kmeans++", "first"] = "kmeans++",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with Euclidean distance, deterministic for a given ``seed``.

    Computed in float64 on the CPU. Stops early once an assignment repeats. A cluster left
    empty keeps its previous centroid.

    Args:
        x: (N, D) points.
        k: number of clusters, 1 <= k <= N.
        iters: at most this many assignment + update steps (reference: 10).
        seed: seeds the k-means++ draw.
        init: ``"kmeans++"`` (seeded) or ``"first"``: the first k points (the reference's).

    Returns:
        ``(centroids, assignment)``: (k, D) in ``x``'s dtype and device, and (N,) int64 cluster
        indices; every centroid of a non-empty cluster is the mean of the points assigned to it.

    Raises:
        ConfigError: ``k`` out of range, or ``iters < 1``.
    """
    if x.ndim != 2:
        raise ConfigError(f"k-means expects (N, D) points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= the number of points ({n}), got k={k}")
    if iters < 1:
        raise ConfigError(f"k-means needs at least one iteration, got {iters}")
    points = x.detach().to("cpu", torch.float64)
    if init == "first":
        centroids = points[:k].clone()
    elif init == "kmeans++":
        centroids = points[_kmeans_plus_plus(points, k, torch.Generator().manual_seed(int(seed)))].clone()
    else:
        raise ConfigError(f"unknown k-means init {init!r}; known: kmeans++, first")
    assignment: torch.Tensor | None = None
    for _ in range(iters):
        nearest = _squared_distances(points, centroids).argmin(dim=1)
        if assignment is not None and torch.equal(nearest, assignment):
            break  # converged: the update would reproduce the same centroids
        assignment = nearest
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(points.dtype)
    assert assignment is not None
    return centroids.to(device=x.device, dtype=x.dtype), assignment.to(x.device)


# --- prototypes ----------------------------------------------------------------------------


def _pool(model: CamNet, images: torch.Tensor) -> torch.Tensor:
    """GAP of the backbone features (B, D): the vector the classifier head sees."""
    return model.features(images).mean(dim=(2, 3))


@torch.no_grad()
def pooled_features(
    model: CamNet,
    images: Iterable[np.ndarray],
    *,
    device: torch.device,
    transform: EvalTransform | None = None,
    batch_size: int = 16,
    total: int | None = None,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """GAP features (N, D) of ``uint8`` images, in eval mode (the caller's mode is restored).

    Consecutive images of equal size (after ``transform``) share a forward pass.
    """
    transform = transform or EvalTransform()
    pooled: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            pooled.append(_pool(model, torch.stack(batch).to(device)).float().cpu())
            batch.clear()

    with eval_mode(model):
        for image in tqdm(images, total=total, desc=desc, disable=not progress, leave=False):
            tensor = transform(image)
            if batch and (tensor.shape != batch[0].shape or len(batch) >= batch_size):
                flush()
            batch.append(tensor)
        flush()
    if not pooled:
        return torch.zeros((0, model.backbone.out_channels))
    return torch.cat(pooled)


def class_prototypes(
    model: CamNet,
    dataset: ImageLabelSource,
    device: torch.device | str,
    *,
    transform: EvalTransform | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """One prototype per foreground class: the mean GAP feature of the images containing it.

    Whole images, no augmentation (reference). An image with several classes counts for each.
    A class no image contains gets a zero prototype (it never weighs in the pull term, whose
    every distance is multiplied by the class label).

    Returns:
        (K, D) on ``device``, row ``c - 1`` for class ``c``.
    """
    device = resolve_device(device)
    ids = list(dataset.ids)
    if not ids:
        raise ConfigError("cannot compute class prototypes: the dataset is empty")
    features = pooled_features(model, (dataset.load_image(i) for i in ids), device=device,
                               transform=transform, batch_size=batch_size, total=len(ids),
                               progress=progress, desc="class prototypes").double()
    labels = torch.as_tensor(np.stack([np.asarray(dataset.label_vector(i), np.float64) for i in ids]))
    counts = labels.sum(dim=0)
    sums = labels.T @ features
    prototypes = sums / counts.clamp_min(1.0)[:, None]
    missing = [c + 1 for c in range(len(counts)) if counts[c] == 0]
    if missing:
        log.warning("no training image contains class(es) %s: their prototypes are zero", missing)
    return prototypes.float().to(device)


def ood_prototypes(
    model: CamNet,
    ood_images: Any,
    k: int,
    device: torch.device | str,
    seed: int = 0,
    *,
    iterations: int = 10,
    init: Literal["kmeans++", "first"] = "first",
    resize_long: int | None = 500,
    transform: EvalTransform | None = None,
    batch_size: int = 16,
    progress: bool = False,
    return_assignment: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """K OoD prototypes: k-means centroids of the OoD images' GAP features.

    Args:
        model: the classifier.
        ood_images: an :class:`~wsss.data.ood.OoDImages` (``len`` and ``load_image(index)``).
        k: number of prototypes (reference: 50); at most the number of OoD images.
        device: where to run the network.
        seed: seeds k-means++.
        iterations, init: see :func:`kmeans` (default ``"first"``, the reference's start).
        resize_long: long side the OoD images are resized to (reference: 500), ``None`` to keep.
        transform: normalisation (default ImageNet); its ``resize_long`` is overridden.
        batch_size: same-size images per forward pass.
        progress: show a progress bar.
        return_assignment: also return each OoD image's cluster.

    Returns:
        (k, D) on ``device`` (and the (N,) assignment when asked).

    Raises:
        ConfigError: fewer OoD images than ``k``.
        DataError: an OoD image cannot be read (named).
    """
    device = resolve_device(device)
    count = len(ood_images)
    source = getattr(ood_images, "list_file", None)
    if count < k:
        raise ConfigError(
            f"{count} OoD images, fewer than the {k} OoD prototypes asked for (wood.ood_clusters)", source
        )
    transform = transform or EvalTransform()
    transform = dataclasses.replace(transform, resize_long=resize_long)
    features = pooled_features(model, (ood_images.load_image(i) for i in range(count)), device=device,
                               transform=transform, batch_size=batch_size, total=count,
                               progress=progress, desc="OoD prototypes")
    centroids, assignment = kmeans(features, k, iters=iterations, seed=seed, init=init)
    centroids = centroids.to(device)
    return (centroids, assignment) if return_assignment else centroids


# --- the losses ----------------------------------------------------------------------------


def feature_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, P) between features (B, D) and prototypes (P, D).

    Exact (no matrix-product shortcut), with a zero gradient where a distance is zero.
    """
    return torch.cdist(features, prototypes.to(features.dtype), compute_mode="donot_use_mm_for_euclid_dist")


def push_threshold(ood_distances: torch.Tensor, quantile: float) -> float | None:
    """The reference's push threshold over a batch's OoD distances, or ``None`` (no push).

    The smallest of the ``int(n * (1 - quantile))`` largest of the n distances; distances
    strictly below it are pushed. ``None`` when that count is zero (a batch too small).
    """
    values = ood_distances.detach().flatten()
    keep = int(values.numel() * (1.0 - quantile))
    if keep < 1:
        return None
    return float(torch.topk(values, keep).values[-1])


def distance_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_prototypes: torch.Tensor,
    ood_prototypes: torch.Tensor,
    *,
    push_quantile: float = 0.2,
) -> torch.Tensor:
    """W-OoD's distance loss ``L_d`` (see the module docstring), as the reference normalises it.

    Args:
        features: GAP features (B, D) of the in-distribution batch.
        labels: multi-hot (B, C) labels over the C foreground classes.
        class_prototypes: (C, D).
        ood_prototypes: (K, D).
        push_quantile: tau; OoD distances below the batch's tau-quantile are pushed.

    Returns:
        A scalar: ``(C / K) * mean(labels * d_class) - mean(d_ood * [d_ood < t])``, both means
        over every entry of their (B, C) and (B, K) matrices.
    """
    if labels.shape != (features.shape[0], class_prototypes.shape[0]):
        raise ConfigError(
            f"labels {tuple(labels.shape)} do not match {features.shape[0]} features and "
            f"{class_prototypes.shape[0]} class prototypes"
        )
    class_distances = feature_distances(features, class_prototypes)
    ood_distances = feature_distances(features, ood_prototypes)
    ratio = class_prototypes.shape[0] / ood_prototypes.shape[0]  # reference: 20 / cluster_K
    pull = (class_distances * labels.to(class_distances.dtype)).mean() * ratio
    threshold = push_threshold(ood_distances, push_quantile)
    if threshold is None:
        return pull
    push = (ood_distances * (ood_distances < threshold)).mean()
    return pull - push


def ood_classification_loss(
    logits: torch.Tensor,
    *,
    normaliser: float | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multilabel soft margin against an all-zero target, summed over images, / ``normaliser``.

    Per image this is ``mean_c softplus(logit_c)``. The reference divides the sum by the
    in-distribution batch size (``cam_batch_size``); ``None`` divides by the number of images.

    Args:
        logits: (N, C) logits of OoD images.
        normaliser: the divisor.
        keep: optional (N,) boolean mask of the images that count.
    """
    per_image = F.multilabel_soft_margin_loss(logits, torch.zeros_like(logits), reduction="none")
    if keep is not None:
        per_image = per_image * keep.to(per_image.dtype)
    return per_image.sum() / (float(logits.shape[0]) if normaliser is None else float(normaliser))


def ood_climb(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    step_size: float = 0.07,
    iterations: int = 1,
    normalisation: Literal["batch", "image", "sign"] = "batch",
) -> torch.Tensor:
    """OoD images moved ``iterations`` steps towards a higher maximum logit (detached).

    The objective is ``sum_i max_c logit_c(x_i)``; only the input's gradient is taken, so the
    model's parameter gradients are left as they were. The model runs in its current mode.
    """
    bounds = (float(images.min()), float(images.max()))
    current = images.detach()
    for _ in range(iterations):
        current = current.clone().requires_grad_(True)
        with torch.enable_grad():
            objective = model(current).max(dim=1).values.sum()
            (gradient,) = torch.autograd.grad(objective, current)
        current = climb_step(current.detach(), gradient, step_size, normalisation, bounds)
    return current.detach()


# --- training ------------------------------------------------------------------------------


class OoDSubset:
    """``count`` of the OoD images, drawn without replacement with ``seed`` (in list order).

    Raises:
        ConfigError: more images asked for than the list holds.
    """

    def __init__(self, ood: Any, count: int, seed: int = 0) -> None:
        total = len(ood)
        if count > total:
            raise ConfigError(f"wood.ood_images is {count} but the OoD list has {total} images",
                              getattr(ood, "list_file", None))
        generator = torch.Generator().manual_seed(int(seed))
        self.ood = ood
        self.indices = sorted(torch.randperm(total, generator=generator)[:count].tolist())
        self.list_file = getattr(ood, "list_file", None)

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, index: int) -> np.ndarray:
        return self.ood.load_image(self.indices[index])

    def __repr__(self) -> str:
        return f"OoDSubset({self.ood!r}, {len(self)} images)"


class _OoDTrainingImages(Dataset):
    """OoD images with the classifier's training augmentation, for a ``DataLoader``."""

    def __init__(self, ood: Any, transform: TrainTransform) -> None:
        self.ood = ood
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ood)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return self.transform(self.ood.load_image(index), rng)


def _load_init(init: str | os.PathLike, num_classes: int, classes: Sequence[str] | None,
               device: torch.device) -> CamNet:
    model = load_cam_net(init, num_classes=num_classes, map_location=device).to(device)
    if classes is not None and model.classes is not None and list(model.classes) != list(classes):
        raise ConfigError(f"checkpoint classes {model.classes} differ from the dataset's {list(classes)}", init)
    return model


CHECKPOINT_FORMAT = "wsss-wood-checkpoint"


def train_wood(
    dataset: ImageLabelSource,
    ood: Any,
    config: WoodConfig | None = None,
    classifier_config: ClassifierConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    init: str | os.PathLike,
    val_source: ImageLabelSource | None = None,
    progress: bool = True,
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune a trained CAM classifier with W-OoD's distance and OoD losses.

    As the reference: prototypes come from the initial classifier, then the whole classifier
    schedule runs again (poly-decayed SGD from the recipe's learning rate) with
    ``L_cls + distance_weight * L_d + ood_weight * L_ood``; the last model is saved.

    Args:
        dataset: in-distribution training images and labels (``ids``, ``load_image``,
            ``label_vector``, optionally ``classes``).
        ood: the OoD images (:class:`~wsss.data.ood.OoDImages`).
        config: W-OoD settings (default: the reference's).
        classifier_config: optimiser, batch size, augmentation and normalisation (default IRN's);
            its ``epochs``/``lr`` apply unless ``config`` sets its own. Backbone settings come
            from the checkpoint.
        device: where to train.
        out: checkpoint path (a :class:`CamNet` checkpoint, written atomically at the end).
        init: the trained CAM classifier to start from.
        val_source: classification metrics after every epoch (no masks are used).
        progress: tqdm bars.
        seed: overrides ``classifier_config.seed``; seeds augmentation, shuffling and k-means.
        checkpoint_dir: a folder for a training checkpoint at every epoch end (the prototypes
            and the OoD stream's position included); ``None``: none.
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one (the same weights
            as an uninterrupted run with ``num_workers=0``); ``False`` starts over.
        callback: ``callback(iteration, loss)`` after every update; raising stops training.

    Returns:
        A :class:`~wsss.training.classifier.TrainResult`; each history record also holds the
        mean ``classification``, ``distance`` and ``ood`` terms.

    Raises:
        ConfigError: bad settings, too few images for a batch or for the OoD prototypes, a
            checkpoint for other classes.
        DataError: unreadable checkpoint or image (named), an empty OoD list.
    """
    config = config or WoodConfig()
    config.validate()
    classifier_config = classifier_config or ClassifierConfig()
    if seed is not None:
        classifier_config = classifier_config.replace(seed=int(seed))
    classifier_config.validate()
    seed = classifier_config.seed
    epochs = config.epochs if config.epochs is not None else classifier_config.epochs
    lr = config.lr if config.lr is not None else classifier_config.lr
    device = resolve_device(device)
    if len(ood) == 0:
        raise DataError("OoD image list is empty", getattr(ood, "list_file", None))
    if config.ood_images is not None:
        ood = OoDSubset(ood, config.ood_images, seed)
    seed_everything(seed)

    num_classes, classes = _num_foreground_classes(dataset)
    model = _load_init(init, num_classes, classes, device)
    if config.freeze_bn is not None:
        model.freeze_bn = bool(config.freeze_bn)
    if classes is not None and model.classes is None:
        model.classes = list(classes)
    bad_ignore = [c for c in config.ood_ignore_classes if int(c) > num_classes]
    if bad_ignore:
        raise ConfigError(f"wood.ood_ignore_classes {bad_ignore} exceed the {num_classes} classes")

    augment = TrainTransform(classifier_config.crop_size, classifier_config.resize_long,
                             classifier_config.hflip, classifier_config.mean, classifier_config.std)
    train_set = ClassificationDataset(dataset, augment)
    batch_size = classifier_config.batch_size
    if len(train_set) < batch_size:
        raise ConfigError(f"the training set has {len(train_set)} images, fewer than one batch of {batch_size}")
    use_ood = config.ood_weight > 0
    if use_ood and len(ood) < config.ood_batch_size:
        raise ConfigError(
            f"{len(ood)} OoD images, fewer than one OoD batch of {config.ood_batch_size} (wood.ood_batch_size)",
            getattr(ood, "list_file", None),
        )
    num_workers = (os.cpu_count() or 2) // 2 if classifier_config.num_workers is None else classifier_config.num_workers
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
    ood_batches: EndlessLoader | None = None
    if use_ood:
        # The reference restarts its OoD iterator whenever it runs out: a reshuffled pass each time.
        ood_batches = EndlessLoader(DataLoader(
            _OoDTrainingImages(ood, augment), batch_size=config.ood_batch_size, shuffle=True, drop_last=True,
            num_workers=num_workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed + 1), persistent_workers=num_workers > 0,
        ))

    eval_transform = EvalTransform(mean=classifier_config.mean, std=classifier_config.std)
    use_distance = config.distance_weight > 0
    cluster_sizes: list[list[int]] = []
    prototypes: list[torch.Tensor] = []  # [by class, by OoD cluster] once computed

    def compute_prototypes() -> None:
        started = time.perf_counter()
        by_class = class_prototypes(model, dataset, device, transform=eval_transform,
                                    batch_size=config.feature_batch_size, progress=progress)
        by_cluster, assignment = ood_prototypes(
            model, ood, config.ood_clusters, device, seed, iterations=config.kmeans_iterations,
            init=config.kmeans_init, resize_long=config.ood_resize_long, transform=eval_transform,
            batch_size=config.feature_batch_size, progress=progress, return_assignment=True,
        )
        sizes = torch.bincount(assignment, minlength=config.ood_clusters).tolist()
        cluster_sizes.append(sizes)
        prototypes[:] = [by_class, by_cluster]
        log.info("prototypes: %d classes, %d OoD clusters (sizes %s) in %.1f s", len(by_class), len(by_cluster),
                 sizes, time.perf_counter() - started)

    def restore_prototypes(state: dict[str, Any]) -> None:
        prototypes[:] = [tensor.to(device) for tensor in state["prototypes"]]
        cluster_sizes[:] = [list(sizes) for sizes in state["cluster_sizes"]]

    steps_per_epoch = len(train_set) // batch_size
    max_steps = steps_per_epoch * epochs
    backbone_params, head_params = model.parameter_groups()
    optimizer, scheduler = poly_sgd(
        [(backbone_params, 1.0), (head_params, classifier_config.classifier_lr_mult)], lr,
        total_steps=max_steps, power=classifier_config.poly_power, weight_decay=classifier_config.weight_decay,
        momentum=classifier_config.momentum, nesterov=classifier_config.nesterov,
        reference_momentum_quirk=classifier_config.reference_momentum_quirk,
    )
    settings = {**{f"classifier.{k}": v for k, v in result_settings(classifier_config).items()},
                **{f"wood.{k}": v for k, v in result_settings(config).items()}, "init": str(init)}
    spec = None if checkpoint_dir is None else CheckpointSpec(
        Path(checkpoint_dir), CHECKPOINT_FORMAT, "W-OoD training checkpoint", at_epoch_end=True,
        metadata={"classes": classes, "config": {"classifier": to_dict(classifier_config), "wood": to_dict(config)}},
        settings=settings, curve_title=f"W-OoD ({model.backbone.name})",
    )
    terms = ("classification", "distance", "ood")
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=max_steps, steps_per_epoch=steps_per_epoch,
                            device=device, amp=classifier_config.amp, epoch_keys=("loss", *terms), desc="W-OoD",
                            progress=progress, checkpoint=spec, callback=callback)
    engine.track("wood", lambda: {"prototypes": [p.cpu() for p in prototypes], "cluster_sizes": cluster_sizes},
                 restore_prototypes)
    if not engine.restore(resume) and use_distance:
        compute_prototypes()  # from the initial classifier (a resumed run has them from its checkpoint)
    log.info("W-OoD: fine-tuning %s from %s on %d images + %d OoD images for %d steps on %s",
             model.backbone.name, init, len(train_set), len(ood), max_steps, device)

    ignore = torch.as_tensor([int(c) - 1 for c in config.ood_ignore_classes], dtype=torch.long, device=device)

    def refresh(epoch: int) -> None:
        every = config.refresh_prototypes_every
        if use_distance and epoch > 0 and every and epoch % every == 0:
            compute_prototypes()

    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float | None]]:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with engine.autocast():
            pooled = _pool(model, images)
            logits = model.classifier(pooled[:, :, None, None]).flatten(1)
        pooled, logits = pooled.float(), logits.float()
        classification = F.multilabel_soft_margin_loss(logits, labels)
        loss = classification
        values: dict[str, float | None] = {"classification": classification.item(), "distance": None, "ood": None}
        if prototypes:
            distance = distance_loss(pooled, labels, prototypes[0], prototypes[1], push_quantile=config.push_quantile)
            loss = loss + config.distance_weight * distance
            values["distance"] = distance.item()
        if ood_batches is not None:
            ood_images = next(ood_batches).to(device, non_blocking=True)
            with engine.autocast():
                climbed = ood_climb(model, ood_images, step_size=config.climb_step,
                                    iterations=config.climb_iterations, normalisation=config.climb_normalisation)
                ood_logits = model(climbed).float()
            keep = None
            if ignore.numel():
                keep = ~torch.isin(ood_logits.argmax(dim=1), ignore)
            ood_loss = ood_classification_loss(ood_logits, normaliser=batch_size, keep=keep)
            loss = loss + config.ood_weight * ood_loss
            values["ood"] = ood_loss.item()
        return loss, values

    def validate(record: dict[str, Any]) -> None:
        if val_source is None:
            return
        metrics = evaluate_classifier(model, val_source, device=device, batch_size=classifier_config.eval_batch_size,
                                      resize_long=classifier_config.eval_resize_long)
        record["val"] = metrics.as_dict()
        log.info("W-OoD epoch %d/%d: val exact match %.3f, mAP %.4f", record["epoch"], epochs,
                 metrics.exact_match, metrics.mean_ap)

    engine.fit(ShuffledLoader(loader), step, streams={"ood": ood_batches} if ood_batches is not None else None,
               on_epoch_start=refresh, on_epoch_end=validate)
    result = TrainResult(model=model, history=engine.epochs,
                         seconds=sum(record["seconds"] for record in engine.epochs))
    if out is not None:
        model.save(out, extra={
            "recipe": classifier_config.to_dict(), "wood": config.to_dict(), "init": str(Path(init)),
            "history": result.history, "train_seconds": result.seconds, "ood_images": len(ood),
            "ood_cluster_sizes": cluster_sizes,
        })
        result.checkpoint = Path(out)
        log.info("saved %s", out)
    return result
