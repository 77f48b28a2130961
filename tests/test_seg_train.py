"""Segmentation training: (image, masks) data, augmentation, the training loop, resume, bad input,
several targets per image (BANA's Y_crf and Y_ret).

Most runs use :class:`TinySegNet`, a three-convolution stand-in with the DeepLab interface
(``num_classes``, ``output_stride``, ``parameter_groups``), so each trains in about a second; one
run goes through the real ``create_segmentation_model`` / ``make_loss`` path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_jpeg, write_palette_png
from torch import nn
from torch.utils.data import DistributedSampler

from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.runtime import distributed_context
from wsss.segmentation.data import MaskSource, SegmentationTrainDataset, SegmentationTransform
from wsss.segmentation.losses import make_loss
from wsss.segmentation.train import (
    CHECKPOINT_FORMAT,
    SegTrainConfig,
    _EpochBatches,
    load_trained_model,
    read_training_checkpoint,
    seg_recipe,
    train_segmentation,
)

torch.set_num_threads(1)

# Class c paints its rectangle in COLOURS[c]: learnable from colour alone, so a tiny net fits it.
COLOURS = [(30, 30, 30), (230, 40, 40), (40, 200, 60), (50, 70, 230)]
CLASSES = ["background", "red", "green", "blue"]


def make_colour_voc(root: Path, count: int = 8, size: tuple[int, int] = (30, 36),
                    classes: Sequence[str] = CLASSES, seed: int = 0) -> VOCDataset:
    """A VOC-layout set of ``count`` images with one or two coloured rectangles each and their
    masks (no ignore pixels), split ``train``; image ``i`` is ``i % 3`` pixels taller."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    ids = [f"img{i:02d}" for i in range(count)]
    num_foreground = len(classes) - 1
    for index, image_id in enumerate(ids):
        height, width = size[0] + index % 3, size[1]
        mask = np.zeros((height, width), np.uint8)
        for k in range(1 + index % 2):
            class_id = 1 + (index + 2 * k) % num_foreground
            y, x = rng.integers(0, height - 10), rng.integers(0, width - 12)
            mask[y:y + 10, x:x + 12] = class_id
        image = np.array(COLOURS, np.uint8)[np.minimum(mask, len(COLOURS) - 1)]
        image = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", image)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(ids) + "\n")
    return VOCDataset(root, "train")


class TinySegNet(nn.Module):
    """Stand-in with the DeepLab interface: logits at output stride 2.

    Args:
        num_classes: C.
        dropout: Dropout2d before the classifier (draws from torch's RNG: resume must restore it).
        batch_norm: a BatchNorm after the first convolution.
    """

    def __init__(self, num_classes: int, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.num_classes, self.output_stride = num_classes, 2
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if batch_norm else nn.Identity(), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
        )
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.body.parameters()), "lr_mult": 1.0},
                {"params": list(self.head.parameters()), "lr_mult": 10.0, "weight_decay_mult": 0.0}]


def pixel_sum_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over valid pixels / all pixels: processes with equal batches average
    to exactly the whole batch's value (a mean over valid pixels would not)."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=255, reduction="sum") / target.numel()


def tiny_config(**changes) -> SegTrainConfig:
    base = SegTrainConfig(model="tiny", loss="ce", batch_size=2, iterations=12, lr=0.05,
                          crop_size=24, scale_range=(0.75, 1.25), checkpoint_every=5, num_workers=0)
    return base.replace(**changes)


def tiny_model(num_classes: int = 4, seed: int = 0, **options) -> TinySegNet:
    torch.manual_seed(seed)
    return TinySegNet(num_classes, **options)


@pytest.fixture
def colour_voc(tmp_path) -> VOCDataset:
    return make_colour_voc(tmp_path / "voc")


# ------------------------------------------------------------------ transform and dataset
def test_transform_crops_image_and_mask_at_the_same_place() -> None:
    # The mask is a function of the image (class = red channel // 50), so any misalignment shows.
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 4, size=(20, 26)).astype(np.uint8)
    image = np.zeros((20, 26, 3), np.uint8)
    image[..., 0] = mask * 50 + 10
    transform = SegmentationTransform(crop_size=32, scale_range=None, hflip=True,
                                      mean=(0, 0, 0), std=(1, 1, 1))
    flips = 0
    for seed in range(8):
        out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
        assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
        assert out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        padded = out_mask == 255
        assert int(padded.sum()) == 32 * 32 - 20 * 26  # the crop is larger than the image: all of it kept
        assert torch.all(out_image[:, padded] == 0)  # image padding is 0 (the mean once normalised)
        red = out_image[0][~padded]
        assert torch.allclose(red, (out_mask[~padded] * 50 + 10).float() / 255)
        kept = out_mask[~padded].reshape(20, 26).numpy()
        flips += bool(np.array_equal(kept, mask[:, ::-1]))
        assert np.array_equal(kept, mask) or np.array_equal(kept, mask[:, ::-1])
    assert 0 < flips < 8


def test_transform_scales_both_and_normalises_like_imagenet() -> None:
    image = np.full((40, 60, 3), 128, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 2
    transform = SegmentationTransform(crop_size=None, scale_range=(0.5, 0.5), hflip=False)
    out_image, out_mask = transform(image, mask, np.random.default_rng(0))
    assert out_image.shape == (3, 20, 30) and out_mask.shape == (20, 30)
    assert set(np.unique(out_mask.numpy())) == {0, 2}  # nearest: no invented labels
    assert int((out_mask == 2).sum()) == 20 * 15
    expected = (128 / 255 - 0.485) / 0.229
    assert out_image[0].mean().item() == pytest.approx(expected, abs=1e-4)

    sizes = set()
    ranged = SegmentationTransform(crop_size=None, scale_range=(0.5, 1.5), hflip=False)
    for seed in range(20):
        sizes.add(ranged(image, mask, np.random.default_rng(seed))[1].shape[0])
    assert min(sizes) >= 20 and max(sizes) <= 60 and len(sizes) > 5


def test_items_depend_only_on_seed_epoch_and_index(colour_voc) -> None:
    data = SegmentationTrainDataset(colour_voc, None, SegmentationTransform(crop_size=24), seed=5)
    first, again = data[(0, 3)], data[(0, 3)]
    assert first["id"] == "img03"
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert torch.equal(data[3]["image"], first["image"])  # a bare index is epoch 0
    later = data[(1, 3)]
    assert not torch.equal(later["image"], first["image"])  # a new epoch, a new draw
    other_seed = SegmentationTrainDataset(colour_voc, None, SegmentationTransform(crop_size=24), seed=6)
    assert not torch.equal(other_seed[(0, 3)]["image"], first["image"])


def test_pseudo_mask_folder_is_read_instead_of_ground_truth(colour_voc, tmp_path) -> None:
    folder = tmp_path / "pseudo"
    for image_id in colour_voc.ids:
        height, width = colour_voc.image_size(image_id)
        write_palette_png(folder / f"{image_id}.png", np.full((height, width), 3, np.uint8))
    unchanged = SegmentationTransform(crop_size=None, scale_range=None, hflip=False)
    data = SegmentationTrainDataset(colour_voc, folder, unchanged)
    assert data.masks.describe() == f"pseudo masks in {folder}"
    assert set(np.unique(data[0]["mask"].numpy())) == {3}
    assert set(np.unique(SegmentationTrainDataset(colour_voc, None)[0]["mask"].numpy())) != {3}


# ------------------------------------------------------------------ bad input
def test_missing_pseudo_masks_are_listed_in_one_error(colour_voc, tmp_path) -> None:
    folder = tmp_path / "pseudo"
    write_palette_png(folder / "img00.png", np.zeros(colour_voc.image_size("img00"), np.uint8))
    with pytest.raises(DataError) as caught:
        SegmentationTrainDataset(colour_voc, folder)
    message = str(caught.value)
    assert message.startswith(str(folder))
    assert "7 of 8 images have no pseudo masks" in message
    assert "img01, img02, img03, img04, img05 and 2 more" in message
    assert "\n" not in message


def test_missing_pseudo_mask_folder(colour_voc, tmp_path) -> None:
    with pytest.raises(DataError, match="pseudo-mask folder not found"):
        SegmentationTrainDataset(colour_voc, tmp_path / "nowhere")


def test_missing_ground_truth_masks(colour_voc) -> None:
    (colour_voc.root / "SegmentationClass" / "img04.png").unlink()
    with pytest.raises(DataError, match="1 of 8 images have no ground-truth masks: img04"):
        SegmentationTrainDataset(colour_voc, None)


def test_label_above_k_names_the_file(colour_voc, tmp_path) -> None:
    folder = tmp_path / "pseudo"
    for image_id in colour_voc.ids:
        mask = np.zeros(colour_voc.image_size(image_id), np.uint8)
        mask[0, 0] = 255  # ignore is allowed
        if image_id == "img05":
            mask[2, 3] = 7  # K = 3
        write_palette_png(folder / f"{image_id}.png", mask)
    with pytest.raises(DataError) as caught:
        SegmentationTrainDataset(colour_voc, folder)
    assert str(caught.value).startswith(str(folder / "img05.png"))
    assert "label value 7 is above K=3" in str(caught.value)


def test_mask_of_another_size_names_the_file(colour_voc, tmp_path) -> None:
    folder = tmp_path / "pseudo"
    for image_id in colour_voc.ids:
        height, width = colour_voc.image_size(image_id)
        if image_id == "img02":
            width += 1
        write_palette_png(folder / f"{image_id}.png", np.zeros((height, width), np.uint8))
    with pytest.raises(DataError, match=r"img02.png: mask is 37x32 but its image img02.jpg is 36x32"):
        SegmentationTrainDataset(colour_voc, folder)


def test_config_errors(colour_voc, tmp_path) -> None:
    with pytest.raises(ConfigError, match="exactly one of iterations and epochs"):
        train_segmentation(colour_voc, None, tiny_config(epochs=2), out_dir=tmp_path / "a",
                           model=tiny_model(), progress=False)
    with pytest.raises(ConfigError, match="fewer than one batch of 16"):
        train_segmentation(colour_voc, None, tiny_config(batch_size=16), out_dir=tmp_path / "b",
                           model=tiny_model(), progress=False)
    with pytest.raises(ConfigError, match="predicts 5 classes but the dataset has 4"):
        train_segmentation(colour_voc, None, tiny_config(), out_dir=tmp_path / "c",
                           model=tiny_model(num_classes=5), progress=False)
    with pytest.raises(ConfigError, match="unknown segmentation-training option"):
        tiny_config(learning_rate=1.0)
    with pytest.raises(ConfigError, match="unknown segmentation recipe"):
        seg_recipe("cityscapes")


# ------------------------------------------------------------------ the training loop
def test_training_decreases_the_loss_and_writes_its_files(colour_voc, tmp_path) -> None:
    out = tmp_path / "run"
    config = tiny_config(iterations=60, checkpoint_every=25, lr=0.05)
    result = train_segmentation(colour_voc, None, config, device="cpu", out_dir=out, progress=False,
                                model=tiny_model(), loss_fn=pixel_sum_ce)
    losses = [h["loss"] for h in result.history]
    assert result.iterations == 60 and len(losses) == 60 and result.resumed_from == 0
    assert [h["iteration"] for h in result.history] == list(range(1, 61))
    assert np.mean(losses[-10:]) < 0.35 * np.mean(losses[:5])
    # poly schedule on the first group: lr_t = lr (1 - t / T) ** 0.9
    assert result.history[0]["lr"] == pytest.approx(0.05)
    assert result.history[30]["lr"] == pytest.approx(0.05 * (1 - 30 / 60) ** 0.9)

    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lr: 0.05" in (out / "config.yaml").read_text()
    assert len(json.loads((out / "history.json").read_text())) == 60
    checkpoint = read_training_checkpoint(out / "checkpoint.pt")  # weights_only=True inside
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["iteration"] == 60
    assert checkpoint["num_classes"] == 4 and checkpoint["classes"] == CLASSES
    # The head's group trains at 10x without weight decay; the body at 1x with it.
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    model, meta = load_trained_model(out / "model.pt", num_classes=4, model=tiny_model(seed=99))
    assert meta["iterations"] == 60
    for name, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)


def test_resume_after_a_kill_matches_an_uninterrupted_run(colour_voc, tmp_path) -> None:
    # 8 images / batch 2 = 4 updates an epoch; 10 iterations span three epochs. The "kill" comes
    # at iteration 7 (mid-epoch); the last checkpoint is at 6 (also mid-epoch). Dropout and
    # BatchNorm make the result depend on the restored RNG state and running statistics.
    config = tiny_config(iterations=10, checkpoint_every=3)

    def run(out: Path, callback=None):
        return train_segmentation(colour_voc, None, config, device="cpu", out_dir=out, progress=False,
                                  model=tiny_model(dropout=0.3, batch_norm=True), loss_fn=pixel_sum_ce,
                                  callback=callback)

    straight = run(tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_7(iteration: int, loss: float) -> None:
        if iteration == 7:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "resumed", kill_at_7)
    assert read_training_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["iteration"] == 6
    assert not (tmp_path / "resumed" / "model.pt").exists()

    resumed = run(tmp_path / "resumed")
    assert resumed.resumed_from == 6 and resumed.iterations == 10
    assert [h["iteration"] for h in resumed.history] == list(range(1, 11))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in straight.history]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name

    # Resuming a finished run does no more updates.
    again = run(tmp_path / "resumed")
    assert again.resumed_from == 10 and again.iterations == 10


def test_resume_refuses_a_changed_config_or_another_class_count(colour_voc, tmp_path) -> None:
    out = tmp_path / "run"
    train_segmentation(colour_voc, None, tiny_config(iterations=2), out_dir=out, progress=False,
                       model=tiny_model(), loss_fn=pixel_sum_ce)
    with pytest.raises(ConfigError, match=r"cannot resume, the config changed \(lr: 0.05 -> 0.1\)"):
        train_segmentation(colour_voc, None, tiny_config(iterations=2, lr=0.1), out_dir=out, progress=False,
                           model=tiny_model(), loss_fn=pixel_sum_ce)
    # Options that do not change the result may differ.
    train_segmentation(colour_voc, None, tiny_config(iterations=2, checkpoint_every=1), out_dir=out,
                       progress=False, model=tiny_model(), loss_fn=pixel_sum_ce)

    three = make_colour_voc(tmp_path / "voc3", classes=CLASSES[:3])
    with pytest.raises(DataError) as caught:
        train_segmentation(three, None, tiny_config(iterations=2), out_dir=out, progress=False,
                           model=tiny_model(num_classes=3), loss_fn=pixel_sum_ce)
    assert str(caught.value).startswith(str(out / "checkpoint.pt"))
    assert "checkpoint is for 4 classes but the dataset has 3" in str(caught.value)
    with pytest.raises(DataError, match="trained for 4 classes but 21 are expected"):
        load_trained_model(out / "model.pt", num_classes=21)

    # resume=False starts over
    fresh = train_segmentation(colour_voc, None, tiny_config(iterations=2, lr=0.1), out_dir=out,
                               progress=False, resume=False, model=tiny_model(), loss_fn=pixel_sum_ce)
    assert fresh.resumed_from == 0


def test_unreadable_checkpoint_is_a_data_error(colour_voc, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wsss segmentation training checkpoint"):
        train_segmentation(colour_voc, None, tiny_config(iterations=2), out_dir=out, progress=False,
                           model=tiny_model(), loss_fn=pixel_sum_ce)
    torch.save({"state_dict": {}}, out / "checkpoint.pt")
    with pytest.raises(DataError, match="not a wsss segmentation training checkpoint"):
        train_segmentation(colour_voc, None, tiny_config(iterations=2), out_dir=out, progress=False,
                           model=tiny_model(), loss_fn=pixel_sum_ce)


def test_real_deeplab_and_loss_through_the_recipe(colour_voc, tmp_path) -> None:
    # The default path: create_segmentation_model(config.model) and make_loss(config.loss).
    config = seg_recipe("synth").replace(epochs=None, iterations=3, batch_size=2, crop_size=32,
                                         checkpoint_every=100)
    result = train_segmentation(colour_voc, None, config, device="cpu",
                                out_dir=tmp_path / "run", progress=False)
    assert result.iterations == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    model, meta = load_trained_model(result.model_path, num_classes=4)
    assert meta["config"]["model"] == "deeplab_v2_resnet18_w16"
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 4, 4, 4)
    # A loss that needs a second target is refused up front when the masks give only one.
    with pytest.raises(ConfigError, match="needs target_ret"):
        train_segmentation(colour_voc, None, config.replace(loss="nal"), device="cpu",
                           out_dir=tmp_path / "nal", progress=False)


# ------------------------------------------------------------------ several targets per image
SHIFT = np.array([(c + 1) % 4 for c in range(255)] + [255], np.uint8)  # class c -> c + 1 mod 4, 255 kept


def write_masks(folder: Path, dataset: VOCDataset, relabel: np.ndarray | None = None,
                only: Sequence[str] | None = None) -> Path:
    """The dataset's masks (relabelled through a lookup table on the ``only`` ids) as PNGs in ``folder``."""
    for image_id in dataset.ids:
        mask = dataset.load_mask(image_id)
        if relabel is not None and (only is None or image_id in only):
            mask = relabel[mask]
        write_palette_png(folder / f"{image_id}.png", mask)
    return folder


def test_every_target_gets_the_same_augmentation(colour_voc, tmp_path) -> None:
    same, shifted = write_masks(tmp_path / "same", colour_voc), write_masks(tmp_path / "shifted", colour_voc, SHIFT)
    transform = SegmentationTransform(crop_size=40, scale_range=(0.6, 1.4), hflip=True)
    data = SegmentationTrainDataset(colour_voc, {"target": None, "same": same, "shifted": shifted}, transform,
                                    seed=2)
    single = SegmentationTrainDataset(colour_voc, None, transform, seed=2)
    assert list(data.targets) == ["target", "same", "shifted"] and data.masks is data.targets["target"]
    padded = 0
    for key in [(0, index) for index in range(8)] + [(3, 5), (4, 1)]:
        item = data[key]
        assert set(item) == {"id", "image", "mask", "same", "shifted"}
        # one target or three: the same draws, so the image and main mask are unchanged
        assert torch.equal(item["image"], single[key]["image"]) and torch.equal(item["mask"], single[key]["mask"])
        assert torch.equal(item["same"], item["mask"])  # identical masks stay identical
        # where the masks differ they stay aligned: the relabelling commutes with the geometry
        assert torch.equal(item["shifted"], torch.from_numpy(SHIFT).long()[item["mask"]])
        padded += int((item["mask"] == 255).any())
    assert padded > 0  # crops padded with 255 in every target alike


def test_targets_are_named_validated_and_checked_against_the_loss(colour_voc, tmp_path) -> None:
    gt = write_masks(tmp_path / "gt", colour_voc)
    with pytest.raises(ConfigError, match="masks by target need the main one, 'target'"):
        SegmentationTrainDataset(colour_voc, {"target_ret": gt})
    with pytest.raises(ConfigError, match="cannot be named 'image'"):
        SegmentationTrainDataset(colour_voc, {"target": gt, "image": gt})
    partial = tmp_path / "partial"
    write_palette_png(partial / "img00.png", colour_voc.load_mask("img00"))
    with pytest.raises(DataError, match=r"partial: 7 of 8 images have no pseudo masks: img01"):
        SegmentationTrainDataset(colour_voc, {"target": gt, "target_ret": partial})  # every folder is checked

    # A loss needing target_ret without it: one line naming the loss, the target and the targets
    # given, before a single mask is read (the main folder here lacks 7 masks).
    with pytest.raises(ConfigError) as caught:
        train_segmentation(colour_voc, {"target": partial}, tiny_config(), out_dir=tmp_path / "run",
                           progress=False, model=tiny_model(), loss_fn=make_loss("entropy"))
    message = str(caught.value)
    assert message.startswith("loss 'entropy' needs target_ret besides the masks, but the data gives only target")
    assert "\n" not in message
    with pytest.raises(DataError, match="partial: 7 of 8 images have no pseudo masks"):
        train_segmentation(colour_voc, {"target": gt, "target_ret": partial}, tiny_config(),
                           out_dir=tmp_path / "run", progress=False, model=tiny_model(),
                           loss_fn=make_loss("entropy"))


def test_entropy_loss_trains_on_two_targets(colour_voc, tmp_path) -> None:
    # Where Y_ret = Y_crf everywhere, the unreliable region is empty and the loss is plain
    # cross-entropy on the upsampled logits: the run must match a "ce" run update for update.
    config = tiny_config(iterations=6)
    same = write_masks(tmp_path / "same", colour_voc)

    def run(masks, loss, name):
        return train_segmentation(colour_voc, masks, config, device="cpu", out_dir=tmp_path / name,
                                  progress=False, model=tiny_model(), loss_fn=loss)

    entropy = run({"target": None, "target_ret": same}, make_loss("entropy"), "entropy")
    plain = run(None, make_loss("ce", resize="logits", align_corners=True), "ce")
    assert [h["loss"] for h in entropy.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    # Y_ret disagreeing on half the images: those pixels leave the CE and get the entropy term.
    shifted = write_masks(tmp_path / "shifted", colour_voc, SHIFT, only=colour_voc.ids[::2])
    noisy = run({"target": None, "target_ret": shifted}, make_loss("entropy"), "noisy")
    assert noisy.iterations == 6 and all(np.isfinite(h["loss"]) for h in noisy.history)
    assert noisy.history[0]["loss"] != pytest.approx(plain.history[0]["loss"], rel=1e-3)


def test_noise_aware_loss_trains_the_cosine_deeplab_on_two_targets(colour_voc, tmp_path) -> None:
    # BANA's setting: the cosine classifier, NAL reading the cosines off logits / scale.
    config = seg_recipe("synth").replace(epochs=None, iterations=3, batch_size=2, crop_size=32,
                                         checkpoint_every=100, classifier="cosine", loss="nal",
                                         loss_options={"scale": 20.0})
    same = write_masks(tmp_path / "same", colour_voc)
    shifted = write_masks(tmp_path / "shifted", colour_voc, SHIFT, only=colour_voc.ids[::2])

    def run(masks, config, name):
        return train_segmentation(colour_voc, masks, config, device="cpu", out_dir=tmp_path / name,
                                  progress=False)

    nal = run({"target": None, "target_ret": shifted}, config, "nal")
    assert nal.iterations == 3 and all(np.isfinite(h["loss"]) for h in nal.history)
    model, meta = load_trained_model(nal.model_path, num_classes=4)
    assert meta["config"]["loss"] == "nal" and model.cosine_scale == 20.0
    # With Y_ret = Y_crf, NAL is cross-entropy on the upsampled logits (as BANA's reliable term).
    # No scale option here: it comes from the model's cosine classifier.
    agreeing = run({"target": None, "target_ret": same}, config.replace(loss_options={}), "agree")
    plain = run(None, config.replace(loss="ce", loss_options={"resize": "logits", "align_corners": True}), "ce")
    assert [h["loss"] for h in agreeing.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    assert nal.history[0]["loss"] != pytest.approx(plain.history[0]["loss"], rel=1e-3)


# ------------------------------------------------------------------ distributed pieces
@pytest.mark.parametrize("world", [2, 4])
def test_global_batches_are_the_same_for_any_number_of_processes(colour_voc, world) -> None:
    data = SegmentationTrainDataset(colour_voc, None)
    global_batch, steps = 4, 2  # 8 images

    def batches(num_replicas: int, rank: int, epoch: int) -> list[list[tuple[int, int]]]:
        sampler = DistributedSampler(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=3,
                                     drop_last=True)
        return list(_EpochBatches(sampler, global_batch // num_replicas, steps, epoch))

    for epoch in (0, 1):
        single = batches(1, 0, epoch)
        per_rank = [batches(world, rank, epoch) for rank in range(world)]
        for step in range(steps):
            union = sorted(key for rank in range(world) for key in per_rank[rank][step])
            assert union == sorted(single[step])
            assert all(key[0] == epoch for key in union)
    assert batches(1, 0, 0) != batches(1, 0, 1)  # reshuffled every epoch
    resumed = list(_EpochBatches(DistributedSampler(data, num_replicas=1, rank=0, seed=3, drop_last=True),
                                 global_batch, steps, 0, skip=1))
    assert resumed == batches(1, 0, 0)[1:]


def test_one_process_without_torchrun_variables(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with distributed_context(torch.device("cpu")) as (info, device):
        assert (info.rank, info.world_size) == (0, 1) and device == torch.device("cpu")
        assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set: launch .* with torchrun"):
        with distributed_context(torch.device("cpu")):
            pass


def test_mask_source_reports_missing_ids(colour_voc, tmp_path) -> None:
    source = MaskSource(colour_voc, None)
    assert source.missing() == [] and source.is_ground_truth
    (tmp_path / "p").mkdir()
    assert MaskSource(colour_voc, tmp_path / "p").missing(["img00", "img01"]) == ["img00", "img01"]


def test_a_diverging_loss_stops_segmentation_training(colour_voc, tmp_path) -> None:
    from wsss.training.engine import LossNotFinite

    with pytest.raises(LossNotFinite, match=r"the (loss|weights) became"):
        train_segmentation(colour_voc, None, tiny_config(iterations=6, lr=1e30), out_dir=tmp_path / "run",
                           progress=False, model=tiny_model(), loss_fn=pixel_sum_ce)
    assert not (tmp_path / "run" / "model.pt").exists()
