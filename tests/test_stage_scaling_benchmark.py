"""The stage-scaling benchmark (``benchmarks/stage_scaling.py``) on two tiny sizes with the
fewest steps: every stage row, positive times, the ratio column and the demo estimate."""

from __future__ import annotations

import re

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def scaling():
    yield from load_benchmark("stage_scaling")


def test_table_has_every_stage_at_every_size(scaling, tmp_path, capsys) -> None:
    # 80 px is about the least IRN trains at (its label grid must hold the radius-10 pairs);
    # batches of 2 and one scale keep it fast
    cheap = [f"{section}.batch_size=2" for section in ("classifier", "irn", "segmentation", "bana", "bbam_detector",
                                                       "rib")]
    cheap += [f"{section}.scales=[1.0]" for section in ("cam", "advcam", "rib", "seg_inference")]
    cheap += ["rib.loss_scales=[1.0]", "bbam.proposals=200"]
    code = scaling.main(["--sizes", "96", "80", "--advcam-iterations", "1", "--rib-steps", "1", "--bbam-steps", "2",
                         "--warmup-updates", "1", "--timed-updates", "1", "--demo-model", "--train-counts", "40", "80",
                         "--work", str(tmp_path), *(option for setting in cheap for option in ("--set", setting))])
    assert code == 0
    printed = capsys.readouterr().out
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1] in ("image", "object", "update"):
            rows[cells[0]] = cells
    assert set(rows) == {row.label for row in scaling.ROWS}
    header = next(line for line in printed.splitlines() if line.startswith("| stage ") and " px " in line)
    assert "80 px" in header and "96 px" in header and "96/80" in header  # sizes sorted, ratio last to first
    for label, cells in rows.items():
        small, large = float(cells[2]), float(cells[3])
        assert small > 0 and large > 0, label
        assert cells[4] == f"{large / small:.1f}x" or abs(float(cells[4][:-1]) - large / small) < 0.06, label
    assert "Load average" in printed and "inflated" in printed
    # the cut steps are said and extrapolated to the recipe's
    assert re.search(r"AdvCAM: \d+ of the recipe's \d+ climbing steps", printed)
    assert "RIB: 1 of the recipe's 10 steps" in printed
    assert re.search(r"BBAM: 1 and 2 steps run, extrapolated linearly to the recipe's \d+", printed)
    assert "0% with none" in printed  # every object was optimised

    # the demo estimate: labelled, seeds fixed at 200 and at 20% of the training images
    assert "ESTIMATE" in printed
    estimate = printed[printed.index("ESTIMATE"):]
    header = next(line for line in estimate.splitlines() if line.startswith("| stage (minutes)"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == ["40 / 200", "80 / 200", "40 / 8", "80 / 16"]
    lines = {c[0]: [float(v) for v in c[1:]] for c in
             ([cell.strip() for cell in line.strip("|").split("|")] for line in estimate.splitlines()
              if line.startswith("| ") and not line.startswith("| stage"))}
    # grows with the training images (printed in minutes to 0.1: on a fast machine both may round to
    # 0.1; test_demo_estimate_counts checks the growth itself, unrounded)
    assert lines["classifier training"][1] >= lines["classifier training"][0] > 0
    assert lines["AdvCAM maps"][0] == lines["AdvCAM maps"][1] > lines["AdvCAM maps"][3] > lines["AdvCAM maps"][2] > 0
    assert lines["total"][0] == pytest.approx(sum(v[0] for k, v in lines.items() if k != "total"), abs=0.1 * len(lines))


def test_demo_estimate_counts(scaling) -> None:
    """The estimate is the recipe's counts times the unit costs: one second per unit gives the counts."""
    counts = scaling.demo_counts()
    unit = {row.key: 1.0 for row in scaling.ROWS}
    estimate = dict(scaling.demo_estimate(unit, counts, 1000, 200))
    assert estimate["classifier training"] == counts.classifier_epochs * (1000 // counts.classifier_batch)
    methods = len(counts.image_level_methods)
    assert estimate["IRN training"] == methods * counts.irn_epochs * (200 // counts.irn_batch)
    assert estimate["random walk"] == methods * 200
    assert estimate["BBAM attribution"] == pytest.approx(200 * counts.objects_per_image)
    assert counts.fully_supervised  # the demo's recipe trains the baseline on the ground truth too
    assert estimate["DeepLab training"] == (methods + 3) * counts.seg_epochs * (200 // counts.seg_batch)
    assert dict(scaling.demo_estimate(unit, counts, 2000, 200))["random walk"] == methods * 200
