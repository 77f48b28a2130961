"""AdvCAM: the batched climb against the reference's loop, a step by hand, schedule, state, errors.

The equivalence tests run in float64: AdvCAM's map jumps when a pixel crosses a threshold (the
positive-pixel counts and the mask), so float32 rounding differences between two correct
implementations grow to about 1e-2 over 27 steps (see benchmarks/advcam_speed.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.attribution.advcam import (
    AdvCamConfig,
    adversarial_climb,
    attribution_maps,
    climbing_copy,
    compute_advcam,
    compute_advcam_batch,
    fold_batchnorm,
    make_advcams,
    scale_schedule,
)
from wsss.attribution.advcam_reference import LastStageGradCam, reference_advcam, reference_attribution
from wsss.attribution.cam import assemble_maps, multiscale_inputs, normalise_maps
from wsss.errors import ConfigError, DataError
from wsss.models.backbones import Bottleneck, ResNet
from wsss.models.cam_net import CamNet
from wsss.runtime import DistInfo
from wsss.stores.maps import MapStore

torch.set_num_threads(1)


def _random_net(num_classes: int = 3, dtype: torch.dtype = torch.float64, **kwargs) -> CamNet:
    torch.manual_seed(0)
    options = {"freeze_bn": False, "frozen_stages": 0, **kwargs}
    model = CamNet("resnet18_w16", num_classes, output_stride=8, **options)
    for module in model.modules():  # non-trivial BatchNorm, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def net64() -> CamNet:
    return _random_net()


def _image(height: int = 28, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------
# Batched = the reference's loop


@pytest.mark.parametrize("reference_scale_weight", [False, True])
@pytest.mark.parametrize("keys", [[2], [1, 3], [1, 2, 3]])
def test_batched_equals_reference_loop(net64: CamNet, keys: list[int], reference_scale_weight: bool) -> None:
    # iterations 11 > 10: scale 0.5 climbs 5 steps with weight 2, as 27 -> 13 does
    config = AdvCamConfig(iterations=11, reference_scale_weight=reference_scale_weight)
    image = _image(20, 26, seed=len(keys))
    batched = compute_advcam(net64, image, keys, config=config)
    reference = reference_advcam(net64, image, keys, config=config)
    np.testing.assert_array_equal(batched.keys, keys)
    assert batched.high_res.shape == (len(keys), 20, 26) and batched.strided.shape == (len(keys), 5, 7)
    assert _relative(batched.high_res, reference.high_res) < 1e-4
    assert _relative(batched.strided, reference.strided) < 1e-4
    # the climb did something: the maps are not the first step's attribution
    start = compute_advcam(net64, image, keys, config=dataclasses.replace(config, iterations=1))
    assert _relative(batched.high_res, start.high_res) > 1e-2


def test_batched_equals_reference_loop_at_default_settings(net64: CamNet) -> None:
    image = _image(18, 20, seed=7)
    batched = compute_advcam(net64, image, [3])
    reference = reference_advcam(net64, image, [3])
    assert _relative(batched.high_res, reference.high_res) < 1e-4


def test_hook_attribution_equals_closed_form() -> None:
    net = _random_net(4, torch.float32)
    pair = multiscale_inputs(_image(40, 36, seed=3), (1.0,))[0].requires_grad_(True)
    parameters = [p for p in net.parameters() if p.requires_grad]
    unequal_halves = 0
    for channel in range(4):
        with LastStageGradCam(net.backbone.layer4) as gradcam:
            logits, regions = reference_attribution(net, gradcam, pair, channel, parameters)
        closed = attribution_maps(logits.detach()[None], torch.tensor([channel]),
                                  (net.classifier.weight.flatten(1)[channel] > 0).sum()[None])
        assert regions.shape == (1, 5, 5) and closed.shape == (1, 5, 5)
        torch.testing.assert_close(closed, regions.detach(), rtol=1e-5, atol=1e-7)
        assert regions.max() > 0
        unequal_halves += int((logits[0, channel] > 0).sum() != (logits[1, channel] > 0).sum())
    assert unequal_halves > 0  # some class has s_0 != s_1 (different positive counts on the two halves)
    assert all(p.grad is None for p in net.parameters())  # the reference loop leaves .grad alone


# ---------------------------------------------------------------------------------------------
# One step by hand


class OneLayerNet(nn.Module):
    """features = relu(x) at stride 1; class maps = W relu(x)."""

    output_stride = 1

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, len(weight), 1, bias=False)
        self.classifier.weight.data = torch.tensor(weight, dtype=torch.float64)[:, :, None, None]

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(images), self.classifier.weight)


def test_a_climb_computed_by_hand() -> None:
    # W[0] has P_0 = 2 positive entries. The image is 1 x 2 pixels, p0 = (1, 2, 0.5), p1 = (-1, 1, 2),
    # paired with its flip. Class 1 (channel 0): L0 = [1.5, -1.5], L1 = [-1, 1] on the image, mirrored
    # on the flip, so N_0 = N_1 = 1, s_b = 1 / (2 * 2) and A_0 = [0.25 * 1.5 * 2, 0] = [0.75, 0].
    # Step 0: dJ/dx = (1/2) [x > 0] (W[0] [L0 > 0] - W[1] [L1 > 0]) per pixel: p0 (0.5, 0.25, -0.5),
    # p1 (0, 0.5, -0.5); max |g| = 0.5, x += 0.08 g / 0.5, clamped to [-1, 2]:
    # p0 = (1.08, 2.04 -> 2, 0.42), p1 = (-1, 1.08, 1.92); L0 = [1.66, -1.38] so A_1 = [0.83, 0].
    # Step 1: M = [1, 0], the drift |A_1 - A_0| adds -7 * 0.25 * W[0] at p0 on each half: p0 gets
    # (-1.25, -0.625, 1.25), p1 keeps (0, 0.5, -0.5); x += 0.08 g / 1.25: p0 = (1, 1.96, 0.5),
    # L0(p0) = 1.48 so A_2 = [0.74, 0] (the regulariser pulled the map back towards A_0).
    net = OneLayerNet([[1.0, 0.5, -1.0], [0.5, -1.0, 1.0]])
    image = torch.tensor([[[1.0, -1.0]], [[2.0, 1.0]], [[0.5, 2.0]]], dtype=torch.float64)  # (3, 1, 2)
    pair = torch.stack([image, image.flip(-1)])[None]  # (1, 2, 3, 1, 2)
    channel = torch.tensor([0])
    expected = {1: 0.75, 2: 0.75 + 0.83, 3: 0.75 + 0.83 + 0.74}
    for iterations, value in expected.items():
        maps = adversarial_climb(net, pair, channel, iterations)
        torch.testing.assert_close(maps, torch.tensor([[[value, 0.0]]], dtype=torch.float64))
    # without the regulariser step 1 climbs on: p0 = (1.16, 2, 0.34), L0 = 1.82, A_2 = 0.91
    torch.testing.assert_close(adversarial_climb(net, pair, channel, 3, mask_weight=0.0),
                               torch.tensor([[[0.75 + 0.83 + 0.91, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(adversarial_climb(net, pair, channel, 3, weight=2.0),
                               torch.tensor([[[2 * expected[3], 0.0]]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Schedule, scale weights, edge cases


def test_scale_schedule_follows_the_reference() -> None:
    # the default is the reference's computation: mul_for_scale stays 2 after scale 0.5
    assert scale_schedule(AdvCamConfig()) == [(0.5, 13, 2.0), (1.0, 27, 2.0), (1.5, 27, 2.0), (2.0, 27, 2.0)]
    assert scale_schedule(AdvCamConfig(reference_scale_weight=False)) == [
        (0.5, 13, 2.0), (1.0, 27, 1.0), (1.5, 27, 1.0), (2.0, 27, 1.0)]
    assert scale_schedule(AdvCamConfig(iterations=8))[0] == (0.5, 5, 1.0)  # 6..10 -> 5 steps
    assert scale_schedule(AdvCamConfig(iterations=4))[0] == (0.5, 4, 1.0)  # < 6 -> all steps
    assert scale_schedule(AdvCamConfig(iterations=1, scales=(1.0, 0.5))) == [(0.5, 1, 1.0), (1.0, 1, 1.0)]
    assert scale_schedule(AdvCamConfig(scales=(1.0, 2.0))) == [(1.0, 27, 1.0), (2.0, 27, 1.0)]


def test_reference_scale_weight_halves_scale_half_relative_to_the_others(net64: CamNet) -> None:
    image, keys = _image(seed=11), [1, 3]
    config = AdvCamConfig(iterations=12, scales=(1.0, 0.5))
    climber = climbing_copy(net64)
    half_input, full_input = multiscale_inputs(image, (0.5, 1.0))
    channels = torch.tensor([0, 2])

    def climb(pair: torch.Tensor, iterations: int) -> torch.Tensor:
        return adversarial_climb(climber, pair.to(torch.float64)[None].expand(2, -1, -1, -1, -1), channels,
                                 iterations)

    half, full = climb(half_input, 6), climb(full_input, 12)  # unweighted sums of A_t

    def expected(weights: tuple[float, float]) -> torch.Tensor:
        _, high_res = assemble_maps([weights[0] * half, weights[1] * full], image.shape[:2], 8)
        return normalise_maps(high_res).float()

    default = compute_advcam(net64, image, keys, config=config)
    intended = compute_advcam(net64, image, keys,
                              config=dataclasses.replace(config, reference_scale_weight=False))
    # the default is the published computation: every scale x2 ...
    torch.testing.assert_close(default.high_res, expected((2.0, 2.0)))
    torch.testing.assert_close(intended.high_res, expected((2.0, 1.0)))
    # ... which after normalisation weighs both scales alike: 0.5 has half the intended weight
    torch.testing.assert_close(default.high_res, expected((1.0, 1.0)), rtol=0, atol=1e-4)
    assert _relative(default.high_res, intended.high_res) > 1e-3


def test_one_iteration_is_the_unperturbed_attribution(net64: CamNet) -> None:
    image = _image(32, 28, seed=5)
    result = compute_advcam(net64, image, [1, 2], iterations=1)
    per_scale = []
    for pair in multiscale_inputs(image, (0.5, 1.0, 1.5, 2.0)):  # every scale weight 1 for T = 1
        logits = net64.class_maps(pair.to(torch.float64)).detach()
        positive = (net64.classifier.weight.flatten(1) > 0).sum(dim=1)
        per_scale.append(attribution_maps(logits[None].expand(2, -1, -1, -1, -1), torch.tensor([0, 1]),
                                          positive[:2]))
    strided, high_res = assemble_maps(per_scale, image.shape[:2], 8)
    torch.testing.assert_close(result.high_res, normalise_maps(high_res).float())
    torch.testing.assert_close(result.strided, normalise_maps(strided).float())
    reference = reference_advcam(net64, image, [1, 2], config=AdvCamConfig(iterations=1))
    assert _relative(result.high_res, reference.high_res) < 1e-6


def test_zero_iterations_is_an_error(net64: CamNet) -> None:
    with pytest.raises(ConfigError, match="advcam.iterations must be at least 1"):
        compute_advcam(net64, _image(), [1], iterations=0)


# ---------------------------------------------------------------------------------------------
# Batching, state, folding


def test_batching_images_and_capping_pairs_give_the_same_maps(net64: CamNet) -> None:
    images = [_image(seed=s) for s in (1, 2, 3)]
    keys = [[2], [1, 3], [1, 2, 3]]
    config = AdvCamConfig(iterations=4, scales=(1.0, 0.5))
    one_by_one = [compute_advcam(net64, image, k, config=config) for image, k in zip(images, keys)]
    for extra in ({}, {"max_batch_pairs": 2}):
        together = compute_advcam_batch(net64, images, keys, config=config, **extra)
        for single, batched in zip(one_by_one, together):
            np.testing.assert_array_equal(single.keys, batched.keys)
            assert _relative(batched.high_res, single.high_res) < 1e-6
            assert _relative(batched.strided, single.strided) < 1e-6


def test_the_callers_model_is_left_as_it_was() -> None:
    model = _random_net(3, torch.float32, frozen_stages=2)  # some parameters frozen by the caller
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compute_advcam(model, _image(), [1, 2], iterations=2, scales=(1.0,))
    reference_advcam(model, _image(), [1, 2], config=AdvCamConfig(iterations=2, scales=(1.0,)))
    assert [p.requires_grad for p in model.parameters()] == flags and not all(flags)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # a model in training mode is refused by compute_advcam (as compute_cam) and left in it
    model.train()
    with pytest.raises(ConfigError, match="model.eval"):
        compute_advcam(model, _image(), [1], iterations=1)
    assert model.training


class _LayoutRecorder(nn.Module):
    """Wraps a climbing copy; records the memory format of every input the climb feeds it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.classifier, self.layouts = net, net.classifier, []

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        self.layouts.append("channels_last" if images.is_contiguous(memory_format=torch.channels_last)
                            else "contiguous" if images.is_contiguous() else "other")
        return self.net.class_maps(images)


# float32: the two layouts round the convolutions differently and AdvCAM's jumps amplify it (~4e-3
# after 4 steps here; see the module docstring); float64 rounds too little for that
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-2)])
def test_channels_last_climb_gives_the_contiguous_maps(dtype: torch.dtype, tolerance: float) -> None:
    net = climbing_copy(_random_net(3, dtype))
    pairs = torch.stack([multiscale_inputs(_image(36, 40, seed=s), (1.0,))[0] for s in (1, 2, 3)]).to(dtype)
    channels = torch.tensor([0, 2, 1])
    maps = {}
    for layout, name in ((torch.channels_last, "channels_last"), (torch.contiguous_format, "contiguous")):
        recorder = _LayoutRecorder(net)
        maps[name] = adversarial_climb(recorder, pairs, channels, 4, memory_format=layout)
        assert recorder.layouts == [name] * 4  # every step, no step falls back to another layout
    assert maps["contiguous"].abs().max() > 0
    assert _relative(maps["channels_last"], maps["contiguous"]) < tolerance
    # the default on the CPU is channels-last, and its maps are those
    torch.testing.assert_close(adversarial_climb(net, pairs, channels, 4), maps["channels_last"], rtol=0, atol=0)


def test_folding_batchnorm_keeps_the_function() -> None:
    torch.manual_seed(1)
    bottleneck = ResNet(Bottleneck, (1, 1, 1, 1), widths=(8, 8, 8, 8), output_stride=16)
    for module in bottleneck.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.2, 0.2)
    bottleneck.eval().double()
    folded = climbing_copy(nn.ModuleDict({"backbone": bottleneck}))["backbone"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    assert fold_batchnorm(folded) == 0
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    torch.testing.assert_close(folded(x), bottleneck(x))
    # the original is intact: stem 1 + 3 per block + 3 downsample branches (the last stage keeps its stride)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bottleneck.modules()) == 16
    net = _random_net()
    climber = climbing_copy(net)
    assert not any(p.requires_grad for p in climber.parameters())
    assert all(p.requires_grad for p in net.parameters())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(climber.class_maps(x), net.class_maps(x).detach())


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_input_is_a_clear_error(net64: CamNet) -> None:
    with pytest.raises(DataError, match="img7.jpg: image has no labelled class"):
        compute_advcam(net64, _image(), [], where="img7.jpg")
    with pytest.raises(ConfigError, match=r"class id\(s\) \[4\] outside 1\.\.3"):
        compute_advcam(net64, _image(), [1, 4])
    with pytest.raises(ConfigError, match=r"unknown AdvCAM option\(s\): iteration"):
        compute_advcam(net64, _image(), [1], iteration=3)
    with pytest.raises(ConfigError, match="advcam.scales must be positive"):
        compute_advcam(net64, _image(), [1], scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="one size"):
        compute_advcam_batch(net64, [_image(28, 30), _image(30, 28)], [[1], [1]])


# ---------------------------------------------------------------------------------------------
# The store, the command, the recipe


class TinySource:
    classes = ["background", "a", "b", "c"]

    def __init__(self, count: int = 5) -> None:
        self.ids = [f"im{i}" for i in range(count)]

    def load_image(self, image_id: str) -> np.ndarray:
        index = int(image_id[2:])
        return _image(24 + 4 * (index % 2), 28, seed=index)  # two sizes, interleaved

    def image_labels(self, image_id: str) -> np.ndarray:
        index = int(image_id[2:])
        return np.array([1 + index % 3] if index % 2 else [1, 3])


def test_store_run_batches_resumes_and_shards(tmp_path: Path) -> None:
    net = _random_net(3, torch.float32)
    source, store = TinySource(), MapStore(tmp_path / "advcam")
    settings = {"iterations": 2, "scales": (1.0, 0.5), "images_per_batch": 2}
    rank1 = DistInfo(rank=1, world_size=2)
    # same-size batches [im0 im2] [im4] [im1 im3] are dealt to the ranks: rank 1 takes the second
    assert make_advcams(net, source, store, progress=False, dist=rank1, **settings) == 1
    assert store.ids() == ["im4"]
    net.train()  # as make_cams, the run works in eval mode; here on a copy, so net stays as it is
    assert make_advcams(net, source, store, progress=False, **settings) == 4
    assert net.training and all(p.requires_grad for p in net.parameters())
    net.eval()
    assert make_advcams(net, source, store, progress=False, **settings) == 0
    for image_id in source.ids:
        maps = store.load(image_id)
        direct = compute_advcam(net, source.load_image(image_id), source.image_labels(image_id), iterations=2,
                                scales=(1.0, 0.5))
        np.testing.assert_array_equal(maps.keys, direct.keys)
        np.testing.assert_allclose(maps.high_res, direct.high_res.numpy(), atol=2e-3)  # float16 on disk
        assert maps.strided.shape == direct.strided.shape
    # one process writes the same bytes as two: every image climbs in the same batch
    single = MapStore(tmp_path / "single")
    assert make_advcams(net, source, single, progress=False, **settings) == 5
    for image_id in source.ids:
        assert single.path(image_id).read_bytes() == store.path(image_id).read_bytes()
    with pytest.raises(ConfigError, match="foreground classes"):
        make_advcams(_random_net(5, torch.float32), source, tmp_path / "other", progress=False)


def test_make_advcam_command_on_a_voc_folder(tmp_path: Path) -> None:
    from helpers import make_voc

    from wsss.cli import main

    fixture = make_voc(tmp_path / "voc", classes=["background", "cat", "dog", "bird"])
    torch.manual_seed(0)
    checkpoint = tmp_path / "cam.pt"
    CamNet("resnet18_w16", 3, freeze_bn=False, frozen_stages=0, classes=fixture.classes).save(checkpoint)
    out = tmp_path / "maps"
    args = ["make-advcam", "--data", str(fixture.root), "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--no-progress", "--scales", "1.0", "--iterations", "2",
            "--intended-scale-weight"]
    assert main(args) == 0
    store = MapStore(out)
    assert store.ids() == sorted(fixture.ids)
    first = store.load(fixture.ids[0])
    np.testing.assert_array_equal(first.keys, fixture.labels[fixture.ids[0]])
    assert first.image_size == fixture.sizes[fixture.ids[0]]
    assert store.made_by()["reference_scale_weight"] is False  # --intended-scale-weight
    assert store.made_by()["bfloat16"] is False
    rounded = tmp_path / "rounded"
    assert main([str(rounded) if a == str(out) else a for a in args] + ["--bfloat16"]) == 0
    assert MapStore(rounded).made_by()["bfloat16"] is True  # maps of another precision: another claim
    assert main([*args[:-1], "--iterations", "0"]) == 2  # a clear error, exit status 2


def test_recipe_wires_advcam_stages() -> None:
    from wsss.methods import Context
    from wsss.pipeline.recipes import build_stages, load_recipe

    recipe = load_recipe("synth/demo", ["methods=[cam, advcam]", "advcam.iterations=5"])
    assert recipe.advcam.iterations == 5 and recipe.advcam.mask_weight == 7.0
    stages = {stage.name: stage for stage in build_stages(Context(recipe, Path("work")))}
    assert stages["advcam.maps"].needs == ("classifier",)
    assert stages["advcam.seed_eval"].needs == ("advcam.maps",)
    # batching settings do not change the maps, so they do not rerun the stage
    faster = load_recipe("synth/demo", ["methods=[cam, advcam]", "advcam.iterations=5",
                                        "advcam.images_per_batch=4", "advcam.max_batch_pairs=2"])
    faster_stage = {s.name: s for s in build_stages(Context(faster, Path("work")))}["advcam.maps"]
    assert faster_stage.depends_on == stages["advcam.maps"].depends_on
    with pytest.raises(ConfigError, match="iterations"):
        load_recipe("synth/demo", ["methods=[advcam]", "advcam.iterations=0"])


# ---------------------------------------------------------------------------------------------
# Lambda with the reference's strength (scale="image")


class _WideStub(nn.Module):
    """A classifier with 2048 feature channels, like ResNet-50's, at stride 4, and ``positive``
    positive weights in every class row (P_c): cheap, and its P_c is whatever a test needs."""

    def __init__(self, positive: int, num_classes: int = 2, channels: int = 2048) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(positive)
        self.num_classes = num_classes
        self.project = nn.Conv2d(3, channels, 1).double()
        with torch.no_grad():
            self.project.weight.copy_(torch.randn(channels, 3, 1, 1, generator=generator, dtype=torch.float64))
            self.project.bias.copy_(torch.randn(channels, generator=generator, dtype=torch.float64) * 0.1)
        magnitude = torch.rand(num_classes, channels, generator=generator, dtype=torch.float64) * 0.02
        sign = torch.full((num_classes, channels), -0.1, dtype=torch.float64)  # weak negatives: maps not empty
        for row in range(num_classes):
            sign[row, torch.randperm(channels, generator=generator)[:positive]] = 1.0
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False).double()
        with torch.no_grad():
            self.classifier.weight.copy_((magnitude * sign)[:, :, None, None])
        self.requires_grad_(False)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(self.project(F.avg_pool2d(images, 4))), self.classifier.weight)


def _climb(model: nn.Module, height: int, width: int, **options) -> torch.Tensor:
    image = torch.randn(2, 1, 2, 3, height, width, generator=torch.Generator().manual_seed(height),
                        dtype=torch.float64)[:, 0]  # two trajectories of a flip pair each
    return adversarial_climb(model, image, torch.tensor([0, 1]), 4, **options)


def test_reference_cells_are_the_stride_16_maps_of_a_voc_image() -> None:
    from wsss.attribution.advcam import reference_cells

    assert [reference_cells(s) for s in (0.5, 1.0, 1.5, 2.0)] == [192, 768, 1692, 2961]
    # the same count as a ResNet at output stride 16 gives for a 375 x 500 image at those scales
    torch.manual_seed(0)
    net = CamNet("resnet18_w16", 2, output_stride=16, freeze_bn=False, frozen_stages=0).eval()
    with torch.no_grad():
        for scale, pair in zip((0.5, 1.0), multiscale_inputs(_image(375, 500), (0.5, 1.0), flip=False)):
            maps = net.class_maps(pair)
            assert maps.shape[-2] * maps.shape[-1] == reference_cells(scale)


def test_lambda_is_the_literal_one_at_voc_scale_and_keeps_the_strength_elsewhere() -> None:
    from wsss.attribution.advcam import (REFERENCE_POSITIVE_WEIGHTS, mask_weights, reference_cells,
                                         regulariser_strength)

    voc = torch.tensor([REFERENCE_POSITIVE_WEIGHTS])
    assert REFERENCE_POSITIVE_WEIGHTS == 1024  # half of ResNet-50's 2048 channels
    assert regulariser_strength(7.0, 768, 1024) == 2.625  # the issue's ~2.6 at VOC's scale
    for scale in (0.5, 1.0, 1.5, 2.0):  # a ResNet-50 at stride 16 on a 500 x 375 image: exactly 7
        cells = reference_cells(scale)
        assert mask_weights(7.0, cells, voc, cells).tolist() == [7.0]
    # the demo's classifier (128 px, stride 8: 16 x 16 cells, 128 channels, ~64 positive): 7 * 3 / 16
    small = mask_weights(7.0, 256, torch.tensor([64, 32]), reference_cells(1.0))
    assert small.tolist() == [7.0 * 768 / 256 * 64 / 1024, 7.0 * 768 / 256 * 32 / 1024]
    assert regulariser_strength(small, 256, torch.tensor([64, 32])).tolist() == pytest.approx([2.625, 2.625])
    assert regulariser_strength(7.0, 256, 64) == 14.0  # the literal 7 there: five times the reference's


def test_image_scale_climbs_with_the_formulas_lambda() -> None:
    # P_c = 1024 and 24 x 32 = 768 cells: the reference's scale, where image = reference
    voc_like = _WideStub(positive=1024)
    literal = _climb(voc_like, 96, 128, mask_weight=7.0)
    assert (literal > 0).float().mean() > 0.2
    torch.testing.assert_close(_climb(voc_like, 96, 128, mask_weight=7.0, reference=768), literal, rtol=0, atol=0)
    # P_c = 256 on 16 x 16 = 256 cells: lambda = 7 * (768 / 256) * (256 / 1024) = 5.25
    small = _WideStub(positive=256)
    scaled = _climb(small, 64, 64, mask_weight=7.0, reference=768)
    assert (scaled > 0).float().mean() > 0.2
    torch.testing.assert_close(scaled, _climb(small, 64, 64, mask_weight=5.25), rtol=1e-12, atol=0)
    assert not torch.allclose(scaled, _climb(small, 64, 64, mask_weight=7.0))  # the setting matters


def test_image_scale_reaches_the_maps_and_is_checked(net64: CamNet) -> None:
    config = AdvCamConfig(iterations=4, scales=(1.0, 0.5))
    image = _image(20, 26, seed=5)
    literal = compute_advcam(net64, image, [1, 3], config=config)
    np.testing.assert_array_equal(compute_advcam(net64, image, [1, 3], config=config, scale="reference").high_res,
                                  literal.high_res)
    scaled = compute_advcam(net64, image, [1, 3], config=config, scale="image")
    assert scaled.high_res.shape == literal.high_res.shape
    assert not torch.allclose(scaled.high_res, literal.high_res)
    with pytest.raises(ConfigError, match="scale must be one of"):
        compute_advcam(net64, image, [1], config=config, scale="voc")


def test_climb_report_traces_score_and_area_at_both_settings() -> None:
    import json

    from wsss.attribution.advcam import climb_report, reference_cells

    net = _random_net()
    with torch.no_grad():  # mostly positive class weights: every class has a map, as after training
        net.classifier.weight.normal_(0.05, 0.1, generator=torch.Generator().manual_seed(1))
    reports = climb_report(net, _image(40, 60, seed=2), [1, 3], iterations=6)
    assert sorted(reports) == ["image", "reference"]
    literal, scaled = reports["reference"], reports["image"]
    assert literal.score.shape == literal.area.shape == literal.accumulated_area.shape == (2, 6)
    assert literal.cells == scaled.cells == 5 * 8  # 40 x 60 at stride 8
    assert literal.mask_weight.tolist() == [7.0, 7.0]
    expected = 7.0 * reference_cells(1.0) / literal.cells * literal.positive_weights / 1024
    np.testing.assert_allclose(scaled.mask_weight, expected, rtol=1e-15)
    np.testing.assert_allclose(scaled.strength, 2.625, rtol=1e-12)  # the reference's strength
    np.testing.assert_allclose(literal.strength, 7.0 * 40 / (2 * literal.positive_weights), rtol=1e-15)
    np.testing.assert_array_equal(literal.score[:, 0], scaled.score[:, 0])  # the same start
    assert ((literal.area > 0) & (literal.area <= 1)).all() and ((scaled.area > 0) & (scaled.area <= 1)).all()
    assert not np.allclose(literal.score[:, 1:], scaled.score[:, 1:])  # and another climb
    json.dumps({name: report.to_dict() for name, report in reports.items()})


# ---------------------------------------------------------------------------------------------
# bfloat16


class _PassRecorder(nn.Module):
    """Wraps a climbing copy; records the dtype of every class map the climb's forward gives."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.classifier, self.dtypes = net, net.classifier, []

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.net.class_maps(images)
        self.dtypes.append(maps.dtype)
        return maps


def test_bfloat16_rounds_the_maps_but_climbs_the_same_steps() -> None:
    model = _random_net(3, torch.float32)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    pairs = torch.stack([multiscale_inputs(_image(36, 40, seed=s), (1.0,))[0] for s in (1, 2)])
    channels = torch.tensor([0, 2])
    climber = climbing_copy(model)
    exact, rounded = _PassRecorder(climber), _PassRecorder(climber)
    maps = adversarial_climb(exact, pairs, channels, 6)
    rounded_maps = adversarial_climb(rounded, pairs, channels, 6, bfloat16=True)
    assert exact.dtypes == [torch.float32] * 6
    assert rounded.dtypes == [torch.bfloat16] * 6  # every step's forward ran in bfloat16
    assert rounded_maps.dtype == torch.float32  # and the accumulated maps did not
    difference = _relative(rounded_maps, maps)
    # bfloat16's 8-bit mantissa: about 1e-2 at step 0 (one forward pass), growing a little with
    # the steps as AdvCAM's jumps amplify it (3e-2 here)
    assert 0 < difference < 5e-2
    unclimbed = adversarial_climb(climber, pairs, channels, 1) * 6
    assert _relative(maps, unclimbed) > 3 * difference  # the climb moves the maps far more
    # through the public functions, on the caller's model: same result, model untouched
    image = _image(36, 40, seed=1)
    result = compute_advcam(model, image, [1, 3], iterations=3, scales=(1.0, 0.5), bfloat16=True)
    plain = compute_advcam(model, image, [1, 3], iterations=3, scales=(1.0, 0.5))
    assert result.high_res.dtype == result.strided.dtype == torch.float32
    assert 0 < _relative(result.high_res, plain.high_res) < 5e-2
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())


def test_bfloat16_is_a_checked_setting_of_the_maps_stage() -> None:
    from wsss.methods import Context
    from wsss.pipeline.recipes import build_stages, load_recipe

    assert AdvCamConfig().bfloat16 is False  # the reference's float32 by default
    overrides = ["methods=[cam, advcam]", "advcam.iterations=5"]
    stages = {}
    for value in (False, True):
        recipe = load_recipe("synth/demo", [*overrides, f"advcam.bfloat16={str(value).lower()}"])
        stages[value] = {s.name: s for s in build_stages(Context(recipe, Path("work")))}["advcam.maps"]
    assert stages[True].depends_on["advcam"]["bfloat16"] is True
    assert stages[False].depends_on["advcam"]["bfloat16"] is False  # other maps: the stage reruns
    with pytest.raises(ConfigError, match="advcam.bfloat16.*true or false"):
        load_recipe("synth/demo", overrides + ["advcam.bfloat16=7"])
