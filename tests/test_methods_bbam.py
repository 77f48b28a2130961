"""BBAM in the pipeline: the detector and attribution-map stages, fingerprints, a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_voc, write_xml

from wsss.methods import Context
from wsss.pipeline.recipes import build_stages, check_inputs, load_recipe
from wsss.pipeline.runner import fingerprint
from wsss.stores.maps import MapStore

BBAM = "methods=[bbam]"


def _stages(*overrides: str) -> dict:
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", BBAM, *overrides])
    return {stage.name: stage for stage in build_stages(Context(recipe, Path("work")))}


def _print(stage) -> str:
    return fingerprint(stage.depends_on)


def test_bbam_trains_its_detector_then_writes_its_maps() -> None:
    stages = _stages("until=seeds")
    assert list(stages) == ["bbam.detector", "bbam.maps"]
    assert stages["bbam.detector"].main_only and stages["bbam.detector"].needs == ()
    assert not stages["bbam.maps"].main_only and stages["bbam.maps"].needs == ("bbam.detector",)


def test_the_bbam_chain_runs_from_the_maps_to_deeplab_and_mask_rcnn(tmp_path: Path) -> None:
    assert list(_stages("until=pseudo")) == ["bbam.detector", "bbam.maps", "bbam.labels", "bbam.pseudo_eval"]
    # without ground-truth instances (no data here) the Mask R-CNN stages are left out
    assert list(_stages("fully_supervised=false"))[4:] == ["bbam.seg", "bbam.predict", "bbam.final_eval"]
    from wsss.data.synth import SynthConfig, generate

    generate(tmp_path / "data", SynthConfig(seed=1, train=2, val=2, ood=0, size=48, classes=2))
    recipe = load_recipe("synth/demo", [f"data.root={tmp_path / 'data'}", BBAM])
    stages = {stage.name: stage for stage in build_stages(Context(recipe, tmp_path / "work"))}
    assert list(stages)[7:] == ["bbam.mask_rcnn", "bbam.instance_eval", "instances_fully_supervised.mask_rcnn",
                                "instances_fully_supervised.instance_eval", "fully_supervised.seg",
                                "fully_supervised.predict", "fully_supervised.final_eval"]
    assert stages["bbam.labels"].needs == ("bbam.maps",) and stages["bbam.seg"].needs == ("bbam.labels",)
    assert stages["bbam.mask_rcnn"].needs == ("bbam.labels",)
    assert stages["instances_fully_supervised.mask_rcnn"].needs == ()
    base = _stages()
    assert _print(_stages("bbam_labels.object_threshold=0.8")["bbam.labels"]) != _print(base["bbam.labels"])
    assert _print(_stages("bbam_labels.workers=2")["bbam.labels"]) == _print(base["bbam.labels"])  # run-only
    assert _print(_stages("bbam_labels.object_threshold=0.8")["bbam.maps"]) == _print(base["bbam.maps"])


def test_each_bbam_section_reaches_the_fingerprints_of_its_stages_only() -> None:
    base = _stages()
    detector = _stages("bbam_detector.steps=7")
    assert _print(detector["bbam.detector"]) != _print(base["bbam.detector"])
    assert _print(detector["bbam.maps"]) == _print(base["bbam.maps"])  # chained by the runner
    attribution = _stages("bbam.steps=7")
    assert _print(attribution["bbam.maps"]) != _print(base["bbam.maps"])
    assert _print(attribution["bbam.detector"]) == _print(base["bbam.detector"])
    assert _print(_stages("bbam.objects_per_batch=2")["bbam.maps"]) == _print(base["bbam.maps"])  # run-only
    assert _print(_stages("scale=reference")["bbam.maps"]) != _print(base["bbam.maps"])  # the mask stride (the demo recipe: image)


def test_bad_bbam_settings_fail_when_the_recipe_loads() -> None:
    from wsss.errors import ConfigError

    for bad in ("bbam.jitter=0.5", "bbam.iou_thresholds=[1.2]", "bbam.tv_beta=0.5", "bbam_detector.schedule=cos",
                "bbam_detector.anchor_sizes=[8, 16]", "bbam_detector.max_size=200",
                "bbam_labels.possible_threshold=0.9", "bbam_labels.crf=none", "mask_rcnn.max_size=200"):
        with pytest.raises(ConfigError):
            load_recipe("synth/demo", ["data.root=/nowhere", BBAM, bad])


def test_bbam_finds_a_bad_box_before_the_first_stage(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", ids=["a", "b"], classes=["background", "x", "y"], size=(24, 28))
    write_xml(voc.root / "Annotations" / "b.xml", "b", voc.sizes["b"], [(1, 5, 5, 5, 20)], voc.classes)  # xmin = xmax
    recipe = load_recipe("synth/demo", [f"data.root={voc.root}", "data.val_split=train", BBAM])
    ctx = Context(recipe, tmp_path / "work")
    problems = [str(p) for p in check_inputs(ctx, build_stages(ctx))]
    lines = [p for p in problems if "BBAM's detector" in p]
    assert len(lines) == 1 and "'b'" in lines[0] and "empty" in lines[0] and "\n" not in lines[0]


def test_run_bbam_end_to_end_on_a_tiny_generated_set(tmp_path: Path) -> None:
    from wsss.cli import main
    from wsss.data.synth import SynthConfig, generate
    from wsss.io import read_json
    from wsss.stores.instances import InstanceStore
    from wsss.stores.masks import MaskStore

    root = tmp_path / "data"
    generate(root, SynthConfig(seed=3, train=8, val=4, ood=2, size=64, classes=3))
    work = tmp_path / "work"
    settings = [f"data.root={root}", BBAM, "runtime.device=cpu", "runtime.progress=false",
                "scale=image", "bbam_detector.steps=2", "bbam_detector.batch_size=4", "bbam_detector.milestones=[1]",
                "bbam_detector.warmup_steps=1", "bbam.steps=2", "bbam.proposals=50", "segmentation.epochs=1",
                "segmentation.batch_size=4", "seg_inference.scales=[1.0]", "mask_rcnn.backbone=resnet18_w16",
                "mask_rcnn.fpn_channels=16", "mask_rcnn.representation_size=32", "mask_rcnn.mask_channels=16",
                "mask_rcnn.steps=2", "mask_rcnn.batch_size=4", "mask_rcnn.warmup_steps=1", "mask_rcnn.milestones=[1]"]
    args = ["run", "synth/demo", "--work", str(work)]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    summary = read_json(work / "maps" / "bbam_summary.json")
    store = MapStore(work / "maps" / "bbam")
    assert summary["images"] == 8 and len(store.ids()) == 8
    total = sum(len(store.load(image_id).keys) for image_id in store.ids())
    assert summary["objects"] == total > 0 and 0.0 <= summary["no_proposal_share"] <= 1.0
    maps = store.load(store.ids()[0])
    assert maps.boxes is not None and maps.proposals is not None and maps.high_res.shape[1:] == (64, 64)
    # the pseudo labels: one semantic mask per image, one instance per box, the kept numbers repeated
    labels = read_json(work / "pseudo" / "bbam_labels.json")
    assert labels["objects"] == total and labels["no_proposal_share"] == summary["no_proposal_share"]
    assert len(MaskStore(work / "pseudo" / "bbam").ids()) == 8
    instances = InstanceStore(work / "pseudo" / "bbam_instances.json").load()
    assert sum(len(instances[i]) for i in instances) == total
    # semantic scores, and instance AP at BBAM's IoUs for BBAM's Mask R-CNN and the oracle
    assert read_json(work / "eval" / "bbam_final.json")["results"][0]["miou"] >= 0
    background, excluded = read_json(work / "eval" / "bbam_pseudo.json")["results"]  # the band's 255 two ways
    assert "background" in background["protocol"] and "exclude" in excluded["protocol"]
    for name in ("bbam", "instances_fully_supervised"):
        report = read_json(work / "eval" / f"{name}_instance.json")
        assert set(report) >= {"AP25", "AP50", "AP70", "AP75", "mAP"} and report["images"] == 4
        assert report["instances"] == sum(len(open_boxes) for open_boxes in _val_boxes(root))
    assert main(args) == 0  # a rerun finds every stage done


def _val_boxes(root: Path) -> list:
    from wsss.data import open_dataset

    val = open_dataset(root, "val")
    return [val.boxes(image_id)[0] for image_id in val.ids]
