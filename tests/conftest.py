"""Shared fixtures. Dataset writers live in ``tests/helpers.py`` (``from helpers import make_voc``)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import VOCFixture, make_voc


@pytest.fixture
def voc_fixture(tmp_path) -> VOCFixture:
    """A 4-image VOC dataset (21 VOC classes, masks in SegmentationClass, XML, split "train")."""
    return make_voc(tmp_path / "voc")


@pytest.fixture
def voc_root(voc_fixture):
    """The folder holding JPEGImages of ``voc_fixture``."""
    return voc_fixture.root


@pytest.fixture
def voc_dataset(voc_fixture):
    """``VOCDataset`` over ``voc_fixture``'s train split."""
    from wsss.data.voc import VOCDataset

    return VOCDataset(voc_fixture.root, split="train")


@dataclass
class FinishedRun:
    """A finished tiny ``wsss run`` (shared by the session: copy ``work`` before changing it)."""

    data: Path  # the generated dataset (VOC layout)
    work: Path  # the run's work folder
    printed: str  # what ``wsss run`` printed


TINY_RUN_SETTINGS = (
    "methods=[cam]", "classifier.epochs=1", "classifier.crop_size=80", "classifier.resize_long=[72, 88]",
    "cam.scales=[1.0]", "irn.epochs=1", "irn.crop_size=80", "segmentation.epochs=1",
    "segmentation.crop_size=80", "runtime.progress=false",
)
"""One method through every stage, each trained for one epoch: about ten seconds on a CPU."""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    """``wsss run synth/demo`` with CAM to the end (seeds, pseudo masks, DeepLab, fully
    supervised) on 12 generated 80 px images of 2 classes."""
    from wsss.cli import main
    from wsss.data import synth

    folder = tmp_path_factory.mktemp("finished_run")
    data = folder / "data"
    synth.generate(data, synth.SynthConfig(seed=1, train=12, val=6, ood=4, size=80, classes=2), progress=False)
    work = folder / "work"
    args = ["run", "synth/demo", "--work", str(work), "--set", f"data.root={data}"]
    for setting in TINY_RUN_SETTINGS:
        args += ["--set", setting]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return FinishedRun(data, work, printed.getvalue())
