from pathlib import Path

import pytest

from wsss.io import write_text
from wsss.pipeline.runner import Runner, Stage
from wsss.runtime import DistInfo, dist_info_from_env, run_per_image, shard


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


def test_runner_skips_done_stages_and_reruns_changed_ones(tmp_path: Path) -> None:
    calls: list[str] = []
    cleared: list[str] = []

    def stages(a_cfg: int, b_cfg: int) -> list[Stage]:
        return [
            Stage("a", run=lambda: calls.append("a"), depends_on={"x": a_cfg},
                  clear=lambda: cleared.append("a")),
            Stage("b", run=lambda: calls.append("b") or 42, depends_on={"y": b_cfg},
                  clear=lambda: cleared.append("b")),
        ]

    runner = Runner(tmp_path, config={"x": 1}, dist=DistInfo(0, 1))
    results = runner.run(stages(1, 1))
    assert calls == ["a", "b"] and results["b"].value == 42
    assert (tmp_path / "config.yaml").read_text() == "x: 1\n"
    results = runner.run(stages(1, 1))
    assert calls == ["a", "b"] and results["a"].skipped and results["b"].skipped
    # Changing b's config reruns b only; changing a's reruns both (b depends on a's output).
    runner.run(stages(1, 2))
    assert calls == ["a", "b", "b"] and cleared == ["b"]
    runner.run(stages(3, 2))
    assert calls == ["a", "b", "b", "a", "b"] and cleared == ["b", "a", "b"]


def test_runner_resumes_a_killed_stage_without_clearing(tmp_path: Path) -> None:
    cleared: list[str] = []
    state = {"fail": True}

    def flaky() -> None:
        if state["fail"]:
            raise KeyboardInterrupt

    stage = Stage("s", run=flaky, depends_on=1, clear=lambda: cleared.append("s"))
    runner = Runner(tmp_path, dist=DistInfo(0, 1))
    with pytest.raises(KeyboardInterrupt):
        runner.run([stage])
    state["fail"] = False
    assert not runner.run([stage])["s"].skipped
    assert cleared == []
    assert runner.run([stage])["s"].skipped


def test_runner_needs_limits_what_reruns(tmp_path: Path) -> None:
    calls: list[str] = []

    def stages(a_cfg: int, b_cfg: int) -> list[Stage]:
        return [
            Stage("a", run=lambda: calls.append("a"), depends_on=a_cfg),
            Stage("b", run=lambda: calls.append("b"), depends_on=b_cfg, needs=("a",)),
            Stage("c", run=lambda: calls.append("c"), depends_on=0, needs=("a",)),
        ]

    runner = Runner(tmp_path, dist=DistInfo(0, 1))
    runner.run(stages(1, 1))
    runner.run(stages(1, 2))  # only b changed; c depends on a, not on b
    assert calls == ["a", "b", "c", "b"]
    with pytest.raises(ValueError, match="needs"):
        runner.run([Stage("x", run=lambda: None, needs=("nope",))])
