"""Shared fixtures. Dataset writers live in ``tests/helpers.py`` (``from helpers import make_voc``)."""

from __future__ import annotations

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
