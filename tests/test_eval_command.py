"""``wsss eval`` end to end on a tiny VOC folder: label PNGs, a map store, and bad input."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.commands import eval as eval_command
from wsss.evaluation.semantic import ConfusionAccumulator, mean_iou
from wsss.evaluation.sweep import maps_to_labels
from wsss.io import write_label_png
from wsss.stores.maps import LocalizationMaps, MapStore

CLASSES = ["background", "cat", "dog"]
SIZES = {"img_a": (8, 10), "img_b": (9, 7), "img_c": (6, 6)}
SRC = Path(__file__).resolve().parents[1] / "src"


def make_tiny_voc(root: Path) -> dict[str, np.ndarray]:
    """JPEGImages, SegmentationClass (with a 255 border), classes.txt, ImageSets/Segmentation/train.txt."""
    masks = {}
    rng = np.random.default_rng(0)
    for number, (image_id, (height, width)) in enumerate(SIZES.items()):
        mask = np.zeros((height, width), np.uint8)
        mask[1:5, 1:5] = 1 + number % 2
        mask[0, :] = 255
        mask[height - 3 :, width - 3 :] = 2
        masks[image_id] = mask
        image = rng.integers(0, 255, (height, width, 3)).astype(np.uint8)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(SIZES) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return masks


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "voc"
    return root, make_tiny_voc(root)


def parse(argv):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return parser.parse_args(argv)


def damaged(mask: np.ndarray) -> np.ndarray:
    pred = mask.copy()
    pred[pred == 255] = 0
    pred[-1, :] = 1  # a row of false cats
    pred[2, 2] = 255  # an unlabelled pixel
    return pred


def write_predictions(folder: Path, preds: dict[str, np.ndarray]) -> Path:
    for image_id, pred in preds.items():
        write_label_png(folder / f"{image_id}.png", pred)
    return folder


def test_label_pngs_end_to_end(voc, tmp_path, capsys):
    root, masks = voc
    preds = {image_id: damaged(mask) for image_id, mask in masks.items()}
    pred_dir = write_predictions(tmp_path / "pred", preds)
    out = tmp_path / "out" / "scores.json"
    args = parse(["--data", str(root), "--split", "train", "--pred", str(pred_dir), "--json", str(out)])
    assert eval_command.run(args) == 0

    expected = ConfusionAccumulator(3)
    for image_id, mask in masks.items():
        expected.update(mask, preds[image_id])
    scores = expected.scores(CLASSES, "x")

    document = json.loads(out.read_text())
    assert document["units"].startswith("percent")
    assert document["dataset"]["split"] == "train" and document["dataset"]["num_images"] == 3
    assert document["dataset"]["classes"] == CLASSES
    assert document["prediction"]["kind"] == "labels"
    (result,) = document["results"]
    assert result["protocol"] == "predicted label maps (255 in a prediction counted as background)"
    assert result["miou"] == pytest.approx(100 * scores.miou, abs=1e-9)
    assert result["confusion"] == scores.confusion.tolist()
    assert result["per_class"]["cat"]["iou"] == pytest.approx(100 * scores.iou[1], abs=1e-9)
    assert result["coverage"] == pytest.approx(100 * scores.coverage)

    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][4:] == [*CLASSES, "mean"]
    assert float(rows[1][-1]) == pytest.approx(100 * scores.miou, abs=1e-5)
    assert not (tmp_path / "out" / "scores_sweep.png").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.csv", "scores.json"]

    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if "background" in line).split()
    assert header == ["background", "cat", "dog", "mIoU"]
    assert f"{100 * scores.miou:.1f}" in printed


def test_ground_truth_as_prediction_scores_100(voc, tmp_path, capsys):
    root, masks = voc
    pred_dir = write_predictions(tmp_path / "pred", masks)
    out = tmp_path / "gt.json"
    assert main(["eval", "--data", str(root), "--pred", str(pred_dir), "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["miou"] == 100.0
    assert result["coverage"] == 100.0


def _write_store(folder: Path, masks: dict[str, np.ndarray]) -> dict[str, LocalizationMaps]:
    rng = np.random.default_rng(1)
    store = MapStore(folder)
    written = {}
    for image_id, mask in masks.items():
        keys = np.array([1, 2])
        scores = rng.random((2, *mask.shape)) * 0.3
        scores[0][mask == 1] += 0.5
        scores[1][mask == 2] += 0.4
        maps = LocalizationMaps(keys=keys, strided=None, high_res=scores)
        store.save(image_id, maps)
        written[image_id] = store.load(image_id)  # float16 round trip, as evaluation sees it
    return written


def test_map_store_end_to_end_via_python_m(voc, tmp_path):
    root, masks = voc
    maps = _write_store(tmp_path / "cam", masks)
    out = tmp_path / "out" / "cam.json"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    completed = subprocess.run(
        [sys.executable, "-m", "wsss", "eval", "--data", str(root), "--pred", str(tmp_path / "cam"),
         "--sweep", "0.1:0.5:0.1", "--threshold", "0.15", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr

    def brute_miou(threshold):
        accumulator = ConfusionAccumulator(3)
        for image_id, mask in masks.items():
            accumulator.update(mask, maps_to_labels(maps[image_id], threshold))
        return accumulator.confusion

    document = json.loads(out.read_text())
    assert document["prediction"]["kind"] == "maps"
    sweep = document["sweep"]
    assert sweep["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    expected_curve = [100 * mean_iou(brute_miou(t)) for t in sweep["thresholds"]]
    assert sweep["miou"] == pytest.approx(expected_curve, abs=1e-9)
    best = sweep["thresholds"][int(np.argmax(expected_curve))]
    assert sweep["best_threshold"] == best

    fixed, label_free, oracle = document["results"]
    assert fixed["protocol"] == "fixed t=0.15 (no ground truth)"
    assert fixed["threshold_uses_ground_truth"] is False
    assert fixed["miou"] == pytest.approx(100 * mean_iou(brute_miou(0.15)), abs=1e-9)
    assert label_free["protocol"].startswith("label-free (edges) t=")
    assert label_free["protocol"].endswith("(no ground truth)")
    assert label_free["threshold_uses_ground_truth"] is False
    assert label_free["miou"] == pytest.approx(100 * mean_iou(brute_miou(label_free["threshold"])), abs=1e-9)
    assert oracle["protocol"] == f"oracle: best t on ground truth (t={best:g} of sweep 0.1:0.5:0.1)"
    assert oracle["threshold_uses_ground_truth"] is True
    assert oracle["miou"] == pytest.approx(max(expected_curve), abs=1e-9)

    png = out.with_name("cam_sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".csv").is_file()
    # All three side by side in the printed table, each with its protocol.
    assert "fixed t=0.15 (no ground truth)" in completed.stdout
    assert "label-free (edges)" in completed.stdout and "oracle: best t on ground truth" in completed.stdout


# ---------------------------------------------------------------- bad input


def run_failing(argv, capsys):
    code = main(["eval", *argv])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("wsss: error: ") and "\n" not in error
    return error


def test_missing_predictions(voc, tmp_path, capsys):
    root, masks = voc
    pred_dir = write_predictions(tmp_path / "pred", {"img_a": masks["img_a"]})
    out = tmp_path / "out.json"
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--json", str(out)], capsys)
    assert error == f"wsss: error: {pred_dir}: 2 of 3 predictions missing (no .png for img_b, img_c)"
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_prediction_of_wrong_size(voc, tmp_path, capsys):
    root, masks = voc
    preds = dict(masks)
    preds["img_b"] = np.zeros((5, 5), np.uint8)
    pred_dir = write_predictions(tmp_path / "pred", preds)
    out = tmp_path / "out.json"
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--json", str(out)], capsys)
    assert error == f"wsss: error: {pred_dir / 'img_b.png'}: prediction is 5x5 (WxH) but the ground truth is 7x9"
    assert list(tmp_path.glob("out*")) == []


def test_empty_prediction_folder(voc, tmp_path, capsys):
    root, _ = voc
    (tmp_path / "pred").mkdir()
    error = run_failing(["--data", str(root), "--pred", str(tmp_path / "pred")], capsys)
    assert error.endswith("prediction folder is empty (no .png label maps or .npz map files)")


def test_corrupt_png(voc, tmp_path, capsys):
    root, masks = voc
    pred_dir = write_predictions(tmp_path / "pred", masks)
    (pred_dir / "img_c.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    out = tmp_path / "out.json"
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--json", str(out)], capsys)
    assert f"{pred_dir / 'img_c.png'}: corrupt or unreadable image" in error
    assert not out.exists()


def test_label_above_k(voc, tmp_path, capsys):
    root, masks = voc
    preds = dict(masks)
    preds["img_a"] = np.where(masks["img_a"] == 1, 5, masks["img_a"]).astype(np.uint8)
    pred_dir = write_predictions(tmp_path / "pred", preds)
    error = run_failing(["--data", str(root), "--pred", str(pred_dir)], capsys)
    expected = "prediction has label(s) [5] outside 0..2 (3 classes; 255 = ignore)"
    assert error == f"wsss: error: {pred_dir / 'img_a.png'}: {expected}"


def test_corrupt_map_file(voc, tmp_path, capsys):
    root, masks = voc
    _write_store(tmp_path / "cam", masks)
    (tmp_path / "cam" / "img_b.npz").write_bytes(b"not a zip")
    out = tmp_path / "out.json"
    error = run_failing(["--data", str(root), "--pred", str(tmp_path / "cam"), "--json", str(out)], capsys)
    assert f"{tmp_path / 'cam' / 'img_b.npz'}: corrupt map file" in error
    assert list(tmp_path.glob("out*")) == []


def test_map_options_on_labels_and_plot_without_sweep(voc, tmp_path, capsys):
    root, masks = voc
    pred_dir = write_predictions(tmp_path / "pred", masks)
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--sweep", "0.1:0.3:0.1"], capsys)
    assert error.endswith(f"{pred_dir} holds label PNGs; --sweep: only for map stores (.npz)")
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--plot", str(tmp_path / "p.png")], capsys)
    assert "--plot needs a threshold sweep" in error
    error = run_failing(["--data", str(root), "--pred", str(pred_dir), "--threshold", "abc"], capsys)
    assert "--threshold" in error


def test_unlabelled_excluded_reports_coverage(voc, tmp_path):
    root, masks = voc
    preds = {image_id: damaged(mask) for image_id, mask in masks.items()}
    pred_dir = write_predictions(tmp_path / "pred", preds)
    out = tmp_path / "x.json"
    args = parse(["--data", str(root), "--pred", str(pred_dir), "--json", str(out), "--unlabelled", "exclude"])
    assert eval_command.run(args) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["protocol"] == "predicted label maps (255 in a prediction excluded; see coverage)"
    valid = sum(int((mask != 255).sum()) for mask in masks.values())
    unlabelled = sum(int(((masks[i] != 255) & (preds[i] == 255)).sum()) for i in masks)
    assert unlabelled == 3
    assert result["coverage"] == pytest.approx(100 * (1 - unlabelled / valid))
    assert sum(map(sum, result["confusion"])) == valid - unlabelled
