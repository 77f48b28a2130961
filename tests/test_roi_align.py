"""RoIAlign as matrix products equals torchvision's kernel, forward and backward, in the R-CNNs."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from wsss.models.roi_align import DenseMultiScaleRoIAlign, roi_align_dense, use_dense_roi_align


def _case(seed: int = 0, batch: int = 3, channels: int = 5, height: int = 13, width: int = 17, count: int = 40):
    """Features and boxes that reach every border rule: boxes past the map's edges, boxes
    smaller than a cell, an image with no box."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) * 1.2 - 2
    extent = torch.rand(count, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) * 0.8
    extent[:5] *= 0.02  # below one cell
    boxes = torch.cat([corner, corner + extent], dim=1)
    image = torch.randint(0, batch - 1, (count, 1), generator=generator).to(torch.float64)  # the last has none
    return features, torch.cat([image, boxes], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio,output_size,scale", [(2, 7, 1.0), (2, (14, 5), 0.5), (3, 4, 0.25)])
def test_equals_torchvisions_kernel_forward_and_backward(aligned, sampling_ratio, output_size, scale):
    features, rois = _case()
    rois[:, 1:] /= scale
    ours_in = features.clone().requires_grad_(True)
    theirs_in = features.clone().requires_grad_(True)
    ours = roi_align_dense(ours_in.float(), rois.float(), output_size, scale, sampling_ratio, aligned)
    theirs = roi_align(theirs_in.float(), rois.float(), output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(theirs)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-5)
    assert theirs_in.grad[-1].abs().sum() == 0 and ours_in.grad[-1].abs().sum() == 0  # the image with no box


def test_keeps_the_dtype_and_computes_in_float32_as_torchvision_does_under_autocast():
    features, rois = _case(seed=1)
    low = features.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = roi_align_dense(low, rois.float(), 7, 1.0, 2)
        theirs = roi_align(low, rois.float(), 7, 1.0, 2)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-2)


def test_adaptive_sampling_goes_to_torchvision():
    features, rois = _case(seed=2)
    torch.testing.assert_close(roi_align_dense(features.float(), rois.float(), 7, 1.0, 0),
                               roi_align(features.float(), rois.float(), 7, 1.0, 0))


def test_multiscale_pool_equals_torchvisions_on_fpn_levels():
    generator = torch.Generator().manual_seed(3)
    features = OrderedDict((str(i), torch.randn(2, 4, 256 >> i, 256 >> i, generator=generator)) for i in range(4))
    corner = torch.rand(2, 30, 2, generator=generator) * 500
    boxes = [torch.cat([c, c + 8 + torch.rand(30, 2, generator=generator) ** 2 * 500], dim=1) for c in corner]
    shapes = [(1024, 1024), (960, 1024)]
    theirs = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    ours = DenseMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    pool = DenseMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pool(features, boxes, shapes)
    assert len(torch.unique(pool.map_levels(boxes))) >= 3  # the boxes reach several levels


def test_the_rcnns_use_it_and_train_the_same():
    from wsss.models.mask_rcnn import build_mask_rcnn

    torch.manual_seed(0)
    model = build_mask_rcnn("resnet18_w16", 3, min_size=64, max_size=64, anchor_sizes=(4, 8, 16, 32, 64),
                            fpn_channels=16, representation_size=32, mask_channels=16)
    assert isinstance(model.roi_heads.box_roi_pool, DenseMultiScaleRoIAlign)
    assert isinstance(model.roi_heads.mask_roi_pool, DenseMultiScaleRoIAlign)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 8:50] = 1
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}] * 2

    def losses(pools):
        model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = pools
        torch.manual_seed(1)  # the same proposals sampled
        model.train()
        out = model(images, targets)
        total = sum(out.values())
        grads = torch.autograd.grad(total, [p for p in model.parameters() if p.requires_grad])
        return out, grads

    dense = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool)
    plain = (MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2))
    ours, our_grads = losses(dense)
    theirs, their_grads = losses(plain)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert use_dense_roi_align(model.roi_heads) is model.roi_heads
    assert isinstance(model.roi_heads.box_roi_pool, DenseMultiScaleRoIAlign)


def test_speed_benchmark_runs_both_pools_and_finds_the_same_losses(capsys):
    from helpers import load_benchmark

    for bench in load_benchmark("roi_align_speed"):
        assert bench.main(["--size", "64", "--batch", "2", "--repeats", "1"]) == 0
    lines = {line.split("  ")[0].strip(): line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == {"mask rcnn update", "detector update", "bbam heads (fwd + bwd)"}
    for fields in lines.values():
        plain, dense, ratio, diff = float(fields[-4]), float(fields[-3]), float(fields[-2].rstrip("x")), float(fields[-1])
        assert plain > 0 and dense > 0 and abs(ratio - plain / dense) < 0.02 * ratio + 0.01
        assert diff < 1e-3  # the same computation up to rounding


def test_large_maps_and_many_regions_give_the_same_values(monkeypatch):
    import wsss.models.roi_align as module

    features, rois = _case(seed=4, count=150)  # more regions than one chunk
    expected = roi_align(features.float(), rois.float(), 7, 1.0, 2)
    torch.testing.assert_close(roi_align_dense(features.float(), rois.float(), 7, 1.0, 2), expected,
                               rtol=1e-5, atol=1e-5)
    calls = []
    monkeypatch.setattr(module, "MAX_CELLS", 100)  # this map (13 x 17) now counts as large
    monkeypatch.setattr(module, "roi_align", lambda *args: calls.append(args) or expected)
    assert roi_align_dense(features.float(), rois.float(), 7, 1.0, 2) is expected and len(calls) == 1
