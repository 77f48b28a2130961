"""RIB as the reference computes it: a plain loop, kept for tests and benchmarks. SLOW.

This follows ``obtain_RIB_CAM.py`` (``_work`` and ``RIB_learn``) and ``misc/torchutils.py`` of
jbeomlee93/RIB step by step, written anew:

1. the classifier's state is saved, and loaded back (``load_state_dict``) before the image;
2. a new SGD over all backbone parameters (lr) and the classifier (lr x 10) with the poly
   schedule of ``PolyOptimizer`` (the learning rate set by hand before each update);
3. per step, the target at every scale as a flip pair, each a full forward pass (the frozen
   stages in autograd mode and then detached, as ``stage2(x).detach()``); the flip-merged ReLU
   maps are added to the per-scale sums; at step > 0 the first scale's map is tested for an
   explosion (in the reference, after it was added); the loss scales' maps are pooled with a
   loop over rows and classes (``gndp2d``);
4. the batch of other images, a forward pass, pooled the same way with each row's labels;
5. ``loss = - sum(logits * labels)``, backward, update; then the margin test on the target rows.

Every step makes its update, even when the run ends right after (the fast version skips those).
The options of :class:`~wsss.attribution.rib.RibConfig` apply as documented there.

Use :func:`wsss.attribution.rib.compute_rib` for real work.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.attribution.cam import (
    _check_eval_mode,
    assemble_maps,
    check_keys,
    multiscale_inputs,
    normalise_maps,
)
from wsss.attribution.rib import OtherBatch, RibConfig, RibResult

__all__ = ["reference_gndrp", "reference_rib"]


def reference_gndrp(maps: torch.Tensor, labels: torch.Tensor, threshold: float,
                    class_limit: int | None = None) -> torch.Tensor:
    """The reference's ``gndp2d``, a loop over rows and classes: (B, K, h, w) -> (B, K).

    A labelled class's pixels with ``map / max >= threshold`` are masked out; an unlabelled class
    gets ``-1`` (nothing masked); classes at or beyond ``class_limit`` keep ``0`` (the reference's
    ``range(20)``: nothing masked for a positive threshold). Then the mean over all pixels.
    """
    norm = torch.zeros_like(maps)
    limit = maps.shape[1] if class_limit is None else min(class_limit, maps.shape[1])
    for row in range(maps.shape[0]):
        valid = torch.nonzero(labels[row])[:, 0].tolist()
        for channel in range(limit):
            if channel in valid:
                norm[row, channel] = (maps[row, channel] / maps[row, channel].max()).detach()
            else:
                norm[row, channel] = -1
    return torch.mean((maps * (norm < threshold)).view(maps.shape[0], maps.shape[1], -1), -1)


def _forward(model: nn.Module, images: torch.Tensor, split: int) -> torch.Tensor:
    """Raw maps of all classes; the stages before ``split`` detached, as ``stage2(x).detach()``."""
    stages = model.backbone.stages
    x = images
    for stage in stages[:split]:
        x = stage(x)
    x = x.detach()
    for stage in stages[split:]:
        x = stage(x)
    return F.conv2d(x, model.classifier.weight)


def _pool(maps: torch.Tensor, labels: torch.Tensor, config: RibConfig) -> torch.Tensor:
    if config.pooling == "gap":
        return maps.view(maps.shape[0], maps.shape[1], -1).mean(-1)
    return reference_gndrp(maps, labels, config.score_threshold, config.gndrp_class_limit)


def reference_rib(
    model: nn.Module,
    image: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    other_images: Sequence[OtherBatch] | OtherBatch | None,
    config: RibConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    where: str | os.PathLike | None = None,
) -> RibResult:
    """RIB maps of one image, computed the reference's way (slow; for tests and benchmarks).

    Args:
        model: a :class:`~wsss.models.cam_net.CamNet` in eval mode, on ``device``. It is
            fine-tuned in place and loaded back to its original state at the end.
        image: ``uint8`` (H, W, 3) RGB.
        keys: labelled foreground class ids (1..K).
        other_images: as :func:`wsss.attribution.rib.compute_rib`: one batch per step (the loop
            ends when they run out), one batch for every step, or ``None``.
        config: RIB settings.
        device: where to run the network.
        where: the image's path or id, for error messages.

    Returns:
        A :class:`~wsss.attribution.rib.RibResult` on the CPU (float32).
    """
    config = config or RibConfig()
    config.validate()
    _check_eval_mode(model)
    keys = check_keys(keys, model.num_classes, where)
    device = torch.device(device)
    dtype = model.classifier.weight.dtype
    num_classes = model.num_classes
    split = 4 - config.trainable_stages
    if other_images is None or isinstance(other_images, OtherBatch):
        other_images = [other_images] * config.steps
    last_step = min(config.steps, len(other_images)) - 1

    original = {name: value.clone() for name, value in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.load_state_dict(original, strict=True)  # the reference: reset before every image
    for stage in model.backbone.stages[split:]:
        stage.requires_grad_(True)
    model.classifier.requires_grad_(True)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    momentum = config.weight_decay if config.reference_momentum_quirk else 0.0
    optimizer = torch.optim.SGD([
        {"params": backbone_params, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": list(model.classifier.parameters()), "lr": config.classifier_lr_mult * config.lr,
         "weight_decay": config.weight_decay},
    ], lr=config.lr, momentum=momentum)
    initial_lrs = [group["lr"] for group in optimizer.param_groups]

    target_label = torch.zeros(1, num_classes, dtype=dtype, device=device)
    target_label[0, torch.as_tensor(keys - 1)] = 1
    inputs = [x.to(device, dtype) for x in multiscale_inputs(image, config.scales, flip=config.flip)]
    outputs: list[torch.Tensor] = []
    taken, stop, global_step = 0, "steps", 0
    try:
        for step, batch in enumerate(other_images):
            if step == config.steps:
                break
            logits_rows, label_rows = [], []
            exploded = False
            for index, pair in enumerate(inputs):
                maps = _forward(model, pair, split)
                relu = F.relu(maps)
                merged = relu[0] + relu[1].flip(-1) if len(relu) == 2 else relu[0]
                if step == 0:
                    outputs.append(merged.detach().clone())
                else:
                    if index == 0:  # the explode test, on the first scale's map
                        interest = merged.detach()[torch.as_tensor(keys - 1)]
                        peak = F.adaptive_max_pool2d(interest, (1, 1))
                        above = interest / (peak + 1e-5) > config.explode_threshold
                        union = torch.clip(above.sum(dim=0), 0, 1)
                        exploded = bool(union.sum() / union.shape[0] / union.shape[1] > config.explode_ratio)
                    if not exploded or config.reference_explode_accumulation:
                        outputs[index] += merged.detach()  # the reference adds it before testing
                    if exploded:
                        break
                if config.scales[index] in config.loss_scales:
                    rows = target_label.expand(len(maps), -1)
                    logits_rows.append(_pool(maps, rows, config))
                    label_rows.append(rows)
            if exploded:
                stop = "explode"
                break
            taken += 1
            target_rows = sum(len(rows) for rows in label_rows)
            if batch is not None and len(batch.images):
                maps = _forward(model, batch.images.to(device, dtype), split)
                labels = batch.labels.to(device, dtype)
                logits_rows.append(_pool(maps, labels, config))
                label_rows.append(labels)
            logits = torch.cat(logits_rows)
            labels = torch.cat(label_rows)
            positive = logits * labels
            target_loss = positive[:target_rows].sum()
            loss = -positive.sum()
            if global_step < config.steps:  # PolyOptimizer: decay, then step
                factor = (1 - global_step / config.steps) ** config.poly_power
                for group, lr in zip(optimizer.param_groups, initial_lrs):
                    group["lr"] = lr * factor
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            global_step += 1
            if torch.abs(target_loss) > config.margin:
                stop = "margin" if step < last_step else stop  # the last step ends the run anyway
                break
        strided, high_res = assemble_maps(outputs, image.shape[:2], model.output_stride)
        channels = torch.as_tensor(keys - 1)
        return RibResult(keys=keys, strided=normalise_maps(strided[channels]).float().cpu(),
                         high_res=normalise_maps(high_res[channels]).float().cpu(), steps=taken, stop=stop)
    finally:
        model.load_state_dict(original, strict=True)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None

