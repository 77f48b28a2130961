"""Distributed segmentation training: 2 CPU processes under torchrun (gloo) vs 1 process.

Each of the 2 processes takes half of every global batch; DDP averages their gradients. With a
loss that is a sum over pixels divided by the pixel count (equal in both halves) and no
BatchNorm, the average of the two halves' gradients is the whole batch's gradient, so the
2-process run must end with the weights of a 1-process run on the same global batches.

Run as a script, this file is the torchrun worker:
``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_seg_ddp.py --worker ROOT OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_palette_png
from test_seg_train import make_colour_voc, pixel_sum_ce, tiny_config, tiny_model

from wsss.data.voc import VOCDataset
from wsss.segmentation.train import SegTrainConfig, read_training_checkpoint, train_segmentation


def ddp_config() -> SegTrainConfig:
    # Global batch 4 = 2 per process; 8 images -> 2 updates an epoch, 5 updates cross 3 epochs.
    # Random scale, flip and crop stay on: an item's augmentation depends only on
    # (seed, epoch, index), so both runs see the same global batches. sync_bn=True exercises the
    # CPU fallback (a warning; the stand-in has no BatchNorm anyway).
    return tiny_config(batch_size=4, iterations=5, checkpoint_every=2, lr=0.05, sync_bn=True)


def worker(root: str, out: str, masks: str | None = None) -> None:
    torch.set_num_threads(1)
    result = train_segmentation(VOCDataset(root, "train"), masks, ddp_config(), device="cpu", out_dir=out,
                                progress=False, model=tiny_model(), loss_fn=pixel_sum_ce)
    rank = int(os.environ["RANK"])
    report = {
        "rank": rank,
        "world_size": result.world_size,
        "iterations": result.iterations,
        "losses": [h["loss"] for h in result.history],
        "group_left": not torch.distributed.is_initialized(),
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))


def torchrun(*worker_args: str) -> subprocess.CompletedProcess:
    """Run this file's worker in 2 processes under torchrun (gloo, one thread each)."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    environment["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).resolve()), *worker_args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(tmp_path) -> None:
    dataset = make_colour_voc(tmp_path / "voc")
    ddp_out = tmp_path / "ddp"
    finished = torchrun("--worker", str(dataset.root), str(ddp_out))
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "sync_bn needs CUDA" in finished.stderr

    reports = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["iterations"] == 5 and report["group_left"]
    # The logged loss is the mean over processes, so both ranks log the same numbers.
    assert reports[0]["losses"] == reports[1]["losses"]
    # Rank 0 alone wrote the run's files.
    assert read_training_checkpoint(ddp_out / "checkpoint.pt")["iteration"] == 5
    ddp_state = torch.load(ddp_out / "model.pt", weights_only=True)["model"]

    single = train_segmentation(dataset, None, ddp_config(), device="cpu", out_dir=tmp_path / "single",
                                progress=False, model=tiny_model(), loss_fn=pixel_sum_ce)
    assert single.world_size == 1
    assert reports[0]["losses"] == pytest.approx([h["loss"] for h in single.history], rel=1e-5)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # ... and they did train: the weights moved from their initialisation.
    initial = tiny_model().state_dict()
    assert not torch.allclose(initial["head.weight"], single.model.state_dict()["head.weight"])


def test_a_bad_mask_in_one_process_share_stops_both(tmp_path) -> None:
    # Each process reads its share of the masks (ids[rank::2]); img03 is rank 1's. The error must
    # reach rank 0 too (all_gather), or rank 0 would train on and wait for rank 1 forever.
    dataset = make_colour_voc(tmp_path / "voc")
    folder = tmp_path / "pseudo"
    for image_id in dataset.ids:
        mask = np.zeros(dataset.image_size(image_id), np.uint8)
        mask[1, 1] = 9 if image_id == "img03" else 1
        write_palette_png(folder / f"{image_id}.png", mask)
    finished = torchrun("--worker", str(dataset.root), str(tmp_path / "ddp"), str(folder))
    assert finished.returncode != 0
    expected = f"{folder / 'img03.png'}: label value 9 is above K=3"
    for rank in (0, 1):
        assert any(line.startswith(f"[rank{rank}]:") and expected in line
                   for line in finished.stderr.splitlines()), finished.stderr[-3000:]
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        sys.exit(f"usage: torchrun --nproc_per_node=2 {sys.argv[0]} --worker ROOT OUT")
