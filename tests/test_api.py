"""The Python API (wsss.api): the README's five lines, inputs as paths, PIL images and arrays."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsss
from wsss.attribution.cam import compute_cam, multiscale_inputs
from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import CamNet

torch.set_num_threads(1)

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ["background", "cat", "dog", "bird"]


def readme_python_api() -> str:
    """The Python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def classifier() -> CamNet:
    torch.manual_seed(0)
    return CamNet("resnet18_w16", 3, output_stride=8, freeze_bn=False, frozen_stages=0, classes=CLASSES).eval()


def _image(height: int = 40, width: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _probabilities(model: CamNet, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(multiscale_inputs(image, (1.0,), flip=False)[0]))[0].numpy()


def test_the_readme_lines_run_as_written(tmp_path: Path, classifier: CamNet, monkeypatch, capsys) -> None:
    code = readme_python_api()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) == 5  # the issue: maps and an overlay for one image in five lines
    monkeypatch.chdir(tmp_path)
    image = _image()
    Image.fromarray(image).save("photo.jpg", quality=95)
    (tmp_path / "work" / "run").mkdir(parents=True)
    classifier.save(tmp_path / "work" / "run" / "classifier.pt")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    maps = namespace["maps"]
    photo = np.asarray(Image.open("photo.jpg").convert("RGB"))
    # the predicted classes: probability above 0.5, or the most probable one
    probabilities = _probabilities(classifier, photo)
    expected = np.flatnonzero(probabilities > 0.5) + 1
    expected = expected if expected.size else np.array([probabilities.argmax() + 1])
    np.testing.assert_array_equal(maps.keys, expected)
    assert maps.names == [CLASSES[k] for k in expected]
    np.testing.assert_allclose(maps.scores, probabilities[expected - 1], rtol=1e-5)
    assert maps.maps.shape == (len(expected), 40, 52) and maps.maps.dtype == np.float32
    np.testing.assert_allclose(maps.maps, compute_cam(classifier, photo, expected).high_res.numpy(), atol=1e-6)
    picture = np.asarray(Image.open("photo_cam.png"))
    assert picture.shape == (40, 52, 3) and not np.array_equal(picture, photo)
    assert str(maps.names) in capsys.readouterr().out


def test_paths_pil_images_and_arrays_give_the_same_maps(tmp_path: Path, classifier: CamNet) -> None:
    image = _image(36, 30, seed=1)
    Image.fromarray(image).save(tmp_path / "a.png")
    checkpoint = tmp_path / "cam.pt"
    classifier.save(checkpoint)
    from_array = wsss.cam_maps(image, classifier, classes=["dog", 1])
    from_pil = wsss.cam_maps(Image.fromarray(image), classifier, classes=[1, 2])
    from_path = wsss.cam_maps(tmp_path / "a.png", str(checkpoint), classes=["cat", "dog"])
    np.testing.assert_array_equal(from_array.keys, [1, 2])
    for other in (from_pil, from_path):
        np.testing.assert_array_equal(other.keys, from_array.keys)
        np.testing.assert_allclose(other.maps, from_array.maps, atol=1e-6)
    assert from_array.strided.shape == (2, 9, 8)
    grey = wsss.cam_maps(image[..., 0], classifier, classes=[3])
    np.testing.assert_allclose(grey.maps, wsss.cam_maps(np.repeat(image[..., :1], 3, 2), classifier, classes=[3]).maps)
    # overlays: from the result, from an array, from a path, all uint8 (H, W, 3)
    picture = wsss.overlay(image, from_array)
    assert picture.dtype == np.uint8 and picture.shape == (36, 30, 3)
    np.testing.assert_array_equal(picture, wsss.overlay(tmp_path / "a.png", from_array.maps))
    np.testing.assert_array_equal(picture, wsss.overlay(image, from_array.maps.max(0)))


def test_the_caller_keeps_the_models_mode(classifier: CamNet) -> None:
    classifier.train()
    wsss.cam_maps(_image(), classifier, classes=[1])
    assert classifier.training


def test_bad_inputs_are_one_line_errors(tmp_path: Path, classifier: CamNet) -> None:
    image = _image()
    with pytest.raises(ConfigError, match="unknown class 'horse'.*cat, dog, bird"):
        wsss.cam_maps(image, classifier, classes=["horse"])
    with pytest.raises(ConfigError, match=r"neither a class name nor an id in 1..3"):
        wsss.cam_maps(image, classifier, classes=[4])
    with pytest.raises(ConfigError, match="uint8"):
        wsss.cam_maps(image.astype(np.float32), classifier)
    with pytest.raises(ConfigError, match=r"\(H, W, 3\)"):
        wsss.cam_maps(image[..., :2], classifier)
    with pytest.raises(DataError, match="not found"):
        wsss.cam_maps(tmp_path / "missing.jpg", classifier)
    with pytest.raises(DataError, match="missing.pt"):
        wsss.cam_maps(image, tmp_path / "missing.pt")
    with pytest.raises(DataError, match="do not match the image"):
        wsss.overlay(image, np.zeros((1, 8, 8), np.float32))
