"""AdvCAM as the reference computes it: a plain loop, kept for tests and benchmarks. SLOW.

This follows ``obtain_CAM_masking.py`` and ``gradCAM.py`` of jbeomlee93/AdvCAM step by step,
written anew: one scale at a time (0.5 first), one class at a time, one flip pair (batch of 2)
per forward, and per step

1. a forward pass with a hook on the backbone's last stage keeping its features;
2. a first backward pass, of the summed ReLU'd map of class ``c`` (``gsp2d``), whose gradient at
   the last stage becomes Grad-CAM weights through ``gap2d_pos`` (spatial sum divided by the
   count of positive entries of the whole gradient tensor + 1e-12); the attribution map is
   ``relu(sum_k f_k w_k)``, flips merged;
3. a second backward pass, of the AdvCAM loss, to the image; then the climbing step.

Both backward passes also compute the gradients of every parameter that requires one, as the
reference does (its model freezes only conv1 and bn1); they are returned by
``torch.autograd.grad`` and dropped, so the caller's ``.grad`` fields are left alone. The weight of each scale follows the reference's
``mul_for_scale`` variable, reset per scale unless ``reference_scale_weight`` is set.

Use :func:`wsss.attribution.advcam.compute_advcam` for real work: it computes the same maps in one
forward and one input-only backward per step, for all classes at once.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.attribution.advcam import AdvCamConfig
from wsss.attribution.cam import (
    CamResult,
    _check_eval_mode,
    assemble_maps,
    check_keys,
    merge_flips,
    multiscale_inputs,
    normalise_maps,
)

__all__ = ["LastStageGradCam", "reference_advcam"]


class LastStageGradCam:
    """The reference's Grad-CAM: keeps a module's output and its gradient; a context manager
    that removes its hook on exit.

    Args:
        module: the hooked module (the backbone's last stage).
    """

    def __init__(self, module: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self.gradient: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.features = output
        if output.requires_grad:
            output.register_hook(self._keep_gradient)

    def _keep_gradient(self, gradient: torch.Tensor) -> None:
        self.gradient = gradient

    def generate(self) -> torch.Tensor:
        """``relu(sum_k f_k w_k)`` with ``w = gap2d_pos(gradient)``: (B, 1, h, w)."""
        gradient = self.gradient
        weights = gradient.flatten(2).sum(-1) / ((gradient > 0).sum() + 1e-12)
        return F.relu((self.features * weights[:, :, None, None]).sum(dim=1, keepdim=True))

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "LastStageGradCam":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def reference_attribution(model: nn.Module, gradcam: LastStageGradCam, image: torch.Tensor, channel: int,
                          parameters: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and the Grad-CAM backward: (raw maps of all classes (B, K, h, w),
    flip-merged attribution map (1, h, w)). ``image`` must require grad."""
    logits = model.class_maps(image)
    summed = F.relu(logits).flatten(2).sum(-1)  # gsp2d
    torch.autograd.grad(summed[:, channel].sum(), [image, *parameters], retain_graph=True)
    regions = merge_flips(gradcam.generate())
    return logits, regions


def reference_advcam(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    *,
    config: AdvCamConfig | None = None,
    device: torch.device | str = "cpu",
    target_layer: nn.Module | None = None,
    where: str | os.PathLike | None = None,
) -> CamResult:
    """AdvCAM maps of one image, computed the reference's way (slow; for tests and benchmarks).

    Args:
        model: a :class:`~wsss.models.cam_net.CamNet` in eval mode, on ``device``.
        image: ``uint8`` (H, W, 3) RGB.
        keys: labelled foreground class ids (1..K).
        config: AdvCAM settings (``images_per_batch`` and ``max_batch_pairs`` are ignored).
        device: where to run the network.
        target_layer: the hooked module (default: ``model.backbone.layer4``, the last stage).
        where: the image's path or id, for error messages.

    Returns:
        A :class:`~wsss.attribution.cam.CamResult` on the CPU (float32).
    """
    config = config or AdvCamConfig()
    config.validate()
    _check_eval_mode(model)
    keys = check_keys(keys, model.num_classes, where)
    device = torch.device(device)
    dtype = model.classifier.weight.dtype
    target_layer = model.backbone.layer4 if target_layer is None else target_layer
    parameters = [p for p in model.parameters() if p.requires_grad]
    # the reference's scale order: cam_scales indices [1, 0, 2, 3], i.e. scale 0.5 first
    order = [s for s in config.scales if s in config.half_iteration_scales]
    order += [s for s in config.scales if s not in config.half_iteration_scales]
    inputs = multiscale_inputs(image, order, flip=config.flip)
    scale_weight = 1.0  # the reference's mul_for_scale
    per_scale = []
    with torch.enable_grad(), LastStageGradCam(target_layer) as gradcam:
        for scale, original in zip(order, inputs):
            if scale in config.half_iteration_scales:
                if config.iterations > 10:
                    iterations, scale_weight = config.iterations // 2, 2.0
                elif config.iterations < 6:
                    iterations, scale_weight = config.iterations, 1.0
                else:
                    iterations, scale_weight = 5, 1.0
            else:
                iterations = config.iterations
                if not config.reference_scale_weight:
                    scale_weight = 1.0  # the fix: the reference never resets it
            maps = None
            for class_index, class_id in enumerate(keys):
                channel = int(class_id) - 1
                current = original.to(device, dtype)  # every class restarts from the original pair
                for step in range(iterations):
                    current = current.detach().requires_grad_(True)
                    logits, regions = reference_attribution(model, gradcam, current, channel, parameters)
                    if step == 0:
                        initial = regions.detach()
                    if maps is None:  # the reference: float32 on the CPU; here the model's dtype
                        maps = torch.zeros(len(keys), *regions.shape[1:], dtype=dtype)
                    maps[class_index] += regions[0].detach().cpu() * scale_weight
                    scores = F.relu(logits).flatten(2).mean(-1)  # gap2d
                    logit_loss = -2 * scores[:, channel].sum() + scores.sum()
                    mask = torch.zeros(regions.shape, dtype=dtype, device=regions.device)
                    mask[regions / regions.max() > config.mask_threshold] = 1
                    drift = ((regions - initial).abs() * mask).sum()
                    loss = -logit_loss - drift * config.mask_weight
                    gradient = torch.autograd.grad(loss, [current, *parameters])[0]
                    # adv_climb: L-inf normalised step, clamped to the current image's range
                    step_direction = gradient / (gradient.abs().max() + 1e-12)
                    stepped = current + config.step_size * step_direction
                    current = torch.clamp(stepped, current.min().item(), current.max().item())
            per_scale.append(maps)
    strided, high_res = assemble_maps(per_scale, image.shape[:2], model.output_stride)
    return CamResult(keys=keys, strided=normalise_maps(strided).float(),
                     high_res=normalise_maps(high_res).float())
