"""Losses for training a segmentation network on pseudo masks.

A :class:`SegLoss` is called as ``loss(logits, target, **extra)`` with logits (B, C, h, w) at the
network's output stride and a target (B, H, W) ``long`` label map (255 = ignore), and returns a
scalar. Further label maps it needs (``required_targets``, e.g. ``target_ret``) come as keyword
arguments under their names; ``train_segmentation`` passes them from the targets its data gives
and refuses, before training, a loss whose targets are not given. Build one with
:func:`make_loss`:

============== ============================================================ ===========
name           what                                                         extras
============== ============================================================ ===========
``ce``         cross-entropy over non-ignored pixels                        -
``balanced_ce`` DSRG's balanced seed loss: mean CE over background pixels  -
               plus mean CE over foreground pixels (AdvCAM's DeepLab)
``nal``        BANA's noise-aware loss (main paper Sec. 3.3, supplement)    ``target_ret``, cosine
``entropy``    CE on S + lambda * entropy on ~S (BANA supplement Eqs. 4-5)  ``target_ret``
``bootstrap``  CE on S + lambda * bootstrapped CE on ~S (Eqs. 6-8)          ``target_ret``, ``beta``
============== ============================================================ ===========

For the last three, ``target`` is BANA's Y_crf and ``target_ret`` its Y_ret (both (B, H, W));
the reliable region S is where they agree (and ``target`` is not 255), the unreliable region
~S where they disagree (``target`` not 255), exactly BANA's ``mask_fin``/``unrel_region``.

Resolution (option ``resize``): logits are at stride 8, labels at full size. Either the
logits (and any per-pixel maps) are upsampled bilinearly to the label size (``"logits"``, as
BANA's ``stage3_vgg.py``, with ``align_corners=True`` there) or the labels are downsampled by
nearest neighbour to the logit size (``"target"``, as kazuto1011's ``resize_labels`` for
DeepLab-v2 and DSRG's seeds at the output resolution; ``nearest-exact`` samples pixel centres
like PIL's NEAREST that kazuto1011 uses). Defaults follow the reference of each loss: ``ce``
and ``balanced_ce`` downsample the target; ``nal``, ``entropy`` and ``bootstrap`` upsample the
logits with ``align_corners=True``.

Every loss returns 0 (still attached to the graph, so ``backward()`` works) instead of NaN when
a term has no pixels: an all-ignored batch, no foreground, no unreliable pixel.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss.errors import ConfigError
from wsss.io import IGNORE_INDEX

__all__ = [
    "BalancedCrossEntropy",
    "BootstrappedLoss",
    "CrossEntropy",
    "EntropyRegularisedLoss",
    "NoiseAwareLoss",
    "SegLoss",
    "balanced_cross_entropy",
    "bootstrap_beta",
    "bootstrapped_cross_entropy",
    "cross_entropy",
    "entropy_regularised_cross_entropy",
    "list_losses",
    "make_loss",
    "noise_aware_loss",
    "reliable_regions",
]

NAL_DAMPING = 7.0  # BANA configs/stage3_vgg.yml MODEL.DAMP; supplement Fig. 1: gamma = 7
UNRELIABLE_WEIGHT = 0.1  # BANA MODEL.LAMBDA; supplement Eqs. 5 and 8: lambda = 0.1 for all three
_EPS = 1e-12
RESIZE_MODES = ("logits", "target")


# --------------------------------------------------------------------------------------------
# Functional forms (logits and labels at the same resolution)
# --------------------------------------------------------------------------------------------


def _pixel_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross-entropy (0 at ignored pixels) and the valid mask."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    return F.cross_entropy(logits, safe, reduction="none") * valid, valid


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: Any = None) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (attached to the graph) where the mask is empty."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: (B, C, H, W).
        target: (B, H, W) ``long``.
        ignore_index: label that is left out (255).
    """
    ce, valid = _pixel_ce(logits, target, ignore_index)
    return _masked_mean(ce, valid)


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, per_image: bool = True,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DSRG's balanced seed loss: background and foreground pixels averaged separately, then summed.

    ``L = mean_b [ sum_{p in bg_b} CE_p / |bg_b| ] + mean_b [ sum_{p in fg_b} CE_p / |fg_b| ]``
    (DSRG ``pylayers.py`` ``BalancedSeedLossLayer``: per image, the two terms summed, each
    averaged over the batch; an image with no pixels of a kind adds 0 to that term but still
    counts in the batch mean). Background is label 0; foreground is 1..C-1.

    Args:
        logits: (B, C, H, W).
        target: (B, H, W) ``long``.
        per_image: normalise per image as DSRG (``True``), or pool the batch's pixels:
            ``sum_bg CE / |bg| + sum_fg CE / |fg|``.
        ignore_index: label that is left out.
    """
    ce, valid = _pixel_ce(logits, target, ignore_index)
    background = valid & (target == 0)
    foreground = valid & (target != 0)
    if per_image:
        return (_masked_mean(ce, background, dim=(1, 2)).mean()
                + _masked_mean(ce, foreground, dim=(1, 2)).mean())
    return _masked_mean(ce, background) + _masked_mean(ce, foreground)


def reliable_regions(target: torch.Tensor, target_ret: torch.Tensor, ignore_index: int = IGNORE_INDEX
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, ~S): where Y_crf and Y_ret agree / disagree, among pixels where Y_crf is not ignored."""
    valid = target != ignore_index
    agree = target == target_ret
    return valid & agree, valid & ~agree


def noise_aware_loss(logits: torch.Tensor, target: torch.Tensor, target_ret: torch.Tensor,
                     cosine: torch.Tensor, *, damping: float = NAL_DAMPING,
                     unreliable_weight: float = UNRELIABLE_WEIGHT, detach_confidence: bool = False,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """BANA's noise-aware loss ``L = L_ce(S) + lambda * L_wce(~S)``.

    * ``L_ce``: mean cross-entropy against Y_crf over the reliable region S (Y_crf == Y_ret).
    * ``L_wce = sum_{~S} sigma * CE / sum_{~S} sigma`` against Y_crf over the unreliable region,
      with the confidence ``sigma = alpha ** gamma`` and
      ``alpha(p) = D_{c*}(p) / max_c D_c(p)``, ``D_c(p) = 1 + cos(phi(p), W_c)``, ``c* = Y_crf(p)``
      (supplement Eq. 1; BANA ``stage3_vgg.py``). alpha is normalised **per pixel** by the best
      class, so it lies in [0, 1] with 1 where Y_crf's class is the most similar.

    As in BANA, sigma is not detached: the loss also pulls features towards Y_crf's class weight
    through the weights (``detach_confidence=True`` stops that).

    Args:
        logits: (B, C, H, W), for BANA ``tau * cosine``.
        target: (B, H, W) Y_crf.
        target_ret: (B, H, W) Y_ret.
        cosine: (B, C, H, W) cosine similarity between each pixel's feature and each class weight.
        damping: gamma (7).
        unreliable_weight: lambda (0.1).
        detach_confidence: treat sigma as a constant.
        ignore_index: label that is left out.
    """
    ce, valid = _pixel_ce(logits, target, ignore_index)
    reliable, unreliable = reliable_regions(target, target_ret, ignore_index)
    loss_reliable = _masked_mean(ce, reliable)
    correlation = 1.0 + cosine
    safe = torch.where(valid, target, torch.zeros_like(target))
    own = correlation.gather(1, safe.unsqueeze(1)).squeeze(1)
    alpha = own / correlation.amax(dim=1).clamp_min(_EPS)
    sigma = alpha.clamp_min(0.0) ** damping
    if detach_confidence:
        sigma = sigma.detach()
    weights = sigma * unreliable
    loss_unreliable = (weights * ce).sum() / weights.sum().clamp_min(_EPS)
    return loss_reliable + unreliable_weight * loss_unreliable


def entropy_regularised_cross_entropy(logits: torch.Tensor, target: torch.Tensor, target_ret: torch.Tensor, *,
                                      unreliable_weight: float = UNRELIABLE_WEIGHT,
                                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """BANA supplement Eqs. 4-5: ``L_ce(S) + lambda * L_ER``,
    ``L_ER = -1/|~S| sum_{p in ~S} sum_c H_c(p) log H_c(p)`` with ``H = softmax(logits)``."""
    ce, _ = _pixel_ce(logits, target, ignore_index)
    reliable, unreliable = reliable_regions(target, target_ret, ignore_index)
    log_probs = F.log_softmax(logits, dim=1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1)
    return _masked_mean(ce, reliable) + unreliable_weight * _masked_mean(entropy, unreliable)


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, target_ret: torch.Tensor, *,
                               beta: float, unreliable_weight: float = UNRELIABLE_WEIGHT,
                               region: str = "unreliable", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """BANA supplement Eqs. 6-8: ``L_ce(S) + lambda * L_BS``, soft bootstrapping (Reed et al.).

    ``L_BS = -1/|R| sum_{p in R} sum_c Y_c(p) log H_c(p)`` with the new target
    ``Y = beta * onehot(Y_crf) + (1 - beta) * H`` (Eq. 7). H inside Y is detached: the target
    is the E-step estimate, the model is fitted to it (the supplement's EM reading).

    The region R: Eq. 6 as printed sums over S, but the section introduces these losses "to deal
    with the unreliable regions ~S", Eq. 4 uses ~S, and on S the plain CE already applies; so
    ``region="unreliable"`` (~S) is the default and ``"reliable"`` follows the printed equation.

    Args:
        beta: balance between Y_crf (1) and the prediction (0); BANA decays it from 1 to 0 with
            the poly schedule (:func:`bootstrap_beta`).
    """
    if region not in ("unreliable", "reliable"):
        raise ConfigError(f"bootstrap region must be 'unreliable' or 'reliable', got {region!r}")
    ce, valid = _pixel_ce(logits, target, ignore_index)
    reliable, unreliable = reliable_regions(target, target_ret, ignore_index)
    log_probs = F.log_softmax(logits, dim=1)
    safe = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(log_probs.dtype)
    soft_target = beta * one_hot + (1.0 - beta) * log_probs.detach().exp()
    bootstrap = -(soft_target * log_probs).sum(dim=1)
    where = unreliable if region == "unreliable" else reliable
    return _masked_mean(ce, reliable) + unreliable_weight * _masked_mean(bootstrap, where)


def bootstrap_beta(step: int, max_steps: int, power: float = 0.9) -> float:
    """beta at ``step`` of ``max_steps``: poly decay ``(1 - step / max_steps) ** power`` from 1 to 0."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    return float((1.0 - min(max(step, 0), max_steps) / max_steps) ** power)


# --------------------------------------------------------------------------------------------
# SegLoss objects: resolution handling and the extras contract
# --------------------------------------------------------------------------------------------


class SegLoss:
    """Base class: aligns logits and labels, then calls the functional form.

    Attributes:
        name: the :func:`make_loss` name.
        required_targets: label maps ``__call__`` needs besides ``target``, as keyword
            arguments (B, H, W) named as the training data's targets (e.g. ``target_ret``).
        resize: ``"logits"`` (upsample logits bilinearly to the label size) or ``"target"``
            (downsample labels by nearest neighbour to the logit size).
        align_corners: for the bilinear upsampling.
        ignore_index: ignored label (255).
        last_terms: detached scalars of the last call's terms, for logging.
    """

    name: ClassVar[str] = ""
    required_targets: ClassVar[tuple[str, ...]] = ()
    default_resize: ClassVar[str] = "target"
    default_align_corners: ClassVar[bool] = False

    def __init__(self, *, resize: str | None = None, align_corners: bool | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.resize = self.default_resize if resize is None else resize
        if self.resize not in RESIZE_MODES:
            raise ConfigError(
                f"loss {self.name}: resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.align_corners = self.default_align_corners if align_corners is None else bool(align_corners)
        self.ignore_index = int(ignore_index)
        self.last_terms: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "last_terms")
        return f"{type(self).__name__}({options})"

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, **extra: Any) -> torch.Tensor:
        missing = [k for k in self.required_targets if extra.get(k) is None]
        if missing:
            raise ValueError(f"loss {self.name!r} needs {', '.join(missing)}")
        self._check(logits, target)
        return self.compute(logits, target, **extra)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]:
            raise ValueError(
                f"loss {self.name!r}: logits must be (B, C, h, w) and target (B, H, W) with the same B, "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        bad = (target != self.ignore_index) & ((target < 0) | (target >= logits.shape[1]))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(
                f"loss {self.name!r}: target holds label {value}, outside 0..{logits.shape[1] - 1} "
                f"and not the ignore label {self.ignore_index}"
            )

    def _align(self, logits: torch.Tensor, target: torch.Tensor, maps: tuple[torch.Tensor, ...] = (),
               labels: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Bring logits, per-pixel ``maps`` (B, *, h, w) and label maps (B, H, W) to one size."""
        for label in labels:
            if label.shape != target.shape:
                raise ValueError(f"loss {self.name!r}: label maps must share the target's shape "
                                 f"{tuple(target.shape)}, got {tuple(label.shape)}")
        size = tuple(target.shape[-2:])
        if tuple(logits.shape[-2:]) == size:
            return logits, target.long(), maps, tuple(label.long() for label in labels)
        if self.resize == "logits":
            def up(x: torch.Tensor) -> torch.Tensor:
                return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
            labels = tuple(label.long() for label in labels)
            return up(logits), target.long(), tuple(up(m) for m in maps), labels
        small = tuple(logits.shape[-2:])

        def down(label: torch.Tensor) -> torch.Tensor:
            # Labels up to 255 are exact in float32; nearest-exact samples pixel centres.
            resized = F.interpolate(label[:, None].float(), size=small, mode="nearest-exact")
            return resized[:, 0].long()
        return logits, down(target), maps, tuple(down(label) for label in labels)


class CrossEntropy(SegLoss):
    """``ce``: cross-entropy over non-ignored pixels (DeepLab-v2, kazuto1011)."""

    name = "ce"

    def compute(self, logits, target, **extra):
        logits, target, _, _ = self._align(logits, target)
        loss = cross_entropy(logits, target, self.ignore_index)
        self.last_terms = {"ce": loss.detach()}
        return loss


class BalancedCrossEntropy(SegLoss):
    """``balanced_ce``: DSRG's balanced seed loss (see :func:`balanced_cross_entropy`).

    Args:
        per_image: DSRG's per-image normalisation (default) or batch pooling.
    """

    name = "balanced_ce"

    def __init__(self, *, per_image: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.per_image = bool(per_image)

    def compute(self, logits, target, **extra):
        logits, target, _, _ = self._align(logits, target)
        loss = balanced_cross_entropy(logits, target, per_image=self.per_image,
                                      ignore_index=self.ignore_index)
        self.last_terms = {"balanced_ce": loss.detach()}
        return loss


class _ReliableRegionLoss(SegLoss):
    """Shared by the three BANA losses: BANA's resolution handling and lambda."""

    required_targets = ("target_ret",)
    default_resize = "logits"  # BANA stage3_vgg.py upsamples the logits to the crop size
    default_align_corners = True  # ... with align_corners=True

    def __init__(self, *, unreliable_weight: float = UNRELIABLE_WEIGHT, **options: Any) -> None:
        super().__init__(**options)
        if not unreliable_weight >= 0:
            raise ConfigError(f"loss {self.name}: unreliable_weight must be >= 0, got {unreliable_weight}")
        self.unreliable_weight = float(unreliable_weight)


class NoiseAwareLoss(_ReliableRegionLoss):
    """``nal``: BANA's noise-aware loss (see :func:`noise_aware_loss`).

    Extras:
        target_ret: (B, H, W) Y_ret, same size as ``target`` (Y_crf).
        cosine: (B, C, h, w) cosine similarities between pixel features and class weights, at
            the logits' or the labels' resolution; or
        features + class_weights: (B, D, h, w) and (C, D) (``model.forward_with_features`` and
            ``model.class_weights``), from which the cosine is computed at the feature
            resolution and then resized like the logits, as BANA; or neither, with ``scale``
            set: the logits are ``scale * cosine`` (the cosine classifier), so
            ``cosine = logits / scale``.

    Args:
        damping: gamma (7).
        unreliable_weight: lambda (0.1).
        scale: tau of a cosine classifier, to read the cosine off the logits; ``None`` requires
            an explicit ``cosine`` or ``features``/``class_weights``.
        detach_confidence: stop gradients through sigma (BANA does not).
    """

    name = "nal"

    def __init__(self, *, damping: float = NAL_DAMPING, scale: float | None = None,
                 detach_confidence: bool = False, **options: Any) -> None:
        super().__init__(**options)
        if not damping >= 0:
            raise ConfigError(f"loss nal: damping must be >= 0, got {damping}")
        if scale is not None and not scale > 0:
            raise ConfigError(f"loss nal: scale must be positive, got {scale}")
        self.damping = float(damping)
        self.scale = None if scale is None else float(scale)
        self.detach_confidence = bool(detach_confidence)

    def _cosine(self, logits: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        cosine = extra.get("cosine")
        if cosine is not None:
            return cosine
        features, weights = extra.get("features"), extra.get("class_weights")
        if features is not None and weights is not None:
            weights = weights.reshape(weights.shape[0], -1)
            return torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), F.normalize(weights, dim=1))
        if self.scale is not None:
            return logits / self.scale
        raise ValueError("loss 'nal' needs cosine=, or features= and class_weights=, or the scale option")

    def compute(self, logits, target, **extra):
        cosine = self._cosine(logits, extra)
        if cosine.shape[:2] != logits.shape[:2]:
            raise ValueError(f"loss 'nal': cosine must be (B, C, h, w) like the logits "
                             f"{tuple(logits.shape)}, got {tuple(cosine.shape)}")
        if cosine.shape[-2:] != logits.shape[-2:] and cosine.shape[-2:] != target.shape[-2:]:
            raise ValueError("loss 'nal': cosine maps must be at the logits' or the labels' resolution")
        if cosine.shape[-2:] == target.shape[-2:] and logits.shape[-2:] != target.shape[-2:]:
            if self.resize == "target":
                raise ValueError("loss 'nal': full-resolution cosine maps need resize='logits'")
            logits, target, _, (target_ret,) = self._align(logits, target, labels=(extra["target_ret"],))
        else:
            logits, target, (cosine,), (target_ret,) = self._align(
                logits, target, maps=(cosine,), labels=(extra["target_ret"],))
        loss = noise_aware_loss(logits, target, target_ret, cosine, damping=self.damping,
                                unreliable_weight=self.unreliable_weight,
                                detach_confidence=self.detach_confidence, ignore_index=self.ignore_index)
        self.last_terms = {"nal": loss.detach()}
        return loss


class EntropyRegularisedLoss(_ReliableRegionLoss):
    """``entropy``: CE on S + lambda * entropy on ~S (:func:`entropy_regularised_cross_entropy`)."""

    name = "entropy"

    def compute(self, logits, target, **extra):
        logits, target, _, (target_ret,) = self._align(logits, target, labels=(extra["target_ret"],))
        loss = entropy_regularised_cross_entropy(logits, target, target_ret,
                                                 unreliable_weight=self.unreliable_weight,
                                                 ignore_index=self.ignore_index)
        self.last_terms = {"entropy": loss.detach()}
        return loss


class BootstrappedLoss(_ReliableRegionLoss):
    """``bootstrap``: CE on S + lambda * bootstrapped CE (:func:`bootstrapped_cross_entropy`).

    Extras:
        target_ret: Y_ret.
        beta: optional per-call balance, e.g. :func:`bootstrap_beta` of the step; defaults to
            the ``beta`` option (``train_segmentation`` passes none, so it trains with the option).

    Args:
        beta: the balance used when the call gives none (1.0: plain CE on the region).
        region: ``"unreliable"`` (default) or ``"reliable"`` (Eq. 6 as printed).
    """

    name = "bootstrap"

    def __init__(self, *, beta: float = 1.0, region: str = "unreliable", **options: Any) -> None:
        super().__init__(**options)
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"loss bootstrap: beta must be in [0, 1], got {beta}")
        if region not in ("unreliable", "reliable"):
            raise ConfigError(f"loss bootstrap: region must be 'unreliable' or 'reliable', got {region!r}")
        self.beta = float(beta)
        self.region = region

    def compute(self, logits, target, **extra):
        beta = extra.get("beta")
        beta = self.beta if beta is None else float(beta)
        logits, target, _, (target_ret,) = self._align(logits, target, labels=(extra["target_ret"],))
        loss = bootstrapped_cross_entropy(logits, target, target_ret, beta=beta,
                                          unreliable_weight=self.unreliable_weight, region=self.region,
                                          ignore_index=self.ignore_index)
        self.last_terms = {"bootstrap": loss.detach()}
        return loss


_LOSSES: dict[str, type[SegLoss]] = {
    cls.name: cls
    for cls in (CrossEntropy, BalancedCrossEntropy, NoiseAwareLoss, EntropyRegularisedLoss, BootstrappedLoss)
}


def list_losses() -> list[str]:
    """Names :func:`make_loss` accepts."""
    return sorted(_LOSSES)


def make_loss(name: str, **options: Any) -> SegLoss:
    """Build a segmentation loss by name.

    Args:
        name: ``ce``, ``balanced_ce``, ``nal``, ``entropy`` or ``bootstrap``.
        **options: the loss's options (see each class), plus ``resize``, ``align_corners`` and
            ``ignore_index`` for all.

    Raises:
        ConfigError: unknown name or option, or a bad option value.
    """
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown segmentation loss {name!r}; known: {', '.join(list_losses())}") from None
    accepted = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                accepted.add(parameter.name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"loss {name!r} has no option(s) {', '.join(unknown)}; "
                          f"options: {', '.join(sorted(accepted))}")
    return cls(**options)
