"""The climb report's core (``benchmarks/climb_report.py``): AdvCAM's and RIB's climbs at both
``scale`` settings on a tiny work folder, and how the per-step means are taken."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_benchmark, make_voc
from torch import nn

from wsss.attribution.advcam import REFERENCE_POSITIVE_WEIGHTS, reference_cells
from wsss.attribution.cam import multiscale_inputs
from wsss.attribution.rib import REFERENCE_TARGET_LOGIT, RibResult
from wsss.data.voc import VOCDataset
from wsss.models.cam_net import CamNet, load_cam_net



@pytest.fixture(scope="module")
def report():
    yield from load_benchmark("climb_report")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A work folder: 4 images of 3 classes, an untrained classifier, a recipe with few steps."""
    root = tmp_path_factory.mktemp("climb")
    fixture = make_voc(root / "data", classes=["background", "a", "b", "c"], size=(40, 52))
    work = root / "work"
    work.mkdir()
    torch.manual_seed(0)
    model = CamNet("resnet18_w16", 3, output_stride=8, freeze_bn=False, frozen_stages=0, classes=fixture.classes)
    with torch.no_grad():  # non-trivial BatchNorm and mostly positive class weights, as after training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.classifier.weight.normal_(0.05, 0.1)
    model.save(work / "classifier.pt")
    (work / "config.yaml").write_text(
        f"methods: [advcam, rib]\ndata:\n  root: {fixture.root}\n  seed_split: train\n  train_split: train\n"
        "runtime:\n  device: cpu\n  progress: false\nadvcam:\n  iterations: 4\n"
        "rib:\n  steps: 3\n  batch_size: 2\n  scales: [1.0, 1.5]\n  loss_scales: [1.0, 1.5]\n"
        "  other_crop_size: 32\n  other_resize_long: [28, 36]\n")
    return work


def test_benchmark_reports_both_settings(report, work, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = report.main([str(work), "--out", str(out), "--limit", "2", "--steps", "0,2,40", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "climb_report.json").read_text())
    assert (out / "climb_report.txt").read_text() in printed
    assert "[advcam]" in printed and "[rib]" in printed
    dataset = VOCDataset(work.parent / "data", "train")
    ids = dataset.ids[:2]
    assert document["ids"] == ids
    pairs = sum(len(dataset.image_labels(i)) for i in ids)
    advcam, rib = document["summary"]["advcam"], document["summary"]["rib"]

    # AdvCAM: the steps asked for that a 4-step climb has, and its last; lambda and strength
    for setting in ("reference", "image"):
        assert advcam[setting]["pairs"] == pairs and sorted(map(int, advcam[setting]["steps"])) == [0, 2, 3]
    cells = advcam["reference"]["cells"]
    assert cells == [5 * 7, 6 * 7] or cells == [5 * 7]  # 40 x 52 and 41 x 54 at stride 8
    assert advcam["reference"]["mask_weight"] == 7.0
    # the image setting gives every class the reference's strength, 7 * 768 / 2048
    # (lambda is rounded to the float32 classifier's dtype before the strength is recorded)
    reference_strength = 7.0 * reference_cells(1.0) / (2 * REFERENCE_POSITIVE_WEIGHTS)
    assert reference_strength == 2.625
    assert advcam["image"]["strength"] == pytest.approx(reference_strength, rel=1e-6)
    assert advcam["reference"]["strength"] != pytest.approx(2.625, rel=1e-3)  # a small net on small images

    # RIB: every step, the literal scale at reference, the measured one at image
    assert sorted(map(int, rib["reference"]["steps"])) == [0, 1, 2]
    assert rib["reference"]["logit_scale"] == 1.0 and rib["reference"]["margin"] == 600.0

    model = load_cam_net(work / "classifier.pt").eval()
    image_scales = []
    for record in document["images"]:
        image_id, keys = record["id"], np.asarray(record["keys"])
        np.testing.assert_array_equal(keys, dataset.image_labels(image_id))
        image = dataset.load_image(image_id)
        with torch.no_grad():
            # AdvCAM's step-0 score: y_c of the unperturbed image and its flip, by a plain forward
            pair = multiscale_inputs(image, [1.0])[0]
            plain = torch.relu(model.class_maps(pair)).mean(dim=(-2, -1)).mean(dim=0)[keys - 1]
            # RIB's step-0 score: the classifier's logits, mean over the loss scales and flips
            rows = torch.cat([model(x) for x in multiscale_inputs(image, (1.0, 1.5))])[:, keys - 1]
            logits = rows.mean(dim=0)
        for setting in ("reference", "image"):
            np.testing.assert_allclose(np.asarray(record["advcam"][setting]["score"])[:, 0], plain.numpy(),
                                       rtol=1e-4)
            np.testing.assert_allclose(record["rib"][setting]["trace"][0]["score"], logits.numpy(), rtol=1e-4)
        assert record["rib"]["reference"]["logit_scale"] == 1.0
        scale = record["rib"]["image"]["logit_scale"]
        positive = rows[rows > 0]  # c measures the classes the classifier sees (rib.positive_mean)
        expected = float(positive.mean()) / REFERENCE_TARGET_LOGIT if positive.numel() else 1.0
        assert scale == pytest.approx(expected, rel=1e-4)
        image_scales.append(scale)
    assert rib["image"]["logit_scale"] == pytest.approx(np.mean(image_scales), rel=1e-12)
    assert rib["image"]["margin"] == pytest.approx(600.0 * np.mean(image_scales), rel=1e-12)

    # the tables' means are the means over every (image, class) pair
    for setting in ("reference", "image"):
        scores = np.concatenate([np.asarray(r["advcam"][setting]["score"]) for r in document["images"]])
        assert scores.shape == (pairs, 4)
        assert advcam[setting]["steps"]["2"]["score"] == pytest.approx(scores[:, 2].mean(), rel=1e-12)
        areas = np.concatenate([np.asarray(r["advcam"][setting]["accumulated_area"]) for r in document["images"]])
        assert advcam[setting]["final_accumulated_area"] == pytest.approx(areas[:, -1].mean(), rel=1e-12)
        assert 0 < advcam[setting]["final_accumulated_area"] <= 1

    rows = list(csv.DictReader((out / "climb_report.csv").open()))
    assert {(r["method"], r["setting"]) for r in rows} == {(m, s) for m in ("advcam", "rib")
                                                           for s in ("reference", "image")}
    strength = [r for r in rows if r["method"] == "advcam" and r["setting"] == "image" and r["metric"] == "strength"]
    assert float(strength[0]["value"]) == pytest.approx(2.625)


def test_rib_means_are_over_the_runs_that_reached_a_step(report) -> None:
    def result(keys, traces, stop, scale=1.0):
        maps = torch.zeros(len(keys), 4, 4)
        maps[:, :2, :] = 1.0  # half of the cells above 0.3 of the max
        return RibResult(keys=np.asarray(keys), strided=maps, high_res=maps, steps=len(traces), stop=stop,
                         logit_scale=scale, trace=traces)

    def entry(scores, total):
        return {"target_sum": total, "score": scores, "area": [0.5] * len(scores)}

    long = result([1, 2], [entry([1.0, 3.0], 4.0), entry([2.0, 4.0], 6.0), entry([3.0, 5.0], None)], "steps")
    short = result([3], [entry([10.0], 10.0)], "margin", scale=2.0)
    climbs = [report.ImageClimb("a", np.array([1, 2]), rib={"reference": long, "image": long}),
              report.ImageClimb("b", np.array([3]), rib={"reference": short, "image": short})]
    summary = report.summarise_rib(climbs, margin=600.0, max_steps=3)["reference"]
    assert summary["pairs"] == 3 and summary["images"] == 2
    assert summary["stops"] == {"margin": 1, "steps": 1}
    assert summary["logit_scale"] == 1.5 and summary["margin"] == 900.0 and summary["steps_taken"] == 2.0
    assert summary["steps"][0] == {"score": pytest.approx(14 / 3), "area": 0.5, "target_sum": 7.0, "pairs": 3,
                                   "images": 2}
    assert summary["steps"][1]["score"] == 3.0 and summary["steps"][1]["pairs"] == 2
    assert summary["steps"][2]["target_sum"] is None  # a run's last step makes no update
    assert summary["final_accumulated_area"] == 0.5


def test_missing_classifier_is_one_error_line(report, work, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((work / "config.yaml").read_text())
    assert report.main([str(empty), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("climb_report: error:") and "classifier.pt" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "climb_report.json").exists()
