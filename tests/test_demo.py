"""End to end: the demo and `wsss run` on small generated data (slow: they train a network)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsss.cli import main
from wsss.data import synth

pytestmark = pytest.mark.slow


def test_demo_quick_writes_results_and_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    cam = results["methods"]["cam"]
    assert set(cam) >= {"seed_miou", "pseudo_miou", "final_miou", "seconds"}
    assert "fully_supervised" in results
    # a classifier trained for a few epochs still localises better than chance
    assert 10.0 < cam["seed_miou"] <= 100.0
    assert cam["seed_miou"] >= cam["seed_miou_label_free"]  # the oracle is an upper bound
    assert "cam" in printed and "oracle" in printed and "label-free" in printed
    assert (out / "seed_sweep.png").stat().st_size > 0
    assert (out / "seed_maps.png").stat().st_size > 0
    # Second run: every stage is skipped and the numbers are the same.
    maps_before = {p.name: p.stat().st_mtime_ns for p in (out / "work" / "maps" / "cam").iterdir()}
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["cam"]["seed_miou"] == cam["seed_miou"]
    maps_after = {p.name: p.stat().st_mtime_ns for p in (out / "work" / "maps" / "cam").iterdir()}
    assert maps_after == maps_before


def test_demo_on_an_existing_dataset_with_other_classes_and_size(tmp_path: Path) -> None:
    root = tmp_path / "other"
    synth.generate(root, synth.SynthConfig(seed=3, train=40, val=12, ood=6, size=96, classes=3),
                   progress=False)
    out = tmp_path / "demo"
    code = main(["demo", "--data", str(root), "--ood", str(root / "ood" / "ood.txt"), "--out", str(out),
                 "--set", "methods=[cam]", "--set", "classifier.epochs=1", "--set", "cam.scales=[1.0]",
                 "--set", "irn.epochs=1", "--set", "segmentation.epochs=1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["classes"] == (root / "classes.txt").read_text().split()
    assert len(results["dataset"]["classes"]) == 4
    assert not (out / "data").exists()  # nothing generated
    config = (out / "work" / "config.yaml").read_text()
    assert config.count("crop_size: 96") == 4  # classifier, RIB's other images, IRN, DeepLab: the image size
    assert results["methods"]["cam"]["final_miou"] is not None  # the whole chain ran
    assert results["fully_supervised"]["final_miou"] is not None
    report = (out / "report.md").read_text()  # the demo writes the report beside results.json
    assert f"| {results['methods']['cam']['final_miou']:.1f} |" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 5


def test_run_resumes_a_killed_extraction(tmp_path: Path) -> None:
    root = tmp_path / "data"
    synth.generate(root, synth.SynthConfig(seed=1, train=24, val=8, ood=4, size=64, classes=2),
                   progress=False)
    work = tmp_path / "work"
    args = ["run", "synth/demo", "--work", str(work), "--set", f"data.root={root}",
            "--set", "classifier.epochs=1", "--set", "classifier.crop_size=64",
            "--set", "classifier.resize_long=[56, 72]", "--set", "runtime.progress=false",
            "--set", "methods=[cam]", "--set", "until=seeds"]
    assert main(args) == 0
    store = work / "maps" / "cam"
    first = {p.name: np.load(p)["high_res"] for p in store.iterdir()}
    assert len(first) == 24
    # Simulate a run killed during extraction: drop some maps and mark the stage unfinished.
    for name in sorted(first)[:10]:
        (store / name).unlink()
    marker = work / ".stages" / "cam.maps.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "state": "running"}))
    survivors = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    assert main(args) == 0
    assert {p.name for p in store.iterdir()} == set(first)
    for name, mtime in survivors.items():  # finished images were not redone
        assert (store / name).stat().st_mtime_ns == mtime
    for name, maps in first.items():  # the redone ones are identical
        np.testing.assert_array_equal(np.load(store / name)["high_res"], maps)


def test_cli_help_lists_every_command() -> None:
    from wsss.cli import COMMANDS

    done = subprocess.run([sys.executable, "-m", "wsss", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in done.stdout
    for name in COMMANDS:  # every command builds its own parser
        sub = subprocess.run([sys.executable, "-m", "wsss", name, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, (name, sub.stderr)


def test_instance_rows_show_each_method_with_an_instance_network_beside_the_oracle(tmp_path: Path) -> None:
    from wsss.io import write_json
    from wsss.methods import INSTANCE_ORACLE, Context
    from wsss.pipeline.results import instance_summary, instance_table
    from wsss.pipeline.recipes import load_recipe

    ctx = Context(load_recipe("synth/demo", ["data.root=/nowhere"]), tmp_path)
    assert instance_summary(ctx, "bbam") is None
    write_json(ctx.eval_path("bbam", "instance"), {"AP25": 61.5, "AP50": 40.25, "AP70": 12.0, "AP75": None,
                                                   "mAP": 15.5, "images": 4})
    write_json(ctx.eval_path(INSTANCE_ORACLE, "instance"), {"AP25": 80.0, "AP50": 70.0, "AP70": 50.0,
                                                           "AP75": 45.0, "mAP": 40.0})
    results = {"methods": {"cam": {}, "bbam": {"instance": instance_summary(ctx, "bbam")}},
               "fully_supervised": {"instance": instance_summary(ctx, INSTANCE_ORACLE)}}
    lines = instance_table(results).splitlines()
    assert lines[0].split()[-5:] == ["AP25", "AP50", "AP70", "AP75", "mAP"]
    assert lines[2].split() == ["bbam", "61.5", "40.2", "12.0", "-", "15.5"]  # the cam row has no instances
    assert lines[3].startswith("fully supervised") and lines[3].split()[-1] == "40.0" and len(lines) == 4
    assert instance_table({"methods": {"cam": {}}, "fully_supervised": {}}) is None


@pytest.mark.slow
def test_run_with_two_jobs_gives_the_outputs_of_one_thread(tmp_path: Path) -> None:
    import torch

    root = tmp_path / "data"
    synth.generate(root, synth.SynthConfig(seed=2, train=24, val=8, ood=4, size=96, classes=2), progress=False)
    args = ["--set", f"data.root={root}", "--set", "classifier.epochs=1", "--set", "classifier.crop_size=96",
            "--set", "classifier.resize_long=[84, 108]", "--set", "irn.epochs=1", "--set", "irn.crop_size=96",
            "--set", "advcam.iterations=3", "--set", "runtime.progress=false",
            "--set", "methods=[cam, advcam]", "--set", "until=pseudo", "--no-report"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(["run", "synth/demo", "--work", str(tmp_path / "one"), *args]) == 0
        torch.set_num_threads(2)  # two workers of one thread each
        assert main(["run", "synth/demo", "--work", str(tmp_path / "two"), *args, "--set", "runtime.jobs=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    outputs = [p.relative_to(tmp_path / "one") for p in sorted((tmp_path / "one").rglob("*"))
               if p.is_file() and p.parts[len((tmp_path / "one").parts)] in ("maps", "ir_labels", "pseudo")]
    assert len(outputs) >= 4 * 24  # maps, IR labels and pseudo masks of both methods
    for path in outputs:
        assert (tmp_path / "two" / path).read_bytes() == (tmp_path / "one" / path).read_bytes(), path
    assert (tmp_path / "two" / "irn" / "cam.pt").is_file()
