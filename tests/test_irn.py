"""IRN: pair labels, losses, the network at any size, training steps, exact resume, checkpoints, edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_voc

from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.io import write_label_png
from wsss.models.cam_net import CamNet
from wsss.models.irn import IRNet, edge_and_displacement, load_irn
from wsss.runtime import DistInfo
from wsss.models.path_index import PathIndex
from wsss.stores.edges import EdgeStore
from wsss.training.irn import (
    AffinityDisplacementLoss,
    IrnConfig,
    IrnTrainingDataset,
    build_irn,
    irn_recipe,
    make_edges,
    measure_mean_displacement,
    pair_labels,
    train_irn,
)

torch.set_num_threads(1)


def enumerate_pairs(label: np.ndarray, radius: int) -> dict[str, int]:
    """Count pair kinds by looping over IRN's source grid and the half disc of offsets."""
    height, width = label.shape
    margin = radius - 1
    counts = {"bg_pos": 0, "fg_pos": 0, "neg": 0}
    offsets = [(dy, dx) for dy in range(radius) for dx in range(-margin, radius)
               if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]
    for y in range(height - margin):
        for x in range(margin, width - margin):
            for dy, dx in offsets:
                a, b = int(label[y, x]), int(label[y + dy, x + dx])
                if a == 255 or b == 255:
                    continue
                if a != b:
                    counts["neg"] += 1
                elif a == 0:
                    counts["bg_pos"] += 1
                else:
                    counts["fg_pos"] += 1
    return counts


def hand_label() -> np.ndarray:
    label = np.zeros((14, 23), np.uint8)
    label[2:9, 3:11] = 1
    label[5:13, 12:20] = 2
    label[0, :] = 255
    label[:, 11] = 255
    label[10, 2] = 3
    return label


@pytest.mark.parametrize("radius", [3, 5, 10])
def test_pair_labels_match_a_direct_enumeration(radius: int) -> None:
    label = hand_label()
    index = PathIndex(radius)
    bg_pos, fg_pos, neg = pair_labels(torch.from_numpy(label)[None].repeat(2, 1, 1), index)
    rows, cols = index.cropped_size(*label.shape)
    assert bg_pos.shape == (2, index.num_offsets, rows, cols)
    expected = enumerate_pairs(label, radius)
    assert expected["neg"] > 0 and expected["fg_pos"] > 0 and expected["bg_pos"] > 0
    for name, tensor in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        assert int(tensor[0].sum()) == expected[name], name
        assert torch.equal(tensor[0], tensor[1])
    assert int((bg_pos + fg_pos + neg).max()) == 1  # the kinds are exclusive
    if radius == 10:
        assert index.num_offsets == 152  # IRN's training radius


def test_losses_on_hand_made_edges() -> None:
    loss = AffinityDisplacementLoss(radius=5)
    label = torch.zeros(1, 16, 24, dtype=torch.long)
    label[0, :, 13:] = 2
    label[0, :, 11:13] = 255  # the two boundary columns are unsure
    zero_disp = torch.zeros(1, 2, 16, 24)

    no_edge = loss(torch.full((1, 1, 16, 24), -30.0), zero_disp, label)
    assert float(no_edge.bg_pos) < 1e-4 and float(no_edge.fg_pos) < 1e-4
    assert float(no_edge.neg) > 11.0  # -log(1e-5): every different-label pair looks connected

    everywhere = loss(torch.full((1, 1, 16, 24), 30.0), zero_disp, label)
    assert float(everywhere.bg_pos) > 11.0 and float(everywhere.fg_pos) > 11.0
    assert float(everywhere.neg) < 1e-4

    wall = torch.full((1, 1, 16, 24), -30.0)
    wall[..., 11:13] = 30.0  # a boundary exactly between the regions
    walled = loss(wall, zero_disp, label)
    for term in (walled.bg_pos, walled.fg_pos, walled.neg):
        assert float(term) < 1e-4
    assert float(walled.total) < float(no_edge.total) and float(walled.total) < float(everywhere.total)


def test_displacement_losses() -> None:
    loss = AffinityDisplacementLoss(radius=4)
    label = torch.zeros(1, 12, 18, dtype=torch.long)
    label[0, 2:10, 4:14] = 1
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(18.0), indexing="ij")
    to_centre = torch.stack([5.5 - ys, 8.5 - xs])[None]  # every pixel points at one centroid
    edge = torch.zeros(1, 1, 12, 18)
    exact = loss(edge, to_centre, label)
    assert float(exact.dp_fg) < 1e-5  # D_i - D_j equals the offset from i to j

    bg_pos, fg_pos, _ = pair_labels(label, loss.index)
    offsets = torch.as_tensor(loss.index.offsets, dtype=torch.float32)  # (D, 2)
    per_offset = offsets.abs().sum(1).view(1, -1, 1, 1)  # |dy| + |dx|
    expected = float((fg_pos * per_offset).sum() / (2 * fg_pos.sum()))
    zero = loss(edge, torch.zeros(1, 2, 12, 18), label)
    assert float(zero.dp_fg) == pytest.approx(expected, rel=1e-4)
    assert float(zero.dp_bg) == 0.0
    # a constant field is no displacement difference: the background term stays zero
    assert float(loss(edge, torch.ones(1, 2, 12, 18) * 3, label).dp_bg) == 0.0
    assert float(exact.dp_bg) > 0.5  # the centroid field differs between background pixels
    weights = exact.as_dict()
    assert weights["total"] == pytest.approx(
        (weights["bg_pos"] / 2 + weights["fg_pos"] / 2 + weights["neg"]) / 2
        + (weights["dp_fg"] + weights["dp_bg"]) / 2, rel=1e-5)
    assert float(bg_pos.sum()) > 0


def test_network_channels_follow_irn_for_resnet50() -> None:
    net = IRNet("resnet50", output_stride=16)
    assert net.edge_out.in_channels == 160  # 5 x 32
    assert net.displacement_fuse[0].in_channels == 768  # 3 x 256
    assert net.displacement_out[0].in_channels == 448  # 64 + 128 + 256
    assert [block[0].out_channels for block in net.displacement_levels] == [64, 128, 256, 256, 256]
    assert IRNet.level_strides(16) == (4, 4, 8, 16, 16)
    small = IRNet("resnet18_w16", output_stride=8)
    assert small.head_width == 0.25 and small.edge_out.in_channels == 40
    edge, displacement = small.parameter_groups()
    assert all(p.requires_grad for p in edge + displacement)
    assert not any(p.requires_grad for p in small.backbone.parameters())
    assert not small.train().backbone.training  # the backbone stays in eval mode


@pytest.mark.parametrize("size", [(75, 93), (530, 601)])
def test_inference_at_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = IRNet("resnet18_w16", output_stride=8).eval()
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = ((size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1)
    for scales in ((1.0,), (1.0, 0.5)):
        edge, displacement = edge_and_displacement(net, image, torch.device("cpu"), scales=scales)
        assert edge.shape == expected and displacement.shape == (2, *expected)
        assert edge.dtype == np.float32 and 0.0 <= edge.min() and edge.max() <= 1.0
        assert np.isfinite(displacement).all()
    flipped, _ = edge_and_displacement(net, image[:, ::-1].copy(), "cpu")
    np.testing.assert_allclose(flipped, edge_and_displacement(net, image, "cpu")[0][:, ::-1], atol=1e-5)


def _tiny_dataset(tmp_path: Path, count: int = 8) -> tuple[VOCDataset, Path]:
    """A VOC set whose IR labels are its masks (objects +128 brighter than the background)."""
    fixture = make_voc(tmp_path / "voc", ids=[f"im{i}" for i in range(count)], size=(60, 66),
                       classes=["background", "a", "b", "c"])
    dataset = VOCDataset(fixture.root, split="train")
    labels = tmp_path / "ir"
    for image_id in dataset.ids:
        write_label_png(labels / f"{image_id}.png", dataset.load_mask(image_id))
    return dataset, labels


def _tiny_config(**changes) -> IrnConfig:
    base = irn_recipe("synth").replace(radius=5, crop_size=64, batch_size=4, epochs=8, rescale=None,
                                       num_workers=0, mean_shift_images=4)
    return base.replace(**changes)


def _fixed_batch(dataset: VOCDataset, labels: Path, config: IrnConfig):
    data = IrnTrainingDataset(dataset, labels, config.replace(hflip=False))
    rng = np.random.default_rng(0)
    items = [data.transform(*data.load(i), rng) for i in dataset.ids[:4]]
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a, _ in items])
    return images, torch.stack([torch.from_numpy(b.astype(np.int64)) for _, b in items])


def test_training_steps_decrease_the_loss_and_checkpoint_round_trips(tmp_path: Path) -> None:
    dataset, labels = _tiny_dataset(tmp_path)
    config = _tiny_config()
    images, targets = _fixed_batch(dataset, labels, config)
    assert targets.shape == (4, 16, 16)
    loss_fn = AffinityDisplacementLoss(config.radius)

    torch.manual_seed(config.seed)
    untrained = build_irn(config).train()
    before = loss_fn(*untrained(images), targets).as_dict()
    frozen = {k: v.clone() for k, v in untrained.backbone.state_dict().items()}

    result = train_irn(dataset, labels, config, device="cpu", out=tmp_path / "irn.pt", progress=False)
    model = result.model
    assert len(result.history) == config.epochs and result.history[-1]["step"] == 16
    after = loss_fn(*model.train()(images), targets).as_dict()
    assert after["total"] < 0.85 * before["total"], (before, after)
    assert after["neg"] + after["bg_pos"] + after["fg_pos"] < before["neg"] + before["bg_pos"] + before["fg_pos"]
    for key, value in model.backbone.state_dict().items():  # the backbone did not move
        assert torch.equal(value, frozen[key]), key

    # the mean shift centres the displacement of the measured images
    assert float(model.mean_shift.running_mean.abs().sum()) > 0
    model.eval()
    measured = measure_mean_displacement(model, dataset, dataset.ids[:4], device=torch.device("cpu"), config=config)
    model.eval()
    with torch.no_grad():
        residual = torch.stack([
            model(torch.from_numpy(np.ascontiguousarray(
                ((dataset.load_image(i) / 255.0 - np.array(config.mean)) / np.array(config.std))
                .astype(np.float32).transpose(2, 0, 1)))[None])[1].mean(dim=(0, 2, 3))
            for i in dataset.ids[:4]]).mean(0)
    assert torch.allclose(measured, model.mean_shift.running_mean, atol=1e-5)
    assert float(residual.abs().max()) < 1e-4

    loaded = load_irn(tmp_path / "irn.pt").eval()
    image = dataset.load_image(dataset.ids[0])
    for a, b in zip(edge_and_displacement(model, image, "cpu"), edge_and_displacement(loaded, image, "cpu")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    raw = torch.load(tmp_path / "irn.pt", weights_only=True)
    assert raw["format"] == "wsss.irn" and raw["config"]["backbone"] == "resnet18_w16"


def test_resume_and_a_max_steps_stop_give_the_uninterrupted_weights(tmp_path: Path) -> None:
    # 6 images / batch 2 = 3 updates an epoch, 2 epochs. Killed at update 4 the run restarts from
    # its checkpoint after epoch 1; then max_steps stops it mid-epoch (checkpointed there) and a
    # last call finishes. Random rescale and flips draw from the global RNG.
    dataset, labels = _tiny_dataset(tmp_path, count=6)
    config = _tiny_config(batch_size=2, epochs=2, rescale=(0.8, 1.2))
    straight = train_irn(dataset, labels, config, device="cpu", progress=False)

    class Killed(Exception):
        pass

    def kill_at_4(iteration: int, loss: float) -> None:
        if iteration == 4:
            raise Killed

    folder = tmp_path / "run"
    with pytest.raises(Killed):
        train_irn(dataset, labels, config, device="cpu", progress=False, checkpoint_dir=folder, callback=kill_at_4)
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["iteration"] == 3
    partial = train_irn(dataset, labels, config, device="cpu", progress=False, checkpoint_dir=folder, max_steps=5)
    assert [r["step"] for r in partial.history] == [3, 5]
    resumed = train_irn(dataset, labels, config, device="cpu", progress=False, checkpoint_dir=folder,
                        out=tmp_path / "irn.pt")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    drop = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert drop(resumed.history) == drop(straight.history) and [r["step"] for r in resumed.history] == [3, 6]
    assert set(resumed.history[0]) == {"epoch", "step", "bg_pos", "fg_pos", "neg", "dp_fg", "dp_bg", "total",
                                       "lr", "seconds"}
    assert torch.load(tmp_path / "irn.pt", weights_only=True)["extra"]["history"][1]["step"] == 6


def test_backbone_from_the_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = CamNet("resnet18_w16", 3, output_stride=8, freeze_bn=False, frozen_stages=0)
    with torch.no_grad():
        for module in classifier.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
    classifier.save(tmp_path / "cam.pt")
    model = build_irn(irn_recipe("synth"), tmp_path / "cam.pt")
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert model.backbone.output_stride == 8
    with pytest.raises(ConfigError, match="uses backbone 'resnet18_w16' but the IRN config says 'resnet50'"):
        build_irn(IrnConfig(), tmp_path / "cam.pt")
    with pytest.raises(DataError, match="checkpoint not found"):
        build_irn(irn_recipe("synth"), tmp_path / "none.pt")


def test_bad_labels_are_data_errors(tmp_path: Path) -> None:
    dataset, labels = _tiny_dataset(tmp_path, count=4)
    config = _tiny_config(batch_size=2, epochs=1)
    first = dataset.ids[0]
    (labels / f"{first}.png").unlink()
    with pytest.raises(DataError, match=rf"{first}.png: IR label not found"):
        train_irn(dataset, labels, config, progress=False)
    write_label_png(labels / f"{first}.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=rf"{first}.png: IR label is 10x10 \(WxH\) but its image is 66x60"):
        train_irn(dataset, labels, config, progress=False)
    bad = dataset.load_mask(first).copy()
    bad[5, 5] = 7
    write_label_png(labels / f"{first}.png", bad)
    with pytest.raises(DataError, match=rf"{first}.png: label value 7 is above K=3 \(allowed: 0..3 and 255 = ignore\)"):
        IrnTrainingDataset(dataset, labels, config).load(first)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train_irn(dataset, labels, config.replace(batch_size=5), progress=False)
    with pytest.raises(ConfigError, match="unknown IRN option"):
        config.replace(crop=3)


def test_make_edges_writes_resumes_and_shards(tmp_path: Path) -> None:
    dataset, _ = _tiny_dataset(tmp_path, count=3)
    torch.manual_seed(0)
    model = IRNet("resnet18_w16", output_stride=8)
    out = tmp_path / "edges"
    assert make_edges(model, dataset, out, device="cpu", dist=DistInfo(1, 2), progress=False) == 1
    assert sorted(p.name for p in out.iterdir()) == [f"{dataset.ids[1]}.npz"]
    assert make_edges(model, dataset, out, device="cpu", progress=False) == 2
    assert make_edges(model, dataset, out, device="cpu", progress=False) == 0
    assert model.training  # restored
    store = EdgeStore(out)
    assert store.ids() == dataset.ids
    for image_id in dataset.ids:
        height, width = dataset.load_image(image_id).shape[:2]
        edge, displacement = store.load(image_id)
        assert edge.shape == ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
        assert displacement.shape == (2, *edge.shape)
        expected, _ = edge_and_displacement(model.eval(), dataset.load_image(image_id), "cpu")
        np.testing.assert_allclose(edge, expected, atol=1e-3)  # float16 on disk


def test_a_diverging_loss_stops_irn_training(tmp_path: Path) -> None:
    from wsss.training.engine import LossNotFinite

    dataset, labels = _tiny_dataset(tmp_path, count=4)
    with pytest.raises(LossNotFinite, match=r"the (loss|weights) became"):
        train_irn(dataset, labels, _tiny_config(batch_size=2, epochs=2, lr=1e30), device="cpu",
                  out=tmp_path / "irn.pt", progress=False)
    assert not (tmp_path / "irn.pt").exists()


# --------------------------------------------------------------------------------------------
# The defaults are the published computation (docs/quirks.md)


def test_the_default_trains_with_irns_momentum_quirk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.training.irn as irn
    from wsss.training.engine import poly_sgd

    built = []

    def recording_poly_sgd(*args, **kwargs):
        optimizer, scheduler = poly_sgd(*args, **kwargs)
        built.append(optimizer)
        return optimizer, scheduler

    monkeypatch.setattr(irn, "poly_sgd", recording_poly_sgd)
    dataset, labels = _tiny_dataset(tmp_path, count=4)
    small = dict(backbone="resnet18_w16", output_stride=8, dilated=None, radius=5, crop_size=64, batch_size=4,
                 epochs=1, rescale=None, num_workers=0, mean_shift_images=4)
    train_irn(dataset, labels, IrnConfig(**small), progress=False)
    train_irn(dataset, labels, IrnConfig(**small, reference_momentum_quirk=False, momentum=0.9), progress=False)
    published, intended = (optimizer.param_groups[0] for optimizer in built)
    assert (published["momentum"], published["weight_decay"]) == (1e-4, 1e-4)
    assert intended["momentum"] == 0.9
    with pytest.raises(ConfigError, match="irn.momentum=0.9 would have no effect"):
        IrnConfig(momentum=0.9).validate()


def test_a_crop_too_small_for_the_radius_is_one_config_error(tmp_path: Path) -> None:
    dataset, labels = _tiny_dataset(tmp_path, count=4)
    small = dict(backbone="resnet18_w16", output_stride=8, dilated=None, batch_size=4, epochs=1, rescale=None,
                 num_workers=0, mean_shift_images=4)
    # radius 10: a source needs 9 cells on each side, 19 across at stride 4, so 76 px
    with pytest.raises(ConfigError, match=r"^irn.crop_size 72 gives 18 label cells across \(stride 4\); radius 10 "
                                          r"needs at least 19: crop_size >= 76$"):
        train_irn(dataset, labels, IrnConfig(**small, radius=10, crop_size=72), progress=False)
    train_irn(dataset, labels, IrnConfig(**small, radius=10, crop_size=76), progress=False)


def test_the_default_pads_the_boundary_input_to_512_as_irn() -> None:
    assert IrnConfig().edge_pad_to == 512
    torch.manual_seed(0)
    net = IRNet("resnet18_w16", output_stride=8).eval()
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    padded, _ = edge_and_displacement(net, small, "cpu", pad_to=512)
    whole, _ = edge_and_displacement(net, small, "cpu", pad_to=None)
    assert padded.shape == whole.shape == (10, 13)
    assert np.abs(padded - whole).max() > 1e-3  # the zero border reaches the image's own cells
    # an image larger than the pad runs whole: nothing is cropped (IRN would crop it)
    large = rng.integers(0, 256, (520, 530, 3), dtype=np.uint8)
    np.testing.assert_array_equal(edge_and_displacement(net, large, "cpu", pad_to=512, flip=False)[0],
                                  edge_and_displacement(net, large, "cpu", pad_to=None, flip=False)[0])
