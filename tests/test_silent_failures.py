"""The silent or confusing failures of issue 15, each with its fix: a one-line error naming what
is wrong (exit status 2 from the CLI, no traceback) or the behaviour that was missing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_voc

from wsss.cli import main
from wsss.errors import DataError
from wsss.models.cam_net import CamNet

torch.set_num_threads(1)

CLASSES = ["background", "cat", "dog", "bird"]


def one_error_line(capsys) -> str:
    """The CLI's stderr, which must be exactly one ``wsss: error:`` line; returns its text."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsss: error: "), lines
    return lines[0][len("wsss: error: "):]


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "voc", classes=CLASSES)


def save_classifier(path: Path, seed: int, classes=CLASSES) -> Path:
    torch.manual_seed(seed)
    CamNet("resnet18_w16", len(classes) - 1, freeze_bn=False, frozen_stages=0, classes=list(classes)).save(path)
    return path


# ------------------------------------------------------------------ map folders record what made them
def test_make_cam_resumes_only_a_folder_made_the_same_way(voc, tmp_path, capsys):
    first, second = save_classifier(tmp_path / "a.pt", 0), save_classifier(tmp_path / "b.pt", 1)
    out = tmp_path / "maps"

    def make_cam(checkpoint, *extra):
        return main(["make-cam", "--data", str(voc.root), "--checkpoint", str(checkpoint), "--out", str(out),
                     "--device", "cpu", "--no-progress", "--scales", "1.0", *extra])

    assert make_cam(first) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    assert len(before) == len(voc.ids) and (out / "manifest.json").is_file()
    capsys.readouterr()
    assert make_cam(first) == 0  # the same checkpoint and settings: resumed (nothing to do)
    for refused in ((second,), (first, "--scales", "1.0", "0.5"), (first, "--no-flip")):
        assert make_cam(*refused) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"{out}: holds 4 map files made otherwise (")
        assert line.endswith("pass another --out, or --overwrite to delete them and start over")
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before  # the old maps are untouched
    assert make_cam(second, "--overwrite") == 0
    after = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    assert after.keys() == before.keys() and after != before
    assert make_cam(second) == 0  # and now this one resumes


def test_a_map_folder_of_unknown_origin_is_refused(voc, tmp_path, capsys):
    checkpoint = save_classifier(tmp_path / "a.pt", 0)
    out = tmp_path / "maps"
    out.mkdir()
    (out / f"{voc.ids[0]}.npz").write_bytes(b"maps from an older wsss")
    args = ["make-cam", "--data", str(voc.root), "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--no-progress", "--scales", "1.0"]
    assert main(args) == 2
    assert one_error_line(capsys).startswith(f"{out}: holds 1 map files of unknown origin (no manifest.json)")


def test_make_advcam_refuses_maps_of_other_iterations_or_of_make_cam(voc, tmp_path, capsys):
    checkpoint = save_classifier(tmp_path / "a.pt", 0)
    out = tmp_path / "maps"
    common = ["--data", str(voc.root), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu",
              "--no-progress", "--scales", "1.0"]
    assert main(["make-advcam", *common, "--iterations", "1"]) == 0
    capsys.readouterr()
    assert main(["make-advcam", *common, "--iterations", "1", "--images-per-batch", "2"]) == 0  # speed only
    assert main(["make-advcam", *common, "--iterations", "2"]) == 2
    assert "(iterations 1 -> 2)" in one_error_line(capsys)
    assert main(["make-cam", *common]) == 2
    assert "(maps advcam -> cam)" in one_error_line(capsys)


# ------------------------------------------------------------------ outputs checked before the work
TRAIN_FAST = ["--recipe", "synth", "--device", "cpu", "--no-progress", "--set", "epochs=1", "--set", "batch_size=2",
              "--set", "crop_size=32", "--set", "resize_long=null"]


def test_unwritable_outputs_are_refused_before_any_work(voc, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    import wsss.training.classifier as classifier

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    assert main(["train-classifier", "--data", str(voc.root), "--out", str(blocker / "cam.pt"), *TRAIN_FAST]) == 2
    assert one_error_line(capsys) == f"{blocker}: the folder of the checkpoint is a file, not a folder"
    checkpoint = save_classifier(tmp_path / "a.pt", 0)
    for command in ("make-cam", "make-advcam"):
        assert main([command, "--data", str(voc.root), "--checkpoint", str(checkpoint), "--out",
                     str(blocker / "maps"), "--device", "cpu"]) == 2
        assert one_error_line(capsys).startswith(f"{blocker / 'maps'}: cannot write to the output folder (")
    assert main(["synth", str(blocker / "data"), "--train", "2", "--val", "1", "--ood", "1", "--size", "32"]) == 2
    assert one_error_line(capsys).startswith(f"{blocker / 'data'}: cannot write to the dataset folder (")
    assert main(["eval", "--data", str(voc.root), "--pred", str(tmp_path), "--json", str(blocker / "r.json")]) == 2
    assert one_error_line(capsys) == f"{blocker}: the folder of the --json file is a file, not a folder"
    assert main(["demo", "--out", str(blocker), "--quick"]) == 2
    assert one_error_line(capsys) == f"{blocker}: the output folder is a file, not a folder"


def _cli_without_permission_override(argv: list[str]):
    """``python -m wsss ARGV`` in a process that obeys file permissions (root drops its override
    with ``setpriv``); None where that cannot be arranged."""
    import os
    import shutil
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            return None
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([*prefix, sys.executable, "-m", "wsss", *argv], capture_output=True, text=True, env=env)


def test_a_read_only_output_folder_is_named_before_any_work(voc, tmp_path):
    checkpoint = save_classifier(tmp_path / "a.pt", 0)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for argv, folder in (
            (["train-classifier", "--data", str(voc.root), "--out", str(read_only / "cam.pt"), *TRAIN_FAST],
             f"{read_only}: cannot write to the folder of the checkpoint (Permission denied)"),
            (["make-cam", "--data", str(voc.root), "--checkpoint", str(checkpoint), "--out", str(read_only / "maps"),
              "--device", "cpu"], f"{read_only / 'maps'}: cannot write to the output folder (Permission denied)"),
        ):
            done = _cli_without_permission_override(argv)
            if done is None:
                pytest.skip("root without setpriv ignores folder permissions")
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip() == f"wsss: error: {folder}"
    finally:
        read_only.chmod(0o755)


# ------------------------------------------------------------------ settings in range, finite losses
@pytest.mark.parametrize("setting, message", [
    ("classifier.epochs=0", "classifier.epochs must be at least 1, got 0"),
    ("classifier.batch_size=-2", "classifier.batch_size must be at least 1, got -2"),
    ("classifier.crop_size=0", "classifier.crop_size must be at least 1, got 0"),
    ("classifier.lr=0", "classifier.lr must be positive, got 0.0"),
    ("irn.batch_size=0", "irn.batch_size must be at least 1, got 0"),
    ("irn.crop_size=-1", "irn.crop_size must be at least 1, got -1"),
    ("segmentation.crop_size=0", "segmentation training: crop_size must be >= 1 (got 0)"),
    ("classifier.lr=.nan", "classifier.lr: expected a finite number, got nan"),
    ("wood.ood_weight=.inf", "wood.ood_weight: expected a finite number, got inf"),
    ("random_walk.beta=-.inf", "random_walk.beta: expected a finite number, got -inf"),
    ("random_walk.radius=0", "random_walk.radius must be at least 1, got 0"),
    ("ir_labels.fg_threshold=1.5", "ir_labels.fg_threshold must be at most 1, got 1.5"),
    ("cam.scales=[1.0, 0]", "cam.scales must be positive, got [1.0, 0.0]"),
    ("seed_eval.fixed_threshold=2", "seed_eval.fixed_threshold must be at most 1, got 2.0"),
    ("seed_eval.sweep=0.5:1.5:0.5",
     "seed_eval.sweep: invalid threshold list '0.5:1.5:0.5': thresholds must lie in [0, 1]"),
])
def test_config_refuses_settings_out_of_range(capsys, setting, message):
    assert main(["config", "synth/demo", "--set", setting]) == 2
    assert one_error_line(capsys).startswith(message)


def test_train_classifier_checks_ranges_and_stops_on_a_diverging_loss(voc, tmp_path, capsys):
    out = tmp_path / "cam.pt"
    assert main(["train-classifier", "--data", str(voc.root), "--out", str(out), *TRAIN_FAST, "--set", "lr=.nan"]) == 2
    assert one_error_line(capsys).startswith("classifier.lr: expected a finite number, got nan")
    assert main(["train-classifier", "--data", str(voc.root), "--out", str(out), *TRAIN_FAST,
                 "--set", "classifier.epochs=0"]) == 2  # the sectioned key of 'wsss run' works too
    assert one_error_line(capsys) == "classifier.epochs must be at least 1, got 0"
    assert main(["train-classifier", "--data", str(voc.root), "--out", str(out), *TRAIN_FAST,
                 "--set", "classifier.lr=1e30"]) == 2
    assert one_error_line(capsys).startswith("classifier: the loss became nan at iteration ")
    assert not out.exists()


def test_nan_weights_after_the_last_update_stop_training():
    from wsss.training.engine import LossNotFinite, ShuffledLoader, TrainingEngine, poly_sgd

    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = poly_sgd([(model.parameters(), 1.0)], 0.1, total_steps=1)
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=1, steps_per_epoch=1, device="cpu",
                            progress=False, desc="toy")
    data = torch.utils.data.DataLoader(torch.ones(1, 2), batch_size=1, generator=torch.Generator())

    def step(batch):  # a finite loss (0) whose gradient is NaN
        return _NanGradient.apply(model(batch).sum())

    with pytest.raises(LossNotFinite, match=r"toy: the weights became NaN or infinite \(weight\) at iteration 1"):
        engine.fit(ShuffledLoader(data), step)


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value):
        return value * 0.0

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


# ------------------------------------------------------------------ a recipe: settings alone, then every input
# the 4-image dataset holds fewer images than the recipe's batches, itself a problem (tested in test_dry_run.py)
SMALL_BATCHES = ("--set", "classifier.batch_size=2", "--set", "irn.batch_size=2", "--set", "segmentation.batch_size=2")


def test_config_prints_a_recipe_that_names_no_data_yet(capsys):
    assert main(["config", "synth/demo"]) == 0
    assert "methods:\n- cam\n" in capsys.readouterr().out


def test_run_lists_every_problem_with_its_inputs_before_the_first_stage(voc, tmp_path, capsys):
    (voc.root / "JPEGImages" / f"{voc.ids[1]}.jpg").unlink()
    work = tmp_path / "work"
    code = main(["run", "synth/demo", "--work", str(work), "--set", f"data.root={voc.root}",
                 "--set", "data.val_split=train", "--set", "classifier.weights=missing.pth",
                 "--set", f"data.ood_list={tmp_path / 'ood.txt'}", *SMALL_BATCHES,
                 "--set", "methods=[cam, advcam, rib, wood, advcam_wood]"])  # the box methods' checks: test_box_input
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "wsss: error: 3 problems with the recipe's inputs (nothing was run):"
    assert lines[1:] == [
        f"  {voc.root / 'JPEGImages'}: 1 of the 4 images of split 'train' (classifier training, seeds, validation) "
        f"are missing, e.g. '{voc.ids[1]}'",
        "  missing.pth: weights file named by classifier.weights not found (wsss never downloads weights: "
        "give a local file)",
        f"  {tmp_path / 'ood.txt'}: OoD image list not found",
    ]
    assert not work.exists() or not any(work.iterdir())  # not even config.yaml


def test_run_refuses_a_finished_classifier_of_other_classes(voc, tmp_path):
    from wsss.methods import Context
    from wsss.pipeline.recipes import build_stages, check_inputs, load_recipe
    from wsss.pipeline.runner import chain_keys
    from wsss.io import write_json

    recipe = load_recipe("synth/demo", [f"data.root={voc.root}", "data.val_split=train", "methods=[cam]",
                                        *SMALL_BATCHES[1::2]])
    ctx = Context(recipe, tmp_path / "work")
    stages = build_stages(ctx)
    assert check_inputs(ctx, stages) == []
    save_classifier(ctx.classifier_path, 0, ["background", "cat", "dog"])
    assert check_inputs(ctx, stages) == []  # not finished: the run retrains it
    write_json(ctx.workdir / ".stages" / "classifier.json", {"key": chain_keys(stages)["classifier"], "state": "done"})
    (problem,) = check_inputs(ctx, stages)
    assert str(problem) == (f"{ctx.classifier_path}: the finished classifier classifies 2 foreground classes but the "
                            "dataset has 3 (classes.txt changed?); use another --work, or delete the checkpoint to "
                            "train again")


# ------------------------------------------------------------------ garbage checkpoints
class _FromElsewhere:
    """A class no safe load knows: a pickle of it stands for one "from elsewhere"."""


def _garbage_files(folder: Path) -> list[Path]:
    folder.mkdir()
    random_bytes = folder / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = folder / "truncated.pt"
    save_classifier(truncated, 0)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    foreign = folder / "foreign.pt"
    torch.save({"model": _FromElsewhere()}, foreign)
    legacy = folder / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": "x"}))
    return [random_bytes, truncated, foreign, legacy]


def test_every_checkpoint_reader_calls_garbage_unreadable_and_never_suggests_an_unsafe_load(tmp_path, capsys):
    from wsss.models.cam_net import load_cam_net
    from wsss.models.irn import load_irn
    from wsss.models.weights import read_state_dict
    from wsss.segmentation.train import load_trained_model
    from wsss.training.engine import read_checkpoint

    readers = {
        "wsss checkpoint": load_cam_net,
        "wsss IRN checkpoint": load_irn,
        "wsss segmentation model": lambda path: load_trained_model(path, num_classes=4),
        "wsss classifier training checkpoint": lambda path: read_checkpoint(
            path, ("wsss-classifier-checkpoint",), "classifier training checkpoint"),
        "weights file": read_state_dict,
    }
    for path in _garbage_files(tmp_path / "garbage"):
        for what, read in readers.items():
            with pytest.raises(DataError) as caught:
                read(path)
            assert str(caught.value) == (f"{path}: not a readable {what} (corrupt, truncated, or a pickle "
                                         "from elsewhere)")
    voc = make_voc(tmp_path / "voc", classes=CLASSES)
    assert main(["make-cam", "--data", str(voc.root), "--checkpoint", str(tmp_path / "garbage" / "random.pt"),
                 "--out", str(tmp_path / "maps"), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert line.endswith("random.pt: not a readable wsss checkpoint (corrupt, truncated, or a pickle from elsewhere)")
    assert "weights_only" not in line


# ------------------------------------------------------------------ check-data: every problem, then fail
def test_check_data_lists_every_problem_then_fails(tmp_path, capsys):
    ids = [f"2007_{i:06d}" for i in range(24)]
    voc = make_voc(tmp_path / "voc", ids=ids, classes=CLASSES)
    for image_id in ids[:2]:  # two truncated images
        path = voc.root / "JPEGImages" / f"{image_id}.jpg"
        path.write_bytes(path.read_bytes()[:100])
    assert main(["check-data", "--data", str(voc.root)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"wsss: error: 2 problems in {voc.root} split train:"
    assert [line.split(": ")[0] for line in lines[1:]] == [
        f"  {voc.root / 'JPEGImages' / ids[0]}.jpg", f"  {voc.root / 'JPEGImages' / ids[1]}.jpg"]
    for image_id in ids:  # every mask with a label above K: 24 problems, 20 listed
        mask = voc.mask(image_id)
        mask[0, 0] = 9
        from helpers import write_palette_png

        write_palette_png(voc.root / "SegmentationClass" / f"{image_id}.png", mask)
    assert main(["check-data", "--data", str(voc.root)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"wsss: error: 26 problems in {voc.root} split train:"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  and 6 more"
    assert lines[4].endswith(f"{ids[1]}.png: label value 9 is above K=3 (allowed: 0..3 and 255 = ignore)")


# ------------------------------------------------------------------ small gaps
def test_synth_refuses_an_empty_train_split(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "data"), "--train", "0", "--val", "2", "--ood", "1", "--size", "32"]) == 2
    assert one_error_line(capsys) == "synth config: train must be at least 1 (got 0)"
    assert not (tmp_path / "data").exists()


def test_eval_thresholds_lie_in_zero_one(voc, tmp_path, capsys):
    for threshold in ("2", "-0.1", "nan"):
        assert main(["eval", "--data", str(voc.root), "--pred", str(tmp_path), "--threshold", threshold]) == 2
        assert one_error_line(capsys).startswith(f"--threshold must be in [0, 1] (maps peak at 1), got {threshold}")
    assert main(["eval", "--data", str(voc.root), "--pred", str(tmp_path), "--sweep", "0.5:1.5:0.5"]) == 2
    assert "thresholds must lie in [0, 1]" in one_error_line(capsys)


def test_verbose_goes_before_or_after_the_command(capsys):
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for argv, expected in ((["config", "--list", "-vv"], logging.DEBUG),
                               (["-v", "config", "-v", "--list"], logging.DEBUG),  # the counts add up
                               (["-vv", "config", "--list"], logging.DEBUG),
                               (["config", "--list"], logging.INFO)):
            root.handlers.clear()  # basicConfig sets the level only on a root without handlers
            assert main(argv) == 0
            assert root.level == expected, argv
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "synth/demo" in capsys.readouterr().out


def test_config_lists_the_packaged_recipes(capsys):
    from wsss.config import packaged_recipes

    assert main(["config", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == packaged_recipes()
    described = dict(line.split(None, 1) for line in lines)
    assert described["synth/demo"].startswith("The demo on the generated benchmark")
    assert "wsss config --list" in (Path(__file__).parents[1] / "README.md").read_text()


def test_files_written_by_a_command_follow_the_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        assert main(["synth", str(tmp_path / "data"), "--train", "2", "--val", "1", "--ood", "1", "--size", "32",
                     "--no-progress"]) == 0
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert modes == {0o644}


def test_sweep_plot_title_is_short_and_near_equal_optima_labels_stack(tmp_path, monkeypatch):
    from wsss.evaluation.run import split_label
    from wsss.viz.plots import label_rows, plot_sweep

    assert split_label("/very/long/path/to/demo_out/seed_split.txt") == "split seed_split"
    assert split_label("train") == "split train"
    # three optima within a label's size of each other stack in rows 0, 1, 2 from the lowest up;
    # a far one keeps row 0
    rows = label_rows([(0.25, 50.6), (0.25, 50.6), (0.26, 50.4), (0.60, 30.0)], 0.79, 40.0)
    assert rows == [1, 2, 0, 0]
    thresholds = np.linspace(0.01, 0.8, 80)
    curve = np.exp(-((thresholds - 0.25) ** 2) / 0.02) * 0.5
    path = plot_sweep({"cam": (thresholds, curve), "advcam": (thresholds, curve)}, tmp_path / "sweep.png",
                      title="a title " * 20)
    assert path.stat().st_size > 0


def test_run_stops_on_a_diverging_loss_with_one_line(voc, tmp_path, capsys):
    code = main(["run", "synth/demo", "--work", str(tmp_path / "work"), "--set", f"data.root={voc.root}",
                 "--set", "data.val_split=train", "--set", "methods=[cam]", "--set", "until=seeds",
                 "--set", "runtime.progress=false", "--set", "classifier.epochs=2", "--set", "classifier.batch_size=2",
                 "--set", "classifier.crop_size=32", "--set", "classifier.resize_long=null",
                 "--set", "classifier.lr=1e30"])
    assert code == 2
    assert one_error_line(capsys).startswith("classifier: the loss became nan at iteration ")
    assert not (tmp_path / "work" / "classifier.pt").exists()
