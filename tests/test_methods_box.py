"""The box-supervised methods in the pipeline: BANA's stages and the plain box baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_voc, write_xml

from wsss.config import result_settings
from wsss.errors import ConfigError
from wsss.methods import Context
from wsss.pipeline.recipes import build_stages, check_inputs, load_recipe
from wsss.pipeline.runner import fingerprint
from wsss.refine.box_masks import fill_boxes, make_box_masks
from wsss.stores.masks import MaskStore

BOTH = "methods=[boxes, bana]"


def _stages(*overrides: str) -> dict:
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", *overrides])
    return {stage.name: stage for stage in build_stages(Context(recipe, Path("work")))}


def _print(stage) -> str:
    return fingerprint(stage.depends_on)


# ------------------------------------------------------------------ stage lists and fingerprints
def test_bana_and_the_box_baseline_get_their_own_chains() -> None:
    stages = _stages(BOTH)
    assert list(stages) == [
        "boxes.pseudo", "boxes.pseudo_eval", "boxes.seg", "boxes.predict", "boxes.final_eval",
        "bana.classifier", "bana.labels", "bana.pseudo_eval", "bana.seg", "bana.predict", "bana.final_eval",
        "fully_supervised.seg", "fully_supervised.predict", "fully_supervised.final_eval",
    ]
    assert "classifier" not in stages  # neither trains the CAM classifier
    assert stages["bana.classifier"].main_only and stages["bana.classifier"].needs == ()
    assert not stages["bana.labels"].main_only  # sharded over the processes
    assert stages["bana.labels"].needs == ("bana.classifier",)
    assert stages["bana.pseudo_eval"].needs == ("bana.labels",) and stages["bana.seg"].needs == ("bana.labels",)
    assert stages["boxes.seg"].needs == ("boxes.pseudo",) and stages["boxes.pseudo"].needs == ()


def test_until_stops_both_chains() -> None:
    assert list(_stages(BOTH, "until=seeds")) == ["bana.classifier"]
    pseudo = list(_stages(BOTH, "until=pseudo"))
    assert pseudo == ["boxes.pseudo", "boxes.pseudo_eval", "bana.classifier", "bana.labels", "bana.pseudo_eval"]


def test_each_section_reaches_the_fingerprints_of_its_stages_only() -> None:
    base = _stages(BOTH, "scale=reference")
    steps = _stages(BOTH, "scale=reference", "bana.steps=7")
    assert _print(steps["bana.classifier"]) != _print(base["bana.classifier"])
    assert _print(steps["bana.labels"]) == _print(base["bana.labels"])  # chained by the runner, not here
    gap = _stages(BOTH, "scale=reference", "bana.pooling=gap")  # the supplement's GAP baseline trains another classifier
    assert _print(gap["bana.classifier"]) != _print(base["bana.classifier"])
    assert gap["bana.classifier"].depends_on["bana"]["pooling"] == "gap"
    labels = _stages(BOTH, "scale=reference", "bana_labels.bg_threshold=0.9")
    assert _print(labels["bana.labels"]) != _print(base["bana.labels"])
    assert _print(labels["bana.classifier"]) == _print(base["bana.classifier"])
    damping = _stages(BOTH, "scale=reference", "bana_seg.damping=5")
    assert _print(damping["bana.seg"]) != _print(base["bana.seg"])
    assert _print(damping["boxes.seg"]) == _print(base["boxes.seg"])
    scaled = _stages(BOTH, "scale=image")
    assert _print(scaled["bana.labels"]) != _print(base["bana.labels"])  # the CRF's widths follow the scale
    # stage 3 trains the segmentation section with BANA's classifier and loss ...
    seg = base["bana.seg"].depends_on["segmentation"]
    assert seg["classifier"] == "cosine" and seg["loss"] == "nal"
    assert seg["loss_options"] == {"unreliable_weight": 0.1, "damping": 7.0}
    # ... and the image-level methods and the box baseline get the section as it is
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", "methods=[cam, boxes]"])
    stages = {s.name: s for s in build_stages(Context(recipe, Path("work")))}
    for name in ("cam.seg", "boxes.seg", "fully_supervised.seg"):
        assert stages[name].depends_on == {"train": "train", "segmentation": result_settings(recipe.segmentation),
                                           **recipe.runtime.fast_paths.dependency}


def test_bad_bana_settings_fail_when_the_recipe_loads() -> None:
    with pytest.raises(ConfigError, match="bana_seg.classifier=cosine"):
        load_recipe("synth/demo", [BOTH, "bana_seg.classifier=dot"])
    with pytest.raises(ConfigError, match="bana_seg.loss"):
        load_recipe("synth/demo", [BOTH, "bana_seg.loss=focal"])
    with pytest.raises(ConfigError, match="bana_labels.crf"):
        load_recipe("synth/demo", [BOTH, "bana_labels.crf=nope"])
    assert load_recipe("synth/demo", [BOTH, "bana_seg.loss=ce", "bana_seg.classifier=dot"]).bana_seg.loss == "ce"


def test_bana_needs_boxes_for_every_image_of_its_splits(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", classes=["background", "cat", "dog"])
    (voc.root / "Annotations" / f"{voc.ids[1]}.xml").unlink()
    recipe = load_recipe("synth/demo", [f"data.root={voc.root}", "data.val_split=train", BOTH])
    ctx = Context(recipe, tmp_path / "work")
    problems = [str(p) for p in check_inputs(ctx, build_stages(ctx))]
    box_lines = [p for p in problems if "boxes of split" in p]
    assert len(box_lines) == 2  # BANA's classifier and the box baseline, one line each
    assert all(f"1 of its {len(voc.ids)} images" in line and repr(voc.ids[1]) in line for line in box_lines)
    assert all(".xml" in line and "\n" not in line for line in box_lines)


# ------------------------------------------------------------------ the box baseline's masks
def test_fill_boxes_puts_the_smaller_box_on_top() -> None:
    boxes = np.array([[0, 0, 8, 6], [2, 1, 5, 4], [6, 4, 10, 8]], dtype=np.float32)  # x0, y0, x1, y1
    mask = fill_boxes(boxes, np.array([1, 2, 3]), height=8, width=10)
    assert mask[1:4, 2:5].tolist() == [[2] * 3] * 3  # nested: the small box inside the big one
    assert mask[0, 0] == 1 and mask[5, 7] == 3  # the 4x4 box over the 8x6 one where they overlap
    assert mask[6, 2] == 0 and mask[7, 9] == 3 and mask.dtype == np.uint8
    # the same boxes in any order give the same mask
    order = [2, 0, 1]
    assert np.array_equal(fill_boxes(boxes[order], np.array([1, 2, 3])[order], 8, 10), mask)
    assert not fill_boxes(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 3, 4).any()


def test_box_masks_of_a_voc_dataset_follow_its_xml_boxes(tmp_path: Path) -> None:
    from wsss.data.voc import VOCDataset

    classes = ["background", "cat", "dog"]
    voc = make_voc(tmp_path / "voc", classes=classes)
    first = voc.ids[0]
    height, width = voc.sizes[first]
    # objects are (class, x0, y0, x1, y1), written 1-based inclusive: a dog inside a cat's box
    write_xml(voc.root / "Annotations" / f"{first}.xml", first, (height, width),
              [(1, 0, 0, width, height), (2, 3, 4, 9, 10)], classes)
    dataset = VOCDataset(voc.root, "train")
    out = tmp_path / "pseudo"
    assert make_box_masks(dataset, out) == {"images": len(voc.ids), "total": len(voc.ids)}
    mask = MaskStore(out).load(first)
    expected = np.ones((height, width), dtype=np.uint8)
    expected[4:10, 3:9] = 2
    assert np.array_equal(mask, expected)
    for image_id in voc.ids[1:]:  # the fixture's two side-by-side boxes
        boxes, labels = dataset.boxes(image_id)
        assert set(np.unique(MaskStore(out).load(image_id))) == {0, *labels.tolist()}
    assert make_box_masks(dataset, out)["images"] == 0  # a rerun resumes


# ------------------------------------------------------------------ stage 3 with two targets
def test_seg_stages_train_on_two_targets_with_the_noise_aware_loss(tmp_path: Path) -> None:
    import torch

    from wsss.data.voc import VOCDataset
    from wsss.methods.chain import seg_stages

    classes = ["background", "cat", "dog"]
    voc = make_voc(tmp_path / "voc", classes=classes, size=(32, 32))
    dataset = VOCDataset(voc.root, "train")
    crf, ret = MaskStore(tmp_path / "crf"), MaskStore(tmp_path / "ret")
    for image_id in voc.ids:
        truth = dataset.load_mask(image_id)
        crf.save(image_id, truth)
        noisy = truth.copy()
        noisy[: noisy.shape[0] // 3] = 0  # Y_ret disagrees on the top third
        ret.save(image_id, noisy)
    recipe = load_recipe("synth/demo", [
        f"data.root={voc.root}", "data.val_split=train", BOTH, "segmentation.epochs=null",
        "segmentation.iterations=2", "segmentation.batch_size=2", "segmentation.crop_size=32",
        "runtime.progress=false", "runtime.device=cpu"])
    ctx = Context(recipe, tmp_path / "work")
    config = recipe.segmentation.replace(classifier="cosine", loss="nal",
                                         loss_options=recipe.bana_seg.loss_options())
    train = seg_stages(ctx, "bana", {"target": tmp_path / "crf", "target_ret": tmp_path / "ret"},
                       ("bana.labels",), config=config)[0]
    torch.manual_seed(0)
    train.run()
    saved = torch.load(ctx.seg_dir("bana") / "model.pt", weights_only=True)
    assert saved["iterations"] == 2
    assert saved["config"]["loss"] == "nal" and saved["config"]["classifier"] == "cosine"
    assert saved["model_config"]["cosine_scale"] == 20.0
    assert train.depends_on["segmentation"]["loss_options"]["damping"] == 7.0


# ------------------------------------------------------------------ end to end
def test_run_boxes_and_bana_end_to_end_on_a_tiny_generated_set(tmp_path: Path) -> None:
    from wsss.cli import main
    from wsss.data.synth import SynthConfig, generate
    from wsss.io import read_json

    root = tmp_path / "data"
    generate(root, SynthConfig(seed=3, train=24, val=8, ood=4, size=64, classes=3))
    work = tmp_path / "work"
    settings = [
        f"data.root={root}", BOTH, "fully_supervised=false", "runtime.device=cpu", "runtime.progress=false",
        "bana.steps=3", "bana.milestones=[2]", "bana.batch_size=8",  # one epoch of 24 images
        "segmentation.epochs=1", "segmentation.batch_size=8", "segmentation.crop_size=64",
        "segmentation.scale_range=null", "seg_inference.scales=[1.0]", "seg_inference.flip=false",
    ]
    args = ["run", "synth/demo", "--work", str(work)]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    summary = read_json(work / "pseudo" / "bana_labels.json")
    assert summary["images"] == 24 and 0.0 <= summary["disagreement"] <= 1.0
    scores = {}
    for method in ("boxes", "bana"):
        for what in ("pseudo", "final"):
            scores[method, what] = read_json(work / "eval" / f"{method}_{what}.json")["results"][0]["miou"]
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert len(list((work / "pseudo" / "bana_ret").glob("*.png"))) == 24
    print("tiny set:", {f"{m} {w}": round(v, 1) for (m, w), v in scores.items()},
          f"disagreement {summary['disagreement']:.3f}")
    assert main(args) == 0  # a rerun finds every stage done


def test_the_demo_gives_the_box_methods_rows_without_seeds(tmp_path: Path) -> None:
    from wsss.data.synth import SynthConfig, generate
    from wsss.pipeline.demo import run_demo

    root = tmp_path / "data"
    generate(root, SynthConfig(seed=3, train=24, val=8, ood=4, size=64, classes=3))
    overrides = [BOTH, "fully_supervised=false", "runtime.device=cpu", "runtime.progress=false", "bana.steps=3",
                 "bana.milestones=[2]", "segmentation.epochs=1", "segmentation.scale_range=null",
                 "seg_inference.scales=[1.0]", "seg_inference.flip=false"]
    results = run_demo(tmp_path / "demo", data=str(root), overrides=overrides, seed_images=0)
    for method in ("boxes", "bana"):
        row = results["methods"][method]
        assert row["seed_miou"] is None and row["pseudo_miou"] is not None and row["final_miou"] is not None
    text = (tmp_path / "demo" / "results.txt").read_text()
    assert "Pseudo masks (boxes, bana: their own)" in text and "Seeds on" not in text
    assert not (tmp_path / "demo" / "seed_sweep.png").exists()
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "demo" / "pseudo_masks.png"))
    # image, ground truth, filled boxes, Y_crf, Y_ret: five 64 px columns, eight rows
    assert grid.shape[1] > 5 * 64 and grid.shape[0] > 8 * 64


def test_a_killed_bana_labels_stage_resumes_with_identical_labels(tmp_path: Path) -> None:
    from wsss.cli import main
    from wsss.data.synth import SynthConfig, generate
    from wsss.io import read_json, write_json

    root = tmp_path / "data"
    generate(root, SynthConfig(seed=3, train=16, val=4, ood=4, size=64, classes=3))
    work = tmp_path / "work"
    args = ["run", "synth/demo", "--work", str(work)]
    for setting in (f"data.root={root}", "methods=[bana]", "until=pseudo", "runtime.device=cpu",
                    "runtime.progress=false", "bana.steps=2", "bana.milestones=[1]"):
        args += ["--set", setting]
    assert main(args) == 0
    folders = [work / "pseudo" / "bana", work / "pseudo" / "bana_ret"]
    before = {p: p.read_bytes() for folder in folders for p in sorted(folder.glob("*.png"))}
    summary = read_json(work / "pseudo" / "bana_labels.json")
    # a kill mid-stage: its marker says running, some labels were never written
    marker = work / ".stages" / "bana.labels.json"
    write_json(marker, {**read_json(marker), "state": "running"})
    for path in list(before)[::3]:
        path.unlink()
    assert main(args) == 0
    assert {p: p.read_bytes() for folder in folders for p in sorted(folder.glob("*.png"))} == before
    again = read_json(work / "pseudo" / "bana_labels.json")
    assert again["disagreement"] == summary["disagreement"] and 0 < again["computed_now"] < 16
