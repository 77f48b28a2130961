"""The results table of `wsss run`, `wsss report` (HTML + Markdown) and `wsss overlay`, on a tiny
finished run (the session's ``finished_run``: CAM through every stage on 12 generated images)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.evaluation.semantic import SegmentationScores
from wsss.pipeline.report import build_report


def _eval(work: Path, name: str) -> dict:
    return json.loads((work / "eval" / f"{name}.json").read_text())


def _seed_results(work: Path) -> dict[str, dict]:
    """The seed evaluation's results by protocol kind (oracle, fixed, label-free)."""
    out = {}
    for result in _eval(work, "cam_seed")["results"]:
        kind = ("oracle" if result["threshold_uses_ground_truth"] else
                "label-free" if "label-free" in result["protocol"] else "fixed")
        out[kind] = result
    return out


def _expected_cam_cells(work: Path) -> list[str]:
    seeds = _seed_results(work)
    cells = [f"{seeds[k]['miou']:.1f} (t={seeds[k]['threshold']:.2f})" for k in ("oracle", "fixed", "label-free")]
    final, fully = _eval(work, "cam_final")["results"][0]["miou"], _eval(work, "fully_supervised_final")["results"][0]["miou"]
    return [*cells, f"{_eval(work, 'cam_pseudo')['results'][0]['miou']:.1f}", f"{final:.1f}",
            f"{100.0 * final / fully:.1f}"]


def _markdown_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell is ``first_cell``."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    assert rows, f"no Markdown row starting with {first_cell!r}"
    return rows


def _markdown_row(markdown: str, first_cell: str) -> list[str]:
    return _markdown_rows(markdown, first_cell)[0]


def test_run_ends_with_the_results_table_of_its_eval_files(finished_run) -> None:
    printed, work = finished_run.printed, finished_run.work
    header = next(line for line in printed.splitlines() if line.startswith("method "))
    for column in ("seed mIoU, oracle t", "seed mIoU, fixed t", "seed mIoU, label-free t", "pseudo mIoU",
                   "final mIoU"):
        assert column in header
    row = next(line for line in printed.splitlines() if line.startswith("cam "))
    for cell in _expected_cam_cells(work):
        assert cell in row, (cell, row)
    fully = next(line for line in printed.splitlines() if line.startswith("fully supervised "))
    assert f"{_eval(work, 'fully_supervised_final')['results'][0]['miou']:.1f}" in fully
    assert "Oracle t: chosen on" in printed  # the protocols are said beneath the numbers
    assert (work / "report.html").is_file() and (work / "report.md").is_file()  # run writes the report


def test_report_markdown_holds_the_numbers_of_the_eval_files(finished_run, tmp_path: Path) -> None:
    work = finished_run.work
    html_path, md_path = build_report(work, tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and md_path.parent == html_path.parent
    markdown = md_path.read_text()
    assert _markdown_row(markdown, "cam")[1:7] == _expected_cam_cells(work)
    classes = (finished_run.data / "classes.txt").read_text().split()
    header = _markdown_row(markdown, "")  # the per-class tables: background first, mIoU last
    assert header[1:] == [*classes, "mIoU"]
    oracle = _seed_results(work)["oracle"]
    row = _markdown_row(markdown, "cam, oracle")
    assert row[1:] == [f"{oracle['per_class'][c]['iou']:.1f}" for c in classes] + [f"{oracle['miou']:.1f}"]
    final = _eval(work, "fully_supervised_final")["results"][0]
    results_row, per_class_row = _markdown_rows(markdown, "fully supervised")
    assert results_row[5] == per_class_row[-1] == f"{final['miou']:.1f}"
    assert "```yaml\n" in markdown and "methods:\n- cam" in markdown  # the resolved config
    assert _markdown_row(markdown, "cam.final_eval")[1] == "done"  # stage timings
    assert "Note:" not in markdown  # nothing is missing from a finished run


def test_report_html_is_one_file_with_its_pictures_inside(finished_run, tmp_path: Path) -> None:
    html_path, md_path = build_report(finished_run.work, tmp_path)
    page = html_path.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    # the sweep, the classifier's, IRN's and two DeepLab training curves, two picture grids
    assert len(sources) == 7
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        picture = Image.open(BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert picture.format == "PNG" and min(picture.size) > 50
    assert "<script" not in page and "<link" not in page and "http" not in page.replace("http-equiv", "")
    markdown = md_path.read_text()
    assert page.count("<table>") == markdown.count("|---|") == 5  # results, 3 per-class, stages
    grid = sources[-2]  # the method grid (seed split); the last is the predictions
    cells = np.asarray(Image.open(BytesIO(base64.b64decode(grid.split(",", 1)[1]))).convert("RGB"))
    assert cells.shape[1] > 5 * 80  # image, ground truth, map, IR labels, pseudo mask of 80 px images


def test_report_leaves_out_what_did_not_run_with_a_note(finished_run, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished_run.work, work)
    (work / "eval" / "cam_final.json").unlink()
    shutil.rmtree(work / "predictions" / "cam")
    shutil.rmtree(work / "seg")
    (work / ".stages" / "cam.final_eval.json").unlink()
    assert main(["report", str(work)]) == 0
    markdown = (work / "report.md").read_text()
    assert _markdown_row(markdown, "cam")[5:7] == ["-", "-"]  # final mIoU, % of FS
    assert "cam: no final segmentation evaluation (stage cam.final_eval did not run" in markdown
    assert _markdown_row(markdown, "cam.final_eval")[1] == "not run"
    assert _markdown_row(markdown, "fully supervised")  # what did run is still there
    page = (work / "report.html").read_text()
    assert page.count("data:image/png") == 5  # no DeepLab curves; predictions of fully_supervised only


def test_report_of_a_run_whose_dataset_moved_or_config_is_gone(finished_run, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished_run.work, work)
    config = (work / "config.yaml").read_text()
    (work / "config.yaml").write_text(config.replace(str(finished_run.data), str(tmp_path / "moved")))
    build_report(work)
    assert "the seed split could not be opened" in (work / "report.md").read_text()
    assert main(["report", str(work), "--data", str(finished_run.data), "--images", "2"]) == 0
    markdown = (work / "report.md").read_text()
    assert "could not be opened" not in markdown and markdown.count("*Picture in report.html") == 7
    (work / "config.yaml").unlink()
    build_report(work)
    markdown = (work / "report.md").read_text()
    assert "no config.yaml in the work folder" in markdown
    assert _markdown_row(markdown, "cam")[1:7] == _expected_cam_cells(work)  # methods found in eval/


def test_report_refuses_a_folder_that_is_no_run(finished_run, tmp_path: Path, capsys) -> None:
    assert main(["report", str(finished_run.data)]) == 2
    assert capsys.readouterr().err.strip() == f"wsss: error: {finished_run.data}: not a wsss work folder " \
                                              "(no config.yaml, .stages/ or eval/)"
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "work folder not found" in capsys.readouterr().err


def test_per_class_table_turns_for_many_classes() -> None:
    from wsss.pipeline.report import CLASSES_AS_COLUMNS, _per_class_table

    classes = tuple(f"c{i}" for i in range(CLASSES_AS_COLUMNS + 2))
    confusion = np.diag(np.arange(1, len(classes) + 1))
    confusion[0, 1] = 1  # class 0: IoU 1/2; class 1: 2/3
    scores = SegmentationScores(confusion=confusion, classes=classes, protocol="p", name="m")
    table = _per_class_table([scores], "caption")
    assert table.header == ["class", "m"]
    assert table.rows[0] == ["c0", "50.0"] and table.rows[1] == ["c1", "66.7"]
    assert table.rows[-1][0] == "mIoU" and len(table.rows) == len(classes) + 1
    small = SegmentationScores(confusion=np.eye(3, dtype=np.int64), classes=("a", "b", "c"), protocol="p", name="m")
    assert _per_class_table([small], "caption").header == ["", "a", "b", "c", "mIoU"]


def test_overlay_draws_maps_and_label_maps(finished_run, tmp_path: Path, capsys) -> None:
    work, data = finished_run.work, finished_run.data
    assert main(["overlay", str(work / "maps" / "cam"), "--data", str(data), "--out", str(tmp_path / "maps"),
                 "--limit", "2", "--no-progress"]) == 0
    pictures = sorted((tmp_path / "maps").iterdir())
    assert [p.name for p in pictures] == ["train_00001.png", "train_00002.png"]
    channels = len(np.load(work / "maps" / "cam" / "train_00001.npz")["keys"])
    width = Image.open(pictures[0]).size[0]
    assert width == 2 + (2 + channels) * (80 + 2)  # image, maximum, one panel per class
    assert main(["overlay", str(work / "predictions" / "cam"), "--data", str(data), "--split", "val",
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert len(list((tmp_path / "pred").iterdir())) == 6  # every val image
    picture = np.asarray(Image.open(tmp_path / "pred" / "val_00001.png").convert("RGB"))
    assert picture.shape == (14 + 2 + 80 + 2, 2 + 2 * 82, 3)  # titles, then image | labels over it
    labels = np.asarray(Image.open(work / "predictions" / "cam" / "val_00001.png"))
    changed = (picture[16:96, 2:82] != picture[16:96, 84:164]).any(axis=2)
    assert changed.any() == labels.any() and not (changed & (labels == 0)).any()  # background left as it is
    capsys.readouterr()
    assert main(["overlay", str(work / "predictions" / "cam"), "--data", str(data), "--out",
                 str(tmp_path / "none")]) == 2
    assert "holds no image of split 'train'" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # nothing made before the check
    assert main(["overlay", str(work / "classifier.pt"), "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "two"])
def test_overlay_refuses_a_bad_limit(limit: str, finished_run, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["overlay", str(finished_run.work / "maps" / "cam"), "--data", str(finished_run.data), "--out",
              str(tmp_path), "--limit", limit])
    assert stop.value.code == 2


def test_report_of_a_run_that_stops_at_the_seeds(finished_run, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished_run.work, work)
    config = (work / "config.yaml").read_text()
    assert "\nuntil: final\n" in config
    (work / "config.yaml").write_text(config.replace("\nuntil: final\n", "\nuntil: seeds\n"))
    for name in ("cam_pseudo", "cam_final", "fully_supervised_final"):
        (work / "eval" / f"{name}.json").unlink()
    shutil.rmtree(work / "predictions")
    build_report(work)
    markdown = (work / "report.md").read_text()
    assert "Pseudo masks: not part of this run (until: seeds), no table" in markdown
    assert "no predictions: not part of this run (until: seeds)" in markdown
    assert "did not run" not in markdown  # nothing the recipe asked for is missing
    assert _markdown_row(markdown, "cam")[4:7] == ["-", "-", "-"]  # pseudo, final, % of FS
    assert "| fully supervised |" not in markdown  # no row without its evaluation


def test_the_timing_table_sums_each_kind_of_stage_from_the_markers(tmp_path) -> None:
    from wsss.io import write_json
    from wsss.methods import Context
    from wsss.pipeline.recipes import load_recipe
    from wsss.pipeline.results import OTHER_STAGES, format_timings, stage_timings

    ctx = Context(load_recipe("synth/demo"), tmp_path)
    for name, seconds, state in [("classifier", 10.0, "done"), ("cam.maps", 30.0, "done"),
                                 ("wood.classifier", 20.0, "done"), ("cam.seed_eval", 2.0, "done"),
                                 ("cam.irn", 5.0, "running")]:
        write_json(tmp_path / ".stages" / f"{name}.json", {"key": "k", "state": state, "seconds": seconds})
    timings = stage_timings(ctx, ["classifier", "cam.maps", "cam.seed_eval", "cam.irn", "wood.classifier"])
    assert timings == {"classifier": 10.0, "cam.maps": 30.0, "cam.seed_eval": 2.0, "wood.classifier": 20.0}
    kinds, each = format_timings(timings).split("\n\n")
    rows = [line.split("  ")[0].strip() for line in kinds.splitlines()[2:]]
    assert rows == ["classifiers (CAM, W-OoD, BAP)", "maps (attribution)", OTHER_STAGES, "total"]  # heaviest first
    assert kinds.splitlines()[2].split()[-3:] == ["30", "48%", "2"]  # the two classifiers: 30 of 62 s
    assert "cam.irn" not in each and "wood.classifier" in each
    assert format_timings({}) == "no stage finished: no timings"
