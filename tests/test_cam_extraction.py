"""CAM extraction: shapes, normalisation, label filtering, flip batching vs a plain loop, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.attribution.cam import (
    assemble_maps,
    compute_cam,
    make_cams,
    merge_flips,
    multiscale_inputs,
    normalise_maps,
)
from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import CamNet
from wsss.runtime import DistInfo
from wsss.stores.maps import MapStore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net() -> CamNet:
    torch.manual_seed(0)
    model = CamNet("resnet18_w16", 3, output_stride=8, freeze_bn=False, frozen_stages=0)
    # give BatchNorm non-trivial statistics and residual branches some weight
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def _image(height: int = 37, width: int = 51, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


class TinySource:
    classes = ["background", "a", "b", "c"]

    def __init__(self, count: int = 4) -> None:
        self.ids = [f"im{i}" for i in range(count)]

    def load_image(self, image_id: str) -> np.ndarray:
        index = int(image_id[2:])
        return _image(30 + index, 26 + 2 * index, seed=index)

    def image_labels(self, image_id: str) -> np.ndarray:
        index = int(image_id[2:])
        return np.array([1 + index % 3] if index % 2 else [1, 3])


def test_shapes_normalisation_and_kept_classes(net: CamNet) -> None:
    cam = compute_cam(net, _image(), keys=[3, 1])
    np.testing.assert_array_equal(cam.keys, [1, 3])  # sorted class ids
    assert cam.strided.shape == (2, 10, 13)  # ((37-1)//4+1, (51-1)//4+1)
    assert cam.high_res.shape == (2, 37, 51)
    for maps in (cam.strided, cam.high_res):
        assert maps.min() >= 0
        np.testing.assert_allclose(maps.amax(dim=(1, 2)).numpy(), 1.0, atol=1e-4)
    # the kept channels are the same as extracting all classes and selecting 1 and 3
    full = compute_cam(net, _image(), keys=[1, 2, 3])
    torch.testing.assert_close(cam.high_res, full.high_res[[0, 2]])


def test_multiscale_input_sizes_round_as_irn() -> None:
    inputs = multiscale_inputs(_image(37, 51), (1.0, 0.5, 1.5, 2.0))
    assert [tuple(x.shape) for x in inputs] == [
        (2, 3, 37, 51), (2, 3, 18, 26), (2, 3, 56, 76), (2, 3, 74, 102)  # round half to even
    ]
    torch.testing.assert_close(inputs[1][1], inputs[1][0].flip(-1))
    assert multiscale_inputs(_image(), (1.0,), flip=False)[0].shape == (1, 3, 37, 51)


def _reference_loop(net: CamNet, image: np.ndarray, keys: list[int], scales) -> tuple[torch.Tensor, torch.Tensor]:
    """IRN's make_cam written as plain loops: one image at a time, every class, select last."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    height, width = image.shape[:2]
    strided_hw = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    up_hw = (((height - 1) // 8 + 1) * 8, ((width - 1) // 8 + 1) * 8)
    strided = torch.zeros(3, *strided_hw)
    high_res = torch.zeros(3, *up_hw)
    with torch.no_grad():
        for scale in scales:
            size = (int(np.round(height * scale)), int(np.round(width * scale)))
            resized = image if scale == 1.0 else np.asarray(
                Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
            normalised = (resized.astype(np.float32) / 255.0 - mean) / std
            tensor = torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]
            plain = F.relu(net.class_maps(tensor))[0]
            flipped = F.relu(net.class_maps(torch.flip(tensor, [3])))[0]
            merged = plain + torch.flip(flipped, [2])
            strided += F.interpolate(merged[None], strided_hw, mode="bilinear", align_corners=False)[0]
            high_res += F.interpolate(merged[None], up_hw, mode="bilinear", align_corners=False)[0]
    index = [k - 1 for k in keys]
    strided, high_res = strided[index], high_res[index, :height, :width]
    strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)
    high_res = high_res / (F.adaptive_max_pool2d(high_res, (1, 1)) + 1e-5)
    return strided, high_res


def test_batched_flips_equal_an_unbatched_loop(net: CamNet) -> None:
    image = _image(29, 42, seed=5)
    scales = (1.0, 0.5, 1.5, 2.0)
    cam = compute_cam(net, image, keys=[2, 3], scales=scales)
    strided, high_res = _reference_loop(net, image, [2, 3], scales)
    torch.testing.assert_close(cam.strided, strided, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cam.high_res, high_res, rtol=1e-4, atol=1e-5)


def test_building_blocks() -> None:
    maps = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    torch.testing.assert_close(merge_flips(maps), maps[0] + maps[1].flip(-1))
    torch.testing.assert_close(merge_flips(maps[:1]), maps[0])
    per_copy = torch.randn(2, 4, 1, 2, 3)  # [originals, flips] of 4 copies (AdvCAM's per-class batch)
    torch.testing.assert_close(merge_flips(per_copy)[2], merge_flips(per_copy[:, 2]))
    strided, high_res = assemble_maps([torch.ones(2, 3, 4), 2 * torch.ones(2, 5, 7)], (13, 27), 16)
    assert strided.shape == (2, 4, 7) and high_res.shape == (2, 13, 27)
    torch.testing.assert_close(high_res, torch.full((2, 13, 27), 3.0))
    normalised = normalise_maps(torch.tensor([[[0.0, 2.0]], [[4.0, 1.0]]]))
    torch.testing.assert_close(normalised, torch.tensor([[[0.0, 2 / 2.00001]], [[4 / 4.00001, 1 / 4.00001]]]))


def test_bad_input_is_a_clear_error(net: CamNet) -> None:
    with pytest.raises(DataError, match="img7.jpg: image has no labelled class"):
        compute_cam(net, _image(), keys=[], where="img7.jpg")
    with pytest.raises(ConfigError, match=r"class id\(s\) \[4\] outside 1\.\.3"):
        compute_cam(net, _image(), keys=[1, 4])
    net.train()
    try:
        with pytest.raises(ConfigError, match="model.eval"):
            compute_cam(net, _image(), keys=[1])
    finally:
        net.eval()


def test_store_run_resumes_and_shards(net: CamNet, tmp_path: Path) -> None:
    source = TinySource(count=4)
    store = MapStore(tmp_path / "cam")
    assert make_cams(net, source, store, scales=(1.0, 0.5), progress=False,
                     dist=DistInfo(rank=1, world_size=2)) == 2
    assert store.ids() == ["im1", "im3"]
    assert make_cams(net, source, store, scales=(1.0, 0.5), progress=False) == 2  # im0, im2
    assert make_cams(net, source, store, scales=(1.0, 0.5), progress=False) == 0  # all done
    maps = store.load("im2")
    np.testing.assert_array_equal(maps.keys, [1, 3])
    assert maps.high_res.shape == (2, 32, 30) and maps.strided.shape == (2, 8, 8)
    direct = compute_cam(net, source.load_image("im2"), [1, 3], scales=(1.0, 0.5))
    np.testing.assert_allclose(maps.high_res, direct.high_res.numpy(), atol=1e-3)  # float16 on disk
    assert net.training is False


def test_make_cam_command_on_a_voc_folder(tmp_path: Path) -> None:
    from helpers import make_voc

    from wsss.cli import main

    fixture = make_voc(tmp_path / "voc", classes=["background", "cat", "dog", "bird"])
    torch.manual_seed(0)
    checkpoint = tmp_path / "cam.pt"
    CamNet("resnet18_w16", 3, freeze_bn=False, frozen_stages=0, classes=fixture.classes).save(checkpoint)
    out = tmp_path / "maps"
    args = ["make-cam", "--data", str(fixture.root), "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--no-progress", "--scales", "1.0", "0.5"]
    assert main(args) == 0
    store = MapStore(out)
    assert store.ids() == sorted(fixture.ids)
    first = store.load(fixture.ids[0])
    np.testing.assert_array_equal(first.keys, fixture.labels[fixture.ids[0]])
    assert first.image_size == fixture.sizes[fixture.ids[0]]
    # a checkpoint for another class count is refused
    CamNet("resnet18_w16", 5, freeze_bn=False, frozen_stages=0).save(checkpoint)
    assert main(args) == 2
