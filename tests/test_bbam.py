"""BBAM: the detector (build, train, resume) and the attribution, on tiny networks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.attribution.bbam import (
    REFERENCE_DETECTOR_INPUT,
    BbamConfig,
    bbam_losses,
    bbam_summary,
    compute_bbam,
    detector_input,
    initial_mask,
    jitter_boxes,
    make_bbam_maps,
    mask_shape,
    mask_stride,
    optimise_masks,
    prepare_objects,
    select_proposals,
    tv_norm,
)
from wsss.errors import ConfigError, DataError
from wsss.models.detector import box_outputs, build_detector
from wsss.stores.maps import LocalizationMaps, MapStore, load_maps, save_maps

NUM_CLASSES = 3  # background + 2


def tiny_detector(seed: int = 0, *, constant: bool = False) -> torch.nn.Module:
    """A random tiny Faster R-CNN in eval mode that calls every proposal class 1 or 2 (by the
    sign of a random feature) with small box corrections, so proposals near a box are kept.
    ``constant``: its class logits and box deltas do not depend on the image at all."""
    torch.manual_seed(seed)
    detector = build_detector("resnet18_w16", NUM_CLASSES, fpn_channels=16, representation_size=32,
                              anchor_sizes=(4, 8, 16, 32, 64)).eval()
    predictor = detector.roi_heads.box_predictor
    with torch.no_grad():
        predictor.bbox_pred.weight.mul_(0.05)
        predictor.bbox_pred.bias.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([-20.0, 0.0, 0.0]))  # never background
        if constant:
            predictor.cls_score.weight.zero_()
            predictor.bbox_pred.weight.zero_()
            predictor.cls_score.bias.copy_(torch.tensor([-20.0, 1.0, 0.0]))  # always class 1
    return detector.requires_grad_(False)


def _image(size: tuple[int, int] = (40, 48), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, size=(*size, 3), dtype=np.uint8)
    image[8:30, 6:26] += 150
    return image


LOOSE = {"iou_thresholds": (0.5, 0.3, 0.0), "proposals": 200}  # a random detector's boxes are rough


# ----------------------------------------------------------------------------------- pieces
def test_tv_norm_equals_a_direct_sum():
    mask = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for beta in (3.0, 2.0):
        for k in range(2):
            m = mask[k].tolist()
            total = 0.0
            for y in range(5):
                for x in range(7):
                    if y + 1 < 5:
                        total += abs(m[y][x] - m[y + 1][x]) ** beta
                    if x + 1 < 7:
                        total += abs(m[y][x] - m[y][x + 1]) ** beta
                    if y + 1 < 5 and x + 1 < 7:  # the reference counts each diagonal pair twice
                        total += 2 * abs(m[y][x] - m[y + 1][x + 1]) ** beta
                        total += 2 * abs(m[y][x + 1] - m[y + 1][x]) ** beta
            assert float(tv_norm(mask, beta)[k]) == pytest.approx(total, rel=1e-12)
    assert float(tv_norm(torch.ones(4, 4))) == 0.0


def test_mask_stride_is_the_reference_at_its_input_and_follows_the_input_at_image_scale():
    # the literal formula: 16 for a point, 64 for a box covering the image
    assert mask_stride(0, 100, (10, 10)) == 16.0
    assert mask_stride(100, 100, (10, 10)) == 64.0
    assert mask_stride(25, 100, (128, 128)) == pytest.approx(16 + 48 * 0.5)
    # image scale: equal at the reference's input (800 x 1067), proportional to the diagonal elsewhere
    assert mask_stride(25, 100, REFERENCE_DETECTOR_INPUT, scale="image") == pytest.approx(40.0)
    small = mask_stride(25, 100, (128, 128), scale="image")
    assert small == pytest.approx(40.0 * math.hypot(128, 128) / math.hypot(800, 1067))
    # so the mask spans as many cells along its diagonal as the reference's (33), where the
    # literal stride gives a few
    assert mask_shape(REFERENCE_DETECTOR_INPUT, 40.0) == (20, 26)
    assert mask_shape((128, 128), small) == (23, 23)
    assert mask_shape((128, 128), 40.0) == (3, 3)
    assert mask_shape((10, 10), 64.0) == (1, 1)  # never empty
    with pytest.raises(ConfigError):
        mask_stride(1, 1, (5, 5), scale="pixels")


def test_jitter_moves_each_side_by_at_most_the_fraction_and_stays_in_the_image():
    box = torch.tensor([10.0, 20.0, 50.0, 40.0])  # 40 wide, 20 high
    boxes = jitter_boxes(box, 1000, 0.3, (60, 55), torch.Generator().manual_seed(0))
    assert boxes.shape == (1000, 4) and boxes.dtype == torch.float32
    shift = boxes - box
    limits = torch.tensor([12.0, 6.0, 12.0, 6.0])
    inside = (shift.abs() <= limits + 1e-4).all(dim=1)
    assert inside.all()
    # x1 = 50 + up to 12 is clipped at the 55-px width; every box keeps a positive size
    assert float(boxes[:, 2].max()) == 55.0 and (boxes[:, 2] > 54.99).any()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # the draws cover the range (not a constant or a tiny spread)
    assert float(shift[:, 1].min()) < -5.5 and float(shift[:, 1].max()) > 5.5  # y0: +-6, never clipped
    same = jitter_boxes(box, 1000, 0.3, (60, 55), torch.Generator().manual_seed(0))
    assert torch.equal(boxes, same)


def _selection_case(n_high: int, n_mid: int, n_low: int, n_wrong: int):
    """Proposals whose regressed boxes have IoU 0.95, 0.87, 0.82 with a 100 x 100 target (by
    shrinking it), plus ``n_wrong`` perfect boxes of the wrong class, interleaved."""
    target = torch.tensor([0.0, 0.0, 100.0, 100.0])

    def shrunk(iou: float) -> list[float]:
        return [0.0, 0.0, 100.0, 100.0 * iou]

    kinds = [("high", 0.95)] * n_high + [("mid", 0.87)] * n_mid + [("low", 0.82)] * n_low + [("wrong", 1.0)] * n_wrong
    order = np.random.default_rng(0).permutation(len(kinds))
    kinds = [kinds[i] for i in order]
    regressed = torch.tensor([shrunk(iou) for _, iou in kinds])
    logits = torch.zeros(len(kinds), NUM_CLASSES)
    for i, (kind, _) in enumerate(kinds):
        logits[i, 1 if kind == "wrong" else 2] = 5.0
    return logits, regressed, target, [kind for kind, _ in kinds]


def test_selection_falls_back_through_the_thresholds_and_keeps_at_most_100():
    # more than 100 above 0.9: the first 100 of them, in proposal order
    logits, regressed, target, kinds = _selection_case(150, 10, 10, 20)
    chosen, threshold = select_proposals(logits, regressed, target, 2)
    assert threshold == 0.9 and len(chosen) == 100
    high = [i for i, k in enumerate(kinds) if k == "high"]
    assert chosen.tolist() == high[:100]
    # 60 above 0.9, 120 above 0.85: the 0.85 set, capped
    logits, regressed, target, kinds = _selection_case(60, 60, 10, 5)
    chosen, threshold = select_proposals(logits, regressed, target, 2)
    assert threshold == 0.85 and len(chosen) == 100
    assert {kinds[i] for i in chosen.tolist()} == {"high", "mid"}
    # too few anywhere: the 0.8 set, all of it; the wrong class never counts
    logits, regressed, target, kinds = _selection_case(20, 20, 20, 300)
    chosen, threshold = select_proposals(logits, regressed, target, 2)
    assert threshold == 0.8 and len(chosen) == 60 and "wrong" not in {kinds[i] for i in chosen.tolist()}
    # for class 1 the 300 perfect boxes of that class pass at once
    chosen, threshold = select_proposals(logits, regressed, target, 1)
    assert threshold == 0.9 and len(chosen) == 100 and {kinds[i] for i in chosen.tolist()} == {"wrong"}
    # nothing passes: empty, no threshold
    chosen, threshold = select_proposals(logits, regressed, target, 2, thresholds=(0.99,))
    assert len(chosen) == 0 and threshold is None
    chosen, threshold = select_proposals(logits[:0], regressed[:0], target, 2)
    assert len(chosen) == 0 and threshold is None


def test_initial_mask_is_the_union_of_the_regressed_boxes_on_the_grid():
    boxes = torch.tensor([[4.0, 4.0, 12.0, 8.0], [-3.0, 10.0, 5.0, 30.0]])
    mask = initial_mask(boxes, 4.0, (5, 6))
    expected = torch.zeros(5, 6)
    expected[1:2, 1:3] = 1  # rows int(4/4)..int(8/4), columns 1..3
    expected[2:5, 0:1] = 1  # clipped at the left and bottom
    assert torch.equal(mask, expected)


# ----------------------------------------------------------------------------------- the detector terms
def _problems(detector, image, boxes, classes, scale="image", **settings):
    config = BbamConfig(**{**LOOSE, **settings})
    tensor, size = detector_input(detector, image, torch.device("cpu"))
    prepared = prepare_objects(detector, tensor, size, torch.as_tensor(boxes, dtype=torch.float32), classes,
                               config, torch.Generator().manual_seed(0), scale)
    return config, tensor, size, prepared


def test_the_detector_terms_give_a_nonzero_mask_gradient_from_the_box_initialisation():
    detector = tiny_detector(0)
    config, tensor, size, prepared = _problems(detector, _image(), [[6, 8, 26, 30]], [1],
                                               l1_weight=0.0, tv_weight=0.0)
    problem = prepared[0].problem
    assert problem is not None and prepared[0].kept > 0
    assert 0 < float(problem.mask.mean()) < 1  # the box initialisation, not all ones
    mask = problem.mask.clone().requires_grad_(True)
    loss = bbam_losses(detector, tensor, size, [problem], [mask], config)
    (gradient,) = torch.autograd.grad(loss.sum(), [mask])
    assert float(loss.detach()) > 0 and float(gradient.abs().sum()) > 0
    # with an all-ones mask the detector terms are exactly 0 (why the reference starts from boxes)
    ones = torch.ones_like(problem.mask, requires_grad=True)
    assert float(bbam_losses(detector, tensor, size, [problem], [ones], config).detach()) == pytest.approx(0.0, abs=1e-6)
    assert all(p.grad is None for p in detector.parameters())


def test_a_constant_detector_drives_the_mask_to_zero_and_two_detectors_give_different_masks():
    image, boxes, classes = _image(), [[6, 8, 26, 30]], [1]
    settings = {**LOOSE, "steps": 60}
    constant = compute_bbam(tiny_detector(0, constant=True), image, boxes, classes, scale="image", **settings)
    assert constant.kept[0] > 0
    assert float(constant.masks.max()) == 0.0  # only the L1 and TV terms act
    # a random tiny detector reacts weakly to the image: a smaller L1 weight lets its terms show
    settings["l1_weight"] = 1e-4
    first = compute_bbam(tiny_detector(1), image, boxes, classes, scale="image", **settings)
    second = compute_bbam(tiny_detector(2), image, boxes, classes, scale="image", **settings)
    assert first.kept[0] > 0 and second.kept[0] > 0
    assert float(first.masks.max()) > 0.1 and float(second.masks.max()) > 0.1
    assert float(np.abs(first.masks - second.masks).max()) > 0.1


def test_batched_objects_equal_single_ones():
    detector = tiny_detector(3)
    image = _image((44, 52))
    boxes = [[6, 8, 26, 30], [20, 4, 50, 20], [2, 25, 30, 43]]
    classes = [1, 2, 2]
    single = compute_bbam(detector, image, boxes, classes, scale="image", steps=6, objects_per_batch=1, **LOOSE)
    batched = compute_bbam(detector, image, boxes, classes, scale="image", steps=6, objects_per_batch=3, **LOOSE)
    assert (single.kept > 0).all() and np.array_equal(single.kept, batched.kept)
    assert len({tuple(c) for c in single.cells.tolist()}) > 1  # masks of different sizes in one batch
    np.testing.assert_allclose(batched.masks, single.masks, atol=1e-5)
    assert float(np.abs(single.masks[0] - single.masks[1]).max()) > 0.01  # different objects differ


def test_the_optimisation_lowers_the_loss_and_keeps_the_mask_in_range():
    detector = tiny_detector(4)
    config, tensor, size, prepared = _problems(detector, _image(), [[6, 8, 26, 30]], [2], steps=25)
    trace: list[torch.Tensor] = []
    (mask,) = optimise_masks(detector, tensor, size, [prepared[0].problem], config, trace)
    assert len(trace) == 25 and float(trace[-1][0]) < float(trace[0][0])
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


# ----------------------------------------------------------------------------------- edges
def test_no_kept_proposal_gives_an_all_zero_mask_and_a_count_of_zero():
    detector = tiny_detector(0, constant=True)  # always class 1
    result = compute_bbam(detector, _image(), [[6, 8, 26, 30], [20, 4, 40, 20]], [2, 1], scale="image",
                          steps=3, **LOOSE)
    assert result.kept.tolist()[0] == 0 and result.kept[1] > 0
    assert float(result.masks[0].max()) == 0.0 and math.isnan(result.thresholds[0])
    maps = result.to_maps()
    assert maps.proposals.tolist() == result.kept.tolist() and maps.keys.tolist() == [2, 1]


@pytest.mark.parametrize("box, words", [
    ([10, 5, 10, 20], "empty"),  # xmin = xmax
    ([10, 5, 30, 5], "empty"),  # zero height
    ([10, 5, 60, 20], "outside"),
    ([-4, 5, 20, 20], "outside"),
    ([float("nan"), 5, 20, 20], "not finite"),
])
def test_bad_boxes_are_one_clear_error_naming_the_image(box, words):
    with pytest.raises(DataError, match=words) as caught:
        compute_bbam(tiny_detector(0), _image(), [box], [1], steps=1, where="JPEGImages/a.jpg")
    assert "JPEGImages/a.jpg" in str(caught.value)
    with pytest.raises(DataError, match="class 3"):
        compute_bbam(tiny_detector(0), _image(), [[1, 1, 9, 9]], [3], steps=1)


def test_an_image_without_boxes_gets_a_map_file_with_no_channels(tmp_path: Path):
    result = compute_bbam(tiny_detector(0), _image(), np.zeros((0, 4)), np.zeros(0), steps=1)
    assert result.masks.shape == (0, 40, 48)
    save_maps(tmp_path / "a.npz", result.to_maps())
    loaded = load_maps(tmp_path / "a.npz")
    assert loaded.high_res.shape == (0, 40, 48) and loaded.proposals.shape == (0,)


def test_map_store_keeps_the_kept_counts_and_refuses_bad_ones(tmp_path: Path):
    maps = LocalizationMaps(keys=[1, 1], strided=None, high_res=np.zeros((2, 6, 8), np.float32),
                            boxes=[[0, 0, 4, 4], [2, 2, 8, 6]], proposals=[0, 37])
    save_maps(tmp_path / "x.npz", maps)
    assert load_maps(tmp_path / "x.npz").proposals.tolist() == [0, 37]
    with pytest.raises(ValueError, match="proposals"):
        LocalizationMaps(keys=[1], strided=None, high_res=np.zeros((1, 6, 8)), proposals=[3])  # no boxes
    with pytest.raises(ValueError, match="proposals"):
        LocalizationMaps(keys=[1], strided=None, high_res=np.zeros((1, 6, 8)), boxes=[[0, 0, 1, 1]],
                         proposals=[-1])


# ----------------------------------------------------------------------------------- a dataset
class _Dying:
    """A dataset that raises on the ``die_at``-th image it loads (a killed run)."""

    def __init__(self, dataset, die_at: int) -> None:
        self.dataset, self.die_at, self.loaded = dataset, die_at, 0
        self.ids, self.classes = dataset.ids, dataset.classes

    def boxes(self, image_id):
        return self.dataset.boxes(image_id)

    def load_image(self, image_id):
        self.loaded += 1
        if self.loaded == self.die_at:
            raise KeyboardInterrupt
        return self.dataset.load_image(image_id)


def test_a_killed_attribution_stage_resumes_with_identical_maps(tmp_path: Path):
    from helpers import make_voc

    from wsss.data import open_dataset

    fixture = make_voc(tmp_path / "voc", ids=["a", "b", "c", "d"], classes=["background", "x", "y"],
                       size=(24, 28))
    dataset = open_dataset(fixture.root, "train")
    detector = tiny_detector(5)
    settings = {**LOOSE, "proposals": 50, "steps": 3}
    assert make_bbam_maps(detector, dataset, tmp_path / "whole", scale="image", progress=False, **settings) == 4
    with pytest.raises(KeyboardInterrupt):
        make_bbam_maps(detector, _Dying(dataset, 3), tmp_path / "killed", scale="image", progress=False, **settings)
    assert MapStore(tmp_path / "killed").ids() == ["a", "b"]
    assert make_bbam_maps(detector, dataset, tmp_path / "killed", scale="image", progress=False, **settings) == 2
    for image_id in dataset.ids:
        assert (tmp_path / "whole" / f"{image_id}.npz").read_bytes() == \
               (tmp_path / "killed" / f"{image_id}.npz").read_bytes()
        maps = MapStore(tmp_path / "whole").load(image_id)
        boxes, classes = dataset.boxes(image_id)
        assert np.array_equal(maps.boxes, boxes) and maps.keys.tolist() == classes.tolist()
        assert maps.high_res.shape[1:] == fixture.sizes[image_id]
    summary = bbam_summary(tmp_path / "whole")
    assert summary["objects"] == sum(len(fixture.objects[i]) for i in dataset.ids)
    assert 0.0 <= summary["no_proposal_share"] <= 1.0 and summary["mean_kept"] >= 0


def test_make_bbam_maps_refuses_a_detector_of_another_class_count(tmp_path: Path):
    from helpers import make_voc

    from wsss.data import open_dataset

    fixture = make_voc(tmp_path / "voc", ids=["a"], classes=["background", "x", "y", "z"], size=(24, 28))
    with pytest.raises(ConfigError, match="4 classes"):
        make_bbam_maps(tiny_detector(0), open_dataset(fixture.root, "train"), tmp_path / "maps", steps=1)


# ----------------------------------------------------------------------------------- the detector
def test_the_detector_keeps_the_image_size_unless_told_to_resize():
    image = torch.rand(3, 40, 56)
    keep = build_detector("resnet18_w16", NUM_CLASSES, fpn_channels=16, representation_size=32).eval()
    images, _ = keep.transform([image])
    assert images.image_sizes == [(40, 56)] and images.tensors.shape[-2:] == (64, 64)  # padded to /32
    resize = build_detector("resnet18_w16", NUM_CLASSES, fpn_channels=16, representation_size=32,
                            min_size=80).eval()
    assert resize.transform([image])[0].image_sizes == [(80, 112)]
    with pytest.raises(ConfigError):
        build_detector("resnet18_w16", NUM_CLASSES, max_size=100)
    # box_outputs equals the detector's own RoI heads on the same proposals
    proposals = torch.tensor([[4.0, 4.0, 30.0, 30.0], [10.0, 2.0, 50.0, 38.0]])
    with torch.no_grad():
        logits, deltas = box_outputs(keep, images.tensors, images.image_sizes, [proposals])
        features = keep.backbone(images.tensors)
        heads = keep.roi_heads
        pooled = heads.box_head(heads.box_roi_pool(features, [proposals], images.image_sizes))
        expected_logits, expected_deltas = heads.box_predictor(pooled)
    assert torch.allclose(logits, expected_logits) and torch.allclose(deltas.reshape(2, -1), expected_deltas)


def test_detector_training_resumes_exactly(tmp_path: Path):
    from helpers import make_voc

    from wsss.data import open_dataset
    from wsss.training.detector import DetectorConfig, load_detector, train_detector

    fixture = make_voc(tmp_path / "voc", ids=[f"i{k}" for k in range(4)], classes=["background", "x", "y"],
                       size=(32, 36))
    dataset = open_dataset(fixture.root, "train")
    config = DetectorConfig(backbone="resnet18_w16", fpn_channels=16, representation_size=32, steps=4,
                            batch_size=2, warmup_steps=2, milestones=(3,), checkpoint_every=2, rois_per_image=64)
    whole = train_detector(dataset, config, out=tmp_path / "whole.pt", checkpoint_dir=tmp_path / "ck_whole")
    assert len(whole.history) == 4 and all(np.isfinite(h["loss"]) for h in whole.history)
    assert {"loss_classifier", "loss_objectness"} <= set(whole.history[0])

    def kill(iteration: int, loss: float) -> None:
        if iteration == 2:  # after the checkpoint of update 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(dataset, config, checkpoint_dir=tmp_path / "ck_part", callback=kill)
    resumed = train_detector(dataset, config, out=tmp_path / "resumed.pt", checkpoint_dir=tmp_path / "ck_part")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    first, second = load_detector(tmp_path / "whole.pt"), load_detector(tmp_path / "resumed.pt")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    # torchvision's 32..512 x (33.5 / 800), the median short side, at least 4 px
    assert first.wsss_config["anchor_sizes"] == [4, 4, 5, 11, 21]
    assert first.roi_heads.fg_bg_sampler.batch_size_per_image == 64  # rois_per_image survives the file
    with pytest.raises(DataError, match="not a wsss detector"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_detector(tmp_path / "bad.pt")
