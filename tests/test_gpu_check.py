"""The VOC-scale GPU check: the ``synth/large`` recipe and ``benchmarks/gpu_check.sh`` (its tiny
CPU version end to end, its refusal without a GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss import io as wio
from wsss.cli import main
from wsss.methods import Context
from wsss.pipeline.plan import dry_run
from wsss.pipeline.recipes import build_stages, load_recipe

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
STAGES = ("maps", "seed_eval", "ir_labels", "irn", "edges", "pseudo", "pseudo_eval", "seg", "predict", "final_eval")


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=1200)


def test_the_large_recipe_has_the_voc_networks_from_scratch_with_amp_and_workers(capsys):
    recipe = load_recipe("synth/large")
    assert list(recipe.methods) == ["cam", "advcam"] and recipe.scale == "reference"
    assert (recipe.classifier.backbone, recipe.classifier.output_stride, recipe.classifier.dilated) == (
        "resnet50", 16, False)
    assert (recipe.irn.backbone, recipe.irn.output_stride) == ("resnet50", 16)
    assert recipe.segmentation.model == "deeplab_v2_resnet101"
    # from scratch: no weight file, BatchNorm trains, nothing frozen
    assert recipe.classifier.weights is recipe.irn.weights is recipe.segmentation.weights is None
    assert not recipe.classifier.freeze_bn and recipe.classifier.frozen_stages == 0
    assert recipe.classifier.amp and recipe.irn.amp and recipe.segmentation.amp
    assert min(recipe.classifier.num_workers, recipe.irn.num_workers, recipe.segmentation.num_workers,
               recipe.ir_labels.workers) > 0
    assert main(["config", "synth/large"]) == 0
    assert "deeplab_v2_resnet101" in capsys.readouterr().out


def test_data_at_voc_geometry_checks_out_and_the_dry_run_plans_every_stage(tmp_path, capsys):
    root = tmp_path / "data"
    # what gpu_check.sh generates, fewer images: IRN's batch of 16 needs 16 seed images
    assert main(["synth", str(root), "--train", "16", "--val", "2", "--ood", "0", "--no-progress",
                 "--set", "size_range=[320,500]", "--set", "object_size=[0.3,0.6]"]) == 0
    sides = {wio.image_size(path) for path in (root / "JPEGImages").glob("*.jpg")}
    assert all(height == width and 320 <= width <= 500 for height, width in sides) and len(sides) > 4
    recipe = load_recipe("synth/large", [f"data.root={root}"])
    ctx = Context(recipe, tmp_path / "work")
    stages = build_stages(ctx)
    text, problems = dry_run(ctx, stages, "synth/large")
    assert [str(problem) for problem in problems] == []
    names = [stage.name for stage in stages]
    assert names == ["classifier", *(f"{method}.{stage}" for method in ("cam", "advcam") for stage in STAGES)]
    assert "deeplab_v2_resnet101" in text
    assert not ctx.workdir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_full_check_stops_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    done = run_script(str(out))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is false); --tiny runs the CPU version"]
    assert not out.exists()


@pytest.mark.slow
def test_the_tiny_check_runs_the_chain_on_the_cpu_and_prints_stage_times_and_results(tmp_path):
    out = tmp_path / "tiny"
    done = run_script("--tiny", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # every stage with its seconds, in order
    timed = [m.group(1) for line in lines if (m := re.fullmatch(r"(\S+)\s+\d+\.\d s", line))]
    assert timed == ["classifier", *(f"{method}.{stage}" for method in ("cam", "advcam") for stage in STAGES)]
    # the results table: its header and one row per method, each with a final mIoU
    header = next(i for i, line in enumerate(lines) if line.startswith("method  seed mIoU"))
    rows = {line.split()[0]: line for line in lines[header + 2:header + 4]}
    assert set(rows) == {"cam", "advcam"}
    for method in rows:
        final = wio.read_json(out / "work" / "eval" / f"{method}_final.json")
        assert f"{final['results'][0]['miou']:.1f}" in rows[method].split()
    assert re.fullmatch(r"gpu_check: data \d+ s, pipeline \d+ s, total \d+ s \(8 training images, 4 with seeds, 2 val\)",
                        lines[-1])
    # the tiny data: 8 + 2 images of 96-128 px, the first 4 training ids with seeds
    assert (out / "seed_split.txt").read_text().split() == [f"train_{i:05d}" for i in range(1, 5)]
    sides = [wio.image_size(path) for path in (out / "data" / "JPEGImages").glob("*.jpg")]
    assert len(sides) == 10 and all(h == w and 96 <= w <= 128 for h, w in sides)
    assert (out / "run.txt").read_text().splitlines()[-1] == lines[-1]
