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
