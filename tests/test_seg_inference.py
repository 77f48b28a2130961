"""Multi-scale / flip inference on stub models whose logits are known, and the dataset stage."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError
from wsss.io import read_label_png
from wsss.models.deeplab import create_segmentation_model
from wsss.runtime import DistInfo
from wsss.segmentation.inference import predict, predict_dataset, predict_logits, predict_probs

CPU = torch.device("cpu")


class SizeStub(nn.Module):
    """Constant logits per input height: class c scores ``table[height][c]`` everywhere."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        super().__init__()
        self.table = table
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        row = torch.tensor(self.table[x.shape[-2]], dtype=torch.float32)
        return row.view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[-2] // 2, x.shape[-1] // 2).clone()


class RampStub(nn.Module):
    """Two classes: class 1 scores the column index (left to right), class 0 its negation.

    Not flip-equivariant: the flipped input, flipped back, scores the reversed ramp.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        ramp = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(x.shape[0], 1, x.shape[-2], width)
        return torch.cat([-ramp, ramp], dim=1)


class ChannelStub(nn.Module):
    """Logits = the normalised input channels themselves (stride 1): shows the normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _image(height=16, width=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_max_and_mean_merge_over_scales():
    # Heights 8 / 16 / 24 for scales 0.5 / 1 / 1.5 of a 16-px-high image.
    table = {8: [1.0, 5.0, 0.0], 16: [4.0, 0.0, 0.0], 24: [0.0, 0.0, 3.0]}
    image = _image()
    for merge, expected in (("max", [4.0, 5.0, 3.0]), ("mean", [5 / 3, 5 / 3, 1.0])):
        stub = SizeStub(table)
        logits = predict_logits(stub, image, device=CPU, scales=(0.5, 1.0, 1.5), flip=True, merge=merge)
        assert logits.shape == (3, 16, 20)
        assert torch.allclose(logits, torch.tensor(expected).view(3, 1, 1).expand(3, 16, 20), atol=1e-6)
        # Each scale is one batch holding the image and its flip.
        assert stub.seen == [(2, 3, 8, 10), (2, 3, 16, 20), (2, 3, 24, 30)]
    labels = predict(SizeStub(table), image, device=CPU, scales=(0.5, 1.0, 1.5), merge="max")
    assert labels.dtype == np.uint8 and labels.shape == (16, 20) and (labels == 1).all()
    labels = predict(SizeStub(table), image, device=CPU, scales=(0.5, 1.0, 1.5), merge="mean")
    assert (labels == 0).all()  # a tie between classes 0 and 1 goes to the first


def test_probs_are_the_softmax_of_merged_logits():
    table = {16: [1.0, 2.0, 0.5]}
    probs = predict_probs(SizeStub(table), _image(), device=CPU, scales=(1.0,), flip=False)
    expected = torch.softmax(torch.tensor(table[16]), 0).numpy()
    assert probs.dtype == np.float32 and probs.shape == (3, 16, 20)
    assert np.allclose(probs[:, 5, 7], expected, atol=1e-6)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)


def test_flip_is_undone_before_merging():
    image = _image(width=9)
    ramp = np.arange(9, dtype=np.float32)
    no_flip = predict_logits(RampStub(), image, device=CPU, scales=(1.0,), flip=False, merge="mean")
    assert np.allclose(no_flip[1, 0].numpy(), ramp)
    # Flipped input scores the mirrored ramp once flipped back; the mean is flat (width - 1) / 2.
    mean = predict_logits(RampStub(), image, device=CPU, scales=(1.0,), flip=True, merge="mean")
    assert np.allclose(mean[1].numpy(), 4.0)
    maximum = predict_logits(RampStub(), image, device=CPU, scales=(1.0,), flip=True, merge="max")
    assert np.allclose(maximum[1, 0].numpy(), np.maximum(ramp, ramp[::-1]))


def test_flip_equivariant_model_gives_the_same_with_and_without_flip():
    image = _image()
    plain = predict_logits(ChannelStub(), image, device=CPU, scales=(1.0,), flip=False, merge="mean")
    flipped = predict_logits(ChannelStub(), image, device=CPU, scales=(1.0,), flip=True, merge="mean")
    assert torch.allclose(plain, flipped, atol=1e-6)


def test_normalisation_imagenet_by_default_and_model_override():
    image = _image()
    logits = predict_logits(ChannelStub(), image, device=CPU, scales=(1.0,), flip=False)
    expected = (image[3, 4] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(logits[:, 3, 4].numpy(), expected, atol=1e-5)

    stub = ChannelStub()
    stub.input_mean, stub.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    logits = predict_logits(stub, image, device=CPU, scales=(1.0,), flip=False)
    assert np.allclose(logits[:, 3, 4].numpy(), image[3, 4] / 255.0, atol=1e-6)


def test_bad_settings():
    image = _image()
    with pytest.raises(ConfigError, match="merge"):
        predict(ChannelStub(), image, device=CPU, merge="median")
    with pytest.raises(ConfigError, match="scales"):
        predict(ChannelStub(), image, device=CPU, scales=())
    with pytest.raises(ValueError, match="uint8"):
        predict(ChannelStub(), image.astype(np.float32), device=CPU)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3)  # in training mode
    with pytest.raises(ConfigError, match="eval"):
        predict(model, image, device=CPU)


def test_real_model_prediction_shape():
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 4, classifier="cosine").eval()
    image = _image(37, 45)
    probs = predict_probs(model, image, device=CPU)
    assert probs.shape == (4, 37, 45) and np.allclose(probs.sum(0), 1.0, atol=1e-5)
    labels = predict(model, image, device=CPU)
    assert labels.shape == (37, 45) and labels.max() < 4
    assert np.array_equal(labels, probs.argmax(0))


@pytest.mark.skipif(importlib.util.find_spec("wsss.refine.crf") is None,
                    reason="wsss.refine.crf (dense CRF) is not in this tree yet")
def test_crf_path():
    pytest.importorskip("pydensecrf", reason="the dense CRF needs pydensecrf2")
    # Left half scores class 1 slightly, right half class 0; a uniform image is smoothed by the
    # CRF, while no CRF keeps the two halves.
    image = np.full((16, 20, 3), 120, dtype=np.uint8)

    class HalfStub(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, x.shape[-2], x.shape[-1])
            out[:, 1, :, : x.shape[-1] // 2] = 0.2
            return out

    plain = predict_probs(HalfStub(), image, device=CPU, scales=(1.0,), flip=False)
    refined = predict_probs(HalfStub(), image, device=CPU, scales=(1.0,), flip=False, crf="deeplab")
    assert refined.shape == plain.shape and np.allclose(refined.sum(0), 1.0, atol=1e-4)
    assert not np.allclose(refined, plain, atol=1e-3)
    labels = predict(HalfStub(), image, device=CPU, scales=(1.0,), flip=False, crf="deeplab")
    assert labels.shape == (16, 20)


class CountingStub(nn.Module):
    """Predicts class ``2`` everywhere and counts the images it saw."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.calls = 0
        self.bn = nn.BatchNorm2d(3)  # to check predict_dataset switches to eval and back

    def forward(self, x):
        self.calls += 1
        out = torch.zeros(x.shape[0], self.num_classes, x.shape[-2], x.shape[-1])
        out[:, 2] = 1.0
        return out


def test_predict_dataset_writes_palette_pngs_and_resumes(voc_fixture, voc_dataset, tmp_path):
    out = tmp_path / "pred"
    stub = CountingStub(voc_dataset.num_classes)
    assert stub.training
    done = predict_dataset(stub, voc_dataset, out, device=CPU, scales=(1.0,), flip=False, progress=False)
    assert done == len(voc_fixture.ids) and stub.calls == len(voc_fixture.ids)
    assert stub.training  # restored
    for image_id in voc_fixture.ids:
        labels = read_label_png(out / f"{image_id}.png")
        assert labels.shape == voc_fixture.sizes[image_id] and (labels == 2).all()
    from PIL import Image

    with Image.open(out / f"{voc_fixture.ids[0]}.png") as png:
        assert png.mode == "P" and png.getpalette()[:9] == voc_dataset.palette[:9]

    # Resumable: only the missing output is redone.
    (out / f"{voc_fixture.ids[1]}.png").unlink()
    again = CountingStub(voc_dataset.num_classes)
    assert predict_dataset(again, voc_dataset, out, device=CPU, scales=(1.0,), flip=False, progress=False) == 1
    assert again.calls == 1
    assert predict_dataset(again, voc_dataset, out, device=CPU, scales=(1.0,), flip=False, progress=False) == 0


def test_predict_dataset_shards_by_rank(voc_fixture, voc_dataset, tmp_path):
    out = tmp_path / "pred"
    stub = CountingStub(voc_dataset.num_classes)
    count = predict_dataset(stub, voc_dataset, out, device=CPU, scales=(1.0,), flip=False, progress=False,
                            dist=DistInfo(rank=1, world_size=2))
    written = sorted(p.stem for p in out.glob("*.png"))
    assert count == 2 and written == sorted(voc_fixture.ids[1::2])


def test_predict_dataset_class_count_mismatch(voc_dataset, tmp_path):
    with pytest.raises(ConfigError, match="classes"):
        predict_dataset(CountingStub(3), voc_dataset, tmp_path / "pred", device=CPU, progress=False)


def test_crf_scale_sizes_the_crf_to_the_image():
    pytest.importorskip("pydensecrf", reason="the dense CRF needs pydensecrf2")
    from wsss.refine.crf import CRF_PRESETS, dense_crf

    image = _image(16, 20, seed=4)
    plain = predict_probs(RampStub(), image, device=CPU, scales=(1.0,), flip=False)
    scaled = predict_probs(RampStub(), image, device=CPU, scales=(1.0,), flip=False, crf="deeplab",
                           crf_scale="image")
    expected = dense_crf(image, plain, CRF_PRESETS["deeplab"].for_image(16, 20, "image"))
    np.testing.assert_allclose(scaled, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="scale"):
        predict_dataset(RampStub(), type("Empty", (), {"ids": []})(), "unused", device=CPU, crf="deeplab",
                        crf_scale="voc")
