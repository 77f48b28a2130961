"""RIB: GNDRP against a pixel loop, the disjoint-class draw, the loss and stop rules, the model
left untouched, the fast loop against the reference's, the map store.

Equivalence tests run in float64 with a learning rate large enough (3e-4, on a tiny random
network) that the fine-tuning visibly moves the maps, so equality is not vacuous.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from wsss.attribution.cam import compute_cam, make_cams
from wsss.attribution.rib import (
    DisjointClassIndex,
    FoldedBatchNorm,
    OtherBatch,
    OtherImageBatches,
    RibConfig,
    RibTuner,
    compute_rib,
    draw_other_images,
    gndrp_pool,
    make_ribs,
    map_explodes,
    pool_logits,
    rib_loss,
)
from wsss.attribution.rib_reference import reference_gndrp, reference_rib
from wsss.errors import ConfigError, DataError
from wsss.models.backbones import BasicBlock, Bottleneck, ResNet
from wsss.models.cam_net import CamNet
from wsss.runtime import DistInfo
from wsss.stores.maps import MapStore

torch.set_num_threads(1)

# the fine-tuning path, with settings that make a tiny random model move: no stop rule fires
# the defaults (the published computation) with a learning rate that moves a small network ...
PUBLISHED = RibConfig(steps=4, lr=3e-4, batch_size=3, margin=1e9, explode_ratio=1.0)
# ... and the intended computation, which most tests below use: no momentum, no exploded map kept
MOVING = dataclasses.replace(PUBLISHED, reference_momentum_quirk=False, reference_explode_accumulation=False)


def _random_net(num_classes: int = 3, dtype: torch.dtype = torch.float64) -> CamNet:
    torch.manual_seed(0)
    model = CamNet("resnet18_w16", num_classes, output_stride=8, freeze_bn=False, frozen_stages=0)
    for module in model.modules():  # non-trivial BatchNorm, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():  # mostly positive class weights: every class has a non-empty map, as trained
        model.classifier.weight.normal_(0.05, 0.1)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def net64() -> CamNet:
    return _random_net()


@pytest.fixture(scope="module")
def net32() -> CamNet:
    return _random_net(dtype=torch.float32)


def _image(height: int = 22, width: int = 26, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _batches(steps: int, labels: list[list[int]], size: int = 18, seed: int = 1) -> list[OtherBatch]:
    generator = torch.Generator().manual_seed(seed)
    label_tensor = torch.tensor(labels, dtype=torch.float32)
    return [OtherBatch(torch.randn(len(labels), 3, size, size, generator=generator), label_tensor)
            for _ in range(steps)]


OTHER_LABELS = [[0, 1, 0], [0, 0, 1], [0, 1, 1]]  # share no class with a target of class 1


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": model.training,
    }


def _assert_untouched(model: nn.Module, snapshot: dict) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot["state"][name]), name  # bit-equal
    assert {k: p.requires_grad for k, p in model.named_parameters()} == snapshot["requires_grad"]
    assert all(p.grad is None for p in model.parameters())
    assert model.training == snapshot["training"]


# ---------------------------------------------------------------------------------------------
# GNDRP


def _gndrp_by_pixels(maps: np.ndarray, positive: np.ndarray, tau: float) -> np.ndarray:
    rows, classes, height, width = maps.shape
    out = np.zeros((rows, classes))
    for b in range(rows):
        for c in range(classes):
            peak = max(maps[b, c, y, x] for y in range(height) for x in range(width))
            total = 0.0
            for y in range(height):
                for x in range(width):
                    value = maps[b, c, y, x]
                    if not positive[b, c] or value / peak < tau:
                        total += value
            out[b, c] = total / (height * width)  # divided by all pixels, dropped ones included
    return out


def test_gndrp_matches_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4, 5, 6, 7)) + 0.5
    positive = rng.random((4, 5)) < 0.5
    positive[:, 0] = True
    expected = _gndrp_by_pixels(maps, positive, 0.4)
    tensor = torch.from_numpy(maps)
    fast = gndrp_pool(tensor, torch.from_numpy(positive), 0.4)
    loop = reference_gndrp(tensor, torch.from_numpy(positive.astype(np.float64)), 0.4)
    np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(loop.numpy(), expected, rtol=1e-12)
    # something was dropped, so this is not plain GAP
    assert np.abs(expected[positive] - maps.mean(axis=(2, 3))[positive]).min() > 1e-3
    assert np.allclose(expected[~positive], maps.mean(axis=(2, 3))[~positive])


def test_gndrp_class_limit_reproduces_the_range_20_loop() -> None:
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.normal(size=(3, 6, 5, 5)) + 0.3)
    labels = torch.ones(3, 6)
    channels = torch.arange(6)
    config = RibConfig(gndrp_class_limit=4)
    pooled = pool_logits(maps, labels > 0.5, channels, config)
    limited = np.ones((3, 6), dtype=bool)
    limited[:, 4:] = False  # beyond the limit: plain GAP, as the reference's loop leaves them
    np.testing.assert_allclose(pooled.numpy(), _gndrp_by_pixels(maps.numpy(), limited, 0.4), rtol=1e-12)
    np.testing.assert_allclose(reference_gndrp(maps, labels, 0.4, class_limit=4).numpy(), pooled.numpy(),
                               rtol=1e-12)


def test_gndrp_gradient_is_the_kept_pixels_over_all_pixels() -> None:
    maps = torch.tensor([[[[1.0, 0.2], [0.5, -0.3]]]], requires_grad=True)
    pooled = gndrp_pool(maps, torch.tensor([True]), 0.4)
    assert pooled.item() == pytest.approx((0.2 - 0.3) / 4)  # 1.0 and 0.5 are >= 0.4 of the max
    pooled.sum().backward()
    np.testing.assert_array_equal(maps.grad[0, 0].numpy(), [[0, 0.25], [0, 0.25]])


def test_rib_loss_is_minus_the_positive_raw_logits() -> None:
    pooled = torch.tensor([[2.0, -1.0, 5.0], [0.5, 3.0, -7.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert rib_loss(pooled, labels).item() == pytest.approx(-(2.0 + 5.0 + 3.0))


# ---------------------------------------------------------------------------------------------
# Which other images


def _labels_matrix(count: int = 40, classes: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.random((count, classes)) < 0.3
    matrix[np.arange(count), rng.integers(0, classes, count)] = True  # at least one class each
    return matrix


def test_disjoint_index_finds_exactly_the_images_sharing_no_class() -> None:
    matrix = _labels_matrix()
    index = DisjointClassIndex([f"im{i}" for i in range(len(matrix))], matrix)
    for keys in ([1], [2, 4], [1, 3, 5], [5]):
        expected = [i for i in range(len(matrix)) if not set(np.flatnonzero(matrix[i]) + 1) & set(keys)]
        assert index.disjoint(keys).tolist() == expected
        assert index.disjoint(keys[::-1]).tolist() == expected  # cached by the set of classes
        holding = [i for i in range(len(matrix)) if set(keys) <= set(np.flatnonzero(matrix[i]) + 1)]
        assert index.containing(keys).tolist() == holding


def test_draw_other_images_no_shared_class_deterministic_and_covering() -> None:
    matrix = _labels_matrix()
    ids = [f"im{i}" for i in range(len(matrix))]
    index = DisjointClassIndex(ids, matrix)
    keys = np.flatnonzero(matrix[0]) + 1
    candidates = set(index.disjoint(keys).tolist())
    assert 0 < len(candidates) < len(ids)
    drawn = draw_other_images(index, "im0", keys, steps=10, batch_size=4, seed=3)
    assert drawn.shape == (10, 4)
    assert set(drawn.ravel().tolist()) <= candidates  # every drawn image is a valid candidate
    assert not matrix[drawn.ravel()][:, keys - 1].any()  # and shares no class with the target
    # a batch never repeats an image while the shuffled list lasts, and the whole list is used
    first_pass = drawn.ravel()[: len(candidates)]
    assert len(set(first_pass.tolist())) == len(candidates)
    again = draw_other_images(index, "im0", keys, steps=10, batch_size=4, seed=3)
    np.testing.assert_array_equal(drawn, again)
    assert not np.array_equal(drawn, draw_other_images(index, "im0", keys, steps=10, batch_size=4, seed=4))
    # the draw depends on the image id, not on the position of the image in a shard
    shuffled = DisjointClassIndex(ids, matrix)
    redrawn = draw_other_images(shuffled, "im0", keys, steps=10, batch_size=4, seed=3)
    np.testing.assert_array_equal(redrawn, drawn)


def test_draw_other_images_without_candidates_is_an_error_naming_the_image() -> None:
    matrix = np.zeros((6, 3), dtype=bool)
    matrix[:, 0] = True  # everyone holds class 1
    index = DisjointClassIndex([f"im{i}" for i in range(6)], matrix)
    with pytest.raises(DataError, match="im2.*RIB needs other images"):
        draw_other_images(index, "im2", [1], steps=3, batch_size=2)
    assert draw_other_images(index, "im2", [1], steps=3, batch_size=0).shape == (3, 0)


def test_joint_images_replace_disjoint_ones_with_probability_one_minus_p() -> None:
    matrix = _labels_matrix(60)
    ids = [f"im{i}" for i in range(60)]
    index = DisjointClassIndex(ids, matrix)
    keys = np.flatnonzero(matrix[0]) + 1
    drawn = draw_other_images(index, "im0", keys, steps=5, batch_size=4, disjoint_probability=0.0)
    joint = set(index.containing(keys).tolist()) - {0}
    assert joint and set(drawn.ravel().tolist()) <= joint  # never the target itself


# ---------------------------------------------------------------------------------------------
# Stop rules


def test_map_explodes_on_a_hand_made_map() -> None:
    maps = torch.zeros(2, 4, 5)
    maps[0, :2, :] = 1.0  # 10 of 20 pixels
    maps[1, 2, :4] = 2.0  # 4 more: the union holds 14 / 20 = 70%
    maps[1, 3, 0] = 0.5  # 0.25 of class 2's max: below 0.3
    assert not map_explodes(maps, 0.3, 0.7)  # strictly more than 70% is needed
    maps[1, 3, 0] = 0.7  # 0.35 of the max: 15 / 20 = 75%
    assert map_explodes(maps, 0.3, 0.7)


def _target_logit_sum(model: CamNet, image: np.ndarray, keys: list[int], config: RibConfig) -> float:
    """The step-0 margin quantity, by hand: GNDRP logits of the target's classes, summed over
    the loss scales and flips."""
    from wsss.attribution.cam import multiscale_inputs

    total = 0.0
    channels = torch.as_tensor(np.asarray(keys) - 1)
    with torch.no_grad():
        for scale, pair in zip(config.scales, multiscale_inputs(image, config.scales)):
            if scale in config.loss_scales:
                maps = model.class_maps(pair.to(torch.float64))[:, channels]
                total += float(gndrp_pool(maps, torch.ones(len(keys), dtype=torch.bool), 0.4).sum())
    return total


def test_margin_stop_at_step_zero_gives_the_plain_cam(net32: CamNet) -> None:
    image = _image(seed=2)
    result = compute_rib(net32, image, [1, 3], _batches(4, OTHER_LABELS[:1] * 2), MOVING, margin=0.0)
    assert (result.steps, result.stop) == (1, "margin")
    cam = compute_cam(net32, image, [1, 3])
    np.testing.assert_array_equal(result.keys, cam.keys)
    assert torch.allclose(result.high_res, cam.high_res, atol=1e-6)
    assert torch.allclose(result.strided, cam.strided, atol=1e-6)


def test_margin_is_the_target_logit_sum(net64: CamNet) -> None:
    image = _image(seed=3)
    value = abs(_target_logit_sum(net64, image, [1], MOVING))
    batches = _batches(4, OTHER_LABELS)
    below = compute_rib(net64, image, [1], batches, MOVING, margin=value * (1 - 1e-6))
    assert (below.steps, below.stop) == (1, "margin")
    above = compute_rib(net64, image, [1], batches, MOVING, margin=value * (1 + 1e-6))
    assert above.steps > 1


def test_explosion_stops_without_the_exploded_map(net64: CamNet) -> None:
    image = _image(seed=4)
    batches = _batches(4, OTHER_LABELS)
    # threshold 0 and ratio 0: any positive pixel is "above", so step 1's map explodes
    exploding = dataclasses.replace(MOVING, explode_threshold=0.0, explode_ratio=0.0)
    result = compute_rib(net64, image, [1], batches, exploding)
    assert (result.steps, result.stop) == (1, "explode")
    first = compute_rib(net64, image, [1], batches, MOVING, steps=1)
    assert torch.equal(result.high_res, first.high_res)
    # the reference's order keeps the exploded step's first-scale map: same as its loop, different maps
    kept = compute_rib(net64, image, [1], batches, exploding, reference_explode_accumulation=True)
    as_reference = dataclasses.replace(exploding, reference_explode_accumulation=True)
    loop = reference_rib(net64, image, [1], batches, as_reference)
    assert (loop.steps, loop.stop) == (1, "explode")
    assert _relative(kept.high_res, loop.high_res) < 1e-4
    assert _relative(kept.high_res, result.high_res) > 1e-3
    # never exploding: ratio 1 cannot be exceeded
    assert compute_rib(net64, image, [1], batches, MOVING).steps == MOVING.steps


def test_the_default_keeps_the_exploded_map_as_the_published_run(net64: CamNet) -> None:
    image = _image(seed=4)
    batches = _batches(4, OTHER_LABELS)
    published = dataclasses.replace(PUBLISHED, explode_threshold=0.0, explode_ratio=0.0)
    assert published.reference_explode_accumulation and RibConfig().reference_explode_accumulation
    default = compute_rib(net64, image, [1], batches, published)
    loop = reference_rib(net64, image, [1], batches, published)
    intended = compute_rib(net64, image, [1], batches, published, reference_explode_accumulation=False)
    assert (default.steps, default.stop) == (1, "explode")
    assert _relative(default.high_res, loop.high_res) < 1e-4
    assert _relative(default.high_res, intended.high_res) > 1e-3


# ---------------------------------------------------------------------------------------------
# The model is left as it was


def test_model_is_bit_identical_after_each_image(net64: CamNet) -> None:
    snapshot = _snapshot(net64)
    tuner = RibTuner(net64)
    for seed, keys in ((5, [1]), (6, [1, 2])):
        labels = [[0, 0, 1]] * 3 if keys == [1, 2] else OTHER_LABELS
        result = compute_rib(net64, _image(seed=seed), keys, _batches(4, labels), MOVING, tuner=tuner)
        assert result.steps == MOVING.steps
        _assert_untouched(net64, snapshot)
    reference_rib(net64, _image(seed=5), [1], _batches(4, OTHER_LABELS), MOVING)
    _assert_untouched(net64, snapshot)


def test_tuner_reset_restores_the_working_parameters(net64: CamNet) -> None:
    tuner = RibTuner(net64)
    tuner.reset()
    before = [p.detach().clone() for p in tuner.backbone_params.values()]
    compute_rib(net64, _image(seed=7), [1], _batches(4, OTHER_LABELS), MOVING, tuner=tuner)
    moved = [p.detach().clone() for p in tuner.backbone_params.values()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))  # it did fine-tune
    tuner.reset()
    assert all(torch.equal(a, p) for a, p in zip(before, tuner.backbone_params.values()))


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_folded_batchnorm_is_the_same_function_and_gradient(block) -> None:
    torch.manual_seed(0)
    backbone = ResNet(block, (2, 2, 2, 2), widths=(4, 4, 8, 8), output_stride=8).double().eval()
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    part = nn.Sequential(backbone.layer3, backbone.layer4)
    before = {k: v.clone() for k, v in part.state_dict().items()}
    folded = FoldedBatchNorm(part)
    assert len(folded.folds) == sum(isinstance(m, nn.BatchNorm2d) for m in part.modules())  # all of them
    params = {name: p.detach().clone().requires_grad_(True) for name, p in part.named_parameters()}
    x = torch.randn(2, 4 * block.expansion, 9, 11, dtype=torch.float64)
    plain, fast = functional_call(part, params, (x,)), folded(params, x)
    assert torch.allclose(fast, plain, rtol=0, atol=1e-12 * float(plain.detach().abs().max()))
    plain_grads = torch.autograd.grad((plain * x.new_tensor(0.3)).sin().sum(), list(params.values()))
    fast_grads = torch.autograd.grad((fast * x.new_tensor(0.3)).sin().sum(), list(params.values()))
    for name, a, b in zip(params, plain_grads, fast_grads):
        assert torch.allclose(b, a, rtol=1e-9, atol=1e-12), name
    assert all(torch.equal(v, before[k]) for k, v in part.state_dict().items())  # not modified


def test_a_module_that_does_not_trace_runs_unfolded() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    module = Branching().eval()
    folded = FoldedBatchNorm(module)
    assert folded.folds == []
    x = torch.rand(1, 2, 5, 5)
    assert torch.equal(folded(dict(module.named_parameters()), x), module(x))


# ---------------------------------------------------------------------------------------------
# Fast = the reference's loop


@pytest.mark.parametrize(("keys", "options"), [
    ([1], {}),
    ([1], {"reference_momentum_quirk": True, "pooling": "gap"}),
    ([1], {"gndrp_class_limit": 2, "trainable_stages": 1}),
    ([1, 2], {"resample_others": False}),
    ([2], {"batch_size": 0}),
])
def test_fast_equals_reference_loop(net64: CamNet, keys: list[int], options: dict) -> None:
    config = dataclasses.replace(MOVING, **options)
    image = _image(20, 25, seed=len(keys) + len(options))
    labels = {(1, 2): [[0, 0, 1], [0, 0, 1]], (2,): [[1, 0, 1], [1, 0, 0]]}.get(tuple(keys), OTHER_LABELS)
    if config.batch_size == 0:
        others = None
    elif not config.resample_others:
        others = _batches(1, labels)[0]  # one batch, reused every step
    else:
        others = _batches(config.steps, labels)
    fast = compute_rib(net64, image, keys, others, config)
    loop = reference_rib(net64, image, keys, others, config)
    assert (fast.steps, fast.stop) == (loop.steps, loop.stop) == (config.steps, "steps")
    assert _relative(fast.high_res, loop.high_res) < 1e-4
    assert _relative(fast.strided, loop.strided) < 1e-4
    cam = compute_rib(net64, image, keys, others, config, steps=1)
    assert _relative(fast.high_res, cam.high_res) > 1e-2  # the fine-tuning moved the maps


def test_momentum_quirk_changes_the_result(net64: CamNet) -> None:
    image = _image(seed=8)
    others = _batches(4, OTHER_LABELS)
    fixed = compute_rib(net64, image, [1], others, MOVING, weight_decay=0.5)
    quirk = compute_rib(net64, image, [1], others, MOVING, weight_decay=0.5, reference_momentum_quirk=True)
    assert _relative(fixed.high_res, quirk.high_res) > 1e-6
    # the default is the published computation: momentum = weight decay
    assert RibConfig().reference_momentum_quirk
    default = compute_rib(net64, image, [1], others, PUBLISHED, weight_decay=0.5)
    assert torch.equal(default.high_res, quirk.high_res)


def test_fewer_batches_end_the_run_as_the_reference_loader(net64: CamNet) -> None:
    image = _image(seed=9)
    others = _batches(2, OTHER_LABELS)
    fast = compute_rib(net64, image, [1], others, MOVING)
    loop = reference_rib(net64, image, [1], others, MOVING)
    assert fast.steps == loop.steps == 2
    assert _relative(fast.high_res, loop.high_res) < 1e-4


def test_bfloat16_rounds_the_maps_but_takes_the_same_steps(net32: CamNet) -> None:
    image = _image(20, 25, seed=10)
    others = _batches(MOVING.steps, OTHER_LABELS)
    snapshot = _snapshot(net32)
    exact = compute_rib(net32, image, [1], others, MOVING)
    rounded = compute_rib(net32, image, [1], others, MOVING, bfloat16=True)
    _assert_untouched(net32, snapshot)
    assert (rounded.steps, rounded.stop) == (exact.steps, exact.stop) == (MOVING.steps, "steps")
    assert rounded.high_res.dtype == rounded.strided.dtype == torch.float32
    difference = _relative(rounded.high_res, exact.high_res)
    assert 0 < difference < 1e-2  # it ran in bfloat16 (8-bit mantissa), and only rounding differs
    cam = compute_rib(net32, image, [1], others, MOVING, steps=1)
    assert _relative(exact.high_res, cam.high_res) > 5 * difference  # the fine-tuning moves them far more


# ---------------------------------------------------------------------------------------------
# Over a dataset


class _Pool:
    """An in-memory dataset: 10 images of classes 1..3, random sizes, counting label queries."""

    classes = ["background", "a", "b", "c"]

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        labels = [[1], [2], [3], [1, 2], [2, 3], [1], [3], [2], [1, 3], [3]]
        self.ids = [f"img{i:02d}" for i in range(len(labels))]
        self._labels = dict(zip(self.ids, labels))
        self._images = {i: rng.integers(0, 256, size=(18 + k, 22 + 2 * k, 3), dtype=np.uint8)
                        for k, i in enumerate(self.ids)}
        self.label_queries = 0

    def load_image(self, image_id: str) -> np.ndarray:
        return self._images[image_id]

    def image_labels(self, image_id: str) -> np.ndarray:
        self.label_queries += 1
        return np.asarray(self._labels[image_id], dtype=np.int64)


SMALL = RibConfig(steps=3, lr=3e-4, batch_size=2, margin=1e9, explode_ratio=1.0, other_crop_size=16,
                  other_resize_long=(14, 20))


def test_make_ribs_writes_maps_shaped_as_cams(net32: CamNet, tmp_path) -> None:
    pool = _Pool()
    snapshot = _snapshot(net32)
    written = make_ribs(net32, pool, tmp_path / "rib", config=SMALL, progress=False, seed=1)
    assert written == len(pool.ids)
    assert pool.label_queries == 2 * len(pool.ids)  # the index once, plus each target's own labels
    _assert_untouched(net32, snapshot)
    make_cams(net32, pool, tmp_path / "cam", progress=False)
    rib, cam = MapStore(tmp_path / "rib"), MapStore(tmp_path / "cam")
    assert rib.ids() == cam.ids() == pool.ids
    for image_id in pool.ids:
        a, b = rib.load(image_id), cam.load(image_id)
        np.testing.assert_array_equal(a.keys, b.keys)
        assert a.high_res.shape == b.high_res.shape and a.strided.shape == b.strided.shape
        assert np.allclose(a.high_res.max(axis=(1, 2)), 1.0, atol=1e-3)
    assert make_ribs(net32, pool, tmp_path / "rib", config=SMALL, progress=False, seed=1) == 0  # resumes


def test_make_ribs_is_deterministic_and_shard_independent(net32: CamNet, tmp_path) -> None:
    pool = _Pool()
    ids = pool.ids[:4]
    make_ribs(net32, pool, tmp_path / "one", config=SMALL, progress=False, seed=2, ids=ids,
              dist=DistInfo(0, 1))
    for rank in (1, 0):  # the second rank first: order does not matter either
        make_ribs(net32, pool, tmp_path / "two", config=SMALL, progress=False, seed=2, ids=ids,
                  dist=DistInfo(rank, 2))
    one, two = MapStore(tmp_path / "one"), MapStore(tmp_path / "two")
    for image_id in ids:
        np.testing.assert_array_equal(one.load(image_id).high_res, two.load(image_id).high_res)
    make_ribs(net32, pool, tmp_path / "other_seed", config=SMALL, progress=False, seed=3, ids=ids[:1])
    reseeded = MapStore(tmp_path / "other_seed").load(ids[0])
    assert not np.array_equal(one.load(ids[0]).high_res, reseeded.high_res)


def test_make_ribs_draws_other_images_from_another_pool(net32: CamNet, tmp_path) -> None:
    targets, pool = _Pool(), _Pool()
    pool.ids = pool.ids[5:]  # a different list of other images
    make_ribs(net32, targets, tmp_path / "a", config=SMALL, progress=False, ids=["img00"], pool=pool)
    make_ribs(net32, targets, tmp_path / "b", config=SMALL, progress=False, ids=["img00"])
    index = DisjointClassIndex.from_source(pool)
    drawn = OtherImageBatches(pool, index, "img00", np.array([1]), SMALL)
    assert all(i in pool.ids for step in range(SMALL.steps) for i in drawn.ids(step))
    a, b = MapStore(tmp_path / "a").load("img00"), MapStore(tmp_path / "b").load("img00")
    assert not np.array_equal(a.high_res, b.high_res)


def test_other_image_batches_follow_the_draw(net32: CamNet) -> None:
    pool = _Pool()
    index = DisjointClassIndex.from_source(pool)
    keys = np.array([1, 2])
    batches = OtherImageBatches(pool, index, "img03", keys, SMALL, seed=0)
    assert len(batches) == SMALL.steps
    for step in range(SMALL.steps):
        batch = batches[step]
        assert batch.images.shape == (SMALL.batch_size, 3, 16, 16)
        expected = [pool.image_labels(i) for i in batches.ids(step)]
        assert all(set(labels.tolist()) == {3} for labels in expected)  # only class 3 shares nothing
        np.testing.assert_array_equal(batch.labels.numpy(), [[0, 0, 1]] * SMALL.batch_size)
    fixed = OtherImageBatches(pool, index, "img03", keys, dataclasses.replace(SMALL, resample_others=False))
    assert fixed[0] is fixed[2]  # one batch: its frozen-stage features are computed once


def test_make_ribs_errors(net32: CamNet, tmp_path) -> None:
    pool = _Pool()
    pool._labels["img00"] = [1, 2, 3]  # shares a class with everyone
    with pytest.raises(DataError, match="img00"):
        make_ribs(net32, pool, tmp_path / "rib", config=SMALL, progress=False, ids=["img00"])
    with pytest.raises(ConfigError, match="foreground classes"):
        make_ribs(_random_net(4, torch.float32), pool, tmp_path / "rib", config=SMALL, progress=False)
    with pytest.raises(ConfigError, match="training mode"):
        compute_rib(net32.train(), _image(), [1], None, SMALL)
    net32.eval()


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", -1), ("score_threshold", 0.0), ("pooling", "max"),
    ("loss_scales", (0.75,)), ("trainable_stages", 5), ("disjoint_probability", 1.5),
    ("other_resize_long", (40, 20)),
])
def test_config_validation(field: str, value) -> None:
    with pytest.raises(ConfigError, match="rib"):
        dataclasses.replace(RibConfig(), **{field: value}).validate()


# ---------------------------------------------------------------------------------------------
# Learning rates and margin in the network's logit units (scale="image")


def test_scaled_settings_are_the_literal_ones_at_the_reference_logit() -> None:
    from wsss.attribution.rib import REFERENCE_TARGET_LOGIT, RibSettings, scaled_settings

    voc = RibConfig()
    literal = RibSettings(8e-6, 8e-6 * 10, 1e-4, 1e-4, 600.0, 1.0)
    assert scaled_settings(voc, REFERENCE_TARGET_LOGIT, "image") == literal
    assert scaled_settings(voc) == literal
    # twice the reference's logits: backbone lr / 2 with decay x 2, classifier lr x 2 with decay / 2, margin x 2
    double = scaled_settings(voc, 2 * REFERENCE_TARGET_LOGIT, "image")
    assert dataclasses.astuple(double) == pytest.approx((4e-6, 1.6e-4, 2e-4, 5e-5, 1200.0, 2.0), rel=1e-15)
    assert double.backbone_lr * double.backbone_weight_decay == pytest.approx(8e-6 * 1e-4)  # decay per step kept
    # reference: literal at every logit scale; a target the classifier does not see keeps them too
    assert scaled_settings(voc, 2 * REFERENCE_TARGET_LOGIT, "reference") == literal
    assert scaled_settings(voc, -1.0, "image") == scaled_settings(voc, 0.0, "image") == literal
    with pytest.raises(ConfigError, match="scale must be one of"):
        scaled_settings(voc, 1.0, "logits")


def _scaled_classifier(model: CamNet, factor: float) -> CamNet:
    copy = _random_net()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.classifier.weight.mul_(factor)
    return copy.eval()


def test_image_scale_makes_the_maps_independent_of_the_logit_scale(net64: CamNet) -> None:
    # A classifier with 3x the weights has 3x the logits; at scale "image" RIB takes the same
    # steps in its units (lr / c for the backbone, c lr for the classifier, c margin): same maps.
    image, keys = _image(seed=4), [1]
    batches = _batches(4, OTHER_LABELS)
    louder = _scaled_classifier(net64, 3.0)
    base = compute_rib(net64, image, keys, batches, MOVING, scale="image")
    loud = compute_rib(louder, image, keys, batches, MOVING, scale="image")
    assert loud.logit_scale == pytest.approx(3.0 * base.logit_scale, rel=1e-12)
    assert (loud.steps, loud.stop) == (base.steps, base.stop) == (4, "steps")
    assert _relative(loud.high_res, base.high_res) < 1e-6 and _relative(loud.strided, base.strided) < 1e-6  # float32 maps
    # the literal settings treat the two networks differently
    literal = compute_rib(net64, image, keys, batches, MOVING)
    assert literal.logit_scale == 1.0
    assert _relative(compute_rib(louder, image, keys, batches, MOVING).high_res, literal.high_res) > 1e-3
    assert _relative(base.high_res, literal.high_res) > 1e-6  # and image differs from reference here
    # the margin is in the same units too: the base network's step-0 sum s against margins around it
    start = abs(compute_rib(net64, image, keys, batches, MOVING, scale="image", trace=True).trace[0]["target_sum"])
    for factor, ending in ((0.5, (1, "margin")), (1.5, (4, "steps"))):
        margin = dataclasses.replace(MOVING, margin=factor * start / base.logit_scale)
        runs = [compute_rib(model, image, keys, batches, margin, scale="image") for model in (net64, louder)]
        assert [(r.steps, r.stop) for r in runs] == [ending, ending]
    literal_margin = dataclasses.replace(MOVING, margin=2 * start)  # the louder network's 3 s passes it at once
    assert compute_rib(louder, image, keys, batches, literal_margin).stop == "margin"
    assert compute_rib(net64, image, keys, batches, literal_margin).stop == "steps"


def test_climb_report_traces_both_settings(net64: CamNet) -> None:
    import json

    from wsss.attribution.rib import REFERENCE_TARGET_LOGIT, climb_report

    reports = climb_report(net64, _image(seed=2), [1, 3], _batches(3, [[0, 1, 0]]), MOVING, steps=3)
    assert sorted(reports) == ["image", "reference"]
    for result in reports.values():
        assert len(result.trace) == result.steps == 3
        assert all(len(step["score"]) == len(step["area"]) == 2 for step in result.trace)
        assert all(0 < a <= 1 for step in result.trace for a in step["area"])
        json.dumps(result.trace)
    literal, scaled = reports["reference"], reports["image"]
    assert literal.logit_scale == 1.0
    start = np.mean(scaled.trace[0]["score"])  # mean pooled logit of the target at step 0
    assert scaled.logit_scale == pytest.approx(start / REFERENCE_TARGET_LOGIT, rel=1e-12)
    assert literal.trace[0] == scaled.trace[0]  # the same start, then each its own climb
    assert literal.trace[1]["score"] != scaled.trace[1]["score"]


def test_the_logit_scale_is_measured_on_the_classes_the_classifier_sees() -> None:
    from wsss.attribution.rib import positive_mean

    # A labelled class the classifier misses (negative logit) does not shrink c.
    assert positive_mean(torch.tensor([[4.0, -3.0], [2.0, -1.0]])) == pytest.approx(3.0)
    assert positive_mean(torch.tensor([[-4.0, -3.0]])) is None
