"""The training engine: optimizer groups, resumable loaders, the loop, checkpoints, exact resume.

A tiny regression problem stands in for a trainer: items draw their noise from torch's global
RNG (as the classifier's and IRN's augmentation do), so a resume is exact only if the engine
restores the loader positions and the global RNG in the right order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsss.errors import ConfigError, DataError, WsssError
from wsss.training.engine import (
    CheckpointSpec,
    EndlessLoader,
    LossNotFinite,
    ShuffledLoader,
    TrainingEngine,
    poly_sgd,
    read_checkpoint,
    sequential_mean,
)

torch.set_num_threads(1)


class NoisyPoints(Dataset):
    """Item i: x = i/10 plus noise drawn from the global torch RNG; y = 3x - 1."""

    def __init__(self, count: int = 10) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = torch.tensor([index / 10.0]) + 0.1 * torch.randn(1)
        return {"x": x, "y": 3 * x - 1, "index": torch.tensor(index)}


def loader(batch_size: int = 3, seed: int = 0, count: int = 10) -> DataLoader:
    return DataLoader(NoisyPoints(count), batch_size=batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


class Killed(Exception):
    pass


def run(folder: Path | None, *, epochs: int = 4, kill_at: int | None = None, every: int | None = None,
        lr: float = 0.3, stop_at: int | None = None, settings: dict | None = None,
        resume: bool = True) -> TrainingEngine:
    """Train a 1-D linear model for ``epochs`` of 3 batches (10 points, batch 3, last point dropped)."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    torch.manual_seed(1)  # the data's noise starts from a known state
    data = loader()
    total = 3 * epochs
    optimizer, scheduler = poly_sgd([(model.parameters(), 1.0)], lr, total_steps=total, momentum=0.9)
    spec = None if folder is None else CheckpointSpec(
        folder, "test-checkpoint", "test checkpoint", every=every, at_epoch_end=every is None,
        settings=settings or {"lr": lr}, curve_title="test")

    def callback(iteration: int, loss: float) -> None:
        if iteration == kill_at:
            raise Killed

    engine = TrainingEngine(model, optimizer, scheduler, total_steps=total, steps_per_epoch=3,
                            device=torch.device("cpu"), epoch_keys=("loss", "mse"), progress=False,
                            checkpoint=spec, callback=callback)
    engine.restore(resume)

    def step(batch):
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {"mse": loss.item()}

    engine.fit(ShuffledLoader(data), step, stop_at=stop_at)
    return engine


def assert_same_run(a: TrainingEngine, b: TrainingEngine) -> None:
    for name, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], value), name
    assert a.history == b.history
    drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert drop(a.epochs) == drop(b.epochs)


# ------------------------------------------------------------------ optimizer
def test_poly_sgd_groups_multipliers_and_decays() -> None:
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
    optimizer, scheduler = poly_sgd(
        [{"params": [a], "lr_mult": 1.0}, {"params": [frozen], "lr_mult": 5.0},
         {"params": [b], "lr_mult": 10.0, "weight_decay_mult": 0.0}, ([c], 2.0)],
        0.1, total_steps=4, weight_decay=1e-3, momentum=0.9)
    groups = optimizer.param_groups
    assert len(groups) == 3  # the frozen group is dropped, the decays stay with their groups
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 1.0, 0.2])
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0, 1e-3]
    assert all(g["momentum"] == 0.9 for g in groups)
    optimizer.step()
    scheduler.step()
    assert groups[1]["lr"] == pytest.approx(1.0 * 0.75 ** 0.9)


def test_sequential_mean_is_a_running_sum() -> None:
    values = [0.1] * 10 + [1e16, 1.0, -1e16]
    total = 0.0
    for value in values:
        total += value
    assert sequential_mean(values) == total / len(values)
    assert sequential_mean([]) == 0.0


# ------------------------------------------------------------------ resumable loaders
def test_shuffled_loader_resumes_mid_epoch_with_the_same_batches_and_rng() -> None:
    torch.manual_seed(5)
    straight = ShuffledLoader(loader())
    batches = list(straight.epoch(0, 0))
    epoch = straight.epoch(1, 0)
    next(epoch)
    state, rng = straight.state_dict(), torch.get_rng_state()
    rest = list(epoch)
    assert state["taken"] == 1 and len(batches) == 3

    torch.manual_seed(99)  # whatever the global RNG holds before the resume
    resumed = ShuffledLoader(loader())
    resumed.load_state_dict(state)  # replays batch 1 of epoch 1 (drawing noise) ...
    torch.set_rng_state(rng)  # ... and only then gets the saved global RNG back
    again = list(resumed.epoch(1, 1))
    assert len(again) == len(rest) == 2
    for x, y in zip(again, rest):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["x"], y["x"])
    with pytest.raises(RuntimeError, match="cannot resume epoch 2 after 2 batches"):
        list(ShuffledLoader(loader()).epoch(1, 2))


def test_endless_loader_reshuffles_each_pass_and_resumes_mid_pass() -> None:
    torch.manual_seed(0)
    stream = EndlessLoader(loader(batch_size=4))  # 10 points: 2 batches a pass
    seen = [next(stream)["index"] for _ in range(3)]
    first_pass = torch.cat(seen[:2]).tolist()
    assert len(set(first_pass)) == 8  # a pass draws without replacement
    state, rng = stream.state_dict(), torch.get_rng_state()
    assert state["taken"] == 1
    expected = [next(stream) for _ in range(4)]

    resumed = EndlessLoader(loader(batch_size=4))
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    for batch in expected:
        got = next(resumed)
        assert torch.equal(got["index"], batch["index"]) and torch.equal(got["x"], batch["x"])
    with pytest.raises(ValueError, match="needs its own generator"):
        EndlessLoader(DataLoader(NoisyPoints(), batch_size=2, shuffle=True))


# ------------------------------------------------------------------ the loop
def test_history_epochs_files_and_the_curve(tmp_path) -> None:
    engine = run(tmp_path / "run", epochs=4)
    assert engine.iteration == 12 and len(engine.history) == 12 and len(engine.epochs) == 4
    assert [h["iteration"] for h in engine.history] == list(range(1, 13))
    assert engine.history[0]["lr"] == pytest.approx(0.3)  # the lr each update used
    assert engine.history[6]["lr"] == pytest.approx(0.3 * (1 - 6 / 12) ** 0.9)
    for record in engine.epochs:
        steps = engine.history[(record["epoch"] - 1) * 3:record["step"]]
        assert record["loss"] == pytest.approx(sum(h["loss"] for h in steps) / 3)
        assert record["mse"] == record["loss"]
    assert engine.epochs[-1]["loss"] < 0.2 * engine.epochs[0]["loss"]  # it does learn y = 3x - 1
    assert engine.epochs[1]["lr"] == pytest.approx(0.3 * (1 - 6 / 12) ** 0.9)  # after the epoch
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == engine.history
    assert (tmp_path / "run" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoint.pt", ("test-checkpoint",), "test checkpoint")
    assert checkpoint["iteration"] == 12 and checkpoint["settings"] == {"lr": 0.3}
    assert len(checkpoint["epochs"]) == 4 and checkpoint["total_steps"] == 12


def test_a_loss_that_becomes_nan_stops_training_naming_the_update() -> None:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer, scheduler = poly_sgd([(model.parameters(), 1.0)], 0.1, total_steps=9)
    engine = TrainingEngine(model, optimizer, scheduler, total_steps=9, steps_per_epoch=3,
                            device=torch.device("cpu"), desc="toy", progress=False)

    def step(batch):
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss * (math.nan if engine.iteration == 4 else 1.0)

    with pytest.raises(LossNotFinite, match=r"toy: the loss became nan at iteration 5 of 9 \(epoch 2"):
        engine.fit(ShuffledLoader(loader()), step)
    assert len(engine.history) == 4
    assert issubclass(LossNotFinite, WsssError) and issubclass(LossNotFinite, FloatingPointError)


@pytest.mark.parametrize("every, kill_at, saved", [(None, 8, 6), (2, 5, 4), (3, 7, 6)])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, every, kill_at, saved) -> None:
    # every=None: epoch-end checkpoints; 2: mid-epoch ones (the data position is replayed); 3: one
    # right after an epoch's last update, before the epoch's end was recorded.
    straight = run(None, epochs=4)
    folder = tmp_path / "run"
    with pytest.raises(Killed):
        run(folder, epochs=4, every=every, kill_at=kill_at)
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["iteration"] == saved
    resumed = run(folder, epochs=4, every=every)
    assert resumed.resumed_from == saved
    assert_same_run(straight, resumed)
    again = run(folder, epochs=4, every=every)  # a finished run does no more updates
    assert again.resumed_from == 12 and again.iteration == 12


def test_stopping_early_then_going_on_matches_an_uninterrupted_run(tmp_path) -> None:
    straight = run(None, epochs=3)
    partial = run(tmp_path / "run", epochs=3, stop_at=4)
    assert partial.iteration == 4 and [r["step"] for r in partial.epochs] == [3, 4]
    finished = run(tmp_path / "run", epochs=3)
    assert [r["step"] for r in finished.epochs] == [3, 6, 9]  # the partial record is redone
    assert_same_run(straight, finished)


def test_resume_refuses_changed_settings_and_unreadable_files(tmp_path) -> None:
    folder = tmp_path / "run"
    run(folder, epochs=1)
    with pytest.raises(ConfigError) as caught:
        run(folder, epochs=1, settings={"lr": 0.2})
    assert str(caught.value).startswith(str(folder / "checkpoint.pt"))
    assert "cannot resume, the config changed (lr: 0.3 -> 0.2)" in str(caught.value)
    run(folder, epochs=1, settings={"lr": 0.3, "new_option": 1})  # a setting the file predates
    with pytest.raises(ConfigError, match="checkpoint has total_steps 3 but this run 6"):
        run(folder, epochs=2)
    assert run(folder, epochs=2, resume=False).resumed_from == 0  # starts over

    (folder / "checkpoint.pt").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"checkpoint.pt: not a readable wsss test checkpoint"):
        run(folder, epochs=1)
    torch.save({"format": "other"}, folder / "checkpoint.pt")
    with pytest.raises(DataError, match=r"checkpoint.pt: not a wsss test checkpoint"):
        run(folder, epochs=1)
