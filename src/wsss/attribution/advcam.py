"""AdvCAM: anti-adversarial climbing (Lee et al., CVPR 2021 / TPAMI 2022), batched.

The image is perturbed *towards* its class, one trajectory per labelled class ``c``, starting
from the unperturbed flip pair ``x_0`` at every scale. At step ``t`` the network gives raw maps
``L = conv2d(features(x_t), W)`` of all K classes, and:

* the attribution map is the reference's Grad-CAM of the last stage, in closed form:
  ``A_t = s_0 relu(L[0, c]) + flip(s_1 relu(L[1, c]))`` with ``s_b = N_b / (P_c (N_0 + N_1) + 1e-12)``,
  ``N_b`` the positive pixels of ``L[b, c]`` and ``P_c`` the positive entries of ``W[c]``
  (``gap2d_pos`` divides the summed gradient by the positive entries of the whole gradient);
  the ``s_b`` are piecewise constant in ``x``, so autograd treats them as constants;
* the maps of ``t = 0 .. T-1`` are accumulated, ``sum_t A_t`` times the scale's weight (the
  reference accumulates these scaled maps, not raw CAMs, and lambda is tuned to that scale);
* the objective is maximised:
  ``J = sum_b (y_bc - sum_{k != c} y_bk) - lambda sum |A_t - A_0| M``, ``y = mean relu(L)``,
  ``M = [A_t / max A_t > tau]`` recomputed every step;
* the step is ``x <- clamp(x + xi g / (max|g| + 1e-12), min x, max x)``, ``g = dJ/dx``,
  the max and the clamp range taken over the whole pair.

The per-scale maps are assembled and normalised exactly as CAM extraction
(:func:`~wsss.attribution.cam.assemble_maps`, :func:`~wsss.attribution.cam.normalise_maps`).

What makes this fast compared with the reference (``obtain_CAM_masking.py``, kept as a plain loop
in :mod:`wsss.attribution.advcam_reference`): every class of an image (and of
``images_per_batch`` same-size images) climbs in one batch; each step is one forward and one
backward to the input only (on a frozen copy of the classifier with BatchNorm folded into the
convolutions), with no hooks and no second backward; the last step's gradient, which the
reference computes and throws away, is skipped; on the CPU the images stay channels-last from the
first step to the last. It costs what those network passes cost, a third of the reference's time
on small images (``benchmarks/advcam_speed.py``, ``docs/speed.md``). ``bfloat16=True`` (default
off, not in the reference) runs each step's forward and input-gradient backward under bfloat16
autocast; the maps, their sum, the mask, the objective and the step stay float32. It changes the
maps by a few percent (``docs/speed.md``, ``benchmarks/advcam_bfloat16_seeds.py``).

Scale weighting: the reference runs scale 0.5 with half the iterations (13 of 27) and means to
weight it twice, but its weight variable (``mul_for_scale``) is never reset, so every later scale
is doubled too and after normalisation all scales weigh the same. The default
(``reference_scale_weight=True``) is the reference's computation, which produced the published
numbers; ``reference_scale_weight=False`` gives the intended one (0.5 weighted 2, the others 1).

Strength that follows the network and the image (``scale="image"``, ``docs/scale.md``): the drift
is a *sum* over the map's ``hw`` cells of maps scaled by about ``1 / (2 P_c)``, the class margin a
*mean*, so lambda acts through ``lambda hw / (2 P_c)``. For the reference's network (ResNet-50,
output stride 16, 2048 channels) on a 500 x 375 VOC image that is ``7 * 768 / (2 * 1024)``
= 2.6; for a small classifier on small images it can be ten times that, which freezes the maps.
``scale="image"`` uses ``lambda * (hw_ref / hw) * (P_c / P_ref)`` per trajectory and input scale:
``hw`` the cells of the map actually climbed, ``hw_ref`` those of VOC's 375 x 500 image at the
same input scale at stride 16 (:func:`reference_cells`; 768 at 1.0), ``P_ref`` = 1024, half of a
ResNet-50 classifier row's 2048 weights (:data:`REFERENCE_POSITIVE_WEIGHTS`; this gives the
2.6 the issue measured). At that scale it is the literal 7. The step is normalised by the
gradient's max, so the logits' own scale does not matter; no other setting needs scaling
(tau is relative to the map's max, xi is in image intensity). :func:`climb_report` records the
class score and map area over the steps at both settings.

Example:
    >>> net.eval()
    >>> maps = compute_advcam(net, image, keys=[3, 15], device=torch.device("cuda"))
    >>> make_advcams(net, VOCDataset(root, "train"), "work/advcam", config=AdvCamConfig())
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from wsss.attribution.cam import (
    CAM_SCALES,
    CamResult,
    _check_eval_mode,
    _image_keys,
    assemble_maps,
    check_keys,
    merge_flips,
    multiscale_inputs,
    normalise_maps,
)
from wsss.config import REFERENCE_IMAGE_SIZE, check_scale, run_only_field, with_settings
from wsss.data.transforms import scaled_size
from wsss.errors import ConfigError
from wsss.io import image_size
from wsss.models.climbing import climb_step
from wsss.runtime import DistInfo, run_per_image_batched
from wsss.stores.maps import MapStore

log = logging.getLogger(__name__)

__all__ = [
    "AdvCamConfig",
    "ClimbTrace",
    "REFERENCE_POSITIVE_WEIGHTS",
    "adversarial_climb",
    "attribution_maps",
    "climb_report",
    "climbing_copy",
    "climbing_layout",
    "compute_advcam",
    "compute_advcam_batch",
    "fold_batchnorm",
    "make_advcams",
    "mask_weights",
    "reference_cells",
    "regulariser_strength",
    "scale_schedule",
]

GAP2D_POS_EPS = 1e-12  # reference misc/torchutils.gap2d_pos: sum / (count of positives + 1e-12)
REFERENCE_OUTPUT_STRIDE = 16  # AdvCAM/IRN resnet50_cam: strides (2, 2, 2, 1)
REFERENCE_POSITIVE_WEIGHTS = 1024
"""P_ref: positive entries of a class's classifier row for the reference's ResNet-50 (2048
channels), taken as half of them (weights symmetric about 0). With VOC's 768 cells at scale 1.0
this puts the effective strength at 7 * 768 / 2048 = 2.6, the issue's measured ~2.6."""


def reference_cells(scale: float) -> int:
    """``hw_ref``: the cells of the stride-16 map the reference's ResNet-50 gives for a 375 x 500
    VOC image at input scale ``scale`` (resized as :func:`~wsss.attribution.cam.multiscale_inputs`
    does, then ``ceil(n / 16)`` per side, as every stride-2 layer of a ResNet halves with
    rounding up): 192, 768, 1692, 2961 cells at 0.5, 1.0, 1.5, 2.0."""
    height, width = scaled_size(*REFERENCE_IMAGE_SIZE, scale)
    return -(-height // REFERENCE_OUTPUT_STRIDE) * -(-width // REFERENCE_OUTPUT_STRIDE)


def regulariser_strength(mask_weight: float | torch.Tensor, cells: int, positive_weights: int | torch.Tensor
                         ) -> float | torch.Tensor:
    """``lambda hw / (2 P_c)``: how strongly the drift penalty acts against the class margin
    (2.6 for the reference: lambda 7, hw 768, P_c 1024)."""
    return mask_weight * cells / (2 * positive_weights)


def mask_weights(mask_weight: float, cells: int, positive_weights: torch.Tensor, reference: int
                 ) -> torch.Tensor:
    """Per-trajectory lambda with the reference's strength: ``lambda (hw_ref / hw) (P_c / P_ref)``,
    float64, exactly ``lambda`` where ``hw = hw_ref`` and ``P_c = P_ref``.

    Args:
        mask_weight: lambda at the reference's scale (7).
        cells: ``hw``, the cells of the map being climbed.
        positive_weights: (n,) ``P_c`` per trajectory.
        reference: ``hw_ref`` for the same input scale (:func:`reference_cells`).
    """
    ratio = positive_weights.to(torch.float64) / REFERENCE_POSITIVE_WEIGHTS
    return ratio * (mask_weight * reference / cells)


@dataclass
class AdvCamConfig:
    """AdvCAM settings; defaults are the reference's (``obtain_CAM_masking.py``) unless noted."""

    iterations: int = 27  # reference --adv_iter (paper: 27)
    step_size: float = 0.08  # reference --AD_stepsize, xi (in normalised-image units)
    mask_weight: float = 7.0  # reference --AD_coeff, lambda
    mask_threshold: float = 0.5  # reference --score_th, tau
    scales: tuple[float, ...] = CAM_SCALES  # reference --cam_scales (IRN's)
    flip: bool = True  # reference: every scale with its horizontal flip
    half_iteration_scales: tuple[float, ...] = (0.5,)  # reference: scale 0.5 gets adv_iter // 2 steps
    # reference: mul_for_scale is never reset, so every scale is x2 (the published computation);
    # False: the intended weighting, scale 0.5 x2 and the others x1 (docs/quirks.md)
    reference_scale_weight: bool = True
    images_per_batch: int = run_only_field(1)  # wsss: same-size images climbing together (speed only; more memory)
    max_batch_pairs: int | None = run_only_field(None)  # wsss: cap on flip pairs per forward (GPU memory); None = no cap
    # not in the reference: the climb's forward and input-gradient backward under bfloat16
    # autocast; maps, mask and step stay float32 (faster on a CPU with AVX-512 BF16; the maps
    # change: docs/speed.md)
    bfloat16: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` on settings that cannot work."""
        if self.iterations < 1:
            raise ConfigError(f"advcam.iterations must be at least 1, got {self.iterations}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"advcam.scales must be positive, got {list(self.scales)}")
        if self.step_size < 0 or self.mask_weight < 0:
            raise ConfigError("advcam.step_size and advcam.mask_weight must be non-negative")
        if self.images_per_batch < 1:
            raise ConfigError(f"advcam.images_per_batch must be at least 1, got {self.images_per_batch}")
        if self.max_batch_pairs is not None and self.max_batch_pairs < 1:
            raise ConfigError(f"advcam.max_batch_pairs must be at least 1, got {self.max_batch_pairs}")


def half_scale_schedule(iterations: int) -> tuple[int, float]:
    """(iterations, weight) of a half-iteration scale, as the reference: more than 10 -> half
    the steps, weight 2; fewer than 6 -> all the steps, weight 1; otherwise 5 steps, weight 1."""
    if iterations > 10:
        return iterations // 2, 2.0
    if iterations < 6:
        return iterations, 1.0
    return 5, 1.0


def scale_schedule(config: AdvCamConfig) -> list[tuple[float, int, float]]:
    """(scale, iterations, weight) in processing order: the half-iteration scales first, then
    the others in configuration order (the reference: 0.5, 1.0, 1.5, 2.0).

    With ``reference_scale_weight`` every scale gets the half-iteration scales' weight, which is
    what the reference's never-reset ``mul_for_scale`` does since scale 0.5 comes first.
    """
    halves = [s for s in config.scales if s in config.half_iteration_scales]
    others = [s for s in config.scales if s not in config.half_iteration_scales]
    half_iterations, half_weight = half_scale_schedule(config.iterations)
    sticky = half_weight if config.reference_scale_weight and halves else 1.0
    schedule = [(s, half_iterations, half_weight) for s in halves]
    schedule += [(s, config.iterations, sticky) for s in others]
    return schedule


def attribution_maps(logits: torch.Tensor, channels: torch.Tensor, positive_weights: torch.Tensor
                     ) -> torch.Tensor:
    """The reference's Grad-CAM attribution in closed form, flips merged.

    Args:
        logits: raw class maps (n, B, K, h, w) of n trajectories, each a batch of B = 2
            (image, flip) or 1.
        channels: (n,) the classifier channel each trajectory climbs.
        positive_weights: (n,) ``P_c``, the positive entries of ``W[c]`` (int).

    Returns:
        (n, h, w): ``sum_b s_b relu(L[b, c])`` with the flip undone,
        ``s_b = N_b / (P_c sum_b' N_b' + 1e-12)``.
    """
    target = logits[torch.arange(logits.shape[0], device=logits.device), :, channels]  # (n, B, h, w)
    positives = (target > 0).sum(dim=(-2, -1))  # (n, B)
    denominator = (positive_weights[:, None] * positives.sum(dim=1, keepdim=True)).to(logits.dtype)
    scale = positives.to(logits.dtype) / (denominator + GAP2D_POS_EPS)
    weighted = F.relu(target) * scale[:, :, None, None]
    return merge_flips(weighted.transpose(0, 1))


def fold_batchnorm(module: nn.Module) -> int:
    """Fold eval-mode BatchNorm into the convolution before it, in place; return how many.

    Folds the pairs a ResNet has: ``convN`` -> ``bnN`` in one module (stem, residual blocks) and
    ``Sequential(conv, bn)`` (downsample branches); the BatchNorm becomes ``nn.Identity``. Other
    BatchNorms are left as they are (still correct, only slower).
    """
    folded = 0
    for parent in list(module.modules()):
        pairs = []
        if isinstance(parent, nn.Sequential) and len(parent) == 2:
            pairs.append(("0", "1"))
        pairs += [(f"conv{name[2:]}", name) for name, _ in parent.named_children() if name.startswith("bn")]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def climbing_copy(model: nn.Module) -> nn.Module:
    """A copy of the classifier to climb with: eval mode, BatchNorm folded into the convolutions
    (same function, fewer operations), no parameter gradients. ``model`` is left untouched."""
    net = copy.deepcopy(model).eval()
    if isinstance(getattr(net, "backbone", None), nn.Module):
        fold_batchnorm(net.backbone)
    return net.requires_grad_(False)


def climbing_layout(device: torch.device) -> torch.memory_format:
    """The memory format the climb feeds the network: channels-last on the CPU, where oneDNN's
    convolutions run 0-15% faster on it (measured, resnet18_w16, 64-640 px), else contiguous."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def adversarial_climb(
    model: nn.Module,
    pairs: torch.Tensor,
    channels: torch.Tensor,
    iterations: int,
    *,
    step_size: float = 0.08,
    mask_weight: float = 7.0,
    mask_threshold: float = 0.5,
    weight: float = 1.0,
    reference: int | None = None,
    trace: list[dict[str, torch.Tensor]] | None = None,
    area_threshold: float = 0.3,
    memory_format: torch.memory_format | None = None,
    bfloat16: bool = False,
) -> torch.Tensor:
    """Climb n independent trajectories together and accumulate their attribution maps.

    Every trajectory is an image pair (or a single image) perturbed towards its own class; in eval
    mode the samples of a batch do not interact, so this equals climbing them one by one.

    Args:
        model: has ``class_maps(x)`` (raw maps of all K classes) and ``classifier.weight``
            (K, D, 1, 1); in eval mode, ideally without parameter gradients (:func:`climbing_copy`).
        pairs: (n, B, 3, h, w) the unperturbed normalised inputs, B = 2 (image, flip) or 1.
        channels: (n,) classifier channel per trajectory (class id - 1).
        iterations: T; the maps of x_0 .. x_{T-1} are accumulated.
        step_size, mask_weight, mask_threshold: xi, lambda, tau.
        weight: each step's map is multiplied by this before accumulation (the scale weight).
        reference: ``None``: lambda is ``mask_weight`` as given (the reference's scale). An int:
            ``hw_ref`` of this input scale (:func:`reference_cells`); lambda becomes
            ``mask_weight (hw_ref / hw) (P_c / P_ref)`` per trajectory (:func:`mask_weights`).
        trace: if a list, one entry per step is appended: ``score`` (n,) the class score
            ``y_c`` (mean over the pair), ``area`` (n,) the share of cells of ``A_t`` above
            ``area_threshold`` of its max, ``accumulated_area`` the same of ``sum_{s<=t} A_s``,
            and once ``mask_weight`` (n,) and ``strength`` (n,) (:func:`regulariser_strength`).
        area_threshold: see ``trace`` (the issue's 0.3).
        memory_format: the layout the perturbed images are kept in, from the first step to the
            last, so no step copies them; ``None``: :func:`climbing_layout` of their device.
        bfloat16: run the network's forward pass, and so its backward to the input, under
            bfloat16 autocast; its maps are cast back to ``pairs``' dtype at once, so the
            attribution maps, their sum, the mask, the objective and the step (and the perturbed
            images themselves) stay in that dtype.

    Returns:
        (n, h', w') the accumulated maps ``weight * sum_t A_t`` (detached).
    """
    n, pair_size = pairs.shape[:2]
    dtype = pairs.dtype
    rows = torch.arange(n, device=pairs.device)
    channels = torch.as_tensor(channels, dtype=torch.long, device=pairs.device).reshape(-1)
    positive_weights = (model.classifier.weight.detach().flatten(1) > 0).sum(dim=1)[channels]
    layout = climbing_layout(pairs.device) if memory_format is None else memory_format
    # (n B, 3, h, w) in ``layout`` throughout: the step below keeps the layout of its inputs
    image = pairs.detach().flatten(0, 1).contiguous(memory_format=layout)
    accumulated = initial = None
    for step in range(iterations):
        last = step == iterations - 1
        with torch.set_grad_enabled(not last):  # the last perturbed image is never used
            if not last:
                image.requires_grad_(True)
            with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                logits = model.class_maps(image)
            logits = logits.to(dtype).unflatten(0, (n, pair_size))  # (n, B, K, h', w')
            regions = attribution_maps(logits, channels, positive_weights)  # A_t, (n, h', w')
        detached = regions.detach()
        if step == 0:
            initial = detached
            accumulated = detached * weight
            cells = logits.shape[-2] * logits.shape[-1]
            lambdas = mask_weight if reference is None else \
                mask_weights(mask_weight, cells, positive_weights, reference).to(regions.dtype)
        else:
            accumulated = accumulated + detached * weight
        if trace is not None:
            _record_step(trace, logits.detach(), rows, channels, detached, accumulated, area_threshold,
                         lambdas if step == 0 else None, cells, positive_weights)
        if last:
            break
        scores = F.relu(logits).mean(dim=(-2, -1))  # y, (n, B, K)
        own = scores[rows, :, channels]  # (n, B)
        class_margin = (2 * own - scores.sum(dim=-1)).sum(dim=1)  # sum_b y_bc - sum_{k != c} y_bk
        peak = detached.amax(dim=(-2, -1), keepdim=True)
        mask = (detached / peak > mask_threshold).to(regions.dtype)  # 0/0 = nan -> empty mask
        drift = ((regions - initial).abs() * mask).sum(dim=(-2, -1))
        objective = (class_margin - lambdas * drift).sum()
        (gradient,) = torch.autograd.grad(objective, image)
        image = climb_step(image.detach().unflatten(0, (n, pair_size)), gradient.unflatten(0, (n, pair_size)),
                           step_size, "image", bounds="image").flatten(0, 1)
    return accumulated


def _area(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(n,) share of each map's cells above ``threshold`` of its max (0 for an all-zero map)."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return ((maps > threshold * peak) & (peak > 0)).to(torch.float64).mean(dim=(-2, -1))


def _record_step(trace: list[dict[str, torch.Tensor]], logits: torch.Tensor, rows: torch.Tensor,
                 channels: torch.Tensor, regions: torch.Tensor, accumulated: torch.Tensor, threshold: float,
                 lambdas: float | torch.Tensor | None, cells: int, positive_weights: torch.Tensor) -> None:
    """One step's entry of :func:`adversarial_climb`'s ``trace``."""
    own = F.relu(logits[rows, :, channels]).mean(dim=(-2, -1)).mean(dim=1)  # y_c over the pair, (n,)
    entry = {"score": own.double().cpu(), "area": _area(regions, threshold).cpu(),
             "accumulated_area": _area(accumulated, threshold).cpu()}
    if lambdas is not None:
        lambdas = torch.as_tensor(lambdas, dtype=torch.float64).expand(len(rows)).cpu()
        entry["mask_weight"] = lambdas
        entry["strength"] = regulariser_strength(lambdas, cells, positive_weights.double().cpu())
    trace.append(entry)


def _climb_images(net: nn.Module, images: Sequence[np.ndarray], keys: Sequence[np.ndarray],
                  config: AdvCamConfig, device: torch.device, scale: str = "reference") -> list[CamResult]:
    """The batched computation for checked inputs and a :func:`climbing_copy` of the classifier."""
    dtype = net.classifier.weight.dtype
    schedule = scale_schedule(config)
    inputs = [multiscale_inputs(image, [s for s, _, _ in schedule], flip=config.flip) for image in images]
    owner = torch.cat([torch.full((len(k),), i) for i, k in enumerate(keys)])  # image of each trajectory
    channels = torch.as_tensor(np.concatenate(keys) - 1, device=device)
    chunk = config.max_batch_pairs or len(channels)
    per_scale: list[list[torch.Tensor]] = [[] for _ in images]
    for index, (input_scale, iterations, weight) in enumerate(schedule):
        pairs = torch.stack([inputs[i][index] for i in owner.tolist()]).to(device, dtype)
        reference = None if scale == "reference" else reference_cells(input_scale)
        maps = torch.cat([
            adversarial_climb(net, pairs[start:start + chunk], channels[start:start + chunk], iterations,
                              step_size=config.step_size, mask_weight=config.mask_weight,
                              mask_threshold=config.mask_threshold, weight=weight, reference=reference,
                              bfloat16=config.bfloat16)
            for start in range(0, len(channels), chunk)
        ])
        for image_maps, own in zip(per_scale, maps.split([len(k) for k in keys])):
            image_maps.append(own)
    results = []
    for image, image_keys, maps in zip(images, keys, per_scale):
        strided, high_res = assemble_maps(maps, image.shape[:2], net.output_stride)
        results.append(CamResult(keys=image_keys, strided=normalise_maps(strided).float().cpu(),
                                 high_res=normalise_maps(high_res).float().cpu()))
    return results


def compute_advcam_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    keys: Sequence[Sequence[int] | np.ndarray],
    *,
    config: AdvCamConfig | None = None,
    device: torch.device | str = "cpu",
    where: Sequence[str | os.PathLike | None] | None = None,
    scale: str = "reference",
    **settings,
) -> list[CamResult]:
    """AdvCAM maps of several same-size images, every class of every image climbing in one batch.

    Args:
        model: the CAM classifier (:class:`~wsss.models.cam_net.CamNet`), in eval mode, on
            ``device``; computation runs in its parameters' dtype on a copy (``model`` is not
            modified, not even temporarily).
        images: ``uint8`` (H, W, 3) RGB images, all of the same size.
        keys: each image's labelled foreground class ids (1..K).
        config: AdvCAM settings (default: the reference's).
        device: where to run the network.
        where: each image's path or id, for error messages.
        scale: ``"reference"``: lambda is ``config.mask_weight``; ``"image"``: lambda with the
            reference's strength for this network and these maps (see the module docstring).
        **settings: :class:`AdvCamConfig` fields replacing ``config``'s, e.g. ``iterations=10``.

    Returns:
        One :class:`~wsss.attribution.cam.CamResult` (float32, CPU) per image.

    Raises:
        DataError: an image without labelled class. ConfigError: a class id outside 1..K, a
        model in training mode, a bad setting. ValueError: images of different sizes.
    """
    config = with_settings(config, AdvCamConfig, settings, "AdvCAM")
    check_scale(scale)
    _check_eval_mode(model)
    where = list(where) if where is not None else [None] * len(images)
    if not len(images) == len(keys) == len(where):
        raise ValueError(f"{len(images)} images but {len(keys)} label sets and {len(where)} names")
    keys = [check_keys(k, model.num_classes, w) for k, w in zip(keys, where)]
    if len({tuple(image.shape[:2]) for image in images}) > 1:
        raise ValueError("compute_advcam_batch needs images of one size; group them first")
    return _climb_images(climbing_copy(model), images, keys, config, torch.device(device), scale)


def compute_advcam(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    *,
    config: AdvCamConfig | None = None,
    device: torch.device | str = "cpu",
    where: str | os.PathLike | None = None,
    scale: str = "reference",
    **settings,
) -> CamResult:
    """AdvCAM maps of one image for its labelled classes (see :func:`compute_advcam_batch`)."""
    return compute_advcam_batch(model, [image], [keys], config=config, device=device, where=[where],
                                scale=scale, **settings)[0]


def _size_groups(ids: Sequence[str], size_of, per_batch: int) -> list[list[str]]:
    """Ids grouped by image size (first-seen order), in chunks of at most ``per_batch``."""
    if per_batch == 1:
        return [[image_id] for image_id in ids]
    by_size: dict[tuple[int, int], list[str]] = {}
    for image_id in ids:
        by_size.setdefault(tuple(size_of(image_id)), []).append(image_id)
    return [group[i:i + per_batch] for group in by_size.values() for i in range(0, len(group), per_batch)]


def make_advcams(
    model: nn.Module,
    source,
    store: MapStore | str | os.PathLike,
    *,
    config: AdvCamConfig | None = None,
    device: torch.device | str = "cpu",
    ids: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    scale: str = "reference",
    **settings,
) -> int:
    """Write AdvCAM maps for every image of ``source`` into a :class:`~wsss.stores.maps.MapStore`.

    Same-size images are batched ``config.images_per_batch`` at a time; batches are resumable (a
    batch whose maps all exist is skipped; a killed run loses at most one batch) and sharded by
    ``RANK``/``WORLD_SIZE`` (or ``dist``) with :func:`~wsss.runtime.run_per_image_batched`, so an
    image's batch, and so its maps to the last bit, do not depend on the number of processes. The climbing runs on an
    eval-mode copy of ``model``; ``model`` itself is not modified.

    Args:
        model: the classifier, on ``device``.
        source: a dataset with ``ids``, ``load_image`` and ``image_labels`` (or ``label_vector``).
        store: the map store or its directory.
        config: AdvCAM settings.
        device: where to run the network.
        ids: a subset of ``source.ids``.
        dist: this process's rank (default: from the environment).
        progress: show a progress bar.
        scale: ``"reference"`` or ``"image"``, as :func:`compute_advcam_batch`.
        **settings: :class:`AdvCamConfig` fields replacing ``config``'s.

    Returns:
        How many images were processed in this call.
    """
    config = with_settings(config, AdvCamConfig, settings, "AdvCAM")
    check_scale(scale)
    store = store if isinstance(store, MapStore) else MapStore(store)
    ids = list(source.ids if ids is None else ids)
    classes = getattr(source, "classes", None)
    if classes is not None and len(classes) - 1 != model.num_classes:
        raise ConfigError(
            f"the dataset has {len(classes) - 1} foreground classes, the classifier {model.num_classes}"
        )
    device = torch.device(device)
    def where(image_id: str):
        return source.image_path(image_id) if hasattr(source, "image_path") else image_id

    def size_of(image_id: str) -> tuple[int, int]:
        if hasattr(source, "image_path"):
            return image_size(source.image_path(image_id))
        return source.load_image(image_id).shape[:2]

    nets: list[nn.Module] = []  # the climbing copy, made once there is work to do

    def work(group: list[str]) -> None:
        if not nets:
            nets.append(climbing_copy(model))
        net = nets[0]
        images = [source.load_image(image_id) for image_id in group]
        keys = [check_keys(_image_keys(source, i), net.num_classes, where(i)) for i in group]
        if len({image.shape[:2] for image in images}) > 1:  # a header that disagrees with the pixels
            results = [_climb_images(net, [im], [k], config, device, scale)[0] for im, k in zip(images, keys)]
        else:
            results = _climb_images(net, images, keys, config, device, scale)
        for image_id, result in zip(group, results):
            store.save(image_id, result.to_maps())

    return run_per_image_batched(ids, work, store.has,
                                 lambda every: _size_groups(every, size_of, config.images_per_batch),
                                 desc="advcam", dist=dist, progress=progress)


@dataclass
class ClimbTrace:
    """AdvCAM's climb at one input scale, per labelled class, at one ``scale`` setting.

    Attributes:
        keys: (C,) class ids.
        scale: ``"reference"`` or ``"image"``.
        input_scale: the input scale climbed (1.0: the image as it is).
        cells: ``hw`` of the climbed maps.
        positive_weights: (C,) ``P_c``.
        mask_weight: (C,) the lambda used.
        strength: (C,) ``lambda hw / (2 P_c)`` (the reference's: 2.6).
        score: (C, T) the class score ``y_c`` (mean of the ReLU'd class map, over the pair) at
            step t = 0 .. T-1.
        area: (C, T) the share of cells of ``A_t`` above ``area_threshold`` of its max.
        accumulated_area: (C, T) the same of the accumulated map ``sum_{s<=t} A_s``.
    """

    keys: np.ndarray
    scale: str
    input_scale: float
    cells: int
    positive_weights: np.ndarray
    mask_weight: np.ndarray
    strength: np.ndarray
    score: np.ndarray
    area: np.ndarray
    accumulated_area: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists, fit for JSON."""
        return {"keys": self.keys.tolist(), "scale": self.scale, "input_scale": self.input_scale,
                "cells": self.cells, "positive_weights": self.positive_weights.tolist(),
                "mask_weight": self.mask_weight.tolist(), "strength": self.strength.tolist(),
                "score": self.score.tolist(), "area": self.area.tolist(),
                "accumulated_area": self.accumulated_area.tolist()}


def climb_report(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    *,
    config: AdvCamConfig | None = None,
    device: torch.device | str = "cpu",
    input_scale: float = 1.0,
    area_threshold: float = 0.3,
    where: str | os.PathLike | None = None,
    **settings,
) -> dict[str, ClimbTrace]:
    """How AdvCAM climbs on one image at both settings: ``{"reference": ..., "image": ...}``.

    Every labelled class climbs ``config.iterations`` steps from the image at ``input_scale``
    (with its flip if ``config.flip``), once with the literal lambda and once with lambda at
    the reference's strength (:func:`mask_weights`); each :class:`ClimbTrace` holds the class
    score and the map area at every step. For benchmarks: a lambda that freezes the maps shows
    as a flat area, one that lets them climb as a growing one.

    Args:
        model: the CAM classifier, in eval mode, on ``device`` (not modified).
        image: ``uint8`` (H, W, 3) RGB.
        keys: its labelled class ids (1..K).
        config: AdvCAM settings (default: the reference's); ``**settings`` replace its fields.
        device: where to run the network.
        input_scale: the scale the image is resized by before climbing.
        area_threshold: a cell counts in the area above this share of the map's max (0.3).
        where: the image's path or id, for error messages.
    """
    config = with_settings(config, AdvCamConfig, settings, "AdvCAM")
    if input_scale <= 0 or not 0 <= area_threshold < 1:
        raise ConfigError(f"input_scale must be positive and area_threshold in [0, 1), got {input_scale}, "
                          f"{area_threshold}")
    _check_eval_mode(model)
    keys = check_keys(keys, model.num_classes, where)
    device = torch.device(device)
    net = climbing_copy(model)
    pair = multiscale_inputs(image, [input_scale], flip=config.flip)[0]
    pairs = pair.unsqueeze(0).expand(len(keys), *pair.shape).to(device, net.classifier.weight.dtype)
    channels = torch.as_tensor(keys - 1, device=device)
    reports = {}
    for scale in ("reference", "image"):
        trace: list[dict[str, torch.Tensor]] = []
        reference = None if scale == "reference" else reference_cells(input_scale)
        maps = adversarial_climb(net, pairs, channels, config.iterations, step_size=config.step_size,
                                 mask_weight=config.mask_weight, mask_threshold=config.mask_threshold,
                                 reference=reference, trace=trace, area_threshold=area_threshold,
                                 bfloat16=config.bfloat16)
        positive = (net.classifier.weight.detach().flatten(1) > 0).sum(dim=1)[channels]
        reports[scale] = ClimbTrace(
            keys=keys, scale=scale, input_scale=float(input_scale), cells=int(maps.shape[-2] * maps.shape[-1]),
            positive_weights=positive.cpu().numpy(), mask_weight=trace[0]["mask_weight"].numpy(),
            strength=trace[0]["strength"].numpy(),
            score=torch.stack([step["score"] for step in trace], dim=1).numpy(),
            area=torch.stack([step["area"] for step in trace], dim=1).numpy(),
            accumulated_area=torch.stack([step["accumulated_area"] for step in trace], dim=1).numpy())
    return reports
