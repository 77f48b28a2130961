"""BANA stage 1 (BAP classifier, loss, trainer) and stage 2 (Y_crf, Y_ret) on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.errors import DataError
from wsss.models.bap_net import (
    BapNet,
    background_mask,
    background_prototypes,
    bap,
    bap_loss,
    bap_reference,
    box_masks,
    check_boxes,
)
from wsss.refine.bana_labels import (
    bana_labels,
    bana_labels_from_features,
    bana_unary,
    label_disagreement,
    reliable_labels,
)

BG = torch.tensor([1.0, 0.0, 0.0, 0.0])
OBJ = torch.tensor([0.0, 1.0, 0.0, 0.0])


def _features(height: int, width: int, fill: torch.Tensor) -> torch.Tensor:
    return fill[:, None, None].expand(len(fill), height, width).clone()


# ----------------------------------------------------------------------------------- stage 1
def test_box_masks_and_background_mask():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.5, 0.0, 1.2, 1.0]])
    masks = box_masks(boxes, 6, 6)
    assert masks[0].sum() == 9 and masks[0, 2:5, 1:4].all()
    assert masks[1, 0, 0] and masks[1, 0, 1] and masks[1].sum() == 2  # touched pixels
    background = background_mask(boxes, torch.tensor([0, 1]), 2, 6, 6)
    assert background[0].sum() == 36 - 9 and background[1].sum() == 34


def test_bap_gives_background_like_features_inside_a_box_weight_near_zero():
    # 16 x 16 features at stride 1: background (1, 0, 0, 0) everywhere; the box [4, 12) x [4, 12)
    # holds the object (0, 1, 0, 0) in its left three quarters and background-like features in
    # the last quarter, so each right-hand pooling cell mixes the two half and half.
    features = _features(16, 16, BG)
    features[:, 4:12, 4:10] = OBJ[:, None, None]
    features[:, 4:12, 10:12] = (BG + 0.05 * torch.tensor([0.0, 0.0, 1.0, 0.0]))[:, None, None]
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    box_image = torch.tensor([0])
    background = background_mask(boxes, box_image, 1, 16, 16)
    out = bap(features[None], boxes, box_image, background, stride=1, box_samples=8)
    assert bool(out.uses_bap[0])
    weights = out.weights[0]  # (8, 8) over the box: columns 0..5 object, 6..7 background-like
    assert weights[:, :6].min() > 0.99
    assert weights[:, 6:].max() < 0.01
    prototypes = out.fg_prototypes[0]  # (4, D): top-left, top-right, bottom-left, bottom-right
    for prototype in prototypes:
        assert F.cosine_similarity(prototype, OBJ, dim=0) > 0.999
    # GAP of the same box mixes the background-like half of the right-hand cells in
    gap = bap(features[None], boxes, box_image, torch.zeros(1, 16, 16, dtype=torch.bool), stride=1, box_samples=8)
    assert not bool(gap.uses_bap[0])
    assert F.cosine_similarity(gap.fg_prototypes[0, 1], OBJ, dim=0) < 0.75
    assert F.cosine_similarity(gap.fg_prototypes[0, 0], OBJ, dim=0) > 0.999


def _fallback_case(box_rows: int) -> bool:
    features = torch.randn(1, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, float(box_rows)]])
    background = background_mask(boxes, torch.tensor([0]), 1, 16, 16)
    out = bap(features, boxes, torch.tensor([0]), background, stride=1, box_samples=4)
    reference = bap_reference(features, boxes, torch.tensor([0]), background, stride=1, box_samples=4)
    assert bool(out.uses_bap[0]) == bool(reference.uses_bap[0])
    if not bool(out.uses_bap[0]):
        # GAP: weight 1 everywhere, the prototypes are plain means of the samples
        assert torch.equal(out.weights, torch.ones_like(out.weights))
        assert torch.equal(out.attention, torch.zeros_like(out.attention))
    return bool(out.uses_bap[0])


def test_gap_fallback_only_at_background_fraction_at_most_one_eighth_or_no_background_cell():
    assert not _fallback_case(16)  # no background at all: no valid cell
    assert not _fallback_case(14)  # 2 of 16 rows: fraction 0.125 exactly
    assert _fallback_case(13)  # 3 of 16 rows: 0.1875
    assert _fallback_case(8)
    # valid cells but a fraction below the bar, and a fraction above the bar with no valid cell
    features = torch.randn(1, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 56.0]])
    background = background_mask(boxes, torch.tensor([0]), 1, 64, 64)  # 8 of 64 rows: 0.125, feature row 7
    out = bap(features, boxes, torch.tensor([0]), background, stride=8, box_samples=4)
    assert len(out.bg_prototypes) > 0 and not bool(out.uses_bap[0])
    hidden = torch.zeros(1, 64, 64, dtype=torch.bool)
    hidden[0, :, 1:8] = True  # 14 of 64 columns (0.22), none of them one that nearest resampling
    hidden[0, :, 9:16] = True  # to 8 x 8 keeps (columns 0, 8, 16, ...): no valid cell
    hidden_out = bap(features, torch.tensor([[24.0, 8.0, 40.0, 40.0]]), torch.tensor([0]), hidden, stride=8,
                     box_samples=4)
    assert hidden_out.background_fraction[0] > 0.2
    assert len(hidden_out.bg_prototypes) == 0 and not bool(hidden_out.uses_bap[0])


def test_gap_pooling_is_the_plain_mean_of_the_features_inside_each_box():
    # stride 2, box (8, 4, 24, 20) px = feature cells [4, 12) x [2, 10): 8 samples a side fall
    # exactly on the feature cells, so the plain mean is over features[:, 2:10, 4:12]
    torch.manual_seed(3)
    features = torch.randn(1, 5, 16, 16)
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0]])
    box_image = torch.tensor([0])
    background = background_mask(boxes, box_image, 1, 32, 32)  # 75% background: BAP would apply
    inside = features[0, :, 2:10, 4:12]
    whole = bap(features, boxes, box_image, background, stride=2, box_samples=8, cells=(1, 1), pooling="gap")
    assert not bool(whole.uses_bap[0]) and torch.equal(whole.weights, torch.ones_like(whole.weights))
    assert torch.allclose(whole.fg_prototypes[0, 0], inside.mean(dim=(1, 2)), atol=1e-6)
    quarters = bap(features, boxes, box_image, background, stride=2, box_samples=8, pooling="gap")
    expected = [inside[:, rows, cols].mean(dim=(1, 2)) for rows in (slice(0, 4), slice(4, 8))
                for cols in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(quarters.fg_prototypes[0], torch.stack(expected), atol=1e-6)
    assert torch.allclose(quarters.fg_prototypes[0].mean(dim=0), inside.mean(dim=(1, 2)), atol=1e-6)
    # the background cells are kept (classified as background, as under BAP), the loop agrees
    loop = bap_reference(features, boxes, box_image, background, stride=2, box_samples=8, pooling="gap")
    assert not bool(loop.uses_bap[0])
    assert torch.allclose(loop.fg_prototypes, quarters.fg_prototypes, atol=1e-5)
    # BAP on the same box weighs the points and pools something else
    weighted = bap(features, boxes, box_image, background, stride=2, box_samples=8, cells=(1, 1))
    assert bool(weighted.uses_bap[0])
    assert len(quarters.bg_prototypes) == len(weighted.bg_prototypes) == 14  # 2 of 16 cells inside the box
    assert torch.equal(quarters.bg_prototypes, weighted.bg_prototypes)
    assert not torch.allclose(weighted.fg_prototypes[0, 0], inside.mean(dim=(1, 2)), atol=1e-3)


def test_pooling_setting_reaches_the_network_and_is_checked():
    from wsss.errors import ConfigError
    from wsss.training.bana import BapConfig

    net = BapNet("resnet18_w16", num_classes=3, box_samples=4, pooling="gap")
    assert net.config["pooling"] == "gap"
    rebuilt = BapNet(**{k: v for k, v in net.config.items() if k != "num_classes"}, num_classes=3)
    out = rebuilt(torch.randn(1, 3, 32, 32), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([0]))
    assert not bool(out.uses_bap[0])  # 94% background, but GAP was asked for
    with pytest.raises(ConfigError, match="pooling"):
        BapNet("resnet18_w16", num_classes=3, pooling="max")
    with pytest.raises(ConfigError, match="bana.pooling"):
        BapConfig(pooling="max").validate()
    assert BapConfig().pooling == "bap"


def test_background_prototypes_only_from_cells_with_background():
    features = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    background = torch.zeros(1, 8, 8)
    background[0, 0:2, 0:2] = 1  # only the top-left 2 x 2 cell of a 4 x 4 grid
    background[0, 7, 7] = 1
    prototypes, counts = background_prototypes(features, background, 4)
    assert counts.shape == (1, 16) and (counts > 0).sum() == 2
    assert torch.allclose(prototypes[0, 0], features[0, :, 0:2, 0:2].mean(dim=(1, 2)))
    assert torch.allclose(prototypes[0, 15], features[0, :, 7, 7])


@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (3, 6, 7, 7)])
def test_vectorised_bap_equals_the_per_box_loop(shape):
    torch.manual_seed(shape[1])
    batch, dims, height, width = shape
    stride = 8
    features = torch.randn(*shape).relu()
    H, W = height * stride, width * stride
    boxes = torch.tensor([[0.0, 0.0, 30.0, 20.0], [10.5, 3.0, 50.0, 50.0], [2.0, 2.0, W - 1.0, H - 1.0],
                          [40.0, 30.0, W, H], [1.0, 7.0, 9.0, 12.0]])
    box_image = torch.tensor([0, 0, 1, 1, batch - 1])
    background = background_mask(boxes, box_image, batch, H, W)
    fast = bap(features, boxes, box_image, background, stride=stride, box_samples=6)
    slow = bap_reference(features, boxes, box_image, background, stride=stride, box_samples=6)
    assert torch.equal(fast.uses_bap, slow.uses_bap)
    assert not bool(fast.uses_bap.all())  # the big box in image 1 falls back to GAP
    assert torch.equal(fast.bg_image, slow.bg_image)
    for name in ("fg_prototypes", "bg_prototypes", "attention", "weights", "background_fraction"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name), atol=1e-5), name


def test_bap_net_forward_loss_and_gradients_match_the_loop():
    torch.manual_seed(0)
    net = BapNet("resnet18_w16", num_classes=4, box_samples=4).eval()
    images = torch.randn(2, 3, 32, 40)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [15.0, 1.0, 39.0, 17.0], [4.0, 4.0, 30.0, 30.0]])
    box_image = torch.tensor([0, 0, 1])
    classes = torch.tensor([1, 3, 2])
    grads = []
    for reference in (False, True):
        net.zero_grad()
        out = net(images, boxes, box_image, reference=reference)
        assert out.fg_logits.shape == (3 * 4, 4) and out.bg_logits.shape[1] == 4
        loss = bap_loss(out, classes)
        assert torch.isfinite(loss)
        loss.backward()
        grads.append((loss.detach(), net.classifier.weight.grad.clone(), net.backbone.conv1.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    assert torch.allclose(grads[0][2], grads[1][2], atol=1e-4, rtol=1e-3)


def test_bap_net_on_banas_vgg16_stage1_backbone():
    net = BapNet("vgg16_largefov", num_classes=3, box_samples=4).eval()
    assert net.output_stride == 8 and net.weight.shape == (3, 1024)
    assert net.backbone.fc6.dilation == (1, 1)  # BANA stage 1: VGG16(dilation=1)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32), torch.tensor([[4.0, 4.0, 20.0, 24.0]]), torch.tensor([0]))
    assert out.fg_logits.shape == (4, 3) and bool(out.uses_bap[0])
    groups = net.parameter_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0] and groups[1]["weight_decay_mult"] == 0.0


def test_bap_loss_targets_box_classes_and_background_cells():
    torch.manual_seed(1)
    net = BapNet("resnet18_w16", num_classes=3, box_samples=4).eval()
    images = torch.randn(1, 3, 32, 32)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = net(images, boxes, torch.tensor([0]))
    logits = torch.cat([out.fg_logits, out.bg_logits])
    targets = torch.tensor([2] * 4 + [0] * len(out.bg_logits))
    assert torch.allclose(bap_loss(out, torch.tensor([2])), F.cross_entropy(logits, targets))


def test_check_boxes_errors_are_one_clear_line():
    with pytest.raises(DataError, match="class 5"):
        check_boxes(np.array([[0, 0, 4, 4]], np.float32), np.array([5]), (8, 8), 4, where="img1")
    with pytest.raises(DataError, match="empty"):
        check_boxes(np.array([[3, 0, 3, 4]], np.float32), np.array([1]), (8, 8), 4)
    with pytest.raises(DataError, match="outside"):
        check_boxes(np.array([[0, 0, 9, 4]], np.float32), np.array([1]), (8, 8), 4)
    with pytest.raises(DataError, match="at least one"):
        check_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), (8, 8), 4)
    check_boxes(np.array([[0, 0, 8, 8]], np.float32), np.array([3]), (8, 8), 4)


def test_train_bap_a_few_steps_on_a_tiny_dataset(tmp_path):
    from helpers import make_voc

    from wsss.data.voc import VOCDataset
    from wsss.training.bana import BapConfig, load_bap_net, train_bap

    fixture = make_voc(tmp_path / "voc", classes=["background", "a", "b", "c"], size=(24, 32))
    dataset = VOCDataset(fixture.root, split="train")
    config = BapConfig(backbone="resnet18_w16", batch_size=2, steps=3, milestones=(2,), lr=0.01,
                       box_samples=4, weights=None)
    result = train_bap(dataset, config, device="cpu", out=tmp_path / "bap.pt", checkpoint_dir=tmp_path / "ckpt")
    assert len(result.history) == 3
    assert all(np.isfinite(h["loss"]) for h in result.history)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.001)  # step decay at 2
    loaded = load_bap_net(tmp_path / "bap.pt")
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert loaded.classes == ["background", "a", "b", "c"]


def test_train_bap_killed_and_resumed_equals_an_uninterrupted_run(tmp_path):
    from helpers import make_voc

    from wsss.data.voc import VOCDataset
    from wsss.training.bana import BapConfig, train_bap

    fixture = make_voc(tmp_path / "voc", classes=["background", "a", "b", "c"], size=(24, 32))
    dataset = VOCDataset(fixture.root, split="train")
    config = BapConfig(backbone="resnet18_w16", batch_size=2, steps=4, milestones=(3,), lr=0.01, box_samples=4,
                       checkpoint_every=1)
    straight = train_bap(dataset, config, checkpoint_dir=tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_3(iteration: int, loss: float) -> None:
        if iteration == 3:
            raise Killed

    with pytest.raises(Killed):
        train_bap(dataset, config, checkpoint_dir=tmp_path / "run", callback=kill_at_3)
    resumed = train_bap(dataset, config, checkpoint_dir=tmp_path / "run")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


# ----------------------------------------------------------------------------------- stage 2
def _stage2_case():
    """24 x 24: background features outside the box [4, 20) x [4, 20) of class 1; inside, the
    object except a 6 x 6 patch R = [12, 18) x [12, 18) whose features are background-like."""
    features = _features(24, 24, BG)
    features[:, 4:20, 4:20] = OBJ[:, None, None]
    patch = BG + 0.2 * OBJ
    features[:, 12:18, 12:18] = patch[:, None, None]
    weight = torch.stack([BG, torch.tensor([0.5, 1.0, 0.0, 0.0])])  # w_0, w_1
    image = np.zeros((24, 24, 3), np.uint8)
    image[4:20, 4:20] = 200  # the patch looks like the object in colour
    boxes = np.array([[4, 4, 20, 20]], np.float32)
    return features, weight, image, boxes, np.array([1])


def test_unary_u0_is_one_outside_boxes_and_u_c_normalised_inside_its_boxes():
    features, weight, _, boxes, classes = _stage2_case()
    unary, u0, u_c, present = bana_unary(features, weight, torch.from_numpy(boxes), torch.from_numpy(classes))
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[4:20, 4:20] = True
    assert present.tolist() == [1]
    assert torch.all(u0[~inside] == 1) and torch.all(unary[0][~inside] == 1) and torch.all(unary[1][~inside] == 0)
    assert u_c[0][inside].max() == pytest.approx(1.0) and torch.all(u_c[0][~inside] == 0)
    # the 0.99-of-maximum cut: cos(patch, q) = 0.98 < 0.99, so u_0 is 0 on the patch
    assert torch.all(u0[12:18, 12:18] == 0)
    assert torch.allclose(unary[:, inside].sum(dim=0), torch.ones(int(inside.sum())))


def test_y_ret_differs_from_y_crf_where_a_region_is_background_like():
    features, weight, image, boxes, classes = _stage2_case()
    labels = bana_labels_from_features(features, weight, image, boxes, classes)
    assert (labels.y_crf[12:18, 12:18] == 1).all()  # the unary and the colour say object
    assert (labels.y_ret[12:18, 12:18] == 0).all()  # its features say background
    assert (labels.y_crf[6:10, 6:10] == 1).all() and (labels.y_ret[6:10, 6:10] == 1).all()
    assert labels.disagreement == pytest.approx(label_disagreement(labels.y_crf, labels.y_ret))
    assert labels.disagreement >= 36 / 576 and labels.box_disagreement >= 36 / 256
    target = reliable_labels(labels.y_crf, labels.y_ret)
    assert (target[12:18, 12:18] == 255).all() and (target[labels.y_crf == labels.y_ret] != 255).all()


def test_label_maps_keep_each_class_inside_its_boxes():
    torch.manual_seed(3)
    height, width = 20, 26
    features = torch.randn(6, height, width)
    weight = torch.randn(4, 6)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    boxes = np.array([[2, 2, 12, 14], [8, 6, 24, 18], [15, 0, 26, 5]], np.float32)
    classes = np.array([3, 1, 3])
    labels = bana_labels_from_features(features, weight, image, boxes, classes)
    masks = box_masks(torch.from_numpy(boxes), height, width).numpy()
    for y in (labels.y_crf, labels.y_ret):
        assert y.dtype == np.uint8 and y.shape == (height, width)
        assert set(np.unique(y).tolist()) <= {0, 1, 3}
        assert (y[~masks.any(axis=0)] == 0).all()
        for c in (1, 3):
            assert not (y == c)[~masks[classes == c].any(axis=0)].any()
    target = reliable_labels(labels.y_crf, labels.y_ret)
    assert set(np.unique(target).tolist()) <= {0, 1, 3, 255}
    assert ((target == 255) == (labels.y_crf != labels.y_ret)).all()


def test_stage2_bad_input_is_a_clear_error():
    features, weight, image, boxes, _ = _stage2_case()
    with pytest.raises(DataError, match="class 7"):
        bana_labels_from_features(features, weight, image, boxes, np.array([7]), where="img9")
    with pytest.raises(DataError, match="image"):
        bana_labels_from_features(features, weight, image[:10], boxes, np.array([1]))


def test_bana_labels_from_a_network_runs_on_the_uint8_image():
    torch.manual_seed(0)
    net = BapNet("resnet18_w16", num_classes=3, box_samples=4)
    image = np.random.default_rng(1).integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    boxes = np.array([[2, 2, 14, 20], [16, 4, 30, 22]], np.float32)
    labels = bana_labels(net, image, boxes, np.array([1, 2]))
    assert net.training  # mode restored
    assert labels.y_crf.shape == (24, 32) and labels.u_c.shape == (2, 24, 32)
    assert 0.0 <= labels.disagreement <= 1.0
    with pytest.raises(DataError, match="uint8"):
        bana_labels(net, image.astype(np.float32), boxes, np.array([1, 2]))


def test_make_bana_labels_writes_both_folders_and_resumes(tmp_path):
    from helpers import make_voc

    from wsss.data.voc import VOCDataset
    from wsss.refine.bana_labels import make_bana_labels
    from wsss.stores.masks import MaskStore

    fixture = make_voc(tmp_path / "voc", classes=["background", "a", "b", "c"], size=(24, 32))
    dataset = VOCDataset(fixture.root, split="train")
    torch.manual_seed(0)
    net = BapNet("resnet18_w16", num_classes=4, box_samples=4)
    crf_dir, ret_dir = tmp_path / "Y_crf", tmp_path / "Y_ret"
    first = make_bana_labels(net, dataset, crf_dir, ret_dir, ids=dataset.ids[:2])
    assert first["images"] == 2 and 0.0 <= first["disagreement"] <= 1.0
    again = make_bana_labels(net, dataset, crf_dir, ret_dir)  # a rerun resumes, no error
    assert again["images"] == len(dataset.ids) - 2 and again["total"] == len(dataset.ids)
    store = MaskStore(crf_dir)
    for image_id in dataset.ids:
        labels = store.load(image_id, image_size=fixture.sizes[image_id], num_classes=4)
        boxes, classes = dataset.boxes(image_id)
        masks = box_masks(torch.from_numpy(boxes), *labels.shape).numpy()
        assert (labels[~masks.any(axis=0)] == 0).all()
