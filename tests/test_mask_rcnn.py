"""Mask R-CNN with ignore regions: the encoding, the mask loss, the model's training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import maskrcnn_loss

from wsss.errors import ConfigError
from wsss.models.mask_rcnn import (
    IgnoreMaskRoIHeads,
    build_mask_rcnn,
    encode_targets,
    ignore_mask_loss,
    predict_instances,
    rebuild_mask_rcnn,
)

SIZE = 32
MODEL_SIZE = 64  # layer4 at stride 32 needs more than one cell for training BatchNorm


def _tiny(**kwargs):
    torch.manual_seed(0)
    options = dict(min_size=MODEL_SIZE, max_size=MODEL_SIZE, anchor_sizes=(4, 8, 16, 32, 64), fpn_channels=16,
                   representation_size=32, mask_channels=16)
    options.update(kwargs)
    return build_mask_rcnn("resnet18_w16", 3, **options)


def _loss_case():
    """Two images; proposals matched to their ground-truth instances; random logits."""
    generator = torch.Generator().manual_seed(0)
    masks = [torch.zeros(2, SIZE, SIZE, dtype=torch.bool), torch.zeros(1, SIZE, SIZE, dtype=torch.bool)]
    masks[0][0, 4:20, 4:20] = True
    masks[0][1, 10:30, 12:28] = True
    masks[1][0, 2:30, 2:16] = True
    proposals = [torch.tensor([[2.0, 3.0, 22.0, 21.0], [12.0, 8.0, 29.0, 31.0], [0.0, 0.0, 20.0, 20.0]]),
                 torch.tensor([[1.0, 1.0, 17.0, 31.0]])]
    matched = [torch.tensor([0, 1, 0]), torch.tensor([0])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    logits = torch.randn(4, 3, 14, 14, generator=generator, requires_grad=True)
    return masks, proposals, matched, labels, logits


def test_without_ignored_pixels_the_loss_is_torchvisions():
    masks, proposals, matched, labels, logits = _loss_case()
    ours = ignore_mask_loss(logits, proposals, [encode_targets(m) for m in masks], labels, matched)
    theirs = maskrcnn_loss(logits, proposals, [m.to(torch.uint8) for m in masks], labels, matched)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_ignored_pixels_get_no_gradient_and_their_targets_do_not_matter():
    masks, proposals, matched, labels, logits = _loss_case()
    ignore = [torch.zeros_like(m) for m in masks]
    ignore[0][0, :, :12] = True  # the left part of image 0's first instance is unsure
    coded = [encode_targets(m, i) for m, i in zip(masks, ignore)]
    loss = ignore_mask_loss(logits, proposals, coded, labels, matched)
    (grad,) = torch.autograd.grad(loss, logits)
    # proposal 0 spans x 2..22 over 14 cells; roi_align samples bilinearly between pixel indices,
    # so a cell ending left of x = 11 sees only ignored pixels (columns 0..11)
    row_grad = grad[0, labels[0][0]]
    cell_right_edge = 2.0 + (torch.arange(14) + 1) * 20.0 / 14
    wholly_ignored = cell_right_edge <= 11.0
    assert wholly_ignored.any() and (~wholly_ignored).any()
    assert torch.all(row_grad[:, wholly_ignored] == 0)
    assert torch.all(row_grad[:, ~wholly_ignored].abs().sum(0) > 0)
    # flip what the ignored pixels are marked: the loss is the same to the last bit
    flipped = [m.clone() for m in masks]
    flipped[0][0][ignore[0][0]] = ~flipped[0][0][ignore[0][0]]
    again = ignore_mask_loss(logits, proposals, [encode_targets(m, i) for m, i in zip(flipped, ignore)], labels,
                             matched)
    assert torch.equal(loss, again)
    # and the ignore region does change the loss against plain targets
    plain = ignore_mask_loss(logits, proposals, [encode_targets(m) for m in masks], labels, matched)
    assert not torch.allclose(loss, plain)


def test_the_model_loss_ignores_what_the_band_holds():
    model = _tiny()
    model.train()
    image = torch.rand(3, MODEL_SIZE, MODEL_SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, MODEL_SIZE, MODEL_SIZE, dtype=torch.bool)
    mask[0, 16:48, 16:48] = True
    band = torch.zeros_like(mask)
    band[0, 12:52, 12:52] = True
    band &= ~mask
    boxes, labels = torch.tensor([[12.0, 12.0, 52.0, 52.0]]), torch.tensor([1])

    def losses(masks, ignore):
        torch.manual_seed(3)  # the RPN's and the box head's samplers draw from the global RNG
        return model([image], [{"boxes": boxes, "labels": labels, "masks": encode_targets(masks, ignore)}])

    with_band = losses(mask, band)
    filled = losses(mask | band, band)  # the band marked object instead of background
    assert torch.equal(with_band["loss_mask"], filled["loss_mask"])
    assert not torch.equal(losses(mask, None)["loss_mask"], losses(mask | band, None)["loss_mask"])
    assert set(with_band) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    total = sum(with_band.values())
    total.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_build_keeps_the_datas_size_and_rebuilds_from_its_config():
    model = _tiny()
    assert isinstance(model.roi_heads, IgnoreMaskRoIHeads)
    assert model.transform.min_size == (MODEL_SIZE,) and model.transform.max_size == MODEL_SIZE
    kept = _tiny(min_size=None, max_size=None)  # the default: every image at its own size
    assert kept.transform([torch.zeros(3, SIZE, SIZE + 8)])[0].image_sizes == [(SIZE, SIZE + 8)]
    again = rebuild_mask_rcnn(model.wsss_config)
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    image = np.random.default_rng(0).integers(0, 255, (MODEL_SIZE, MODEL_SIZE, 3), dtype=np.uint8)
    first, second = predict_instances(model, [image])[0], predict_instances(again, [image])[0]
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.masks.shape == (len(first), MODEL_SIZE, MODEL_SIZE) and first.masks.dtype == bool
    with pytest.raises(ConfigError, match="anchor_sizes"):
        _tiny(anchor_sizes=(8, 16))
    with pytest.raises(ValueError, match="eval mode"):
        predict_instances(model.train(), [image])


def test_rois_per_image_sets_the_sampled_rois_and_survives_a_rebuild():
    model = _tiny(rois_per_image=64)
    sampler = model.roi_heads.fg_bg_sampler
    assert sampler.batch_size_per_image == 64 and sampler.positive_fraction == 0.25
    assert rebuild_mask_rcnn(model.wsss_config).roi_heads.fg_bg_sampler.batch_size_per_image == 64
    old = {k: v for k, v in model.wsss_config.items() if k != "rois_per_image"}  # a checkpoint from before
    assert rebuild_mask_rcnn(old).roi_heads.fg_bg_sampler.batch_size_per_image == 512
