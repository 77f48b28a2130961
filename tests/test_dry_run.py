"""The packaged recipes load and check out against a generated VOC-layout folder, and
``wsss run RECIPE --dry-run`` plans a run or lists every problem with its inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from wsss.cli import main
from wsss.config import packaged_recipes
from wsss.methods import Context
from wsss.pipeline.plan import dry_run
from wsss.pipeline.recipes import build_stages, check_inputs, load_recipe
from wsss.pipeline.runner import chain_keys

RESNET50 = "weights/resnet50-19c8e357.pth"
RESNET101 = "weights/resnet101-5d3b4d8f.pth"
VGG16 = "weights/vgg16-397923af.pth"


def write_weights(path: Path, build) -> Path:
    """A state dict in torchvision's format for the module ``build()`` makes: the right names and
    shapes, every tensor a view of one zero (so the file is a few hundred KB, not 100 MB)."""
    with torch.device("meta"):
        module = build()
    state = {key: torch.zeros(1).expand(value.shape) if value.ndim else torch.zeros(())
             for key, value in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A folder holding ``weights/`` with the three files the packaged recipes name."""
    from wsss.models.backbones import create_backbone
    from wsss.models.deeplab import VGG16LargeFOV

    folder = tmp_path_factory.mktemp("weights")
    write_weights(folder / RESNET50, lambda: create_backbone("resnet50"))
    write_weights(folder / RESNET101, lambda: create_backbone("resnet101"))
    write_weights(folder / VGG16, lambda: VGG16LargeFOV(fc_dilation=1))
    return folder


@pytest.fixture(scope="module")
def synth_voc(tmp_path_factory) -> Path:
    """``wsss synth`` with enough images for the recipes' batches (classifier 16, IRN 32, BANA 20)
    and OoD images for W-OoD's 50 prototypes, plus VOC's ``train_aug`` split (= train here)."""
    root = tmp_path_factory.mktemp("synth") / "voc"
    assert main(["synth", str(root), "--train", "40", "--val", "4", "--ood", "52", "--no-progress"]) == 0
    splits = root / "ImageSets" / "Segmentation"
    shutil.copy(splits / "train.txt", splits / "train_aug.txt")
    return root


def overrides_for(name: str, root: Path) -> list[str]:
    """What a run of packaged recipe ``name`` on the generated folder sets."""
    settings = [f"data.root={root}"]
    if name.startswith("coco/"):  # its splits are COCO JSON files: the generated folder's instead
        settings += ["data.train_split=train_aug", "data.seed_split=train_aug", "data.eval_split=train",
                     "data.val_split=val"]
    if name.startswith("synth/") or "wood" in name:
        settings.append(f"data.ood_list={root / 'ood' / 'ood.txt'}")
    return settings


@pytest.mark.parametrize("name", packaged_recipes())
def test_every_packaged_recipe_loads_and_its_inputs_check_out(name, synth_voc, weights_dir, monkeypatch):
    monkeypatch.chdir(weights_dir)  # the recipes name weights/<torchvision file>
    recipe = load_recipe(name, overrides_for(name, synth_voc))
    ctx = Context(recipe, weights_dir / "work" / name.replace("/", "_"))
    stages = build_stages(ctx)
    text, problems = dry_run(ctx, stages, name)
    assert [str(problem) for problem in problems] == []
    assert text.endswith("the same command without --dry-run runs these stages")
    assert not ctx.workdir.exists()  # a dry run makes nothing


def test_the_voc_recipes_reproduce_the_published_computation():
    advcam, rib = load_recipe("voc/advcam"), load_recipe("voc/rib")
    assert advcam.advcam.reference_scale_weight and advcam.classifier.reference_momentum_quirk
    assert rib.rib.reference_explode_accumulation and rib.rib.reference_momentum_quirk
    assert (advcam.data.seed_split, advcam.data.eval_split) == ("train_aug", "train")
    assert advcam.seed_eval.sweep == "0.15:0.34:0.01" and rib.segmentation.lr == 2.0e-4
    coco = load_recipe("coco/rib")
    assert (coco.rib.lr, coco.rib.batch_size, coco.rib.gndrp_class_limit, coco.random_walk.bg_threshold) == (
        5e-6, 15, 20, 0.22)


def run_dry(root: Path, work: Path, capsys, *settings: str) -> tuple[int, str, list[str]]:
    # the repository's path of the packaged recipe, from a folder that has no configs/
    code = main(["run", "configs/voc/advcam.yaml", "--work", str(work), "--set", f"data.root={root}", *settings,
                 "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_dry_run_of_the_advcam_recipe_on_a_generated_voc_folder_prints_the_plan(synth_voc, weights_dir, tmp_path,
                                                                              monkeypatch, capsys):
    from wsss.data.voc import VOCDataset

    monkeypatch.chdir(weights_dir)
    work = tmp_path / "work"
    code, out, err = run_dry(synth_voc, work, capsys)
    assert (code, err) == (0, [])
    lines = out.splitlines()
    assert lines[0] == "wsss run configs/voc/advcam.yaml --dry-run: nothing is run"
    assert "  split 'train_aug' (classifier training, seeds): 40 images, 40 masks, 40 with image labels" in lines
    assert "  split 'train' (scores of seeds and pseudo masks): 40 images, 40 masks, 40 with image labels" in lines
    assert f"  classifier.weights: {RESNET50}: 265 of the network's 265 tensors" in lines
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and "  to run  " in line}
    assert list(rows) == [stage.name for stage in build_stages(Context(
        load_recipe("voc/advcam", [f"data.root={synth_voc}"]), work))]
    # IRN's recipe: 40 // 16 = 2 updates an epoch, 5 epochs
    assert "5 epochs x 2 = 10 updates, each a batch of 16 512-px crops" in rows["classifier"]
    # AdvCAM: one trajectory per labelled class, 13 + 3 x 27 = 94 steps each
    dataset = VOCDataset(synth_voc, "train_aug")
    trajectories = sum(len(dataset.image_labels(i)) for i in dataset.ids)
    assert f"{trajectories} class trajectories x 94 climbing steps = {trajectories * 94:,} forward" in rows["advcam.maps"]
    assert rows["advcam.maps"].split()[1] == "40" and rows["advcam.predict"].split()[1] == "4"
    assert "30,000 updates of deeplab_v2_resnet101, each a batch of 10 321-px crops" in rows["advcam.seg"]
    assert "(CPU, preset irn)" in rows["advcam.ir_labels"]
    assert not work.exists()

    # a finished stage of another configuration: the plan says the run would clear and redo it
    ctx = Context(load_recipe("voc/advcam", [f"data.root={synth_voc}"]), work)
    (work / ".stages").mkdir(parents=True)
    (work / ".stages" / "classifier.json").write_text('{"key": "other", "state": "done"}')
    stages = build_stages(ctx)
    (work / ".stages" / "advcam.maps.json").write_text(
        f'{{"key": "{chain_keys(stages)["advcam.maps"]}", "state": "done"}}')
    code, out, err = run_dry(synth_voc, work, capsys)
    assert code == 0
    assert any(line.startswith("  classifier ") and "done with other settings: cleared and run again" in line
               for line in out.splitlines())
    assert any(line.startswith("  advcam.maps ") and "done: skipped" in line for line in out.splitlines())
    assert f"warning: 1 stages in {work} were finished with other settings or data" in out


def test_dry_run_on_a_broken_layout_lists_every_problem(synth_voc, weights_dir, tmp_path, monkeypatch, capsys):
    root = tmp_path / "voc"
    shutil.copytree(synth_voc, root)
    weights = tmp_path / "weights"
    shutil.copytree(weights_dir / "weights", weights)
    monkeypatch.chdir(tmp_path)
    (weights / Path(RESNET101).name).unlink()                    # a missing weights file
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()   # a missing split file
    ids = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    for image_id in ids[:2]:                                     # two missing images
        (root / "JPEGImages" / f"{image_id}.jpg").unlink()
    corrupt = root / "SegmentationClass" / f"{ids[5]}.png"       # a corrupt label PNG
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    work = tmp_path / "work"

    code, out, err = run_dry(root, work, capsys)
    assert code == 2
    assert err[0] == "wsss: error: 5 problems with the recipe's inputs (dry run: nothing was run):"
    images = root / "JPEGImages"
    assert [line.strip() for line in err[1:]] == [
        f"{images}: 2 of the 40 images of split 'train_aug' (classifier training, seeds) are missing, e.g. {ids[0]!r}",
        f"{corrupt}: corrupt or unreadable image (Truncated File Read)",
        # train.txt lists the same images (here as on VOC, where train is part of train_aug)
        f"{images}: 2 of the 40 images of split 'train' (scores of seeds and pseudo masks) are missing, e.g. "
        f"{ids[0]!r}",
        f"{root / 'ImageSets' / 'Segmentation' / 'val.txt'}: split 'val' not found; available splits: train, "
        "train_aug, trainval",
        f"{RESNET101}: weights file named by segmentation.weights not found (wsss never downloads weights: give a "
        "local file)",
    ]
    assert "stages (" in out  # the plan is printed all the same
    assert not work.exists()


def test_weights_for_another_network_and_batches_larger_than_the_split_are_problems(voc_root, weights_dir,
                                                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(weights_dir)
    wrong = write_weights(tmp_path / "resnet18.pth", lambda: __import__(
        "wsss.models.backbones", fromlist=["create_backbone"]).create_backbone("resnet18"))
    recipe = load_recipe("voc/cam", [f"data.root={voc_root}", "data.train_split=train", "data.seed_split=train",
                                      "data.eval_split=null", "data.val_split=train", f"classifier.weights={wrong}"])
    ctx = Context(recipe, tmp_path / "work")
    problems = [str(problem) for problem in check_inputs(ctx, build_stages(ctx))]
    assert problems[0].startswith(f"{wrong}: weights do not fit backbone 'resnet50': ")
    assert problems[1:] == [
        "stage classifier: 4 training images, fewer than one batch of 16 (classifier.batch_size): training would "
        "make no update",
        "stage cam.irn: 4 training images, fewer than one batch of 32 (irn.batch_size): training would make no "
        "update",
        "stage cam.seg: 4 training images, fewer than one batch of 10 (segmentation.batch_size): training would "
        "make no update",
    ]


def test_eval_split_scores_the_seeds_and_must_lie_in_the_seed_split(synth_voc, tmp_path):
    recipe = load_recipe("synth/demo", [f"data.root={synth_voc}", "methods=[cam]", "data.seed_split=train_aug",
                                        "data.eval_split=val"])
    ctx = Context(recipe, tmp_path / "work")
    stages = {stage.name: stage for stage in build_stages(ctx)}
    assert stages["cam.seed_eval"].depends_on["split"] == "val"
    assert stages["cam.pseudo_eval"].depends_on["split"] == "val"
    assert stages["cam.seg"].depends_on["train"] == "train_aug"
    (problem,) = check_inputs(ctx, list(stages.values()))
    assert str(problem).startswith("4 of the 4 images of eval_split 'val' are not in seed_split 'train_aug'")


def test_irn_starts_from_irn_weights_when_set_else_from_the_classifier(synth_voc, tmp_path, monkeypatch):
    import wsss.training.irn

    seen = []
    monkeypatch.setattr(wsss.training.irn, "train_irn", lambda *a, **k: seen.append(k["init_backbone_from"]))
    for setting in ([], ["irn.weights=weights/resnet50-19c8e357.pth"]):
        recipe = load_recipe("synth/demo", [f"data.root={synth_voc}", "methods=[cam]", *setting])
        ctx = Context(recipe, tmp_path / "work")
        {stage.name: stage for stage in build_stages(ctx)}["cam.irn"].run()
    assert seen == [ctx.classifier_path, None]


def test_many_problems_of_one_kind_in_a_split_are_one_line(synth_voc, tmp_path):
    from wsss.pipeline.recipes import inspect_inputs

    root = tmp_path / "voc"
    shutil.copytree(synth_voc, root)
    ids = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    for image_id in ids[:5]:
        (root / "SegmentationClass" / f"{image_id}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    recipe = load_recipe("synth/demo", [f"data.root={root}", "methods=[cam]", "data.train_split=train_aug",
                                        "data.seed_split=train_aug"])
    ctx = Context(recipe, tmp_path / "work")
    problems = [str(problem) for problem in inspect_inputs(ctx, build_stages(ctx), read=True).problems]
    assert problems == [f"5 files of split 'train_aug': corrupt or unreadable image (Truncated File Read), e.g. "
                        f"{root / 'SegmentationClass' / (ids[0] + '.png')}"]
