"""Classifier training: poly schedule, SGD (and IRN's momentum quirk), transforms, a smoke run, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data.transforms import ClassificationDataset, TrainTransform, random_crop, random_crop_arrays
from wsss.errors import ConfigError
from wsss.models.cam_net import load_cam_net
from wsss.training.classifier import (
    ClassifierConfig,
    classification_metrics,
    classifier_recipe,
    train_classifier,
)
from wsss.training.schedule import build_sgd, poly_factor, poly_lr_scheduler

torch.set_num_threads(1)


class SquaresSource:
    """Tiny images with a coloured square per class present: red = class 1, blue = class 2."""

    def __init__(self, count: int = 12, size: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.classes = ["background", "red", "blue"]
        self.ids = [f"img{i}" for i in range(count)]
        self.images, self.labels = {}, {}
        for i, image_id in enumerate(self.ids):
            image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            label = np.zeros(2, np.float32)
            for k, (channel, present) in enumerate(((0, i % 2 == 0), (2, i % 3 != 1))):
                if present:
                    y, x = rng.integers(0, size - 10, size=2)
                    image[y:y + 10, x:x + 10, channel] = 250
                    label[k] = 1
            self.images[image_id], self.labels[image_id] = image, label

    def load_image(self, image_id: str) -> np.ndarray:
        return self.images[image_id]

    def label_vector(self, image_id: str) -> np.ndarray:
        return self.labels[image_id]


def test_poly_factor_values() -> None:
    assert poly_factor(0, 10) == 1.0
    assert poly_factor(5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(9, 10) == pytest.approx(0.1 ** 0.9)
    assert poly_factor(25, 10) == poly_factor(9, 10)  # IRN stops updating after max_step
    assert poly_factor(3, 4, power=1.0) == pytest.approx(0.25)


def test_poly_scheduler_drives_both_groups() -> None:
    backbone, head = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(1))]
    optimizer = build_sgd([(backbone, 1.0), (head, 10.0)], 0.1)
    scheduler = poly_lr_scheduler(optimizer, max_steps=4)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * poly_factor(t, 4) for t in range(5)]
    np.testing.assert_allclose([s[0] for s in seen], expected)
    np.testing.assert_allclose([s[1] for s in seen], [10 * e for e in expected])
    np.testing.assert_allclose(seen[1][0], 0.1 * 0.75 ** 0.9)


def test_sgd_defaults_and_the_reference_momentum_quirk() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    default = build_sgd([(params, 1.0)], 0.1, weight_decay=1e-4)
    group = default.param_groups[0]
    assert group["momentum"] == 0.0 and group["weight_decay"] == 1e-4 and group["lr"] == 0.1
    quirk = build_sgd([(params, 1.0)], 0.1, weight_decay=1e-4, momentum=0.9, reference_momentum_quirk=True)
    group = quirk.param_groups[0]
    # IRN: SGD(params, lr, weight_decay) puts 1e-4 in the momentum slot; groups keep their decay
    assert group["momentum"] == 1e-4 and group["weight_decay"] == 1e-4
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    assert len(build_sgd([(params, 1.0), ([frozen], 10.0)], 0.1).param_groups) == 1


def test_irn_recipe_defaults() -> None:
    config = classifier_recipe("irn")
    assert config == ClassifierConfig()  # the dataclass defaults are IRN's
    assert (config.backbone, config.output_stride, config.dilated) == ("resnet50", 16, False)
    assert (config.lr, config.classifier_lr_mult, config.weight_decay) == (0.1, 10.0, 1e-4)
    # the published computation: IRN's PolyOptimizer puts the weight decay in SGD's momentum slot
    assert (config.momentum, config.reference_momentum_quirk, config.poly_power) == (0.0, True, 0.9)
    assert (config.batch_size, config.epochs, config.crop_size) == (16, 5, 512)
    assert config.resize_long == (320, 640) and config.hflip
    assert config.freeze_bn and config.frozen_stages == 2
    assert classifier_recipe("synth").freeze_bn is False
    with pytest.raises(ConfigError, match="unknown classifier recipe"):
        classifier_recipe("imagenet")
    with pytest.raises(ConfigError, match="unknown classifier option"):
        config.replace(learning_rate=1.0)


def test_random_crop_pads_or_crops_each_axis() -> None:
    rng = np.random.default_rng(0)
    image = np.arange(6 * 20, dtype=np.float32).reshape(6, 20, 1) + 1
    out = random_crop(image, 10, rng)
    assert out.shape == (10, 10, 1)
    rows = np.flatnonzero(out[:, 0, 0])
    assert len(rows) == 6  # the short axis is placed whole, padded with 0
    window = out[rows[0]:rows[0] + 6, :, 0]
    first_column = int(window[0, 0] - 1)
    np.testing.assert_array_equal(window, image[:, first_column:first_column + 10, 0])


def test_random_crop_arrays_cut_one_window_with_their_own_fills() -> None:
    image = np.arange(6 * 20 * 3, dtype=np.float32).reshape(6, 20, 3) + 1
    label = (np.arange(6 * 20).reshape(6, 20) % 7).astype(np.uint8)
    crop, label_crop = random_crop_arrays([image, label], [0.0, 255], 10, np.random.default_rng(4))
    np.testing.assert_array_equal(crop, random_crop(image, 10, np.random.default_rng(4)))  # same draws
    assert crop.shape == (10, 10, 3) and label_crop.shape == (10, 10) and label_crop.dtype == np.uint8
    inside = crop[:, :, 0] != 0
    assert inside.sum() == 60 and (label_crop[~inside] == 255).all()
    # every kept pixel keeps its label: recover each pixel's source position from the image values
    flat = (crop[inside][:, 0] - 1).astype(int) // 3
    np.testing.assert_array_equal(label_crop[inside], label.reshape(-1)[flat])
    with pytest.raises(ValueError, match="sizes differ"):
        random_crop_arrays([image, label[:5]], [0.0, 255], 10, np.random.default_rng(0))


def test_train_transform_is_reproducible_and_normalised() -> None:
    image = np.full((30, 40, 3), 128, np.uint8)
    transform = TrainTransform(crop_size=48, resize_long=(40, 44), hflip=True)
    a = transform(image, np.random.default_rng(3))
    b = transform(image, np.random.default_rng(3))
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    inside = a[:, a.shape[1] // 2, a.shape[2] // 2]
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(inside, expected)
    assert (a == 0).all(dim=0).any()  # padding is 0 in normalised units


def test_classification_dataset_items() -> None:
    source = SquaresSource(count=3)
    dataset = ClassificationDataset(source, TrainTransform(crop_size=24, resize_long=None))
    item = dataset[1]
    assert item["id"] == "img1" and item["image"].shape == (3, 24, 24)
    torch.testing.assert_close(item["label"], torch.tensor([0.0, 0.0]))


def test_classification_metrics_numbers() -> None:
    logits = np.array([[2.0, -1.0], [1.0, 1.0], [-3.0, 0.5]])
    labels = np.array([[1, 0], [1, 0], [0, 1]])
    metrics = classification_metrics(logits, labels)
    assert metrics.exact_match == pytest.approx(2 / 3)
    assert metrics.label_accuracy == pytest.approx(5 / 6)
    # class 0: positives ranked 1st and 2nd -> AP 1; class 1: its positive ranked 2nd -> AP 1/2
    assert metrics.mean_ap == pytest.approx(0.75)


def test_training_smoke_loss_decreases_and_checkpoint_loads(tmp_path: Path) -> None:
    source = SquaresSource(count=12)
    config = classifier_recipe("synth").replace(
        epochs=6, batch_size=4, crop_size=32, resize_long=None, lr=0.05, eval_batch_size=12,
    )
    out = tmp_path / "cam.pt"
    result = train_classifier(source, config, device="cpu", out=out, val_source=source, progress=False)
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert 0.0 <= result.history[-1]["val"]["label_accuracy"] <= 1.0
    model = load_cam_net(out, num_classes=2)
    assert model.classes == ["background", "red", "blue"]
    raw = torch.load(out, weights_only=True)
    assert raw["extra"]["recipe"]["batch_size"] == 4 and len(raw["extra"]["history"]) == 6


def test_the_default_trains_with_irns_momentum_quirk(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.training.classifier as classifier
    from wsss.training.engine import poly_sgd

    built = []

    def recording_poly_sgd(*args, **kwargs):
        optimizer, scheduler = poly_sgd(*args, **kwargs)
        built.append(optimizer)
        return optimizer, scheduler

    monkeypatch.setattr(classifier, "poly_sgd", recording_poly_sgd)
    small = dict(backbone="resnet18_w16", output_stride=8, dilated=None, frozen_stages=0, freeze_bn=False,
                 epochs=1, batch_size=4, crop_size=32, resize_long=None, num_workers=0)
    train_classifier(SquaresSource(count=4), ClassifierConfig(**small), progress=False)
    train_classifier(SquaresSource(count=4), ClassifierConfig(**small, reference_momentum_quirk=False, momentum=0.9),
                     progress=False)
    published, intended = (optimizer.param_groups[0] for optimizer in built)
    assert (published["momentum"], published["weight_decay"], published["nesterov"]) == (1e-4, 1e-4, False)
    assert intended["momentum"] == 0.9


def test_a_momentum_the_quirk_would_replace_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"classifier.momentum=0.9 would have no effect.*reference_momentum_quirk=false"):
        ClassifierConfig(momentum=0.9).validate()
    with pytest.raises(ConfigError, match=r"classifier.nesterov=true would have no effect"):
        ClassifierConfig(nesterov=True).validate()
    ClassifierConfig(momentum=0.9, nesterov=True, reference_momentum_quirk=False).validate()


def test_training_needs_a_full_batch() -> None:
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train_classifier(SquaresSource(count=3), classifier_recipe("synth").replace(batch_size=4),
                         progress=False)


def test_train_classifier_command_on_a_voc_folder(tmp_path: Path) -> None:
    from helpers import make_voc

    from wsss.cli import main

    fixture = make_voc(tmp_path / "voc", classes=["background", "cat", "dog", "bird"])
    out = tmp_path / "ckpt.pt"
    code = main([
        "train-classifier", "--data", str(fixture.root), "--out", str(out), "--recipe", "synth",
        "--device", "cpu", "--no-progress", "--set", "epochs=1", "--set", "batch_size=2",
        "--set", "crop_size=32", "--set", "resize_long=null",
    ])
    assert code == 0
    assert load_cam_net(out).num_classes == 3
    # the IRN recipe without backbone weights is refused with a one-line hint
    assert main(["train-classifier", "--data", str(fixture.root), "--out", str(out)]) == 2


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    # 12 images / batch 4 = 3 updates an epoch. Killed at update 5 (mid-epoch 2), the run restarts
    # from its checkpoint at the end of epoch 1; items draw their augmentation from the global RNG,
    # so this only matches if the data order and the RNG states come back exactly.
    source = SquaresSource(count=12)
    config = classifier_recipe("synth").replace(epochs=3, batch_size=4, crop_size=32, resize_long=(28, 36),
                                                lr=0.05, eval_batch_size=12)
    straight = train_classifier(source, config, device="cpu", val_source=source, progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(iteration: int, loss: float) -> None:
        if iteration == 5:
            raise Killed

    folder = tmp_path / "run"
    with pytest.raises(Killed):
        train_classifier(source, config, device="cpu", val_source=source, progress=False,
                         checkpoint_dir=folder, callback=kill_at_5)
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["iteration"] == 3
    resumed = train_classifier(source, config, device="cpu", val_source=source, progress=False,
                               checkpoint_dir=folder, out=tmp_path / "cam.pt")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    drop = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert drop(resumed.history) == drop(straight.history) and len(resumed.history) == 3
    assert "val" in resumed.history[0]  # epoch 1's record (with its validation) came from the checkpoint
    steps = json.loads((folder / "history.json").read_text())
    assert [s["iteration"] for s in steps] == list(range(1, 10))
    assert resumed.history[0]["loss"] == pytest.approx(np.mean([s["loss"] for s in steps[:3]]))
    assert (folder / "training_curve.png").is_file()
    with pytest.raises(ConfigError, match=r"cannot resume, the config changed \(lr: 0.05 -> 0.1\)"):
        train_classifier(source, config.replace(lr=0.1), progress=False, checkpoint_dir=folder)
    # amp is a run-only option (CUDA only): a resumed run may change it
    train_classifier(source, config.replace(amp=True), progress=False, checkpoint_dir=folder)
