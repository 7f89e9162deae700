"""The trainer keeps only checkpoints of a method in its served form (``EmbeddingMethod.servable``)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from recsys.config import TrainingConfig
from recsys.training.distributed import ShardedModel
from recsys.training.loop import EvalResult, Trainer


class Ramping:
    """A method that becomes servable after ``ready_after`` steps (like DSL's density ramp)."""

    name = "ramping"

    def __init__(self, ready_after: int) -> None:
        self.ready_after, self.taken, self.planned = ready_after, 0, None

    def on_train_begin(self, total_steps: int) -> None:
        self.planned = total_steps

    def on_train_resume(self, steps: int) -> None:
        self.taken = steps

    def on_train_step(self, step: int) -> None:
        self.taken = step + 1

    def servable(self) -> bool:
        return self.taken >= self.ready_after


def scripted_trainer(tmp_path: Path, aucs: list[float], ready_after: int, steps_per_epoch: int = 10, **cfg: object) -> Trainer:
    model = nn.Linear(1, 1)
    trainer = Trainer(ShardedModel(model, None), Ramping(ready_after), [0] * steps_per_epoch, [], TrainingConfig(**cfg))  # type: ignore[arg-type]
    script = iter(aucs)

    def train_epoch(epoch: int, on_checkpoint: object) -> tuple[float, float, int]:
        for _ in range(steps_per_epoch):
            trainer.method.on_train_step(trainer.state.step)
            trainer.state.step += 1
        with torch.no_grad():
            model.bias.fill_(float(epoch))  # the weights say which epoch they are from
        return 0.5, 1.0, steps_per_epoch

    trainer._train_epoch = train_epoch  # type: ignore[method-assign]
    trainer.evaluate = lambda reader: EvalResult(next(script), 0.5, 1)  # type: ignore[method-assign]
    return trainer


def test_epochs_before_the_served_form_are_neither_kept_nor_counted(tmp_path: Path) -> None:
    trainer = scripted_trainer(tmp_path, [0.9, 0.8, 0.6, 0.7, 0.65, 0.64, 0.63], ready_after=25, epochs=7, patience=1)
    result = trainer.fit(tmp_path / "best.safetensors")
    assert trainer.method.planned == 70
    assert result.best_epoch == 3, "epochs 0-1 (0.9, 0.8) were before the ramp's end: not kept"
    assert len(result.epochs) == 6 and result.stopped_early, "two bad epochs after the best one (patience 1)"
    assert float(trainer.model.bias.detach()) == 3.0, "the kept checkpoint is loaded at the end"


def test_a_method_that_never_becomes_servable_is_an_error(tmp_path: Path) -> None:
    trainer = scripted_trainer(tmp_path, [0.7, 0.8], ready_after=1000, epochs=2)
    with pytest.raises(RuntimeError, match="method 'ramping' never reached its served form in 20 steps"):
        trainer.fit(tmp_path / "best.safetensors")
