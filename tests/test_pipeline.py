"""The pipeline runner: markers, fingerprints, what reruns and what is skipped."""

from pathlib import Path

import pytest

from wsss.methods.base import Stage
from wsss.pipeline.runner import Runner
from wsss.runtime import DistInfo


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


TOY_GRAPH = (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c")), ("e", ()))


def test_runner_with_jobs_runs_independent_stages_at_once_after_what_they_need(tmp_path: Path) -> None:
    from helpers import ToyStages

    make = ToyStages(str(tmp_path), TOY_GRAPH, seconds=0.5)
    results = Runner(tmp_path / "work").run(make(), jobs=2, rebuild=make)
    assert list(results) == ["a", "b", "c", "d", "e"]  # every stage ran (each checks its needs' files)
    assert all(not r.skipped for r in results.values())
    pids = {name: r.value for name, r in results.items()}
    assert len(set(pids.values())) == 2  # two worker processes, neither of them this one
    assert pids["b"] != pids["c"]  # b and c were ready together: both workers took one
    # a second run skips everything without starting a worker
    again = Runner(tmp_path / "work").run(make(), jobs=2, rebuild=make)
    assert all(r.skipped for r in again.values())


def test_a_priority_starts_its_whole_chain_first_in_a_parallel_run(tmp_path: Path) -> None:
    from helpers import ToyStages

    from wsss.pipeline.runner import start_priorities

    # x -> y is the long chain listed last; y's priority reaches x, so both start before b and c
    graph = (("a", ()), ("b", ()), ("c", ()), ("x", ()), ("y", ("x",)))
    make = ToyStages(str(tmp_path), graph, seconds=0.4, priorities=(("y", 1),))
    assert start_priorities(make()) == {"a": 0, "b": 0, "c": 0, "x": 1, "y": 1}
    Runner(tmp_path / "work").run(make(), jobs=2, rebuild=make)
    started = {name: (tmp_path / f"{name}.pid").stat().st_mtime_ns for name, _ in graph}
    assert sorted(started, key=started.get)[:2] == sorted(["x", "a"], key=started.get)  # x, then a by list order
    assert started["y"] < started["c"] and started["x"] < started["b"]


def test_runner_with_jobs_stops_at_a_failed_stage_and_raises_its_error(tmp_path: Path) -> None:
    from helpers import ToyStages

    from wsss.errors import DataError

    make = ToyStages(str(tmp_path), TOY_GRAPH, seconds=0.2, fail="b")
    with pytest.raises(DataError, match="toy failure"):
        Runner(tmp_path / "work").run(make(), jobs=2, rebuild=make)
    assert (tmp_path / "c.txt").is_file()  # c ran beside b and finished
    assert not (tmp_path / "d.txt").exists()  # d needs b: never started
    # the fixed stage resumes: done stages are skipped, the rest run
    fixed = ToyStages(str(tmp_path), TOY_GRAPH)
    results = Runner(tmp_path / "work").run(fixed(), jobs=2, rebuild=fixed)
    assert results["a"].skipped and results["c"].skipped and not results["d"].skipped


def test_runtime_jobs_below_one_is_refused() -> None:
    from wsss.errors import ConfigError
    from wsss.pipeline.recipes import load_recipe

    assert load_recipe("synth/demo", ["runtime.jobs=2"]).runtime.jobs == 2
    with pytest.raises(ConfigError, match="runtime.jobs must be at least 1"):
        load_recipe("synth/demo", ["runtime.jobs=0"])


def test_runner_workers_end_when_the_main_process_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (f"import sys; sys.path[:0] = {[str(Path(__file__).parent), *sys.path]!r}\n"
              "from helpers import ToyStages\nfrom wsss.pipeline.runner import Runner\n"
              "if __name__ == '__main__':\n"
              f"    make = ToyStages({str(tmp_path)!r}, (('a', ()), ('b', ())), seconds=120.0)\n"
              f"    Runner({str(tmp_path / 'work')!r}).run(make(), jobs=2, rebuild=make)\n")
    (tmp_path / "main.py").write_text(script)
    main = subprocess.Popen([sys.executable, str(tmp_path / "main.py")])
    try:
        pids = tmp_path / "a.pid", tmp_path / "b.pid"
        deadline = time.monotonic() + 240
        while not all(p.is_file() and p.read_text() for p in pids):
            assert main.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pids]
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived the killed main process"
            time.sleep(0.2)
    finally:
        if main.poll() is None:
            main.kill()
    assert not (tmp_path / "a.txt").exists()  # killed mid-stage: no output, the marker says running


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its orphaned parent's successor) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
