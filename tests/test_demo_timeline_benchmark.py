"""The demo-timeline benchmark (``benchmarks/demo_timeline.py``): its replay of measured stage
seconds in workers, and its report on a finished run."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def timeline():
    yield from load_benchmark("demo_timeline")


def test_replay_is_list_scheduling_in_the_given_order(timeline) -> None:
    needs = {"a": (), "b": ("a",), "c": (), "d": ()}
    seconds = {"a": 2.0, "b": 1.0, "c": 3.0, "d": 3.0}
    in_list = {"a": 0, "b": 1, "c": 2, "d": 3}
    # a and c at 0; b at 2 (after a); d at 3 when c ends: 6
    assert timeline.replay(list(needs), needs, seconds, in_list, jobs=2) == 6.0
    # c and d first, then a, then b: 3 + 2 + 1
    assert timeline.replay(list(needs), needs, seconds, {"c": 0, "d": 1, "a": 2, "b": 3}, jobs=2) == 6.0
    assert timeline.replay(list(needs), needs, seconds, in_list, jobs=1) == sum(seconds.values())
    assert timeline.replay(list(needs), needs, seconds, {"a": 0, "c": 1, "d": 2, "b": 3}, jobs=3) == 3.0


def test_report_of_a_finished_run(timeline, finished_run, tmp_path, capsys) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished_run.work, work)
    markers = {path.stem: json.loads(path.read_text()) for path in (work / ".stages").glob("*.json")}
    total = sum(marker["seconds"] for marker in markers.values())
    timeline.main([str(work), "--timeline", "--jobs", "1", "--train", "24"])
    printed = capsys.readouterr().out
    assert f"{len(markers)} stages" in printed
    for name in markers:  # every stage on the timeline
        assert re.search(rf"\s{re.escape(name)}$", printed, re.M), name
    # one worker: every order replays to the sum of the stages' seconds
    replayed = re.findall(r"^  (?:list order|the runner's order|longest remaining).*?([\d.]+)$", printed, re.M)
    assert len(replayed) == 3 and all(abs(float(v) - total / 60) < 0.06 for v in replayed)
    # 24 training images (the run's 12 doubled): the classifier's epochs double, nothing else changes
    row = re.search(r"^\| 24 \| 12 \| (\d+) \|", printed, re.M)
    assert row is not None
    with pytest.raises(SystemExit, match="not a demo or run folder"):
        timeline.main([str(tmp_path / "nowhere")])
