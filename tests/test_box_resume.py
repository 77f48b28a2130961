"""A box method's per-image stage killed part way resumes under ``wsss run`` with the same bytes.

The kill is an interrupt (what Ctrl-C or a scheduler's signal raises) from inside the stage's
per-image function after a few images: ``wsss run`` exits 130 and leaves the stage's marker
``running``; the next ``wsss run`` resumes it. Every file the stages wrote is then compared with
an uninterrupted run's, byte for byte (the summaries' ``computed_now``, which counts the images of
the last call, aside).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsss.cli import main

SYNTH = dict(seed=7, train=6, val=2, ood=0, size=40, classes=3)
SETTINGS = {
    "bbam": ["bbam_detector.steps=2", "bbam_detector.batch_size=3", "bbam_detector.milestones=[1]",
             "bbam_detector.warmup_steps=1", "bbam.steps=3", "bbam.proposals=30"],
    "bana": ["bana.steps=2", "bana.milestones=[1]", "bana.batch_size=3"],
}
OUTPUTS = {"bbam": ("maps", "pseudo"), "bana": ("pseudo",)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from wsss.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, SynthConfig(**SYNTH))
    return root


def _run(root: Path, work: Path, method: str) -> int:
    args = ["run", "synth/demo", "--work", str(work), "--no-report"]
    for setting in (f"data.root={root}", f"methods=[{method}]", "until=pseudo", "runtime.device=cpu",
                    "runtime.progress=false", *SETTINGS[method]):
        args += ["--set", setting]
    return main(args)


def _interrupt_after(monkeypatch, module, name: str, images: int) -> list[str]:
    """Make ``module.name`` (a per-image function) raise KeyboardInterrupt on its call after
    ``images`` calls; returns the list the calls are counted in."""
    real, calls = getattr(module, name), []

    def dying(*args, **kwargs):
        if len(calls) == images:
            raise KeyboardInterrupt
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)
    return calls


def _outputs(work: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    found = {}
    for folder in folders:
        for path in sorted((work / folder).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.name.endswith("_summary.json") or path.name.endswith("_labels.json"):
                summary = json.loads(data)
                summary.pop("computed_now", None)
                data = json.dumps(summary, sort_keys=True).encode()
            found[str(path.relative_to(work))] = data
    return found


def _state(work: Path, stage: str) -> str:
    return json.loads((work / ".stages" / f"{stage}.json").read_text())["state"]


def test_killed_bbam_maps_and_labels_stages_resume_with_identical_files(generated, tmp_path, monkeypatch):
    import wsss.attribution.bbam as attribution
    import wsss.refine.bbam_labels as labels

    straight = tmp_path / "straight"
    assert _run(generated, straight, "bbam") == 0
    expected = _outputs(straight, OUTPUTS["bbam"])
    assert sum(name.startswith("maps/bbam/") for name in expected) == 6
    assert sum(name.startswith("pseudo/bbam/") for name in expected) == 6
    assert "pseudo/bbam_instances.json" in expected

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:  # killed in the maps stage after 2 images
        _interrupt_after(patch, attribution, "compute_bbam", 2)
        assert _run(generated, killed, "bbam") == 130
    assert _state(killed, "bbam.maps") == "running" and len(list((killed / "maps" / "bbam").glob("*.npz"))) == 2
    with monkeypatch.context() as patch:  # resumed, then killed in the labels stage after 3 images
        calls = _interrupt_after(patch, attribution, "compute_bbam", 99)
        _interrupt_after(patch, labels, "bbam_labels", 3)
        assert _run(generated, killed, "bbam") == 130
        assert len(calls) == 4  # the maps stage computed only the 4 missing images
    assert _state(killed, "bbam.maps") == "done" and _state(killed, "bbam.labels") == "running"
    assert len(list((killed / "pseudo" / "bbam").glob("*.png"))) == 3
    assert not (killed / "pseudo" / "bbam_instances.json").exists()  # gathered only when every image is done
    assert _run(generated, killed, "bbam") == 0
    assert json.loads((killed / "pseudo" / "bbam_labels.json").read_text())["computed_now"] == 3
    assert _outputs(killed, OUTPUTS["bbam"]) == expected


def test_a_killed_bana_labels_stage_resumes_with_identical_files(generated, tmp_path, monkeypatch):
    import wsss.refine.bana_labels as labels

    straight = tmp_path / "straight"
    assert _run(generated, straight, "bana") == 0
    expected = _outputs(straight, OUTPUTS["bana"])
    assert sum(name.startswith(("pseudo/bana/", "pseudo/bana_ret/")) for name in expected) == 12

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, labels, "bana_labels", 4)
        assert _run(generated, killed, "bana") == 130
    assert _state(killed, "bana.classifier") == "done" and _state(killed, "bana.labels") == "running"
    assert len(list((killed / "pseudo" / "bana").glob("*.png"))) == 4
    assert _run(generated, killed, "bana") == 0
    assert json.loads((killed / "pseudo" / "bana_labels.json").read_text())["computed_now"] == 2
    assert _outputs(killed, OUTPUTS["bana"]) == expected
