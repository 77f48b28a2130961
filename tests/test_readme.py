"""The README's commands run as written, in order, from an empty folder.

The block tested is the fenced ``sh`` block under the README's "## Commands" heading: every line
is one command (``#`` starts a comment). Each runs through ``wsss.cli.main`` in a temporary
folder, as the console script would, and must exit 0. To keep the test short, and only for that,
the test

* appends the arguments in :data:`SHORTER` to the commands that generate data or train: the
  generated set has 16 training, 8 validation and 12 OoD images instead of 1000/300/300, the
  classifier trains 2 epochs, AdvCAM climbs 2 steps at one scale, ``wsss run`` takes the
  demo's ``--quick`` schedules, and ``wsss demo --quick`` runs CAM alone (``wsss run`` has just
  run every method) on the set already generated instead of generating its own 160-image one
  (``make demo``, the full demo, takes far too long for a test);
* writes, before the first command, what ``import-irn-labels`` converts: a small IRN
  ``voc12/cls_labels.npy`` (a pickled dict of int ids to 20-class vectors) and the
  ``VOCdevkit/VOC2012/`` folder its output goes to.

Slow (about 3 minutes on two loaded cores): it trains a classifier, W-OoD, and IRN and DeepLab
for every method.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from wsss.cli import main
from wsss.pipeline.demo import quick_overrides

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"

SHORTER: dict[str, list[str]] = {
    "synth": ["--train", "16", "--val", "8", "--ood", "12", "--no-progress"],
    "train-classifier": ["--set", "epochs=2", "--no-progress"],
    "make-advcam": ["--iterations", "2", "--scales", "1.0", "--no-progress"],
    "run": [arg for setting in quick_overrides() for arg in ("--set", setting)],
    "demo": ["--data", "data/synth", "--ood", "data/synth/ood/ood.txt", "--set", "methods=[cam]"],
}
"""Arguments appended to each command of that name (the first word after ``wsss``)."""


def readme_commands() -> list[list[str]]:
    """The argument lists of the README's command block, in order, without ``wsss``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Commands\n"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no ```sh block under '## Commands'"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "wsss", f"README command does not start with wsss: {line}"
            commands.append(words[1:])
    return commands


def write_irn_labels(folder: Path) -> None:
    """IRN's ``voc12/cls_labels.npy``: a pickled dict, VOC ids as ints -> float32[20]."""
    (folder / "voc12").mkdir()
    labels = {2007000032: np.eye(20, dtype=np.float32)[0], 2011003276: np.eye(20, dtype=np.float32)[[4, 14]].sum(0)}
    np.save(folder / "voc12" / "cls_labels.npy", labels, allow_pickle=True)
    (folder / "VOCdevkit" / "VOC2012").mkdir(parents=True)


def test_the_readme_command_block_is_found_and_covers_the_shortened_commands() -> None:
    names = [command[0] for command in readme_commands()]
    assert len(names) >= 10 and names[0] == "synth"
    assert set(SHORTER) <= set(names)  # every shortening still meets its command


def test_every_readme_command_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_irn_labels(tmp_path)
    for command in readme_commands():
        argv = [*command, *SHORTER.get(command[0], [])]
        assert main(argv) == 0, f"wsss {shlex.join(command)}"
    # what the commands said they would write
    assert (tmp_path / "data" / "synth" / "synth.json").is_file()
    assert (tmp_path / "work" / "cam.pt").is_file()
    assert len(list((tmp_path / "work" / "cam").glob("*.npz"))) == 16
    assert len(list((tmp_path / "work" / "advcam").glob("*.npz"))) == 16
    assert json.loads((tmp_path / "work" / "seed.json").read_text())
    assert json.loads((tmp_path / "work" / "val.json").read_text())
    labels = json.loads((tmp_path / "VOCdevkit" / "VOC2012" / "image_labels.json").read_text())
    assert labels["labels"] == {"2007_000032": [1], "2011_003276": [5, 15]}
    assert (tmp_path / "work" / "run" / "report.html").is_file()
    assert (tmp_path / "work" / "run" / "report.md").is_file()
    assert len(list((tmp_path / "pictures" / "cam").glob("*.png"))) == 8
    for method in ("cam", "advcam", "rib", "wood", "advcam_wood"):
        assert json.loads((tmp_path / "work" / "run" / "eval" / f"{method}_final.json").read_text())
    results = json.loads((tmp_path / "demo_out" / "results.json").read_text())
    assert results["methods"]["cam"]["final_miou"] is not None
