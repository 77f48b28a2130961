"""Mask R-CNN training on instances with ignore regions: the data, the engine run, resume, the saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.models.mask_rcnn import IGNORE_BIT, OBJECT_BIT, predict_instances
from wsss.models.rcnn import scaled_anchor_sizes
from wsss.stores.instances import ImageInstances, InstanceStore
from wsss.training.mask_rcnn import (
    InstanceDataset,
    MaskRcnnConfig,
    load_mask_rcnn,
    train_mask_rcnn,
)

SIZE = 64
CLASSES = ["background", "a", "b"]


class _Images:
    def __init__(self, images: dict[str, np.ndarray]) -> None:
        self.images = images

    def load_image(self, image_id: str) -> np.ndarray:
        return self.images[image_id]


def _data(count: int = 4):
    """Images with one or two rectangles each; every instance has a one-pixel-wide ignore band."""
    rng = np.random.default_rng(0)
    images, instances = {}, {}
    for number in range(count):
        image = np.full((SIZE, SIZE, 3), 30, np.uint8)
        boxes, classes, masks, bands = [], [], [], []
        for cls in (1, 2)[: 1 + number % 2]:
            x0, y0 = (int(v) for v in rng.integers(2, 30, 2))
            w, h = (int(v) for v in rng.integers(12, 30, 2))
            mask = np.zeros((SIZE, SIZE), bool)
            mask[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1] = True
            band = np.zeros((SIZE, SIZE), bool)
            band[y0:y0 + h, x0:x0 + w] = True
            band &= ~mask
            image[mask] = 80 * cls + 40
            boxes.append([x0, y0, x0 + w, y0 + h])
            classes.append(cls)
            masks.append(mask)
            bands.append(band)
        image_id = f"im{number}"
        images[image_id] = image
        instances[image_id] = ImageInstances(image_id, np.array(boxes, np.float32), np.array(classes),
                                             np.stack(masks), instance_ignore=np.stack(bands))
    return _Images(images), instances


CONFIG = MaskRcnnConfig(backbone="resnet18_w16", fpn_channels=16, representation_size=32, mask_channels=16,
                        steps=4, batch_size=2, lr=0.004, warmup_steps=2, milestones=(3,), checkpoint_every=1)


def test_items_carry_the_band_as_ignored_and_flip_with_the_image():
    images, instances = _data()
    dataset = InstanceDataset(images, instances, list(instances), hflip=False)
    image, target = dataset[0]
    found = instances["im0"]
    assert image.shape == (3, SIZE, SIZE) and 0 <= float(image.min()) and float(image.max()) <= 1
    coded = target["masks"].numpy()
    np.testing.assert_array_equal((coded & OBJECT_BIT) > 0, found.masks)
    np.testing.assert_array_equal((coded & IGNORE_BIT) > 0, found.instance_ignore)
    flipped = InstanceDataset(images, instances, list(instances), hflip=True)
    box = found.boxes[0]
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image_f, target_f = flipped[0]
        mirrored = torch.equal(image_f, image.flip(-1))
        seen.add(mirrored)
        if mirrored:  # masks, ignore bands and boxes flip with the image
            np.testing.assert_array_equal(target_f["masks"].numpy(), coded[:, :, ::-1])
            np.testing.assert_allclose(target_f["boxes"][0].numpy(), [SIZE - box[2], box[1], SIZE - box[0], box[3]])
        else:
            assert torch.equal(image_f, image) and torch.equal(target_f["masks"], target["masks"])
    assert seen == {True, False}


def test_an_image_of_another_size_is_named():
    images, instances = _data()
    images.images["im1"] = np.zeros((SIZE, SIZE + 8, 3), np.uint8)
    with pytest.raises(DataError, match="'im1'"):
        InstanceDataset(images, instances, list(instances))[1]


def test_train_saves_a_model_that_loads_and_predicts_the_same(tmp_path):
    images, instances = _data()
    InstanceStore(tmp_path / "instances.json").save(instances.values(), CLASSES)
    loaded = InstanceStore(tmp_path / "instances.json").load(CLASSES)  # the store's mapping, as a stage reads it
    result = train_mask_rcnn(images, loaded, CONFIG, out=tmp_path / "model.pt")
    assert len(result.history) == 4 and all(np.isfinite(h["loss_mask"]) for h in result.history)
    assert result.model.transform.keep_size  # images at their own size by default
    assert result.model.transform([torch.zeros(3, SIZE, SIZE + 8)])[0].image_sizes == [(SIZE, SIZE + 8)]
    model, classes = load_mask_rcnn(tmp_path / "model.pt")
    assert classes == CLASSES
    model.eval()
    result.model.eval()
    image = images.images["im0"]
    np.testing.assert_array_equal(predict_instances(model, [image])[0].scores,
                                  predict_instances(result.model, [image])[0].scores)
    with pytest.raises(DataError, match="not found"):
        load_mask_rcnn(tmp_path / "missing.pt")


def test_a_killed_training_resumes_to_the_uninterrupted_weights(tmp_path):
    images, instances = _data()
    straight = train_mask_rcnn(images, instances, CONFIG, classes=CLASSES, checkpoint_dir=tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_3(iteration: int, loss: float) -> None:
        if iteration == 3:
            raise Killed

    with pytest.raises(Killed):
        train_mask_rcnn(images, instances, CONFIG, classes=CLASSES, checkpoint_dir=tmp_path / "run", callback=kill_at_3)
    resumed = train_mask_rcnn(images, instances, CONFIG, classes=CLASSES, checkpoint_dir=tmp_path / "run")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_settings_and_sizes():
    assert scaled_anchor_sizes(800) == (32, 64, 128, 256, 512)
    assert scaled_anchor_sizes(128) == (5, 10, 20, 41, 82)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        MaskRcnnConfig(anchor_sizes=(8, 16)).validate()
    with pytest.raises(ConfigError, match="max_size needs min_size"):
        MaskRcnnConfig(max_size=100).validate()
    images, instances = _data(1)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train_mask_rcnn(images, instances, CONFIG, classes=CLASSES)


def test_bbam_pseudo_instances_train_mask_rcnn_and_score_against_ground_truth(tmp_path):
    """The chain in the library: per-box maps -> pseudo labels (instances JSON) -> Mask R-CNN -> AP."""
    from wsss.evaluation.instances import instance_ap
    from wsss.refine.bbam_labels import make_bbam_labels
    from wsss.stores.maps import LocalizationMaps, MapStore

    images, truth = _data()
    maps = MapStore(tmp_path / "maps")
    for image_id, found in truth.items():  # an attribution a little wider than each object
        soft = np.stack([np.clip(m.astype(np.float32) + 0.3 * b, 0, 1) for m, b in zip(found.masks,
                                                                                    found.instance_ignore)])
        maps.save(image_id, LocalizationMaps(found.classes, None, soft, found.boxes))

    class Dataset(_Images):
        ids, classes, palette = list(truth), CLASSES, None

    make_bbam_labels(Dataset(images.images), tmp_path / "maps", tmp_path / "semantic", tmp_path / "per_image",
                     tmp_path / "instances.json", scale="image")
    pseudo = InstanceStore(tmp_path / "instances.json").load(CLASSES)
    assert pseudo.ids == list(truth)
    for image_id, found in truth.items():
        np.testing.assert_array_equal(pseudo[image_id].classes, found.classes)
    result = train_mask_rcnn(images, pseudo, CONFIG)
    model = result.model.eval()
    predictions = dict(zip(truth, predict_instances(model, [images.images[i] for i in truth])))
    report = instance_ap(truth, predictions, num_classes=len(CLASSES))
    assert set(report.ap) == {0.25, 0.5, 0.7, 0.75} and report.instances == 6
    assert all(0.0 <= v <= 1.0 for v in report.ap.values())  # four updates: a plumbing check, not a score
