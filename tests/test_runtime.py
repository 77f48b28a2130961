"""Shared machinery: sharding, resumable per-image loops (plain, batched, worker pool), model mode."""

from pathlib import Path

import pytest
import torch

from wsss.errors import ConfigError
from wsss.io import write_text
from wsss.runtime import (DistInfo, dist_info_from_env, eval_mode, resolve_device, run_per_image,
                          run_per_image_batched, shard)


def test_shard_covers_every_id_once() -> None:
    ids = [str(i) for i in range(11)]
    parts = [shard(ids, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert parts[1] == ["1", "4", "7", "10"]


def test_dist_info_from_torchrun_env() -> None:
    assert dist_info_from_env({}) == DistInfo(0, 1, 0)
    info = dist_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)
    with pytest.raises(ValueError):
        dist_info_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_run_per_image_resumes_and_shards(tmp_path: Path) -> None:
    ids = [f"im{i}" for i in range(6)]
    done: list[str] = []

    def work(image_id: str) -> None:
        if image_id == "im3" and not (tmp_path / "crashed").exists():
            (tmp_path / "crashed").touch()
            raise RuntimeError("killed")
        write_text(tmp_path / f"{image_id}.out", image_id)
        done.append(image_id)

    def is_done(image_id: str) -> bool:
        return (tmp_path / f"{image_id}.out").exists()

    with pytest.raises(RuntimeError):
        run_per_image(ids, work, is_done, progress=False, dist=DistInfo(0, 1))
    assert done == ["im0", "im1", "im2"]
    assert run_per_image(ids, work, is_done, progress=False, dist=DistInfo(0, 1)) == 3
    assert done == ["im0", "im1", "im2", "im3", "im4", "im5"]
    assert run_per_image(ids, work, is_done, progress=False, dist=DistInfo(0, 1)) == 0
    # rank 1 of 2 only sees odd positions
    for p in tmp_path.glob("*.out"):
        p.unlink()
    done.clear()
    run_per_image(ids, work, is_done, progress=False, dist=DistInfo(1, 2))
    assert done == ["im1", "im3", "im5"]


def test_batched_loop_shards_batches_and_reruns_a_partial_batch_whole(tmp_path: Path) -> None:
    ids = [f"im{i}" for i in range(7)]
    batches_run: list[list[str]] = []

    def group(every: list[str]) -> list[list[str]]:
        return [every[i:i + 3] for i in range(0, len(every), 3)]  # [0 1 2] [3 4 5] [6]

    def work(batch: list[str]) -> None:
        batches_run.append(batch)
        for image_id in batch:
            write_text(tmp_path / f"{image_id}.out", ",".join(batch))

    def is_done(image_id: str) -> bool:
        return (tmp_path / f"{image_id}.out").exists()

    # Two ranks: batches (not ids) are dealt out, so each image sits in the batch it has alone.
    assert run_per_image_batched(ids, work, is_done, group, progress=False, dist=DistInfo(1, 2)) == 3
    assert batches_run == [["im3", "im4", "im5"]]
    assert run_per_image_batched(ids, work, is_done, group, progress=False, dist=DistInfo(0, 2)) == 4
    assert batches_run[1:] == [["im0", "im1", "im2"], ["im6"]]
    # A run killed inside a batch (one output missing) redoes that batch whole, with the same members.
    (tmp_path / "im4.out").unlink()
    batches_run.clear()
    assert run_per_image_batched(ids, work, is_done, group, progress=False, dist=DistInfo(0, 1)) == 3
    assert batches_run == [["im3", "im4", "im5"]]
    assert (tmp_path / "im4.out").read_text() == "im3,im4,im5"
    assert run_per_image_batched(ids, work, is_done, group, progress=False, dist=DistInfo(0, 1)) == 0


def test_eval_mode_restores_the_previous_mode() -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    model.train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("inside")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("toaster")
